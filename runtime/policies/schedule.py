"""``Schedule``: compute exactly the listed steps, reuse the cached residual at every other one.

The baseline an adaptive policy must beat at equal compute (``Schedule.uniform``: the same
residual reuse, the computed steps spread evenly), and the form every offline-searched budget
takes.  Static: the schedule is fixed before the first step and nothing is read back.
"""
from __future__ import annotations

from ..errors import TeaCacheError
from .base import Policy, check_steps, register


@register
class Schedule(Policy):
    """Compute the call indices ``steps`` of each cache context (0 first); a call with no usable
    cached residual (the first, or after a batch or resolution change) computes anyway."""

    name = "schedule"
    static = True

    def __init__(self, steps):
        steps = check_steps(steps, "Schedule steps")
        if not steps or steps[0] != 0:
            raise TeaCacheError(
                f"Schedule steps {steps} must include step 0: the first step has no residual to reuse and "
                f"always computes (Schedule.uniform(num_steps, n) spreads n steps from the first to the last)")
        self.steps = tuple(steps)
        self._set_params(steps=list(steps))

    @classmethod
    def uniform(cls, num_steps: int, computed: int) -> "Schedule":
        """``computed`` evenly spaced steps of ``num_steps``, the first and the last among them."""
        for what, value in (("num_steps", num_steps), ("computed", computed)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TeaCacheError(f"Schedule.uniform: {what}={value!r} must be an integer")
        if not 1 <= computed <= num_steps:
            raise TeaCacheError(f"Schedule.uniform: computed={computed} must be in [1, num_steps={num_steps}]")
        if computed == 1:
            return cls([0])
        return cls(sorted({round(i * (num_steps - 1) / (computed - 1)) for i in range(computed)}))

    def describe(self) -> str:
        return f"schedule of {len(self.steps)} steps"

    def schedule(self, num_steps: int, context: str):
        return self.steps
