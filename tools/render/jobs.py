"""The job file: one JSON object per line, parsed and checked into :class:`Job` or :class:`BadJob`.

A bad line never stops the run: it becomes a :class:`BadJob` whose message names the value (cut
short when it is huge) and the fix, and the renderer records it as ``failed``; that holds for
lines JSON itself chokes on (a 5000-digit number, arrays nested 2000 deep).  A job's ``id``
names its output file, so it is a plain file name, and not one of the renderer's own
(``contact_sheet``, ``summary``, ``results``); a path field (e.g. ``prompt_embeds``) is read
relative to the job file's folder and may not point outside it.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from ... import policies
from ...errors import TeaCacheError, shown
from .output import RESERVED_IDS
from .settings import RunSettings

# id, prompt, seed, steps, guidance, threshold, policy: every model takes these.
COMMON_FIELDS = ("id", "prompt", "seed", "steps", "guidance", "threshold", "policy")
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class Job:
    id: str
    line: int  # 1-based line in the job file
    prompt: str
    seed: int
    steps: int
    guidance: float
    threshold: float | None  # the policy's threshold (the artifact's when it gives none); None: it has none
    extra: Mapping[str, Any] = field(default_factory=dict)  # the model's own fields (driver.job_fields)
    # {"name", "params"}: the job's caching policy as given (its threshold included)
    policy: Mapping[str, Any] = field(default_factory=dict)
    # a digest of everything that determines the output (settings.RunSettings.key): a finished
    # result counts only for the same key, so an edited job or a changed setting renders again
    key: str = field(default="", compare=False)
    coefficients: str | None = field(default=None, compare=False)  # the coefficient set's name, if any

    def policy_key(self, with_threshold: bool) -> tuple:
        """The policy as a key, with or without its threshold (per prompt in sample decisions)."""
        params = {k: v for k, v in self.policy.get("params", {}).items() if k != "threshold"}
        return (json.dumps({"name": self.policy.get("name"), "params": params}, sort_keys=True),
                self.threshold if with_threshold else None)


@dataclass(frozen=True)
class BadJob:
    """A line that cannot be rendered; ``id`` is the job's own when it has a usable one,
    else ``line:N`` (no job id can look like that, so a later fix of the line never clashes)."""

    id: str
    line: int
    error: str


def line_id(n: int) -> str:
    return f"line:{n}"


class JobReader:
    """Checks job lines for one model: its extra ``fields`` (name -> str/int/float/Path), the
    ``defaults`` (steps, guidance; a model field such as ``fps``), the run's default ``policy``,
    the driver's own ``check(job)`` (raises TeaCacheError for an impossible job) and the run's
    ``settings`` (the artifact's policy settings, named coefficient sets, what identifies a
    result).

    A job's ``policy`` is a name or ``{"name": ..., "params": {...}}`` (default: the run's); its
    ``threshold`` sets that policy's threshold (an error for a policy without one)."""

    def __init__(self, fields: Mapping[str, type], defaults: Mapping[str, Any], policy: policies.Policy | float,
                 check: Callable[[Job], None], settings: RunSettings | None = None):
        clash = set(fields) & set(COMMON_FIELDS)
        if clash:
            raise TeaCacheError(f"a driver's job fields {sorted(clash)} clash with the common fields {COMMON_FIELDS}")
        self.fields = dict(fields)
        self.defaults = {"seed": 0, "steps": 20, "guidance": 1.0, **defaults}
        # a number: TeaCache at that threshold (the artifact's coefficients)
        self.policy = policies.TeaCache(threshold=policy) if isinstance(policy, (int, float)) else policy
        self.settings = settings or RunSettings()
        self.check = check

    def read(self, path: Path) -> Iterator[Job | BadJob]:
        """Every non-blank line of ``path``, in order; duplicate ids after the first are bad."""
        path = Path(path)
        if not path.is_file():
            raise TeaCacheError(f"job file {path} does not exist: give a JSONL file, one job per line")
        seen: dict[str, int] = {}
        with path.open("rb") as f:
            for n, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                job = self.parse(raw, n, path.parent)
                if job.id != line_id(n):  # the line's own id, good or bad: it must be unique
                    first = seen.setdefault(job.id, n)
                    if first != n:
                        job = BadJob(line_id(n), n, f"line {n}: id {job.id!r} is already used on line {first}: "
                                                    f"give every job its own id")
                yield job

    def parse(self, raw: bytes, n: int, base: Path) -> Job | BadJob:
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # ValueError: bad JSON, or an integer too long to read
            why = "nested too deep" if isinstance(exc, RecursionError) else str(exc)[:200]
            return BadJob(line_id(n), n, f"line {n} is not a JSON object ({why}): write one job per line, "
                                         f'e.g. {{"id": "a", "prompt": "3", "seed": 0}}')
        if not isinstance(data, dict):
            return BadJob(line_id(n), n, f"line {n} is a JSON {type(data).__name__}, not an object: "
                                         f'write {{"id": ..., "prompt": ...}}')
        job_id = data.get("id")
        if not isinstance(job_id, str) or not ID_PATTERN.fullmatch(job_id):
            return BadJob(line_id(n), n, f"line {n}: id {shown(job_id)} is not a usable id: it names the output "
                                         f"file, so give 1-128 letters, digits, '.', '_' or '-' (not starting "
                                         f"with '.', '_' or '-')")
        if job_id in RESERVED_IDS:
            return BadJob(line_id(n), n, f"line {n}: id {job_id!r} would name one of the renderer's own files "
                                         f"({', '.join(sorted(RESERVED_IDS))}): give the job another id")
        try:
            job = self._job(data, n, base)
            self.check(job)
        except TeaCacheError as exc:
            return BadJob(job_id, n, f"line {n} (id {job_id!r}): {exc}")
        except RecursionError:
            return BadJob(job_id, n, f"line {n} (id {job_id!r}): a value is nested too deep: give plain values")
        except (ValueError, TypeError, OverflowError, OSError) as exc:  # a value no check foresaw: this job only
            return BadJob(job_id, n, f"line {n} (id {job_id!r}): a value cannot be used ({type(exc).__name__}: "
                                     f"{str(exc)[:200]}): check the line's values")
        return job

    def _job(self, data: dict, n: int, base: Path) -> Job:
        unknown = sorted(set(data) - set(COMMON_FIELDS) - set(self.fields))
        if unknown:
            raise TeaCacheError(
                f"unknown field(s) {shown(unknown)}: this model takes {list(COMMON_FIELDS) + sorted(self.fields)}; "
                f"remove them or render with a model that takes them"
            )
        get = {**self.defaults, **data}.get
        prompt = get("prompt", "")
        if not isinstance(prompt, str):
            raise TeaCacheError(f"prompt {shown(prompt)} is not a string: quote it")
        seed = _integer("seed", get("seed"), 0, MAX_SEED)
        steps = _integer("steps", get("steps"), 1, 10_000)
        guidance = _number("guidance", get("guidance"))
        policy = self._policy(data)
        extra = {name: self._extra(name, get(name), base) for name in sorted(self.fields) if get(name) is not None}
        bound = self.settings.bind(policy)
        threshold = bound.threshold if policy.has_threshold else None
        key = self.settings.key({"prompt": prompt, "seed": seed, "steps": steps, "guidance": guidance, **extra}, bound)
        return Job(data["id"], n, prompt, seed, steps, guidance, threshold, extra, policy.spec, key,
                   self.settings.label(bound))

    def _policy(self, data: dict) -> policies.Policy:
        policy = self.policy
        if "policy" in data:
            try:
                policy = policies.from_spec(self.settings.resolve(data["policy"]))
            except TeaCacheError as exc:
                raise TeaCacheError(f"policy: {exc}") from None
        if "threshold" in data:
            threshold = _number("threshold", data["threshold"])
            if threshold < 0:
                raise TeaCacheError(f"threshold {threshold!r} is negative: give a number >= 0 (0 never skips)")
            if not policy.has_threshold:
                raise TeaCacheError(f"threshold {threshold:g} was given, but the policy {policy!r} has none: "
                                    f"leave it out, or give a policy that has one")
            policy = policy.replace(threshold=threshold)
        return policy

    def _extra(self, name: str, value, base: Path):
        kind = self.fields[name]
        if kind is Path:
            return _inside(name, value, base)
        if kind is int:
            return _integer(name, value, 1, 1 << 20)
        if kind is float:
            return _number(name, value)
        if not isinstance(value, kind):
            raise TeaCacheError(f"{name} {shown(value)} is not a {kind.__name__}: give a {kind.__name__}")
        return value


def _integer(name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TeaCacheError(f"{name} {shown(value)} is not an integer: give a whole number in [{lo}, {hi}]")
    if not lo <= value <= hi:
        raise TeaCacheError(f"{name}={shown(value)} is outside [{lo}, {hi}]: give a whole number in that range")
    return value


def _number(name: str, value) -> float:
    try:
        finite = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    except OverflowError:  # an integer beyond any float
        finite = False
    if not finite:
        raise TeaCacheError(f"{name} {shown(value)} is not a finite number: give a number such as 0.2")
    return float(value)


def _inside(name: str, value, base: Path) -> Path:
    """A path from the job file, resolved against its folder; it may not leave that folder."""
    if not isinstance(value, str) or not value:
        raise TeaCacheError(f"{name} {shown(value)} is not a path: give a file name relative to the job file's folder")
    root = base.resolve()
    path = (root / value).resolve()
    if root != path and root not in path.parents:
        raise TeaCacheError(
            f"{name} {shown(value)} points outside the job file's folder {root}: put the file in that folder "
            f"and give its relative path"
        )
    if not path.is_file():
        raise TeaCacheError(f"{name} {shown(value)} does not exist (looked for {path}): write it first or fix the path")
    return path
