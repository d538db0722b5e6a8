"""``--policy NAME`` and ``--policy-param KEY=VALUE``: the caching policy on every command line.

A value is read as JSON where it parses (``0.2``, ``true``, ``[0, 5, 10]``,
``{"first": 1, "last": false}``), else as a string.  The policy's constructor checks the
parameters before any heavy work; a bad one is one line and exit code 2.

Building the options imports no policy (the policies import torch): ``--help`` lists the
names read from the policy modules' sources, and the registry is imported when the options
are used.
"""
from __future__ import annotations

import argparse
import ast
import importlib.util
import json
from pathlib import Path

from ..errors import TeaCacheError


def policy_param(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE, e.g. threshold=0.2 or steps=[0,5,10,15,19]")
    try:
        return key, json.loads(value)
    except (ValueError, RecursionError):
        return key, value


def policy_names() -> list[str]:
    """The ``name`` of every ``@register``ed class in the policy folder, read from the sources."""
    spec = importlib.util.find_spec("teacache_trt.policies")
    names = []
    for folder in (spec.submodule_search_locations or []) if spec else []:
        for path in sorted(Path(folder).glob("*.py")):
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"))
            except (OSError, SyntaxError, ValueError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef) and any(getattr(d, "id", None) == "register" for d in node.decorator_list):
                    names += [s.value.value for s in node.body if isinstance(s, ast.Assign)
                              and any(getattr(t, "id", None) == "name" for t in s.targets)
                              and isinstance(s.value, ast.Constant) and isinstance(s.value.value, str)]
    return sorted(set(names))


def add_arguments(parser: argparse.ArgumentParser, what: str = "") -> None:
    names = ", ".join(policy_names())
    parser.add_argument("--policy", metavar="NAME",
                        help=f"caching policy{what}: {names} (default: the artifact's, TeaCache at its default "
                             f"threshold); parameters with --policy-param")
    parser.add_argument("--policy-param", metavar="KEY=VALUE", type=policy_param, action="append", default=[],
                        help="a parameter of --policy (repeatable; VALUE as JSON, else a string), e.g. "
                             "threshold=0.2, coefficients=[1.5,0.1], steps=[0,5,10,15,19], n=7, "
                             "reuse=taylor (every policy)")


def from_args(args):
    """The policy the options name (checked), or None when ``--policy`` is absent."""
    from .. import policies

    params = dict(args.policy_param)
    if args.policy is None:
        if params:
            raise TeaCacheError(f"--policy-param {sorted(params)} needs --policy NAME "
                                f"(one of {sorted(policies.registered())})")
        return None
    return policies.make(args.policy, **params)
