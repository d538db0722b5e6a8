"""What a job's result depends on beyond the job line: the artifact's policy settings, the
coefficient set a TeaCache job uses, and the run's model, graphs and backend.

- ``bind``: a job's policy with every setting it leaves to the artifact filled in (threshold,
  coefficients, forced steps, ...): what the result really used.
- Coefficient sets by name: ``"artifact"`` (what the manifest records: for the bundled digits
  model its calibration) and ``"upstream"`` (the variant's own, e.g. upstream FLUX.1), usable
  as ``--coefficients NAME`` or as a job's ``"policy": {"name": "teacache", "params":
  {"coefficients": "upstream"}}``; ``label`` names the set a bound policy uses, for results
  lines, the summary and the contact sheet.
- ``key``: a digest of everything that determines a job's output (prompt, seed, steps,
  guidance, the model's own fields, the bound policy, the model, the graphs, the backend and
  the decision mode), recorded in results.jsonl: a job edited under the same id, another
  ``--threshold`` or a re-calibrated artifact renders again instead of counting as done.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ... import policies
from ...errors import TeaCacheError, shown

SET_NAMES = ("artifact", "upstream")


def source_label(source: str, variant: str) -> str:
    """Short words for where a coefficient set came from (the manifest's ``source``)."""
    if source.startswith("variant "):
        return f"upstream {source[len('variant '):]}"
    if source.startswith("teacache-calibrate"):
        return "calibrated"
    return source or "the artifact's"


@dataclass(frozen=True)
class RunSettings:
    artifact: policies.ArtifactPolicies | None = None  # None: policies stay as given (no artifact)
    sets: Mapping[str, list[float]] = field(default_factory=dict)  # name -> coefficients
    labels: Mapping[str, str] = field(default_factory=dict)  # name -> words for results and the sheet
    identity: Mapping[str, Any] = field(default_factory=dict)  # model, graphs, backend, decisions

    @classmethod
    def for_artifact(cls, manifest, artifact: policies.ArtifactPolicies, identity: Mapping[str, Any]) -> "RunSettings":
        from ...families import get_family

        sets, labels = {}, {}
        recorded = artifact.data_for("teacache")
        if recorded.get("coefficients") is not None:
            sets["artifact"] = [float(c) for c in recorded["coefficients"]]
            labels["artifact"] = source_label(str(recorded.get("source", "")), manifest.variant)
        try:
            variant = get_family(manifest.family).variants.get(manifest.variant)
        except TeaCacheError:  # a family of the user's own (--family-module): no known upstream set
            variant = None
        if variant is not None:
            sets["upstream"] = [float(c) for c in variant.coefficients]
            labels["upstream"] = f"upstream {variant.name}"
        return cls(artifact, sets, labels, dict(identity))

    # --- policies -------------------------------------------------------------------------------
    def bind(self, policy: policies.Policy) -> policies.Policy:
        return policy if self.artifact is None else policy.bind(self.artifact)

    def resolve(self, spec):
        """A policy spec with a coefficient set given by name replaced by its numbers."""
        params = spec.get("params") if isinstance(spec, Mapping) else None
        if not isinstance(params, Mapping) or not isinstance(params.get("coefficients"), str):
            return spec
        name = params["coefficients"]
        if name not in self.sets:
            known = sorted(self.sets) or "none: this artifact records none"
            raise TeaCacheError(f"coefficients {shown(name, 40)} is not a coefficient set of this artifact "
                                f"({known}): give a set name or a list of numbers (numpy.poly1d order)")
        return {**spec, "params": {**params, "coefficients": list(self.sets[name])}}

    def with_set(self, policy: policies.Policy, name: str) -> policies.Policy:
        """``policy`` using the coefficient set ``name`` (``--coefficients NAME``)."""
        if "coefficients" not in policy.param_names():
            raise TeaCacheError(f"--coefficients {name}: the policy {policy!r} takes no coefficients; leave it out")
        return policies.from_spec(self.resolve({"name": policy.name, "params": {**policy.params,
                                                                               "coefficients": name}}))

    def label(self, bound: policies.Policy) -> str | None:
        """The name of the coefficient set ``bound`` uses; None for a policy without one."""
        coefficients = getattr(bound, "coefficients", None)
        if coefficients is None:
            return None
        values = [float(c) for c in coefficients]
        for name in SET_NAMES:  # the artifact's first: the upstream set recorded as such keeps its name
            if self.sets.get(name) == values:
                return self.labels[name]
        return "custom"

    # --- what determines a result ---------------------------------------------------------------
    def key(self, job_fields: Mapping[str, Any], bound: policies.Policy) -> str:
        data = {"job": {k: _plain(v) for k, v in job_fields.items()}, "policy": bound.spec, "run": self.identity}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _plain(value):
    """A job value as key data: a file by its content (prompt_embeds), the rest as it is."""
    if isinstance(value, Path):
        from ...integrity import file_sha256

        return {"file_sha256": file_sha256(value)}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value
