"""What a person watching the render sees: a progress bar while it runs, a summary at the end."""
from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from typing import Iterable

from .worker import Outcome


@dataclass
class Summary:
    jobs: int = 0  # lines in the job file (bad ones included)
    already_done: int = 0  # finished by an earlier run, not redone
    rendered: int = 0  # jobs this run finished ok
    failed: int = 0  # jobs this run recorded as failed (bad lines included)
    left: int = 0  # not attempted (an interrupted run): the next run does them
    interrupted: bool = False
    # counts over the jobs this run rendered (``computed_steps`` is always a list of step
    # indices, as in results.jsonl and the transformer's stats, so counts have names of their own)
    computed_step_count: int = 0
    step_count: int = 0
    load_s: float = 0.0  # artifacts + worker start-up
    render_s: float = 0.0
    wall_s: float = 0.0
    # the caching settings of the run's jobs: policy, coefficient set, thresholds, job count
    settings: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return self.already_done + self.rendered

    @property
    def images_per_s(self) -> float:
        return self.rendered / self.render_s if self.render_s > 0 else 0.0

    @property
    def mean_computed_steps(self) -> float:
        return self.computed_step_count / self.rendered if self.rendered else 0.0

    @property
    def skip_ratio(self) -> float:
        return 1.0 - self.computed_step_count / self.step_count if self.step_count else 0.0

    def add(self, outcomes: Iterable[Outcome]) -> None:
        for o in outcomes:
            if o.ok:
                self.rendered += 1
                self.computed_step_count += len(o.computed_steps)
                self.step_count += len(o.computed_steps) + len(o.skipped_steps)
            else:
                self.failed += 1

    def to_dict(self) -> dict:
        rendered = self.rendered > 0  # rates over nothing are not 0: null (JSON has no NaN)
        return {**asdict(self), "ok": self.ok, "images_per_s": round(self.images_per_s, 4) if rendered else None,
                "mean_computed_steps": round(self.mean_computed_steps, 4) if rendered else None,
                "skip_ratio": round(self.skip_ratio, 4) if rendered else None}

    def text(self) -> str:
        state = "interrupted" if self.interrupted else "done"
        lines = [f"[render] {state}: {self.ok}/{self.jobs} jobs ok ({self.already_done} from earlier runs, "
                 f"{self.rendered} rendered now), {self.failed} failed"
                 + (f", {self.left} left (re-run the same command to resume)" if self.left else "")]
        lines += [f"[render] {describe_setting(s)}" for s in self.settings]
        if self.rendered:
            lines.append(f"[render] {self.images_per_s:.2f} images/s, mean computed steps "
                         f"{self.mean_computed_steps:.2f} (skipped {self.skip_ratio:.0%} of steps), load "
                         f"{self.load_s:.1f}s, render {self.render_s:.1f}s, wall {self.wall_s:.1f}s")
        else:
            lines.append(f"[render] nothing rendered in this run (every job was done before, or failed); "
                         f"wall {self.wall_s:.1f}s")
        return "\n".join(lines)


def describe_setting(setting: dict) -> str:
    """``teacache, coefficients calibrated (source), thresholds 0, 0.1: 20 jobs``."""
    words = [setting["policy"]]
    if setting.get("params"):
        words.append(", ".join(f"{k} {v}" for k, v in setting["params"].items()))
    if setting.get("coefficients"):
        words.append(f"coefficients {setting['coefficients']}")
    thresholds = setting.get("thresholds") or []
    if thresholds:
        words.append(f"threshold{'s' if len(thresholds) > 1 else ''} {', '.join(f'{t:g}' for t in thresholds)}")
    return f"{', '.join(words)}: {setting['jobs']} job{'s' if setting['jobs'] != 1 else ''}"


class Progress:
    """A tqdm bar over the jobs to render: done count, ETA, ok/failed and the running skip ratio."""

    def __init__(self, total: int, summary: Summary, enabled: bool = True):
        from tqdm import tqdm

        self.summary = summary
        self.bar = tqdm(total=total, unit="job", desc="render", file=sys.stderr, disable=not enabled,
                        dynamic_ncols=True, mininterval=0.5)

    def update(self, outcomes: list[Outcome]) -> None:
        s = self.summary
        self.bar.set_postfix_str(f"ok {s.rendered}, failed {s.failed}, skipped {s.skip_ratio:.0%} of steps",
                                 refresh=False)
        self.bar.update(len(outcomes))

    def note(self, message: str) -> None:
        self.bar.write(message, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()
