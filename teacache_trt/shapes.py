"""Symbolic shapes: dim names and expressions as the ONNX exporter writes them.

The exporter names dynamic dims after the family's axes (``batch``, ``img_seq``) and writes
derived dims as expressions (``img_seq + txt_seq``).  Binding the plain names from concrete
input shapes and evaluating the expressions gives the shape of every tensor of the three
graphs without running them: the optimization profiles, the zero ``prev_signal`` of a first
step, and the profile checks done before any engine launches all come from here.
"""
from __future__ import annotations

import ast
from pathlib import Path
import functools
import operator
from typing import Mapping, Sequence, Union

from .errors import TeaCacheError

Dim = Union[int, str]

_BINOPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,  # a square latent's token count: ((size//2))**2
}
_CALLS = {"max": max, "min": min, "Max": max, "Min": min}


def eval_dim(dim: Dim, env: Mapping[str, int]) -> int:
    """Value of one dim: an int, a bound name, or an arithmetic expression of bound names."""
    if isinstance(dim, int):
        return dim
    return _eval(_parse(dim), env, dim)


@functools.lru_cache(maxsize=None)
def _parse(dim: str) -> ast.AST:
    # Cached: the runtime evaluates the same few expressions on every step.
    try:
        return ast.parse(dim, mode="eval").body
    except SyntaxError as exc:
        raise TeaCacheError(f"dim expression {dim!r} cannot be parsed: {exc}") from exc


def _eval(node: ast.AST, env: Mapping[str, int], text: str) -> int:
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.Name):
        if node.id not in env:
            raise TeaCacheError(
                f"dim {text!r} uses {node.id!r}, which no input binds (bound: {sorted(env)})"
            )
        return env[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        return _BINOPS[type(node.op)](_eval(node.left, env, text), _eval(node.right, env, text))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _CALLS:
        return _CALLS[node.func.id](*(_eval(a, env, text) for a in node.args))
    raise TeaCacheError(f"dim expression {text!r} has an unsupported construct")


def is_symbol(dim: Dim) -> bool:
    return isinstance(dim, str) and dim.isidentifier()


def bind(declared: Sequence[Dim], actual: Sequence[int], env: dict[str, int], where: str) -> None:
    """Bind the plain symbols of ``declared`` from ``actual``; check fixed dims and reuse."""
    if len(declared) != len(actual):
        raise TeaCacheError(
            f"{where} has rank {len(actual)} (shape {tuple(actual)}); "
            f"the graph expects rank {len(declared)} (shape {tuple(declared)})"
        )
    for i, (d, a) in enumerate(zip(declared, actual)):
        if isinstance(d, int):
            if d != a:
                raise TeaCacheError(
                    f"{where} has size {a} on dim {i} (shape {tuple(actual)}); the graph was "
                    f"exported with {d} there (shape {tuple(declared)}): this size is fixed in "
                    f"the graph, by the model config or by an axis range of 1:1:1 at export"
                )
        elif not is_symbol(d):
            _solve_linear(d, a, env, where, i)
        else:
            if d in env and env[d] != a:
                raise TeaCacheError(
                    f"{where} has {d}={a} on dim {i}, but another input gave {d}={env[d]}: "
                    f"inputs disagree on this size"
                )
            env[d] = a


def shape_of(declared: Sequence[Dim], env: Mapping[str, int]) -> tuple[int, ...]:
    return tuple(eval_dim(d, env) for d in declared)


def _solve_linear(expr: str, value: int, env: dict[str, int], where: str, i: int) -> None:
    """Bind the one unknown of a linear dim such as ``2*height`` (a derived export dim).

    Expressions with no unknown are checked; ones with several unknowns are left alone
    (another input binds them, and later evaluations check the result).
    """
    names = {n.id for n in ast.walk(_parse(expr)) if isinstance(n, ast.Name)}
    unknown = [n for n in names if n not in env and n not in _CALLS]
    if not unknown:
        if eval_dim(expr, env) != value:
            raise TeaCacheError(
                f"{where} has size {value} on dim {i}, but the graph needs {expr} = "
                f"{eval_dim(expr, env)} there (bound: {env})"
            )
        return
    if len(unknown) > 1:
        return
    (sym,) = unknown
    f0 = eval_dim(expr, {**env, sym: 0})
    slope = eval_dim(expr, {**env, sym: 1}) - f0
    if slope == 0 or (value - f0) % slope:
        raise TeaCacheError(
            f"{where} has size {value} on dim {i}, which no integer {sym} makes equal to "
            f"{expr}: use a size of that form (for example a multiple of the patch size)"
        )
    env[sym] = (value - f0) // slope


def propagate(graphs, shapes: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
    """Concrete shapes of every tensor of ``graphs`` (run in order) from the model inputs.

    ``graphs`` are manifest GraphSpecs.  Each graph binds its symbols from the inputs whose
    shapes are known, then evaluates its outputs; an input nobody provided (``prev_signal``
    of the embed graph) takes the shape of the output of the same role, ``signal``.
    """
    known = {k: tuple(v) for k, v in shapes.items()}
    for graph in graphs:
        env: dict[str, int] = {}
        for spec in graph.inputs:
            if spec.name in known:
                bind(spec.shape, known[spec.name], env, f"the {Path(graph.file).stem} graph's input {spec.name!r}")
        for spec in graph.outputs:
            known[spec.name] = shape_of(spec.shape, env)
        for spec in graph.inputs:
            if spec.name not in known and spec.name.startswith("prev_"):
                known[spec.name] = known[spec.name[len("prev_"):]]
    return known
