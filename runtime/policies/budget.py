"""``Budget``: exactly ``n`` computed calls per cache context, the calls chosen offline.

``teacache-calibrate ART --policy budget --budget N`` measures, on calibration generations, the
error that reusing the residual of call i at the calls up to j adds to the result, and picks the
``n`` calls of each context whose reuse segments add the least (a shortest path with exactly
``n`` nodes over the graph of calls; see ``teacache_trt.tools.budget_search``).  The manifest
keeps the result per step count, per ``n`` and per context::

    policy_data["budget"] = {"searches": {"20": {
        "schedules": {"residual": {"7": {"cond": [0, 1, ...], ...}}, "taylor": {...}},
        "objective": "sum", "source": "...", "errors": {...}, ...}}}

A budget uses the schedules searched for its own reuse mode (``Budget(7, reuse="taylor")``: the
``taylor`` ones), else those searched for plain residual reuse.

Where the artifact has no search for a generation's step count, ``n`` or context, the calls are
spread evenly (``Schedule.uniform``) and a warning says so once, with the command that fixes it.
Static: the schedule is fixed when the generation starts; nothing is read back per call.
"""
from __future__ import annotations

import warnings
from typing import Any, Mapping

from ..errors import TeaCacheError
from .base import REUSE_MODES, ArtifactPolicies, Policy, check_steps, make, register
from .schedule import Schedule

# what a search entry may hold besides its schedules (written by teacache-calibrate, shown to people)
SEARCH_INFO = frozenset({"objective", "measure", "source", "seeds", "errors", "seconds"})
_told: set = set()  # (artifact, steps, n, context) said once per process


def _count(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TeaCacheError(f"{what} {value!r:.100} must be an integer >= 1")
    return value


def _key(value, what: str) -> int:
    return _count(int(value) if isinstance(value, str) and value.isdigit() else value, what)


def check_searches(searches, where: str) -> dict[int, dict[str, dict[int, dict[str, tuple[int, ...]]]]]:
    """The manifest's ``searches`` as {steps: {reuse: {n: {context: steps}}}}, every schedule
    checked: n distinct calls of a ``steps``-call generation, call 0 among them."""
    if not isinstance(searches, Mapping):
        raise TeaCacheError(f"{where}: budget searches {searches!r:.100} must be an object keyed by step count")
    out: dict[int, dict[str, dict[int, dict[str, tuple[int, ...]]]]] = {}
    for key, search in searches.items():
        steps = _key(key, f"{where}: budget search key")
        if not isinstance(search, Mapping) or not isinstance(search.get("schedules"), Mapping):
            raise TeaCacheError(f"{where}: budget search for {steps} steps must be an object with 'schedules'")
        unknown = sorted(set(search) - SEARCH_INFO - {"schedules"})
        if unknown:
            raise TeaCacheError(f"{where}: budget search for {steps} steps has unknown keys {unknown}; known: "
                                f"{sorted(SEARCH_INFO | {'schedules'})}")
        out[steps] = {}
        for reuse, by_n in search["schedules"].items():
            if reuse not in REUSE_MODES or not isinstance(by_n, Mapping):
                raise TeaCacheError(f"{where}: budget schedules for {steps} steps must be keyed by reuse mode "
                                    f"({sorted(REUSE_MODES)}), then n; got {reuse!r:.50}")
            per_n = out[steps][reuse] = {}
            for n_key, contexts in by_n.items():
                n = _key(n_key, f"{where}: budget schedules key")
                if not isinstance(contexts, Mapping) or not contexts:
                    raise TeaCacheError(f"{where}: budget schedules for n={n} must map each context to its steps")
                per_n[n] = {}
                for context, listed in contexts.items():
                    what = f"{where}: budget schedule for {steps} steps, reuse {reuse}, n={n}, context {context!r}"
                    calls = check_steps(listed, what)
                    if len(calls) != n or calls[0] != 0 or calls[-1] >= steps:
                        raise TeaCacheError(f"{what} is {calls}: it must list {n} distinct steps from 0 to "
                                            f"{steps - 1}, step 0 included; re-run teacache-calibrate --policy budget")
                    per_n[n][str(context)] = tuple(calls)
    return out


@register
class Budget(Policy):
    """Compute exactly ``n`` calls of each cache context: the calls the artifact's budget search
    chose for the generation's step count, else ``n`` evenly spaced ones (with a warning)."""

    name = "budget"
    static = True
    data_keys = frozenset({"searches"})

    def __init__(self, n):
        self.n = _count(n, "Budget n (computed steps per cache context)")
        self._set_params(n=self.n)
        self._searches: dict[int, dict[str, dict[int, dict[str, tuple[int, ...]]]]] = {}
        self._where = "this policy (not bound to an artifact)"

    def describe(self) -> str:
        return f"budget of {self.n} steps"

    @classmethod
    def check_data(cls, data: Mapping[str, Any], where: str) -> None:
        unknown = sorted(set(data) - cls.data_keys)
        if unknown:
            raise TeaCacheError(f"{where}: unknown budget data {unknown}; known: {sorted(cls.data_keys)}")
        check_searches(data.get("searches", {}), where)

    def bind(self, artifact: ArtifactPolicies) -> "Budget":
        bound = make(self.name, **super().bind(artifact).params)  # a copy: the searches are the artifact's
        bound._searches = check_searches(artifact.data_for(self.name).get("searches", {}), artifact.where)
        bound._where = artifact.where
        return bound

    def _schedules(self, num_steps: int) -> dict[int, dict[str, tuple[int, ...]]]:
        """The searched schedules by n for this generation's step count: those searched for this
        policy's reuse mode, else those for plain residual reuse."""
        by_reuse = self._searches.get(num_steps, {})
        return by_reuse.get(self.reuse) or by_reuse.get("residual") or next(iter(by_reuse.values()), {})

    def searched(self, num_steps: int, context: str) -> tuple[int, ...] | None:
        """The searched schedule of ``context`` for ``num_steps`` calls, or None."""
        return self._schedules(num_steps).get(self.n, {}).get(context)

    def schedule(self, num_steps: int, context: str):
        if self.n > num_steps:
            raise TeaCacheError(f"budget of {self.n} steps exceeds this generation's {num_steps} steps: "
                                f"give n <= {num_steps}")
        found = self.searched(num_steps, context)
        if found is not None:
            return found
        key = (self._where, num_steps, self.n, context)
        if key not in _told:
            _told.add(key)
            warnings.warn(self._fallback_note(num_steps, context), RuntimeWarning, stacklevel=2)
        return Schedule.uniform(num_steps, self.n).steps

    def _fallback_note(self, num_steps: int, context: str) -> str:
        have = self._schedules(num_steps)
        if not have:
            what = (f"records budget searches for {sorted(self._searches)} steps only" if self._searches
                    else "records no budget search")
        elif self.n not in have:
            what = f"records budgets {sorted(have)} for {num_steps} steps, not {self.n}"
        else:
            what = f"records the {self.n}-step budget for contexts {sorted(have[self.n])}, not {context!r}"
        return (f"{self._where} {what}: budget of {self.n} steps in {num_steps} uses evenly spaced steps instead "
                f"(context {context!r}); to search them: teacache-calibrate ART_DIR --policy budget "
                f"--steps {num_steps} --budget {self.n} --write-manifest")
