"""What a skipped call gives the head in place of the blocks graph's residual (``Policy.reuse``).

``"residual"`` reuses the last computed residual as it is: the context keeps one residual.
``"taylor"`` extrapolates to first order from the last two computed residuals of the decision
group (TaylorSeer's first-order form), in the step index ``k`` of the cache context::

    r(k) = r1 + (r1 - r0) * (k - k1) / (k1 - k0)        k0 < k1 < k: the last two computed steps

The step index, not the timestep: a static policy's generation reads nothing back from the
device, and the timestep is a device tensor the pipeline owns; the step positions are known on
the host.  On schedulers with evenly spaced timesteps (FlowMatchEuler with shift 1, DDIM) the
two are proportional and the extrapolation is the same.  While only one residual was computed
the last one is reused as it is.

Memory: one more residual per cache context (``previous``: the residual computed before the
last one), and one per input shape (the plan's forecast buffer, written at a skipped call and
read by the head).  The arithmetic is one ``torch.lerp`` per residual tensor on the runtime's
device: ``lerp(r1, r0, -a) = r1 + a * (r1 - r0)`` with ``a = (k - k1) / (k1 - k0)``; nothing is
copied to the host.  A computed step costs no copy in batch mode: the blocks graph writes over
the older residual and the two buffers swap roles.
"""
from __future__ import annotations

import numpy as np
import torch


class Forecast:
    """One cache context's second residual and, per decision group, its last two computed steps."""

    def __init__(self, mode: str, n_groups: int):
        self.mode = mode
        self.previous: dict[str, torch.Tensor] | None = None  # the residual computed before the last one
        self.last = np.full(n_groups, np.nan)  # step of the last computed call, per group
        self.before = np.full(n_groups, np.nan)  # step of the one before it

    def forget(self) -> None:
        """The residuals no longer fit the call (batch or resolution changed)."""
        self.previous = None
        self.last[:] = np.nan
        self.before[:] = np.nan

    def computed(self, flags: np.ndarray, step: int) -> None:
        """Groups with ``flags`` set computed call ``step``."""
        done = flags.astype(bool)
        self.before[done] = self.last[done]
        self.last[done] = step

    def weights(self, flags: np.ndarray, step: int) -> np.ndarray:
        """Per group the factor ``a`` of ``r1 + a * (r1 - r0)`` at call ``step``: 0 where the group
        computed now or has fewer than two computed residuals."""
        with np.errstate(invalid="ignore", divide="ignore"):
            a = (step - self.last) / (self.last - self.before)
        a[flags.astype(bool) | ~np.isfinite(a)] = 0.0
        return a

    def predict(self, residual: dict[str, torch.Tensor], out: dict[str, torch.Tensor], a: np.ndarray
                ) -> dict[str, torch.Tensor]:
        """``out`` = the forecast per group (row r belongs to group r % len(a)), on the device."""
        previous = self.previous
        if len(a) == 1 or (a == a[0]).all():
            for name, r1 in residual.items():
                torch.lerp(r1, previous[name], float(-a[0]), out=out[name])
            return out
        n = len(a)
        for name, r1 in residual.items():
            r0, o = previous[name], out[name]
            for g, w in enumerate(a.tolist()):
                if w:
                    torch.lerp(r1[g::n], r0[g::n], -w, out=o[g::n])
                else:
                    o[g::n].copy_(r1[g::n])
        return out
