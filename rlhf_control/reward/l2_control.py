"""The adaptive L2 controller: one coefficient per ensemble member, kept so that the member's
validation loss stays 1.1-1.5 times its training loss (the paper's band).

A check reads each member's ratio ``val_loss / train_loss`` on its own held-out labels. The network
answers a change of coefficient only over many epochs, so a controller that keeps stepping while
the ratio has not yet moved overshoots; with a step of 1.5 per check members went from one clamp to
the other. This one moves the coefficient by a small multiplicative ``step`` per check, only while
the (optionally smoothed) ratio is outside the band. ``smoothing`` is the weight of the newest
reading in an exponential moving average of the log ratio (1 = the reading itself). With
``smoothing=1`` and ``step=1.5`` it is the controller this project had before.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from rlhf_control.errors import UserError


class AdaptiveL2:
    """Per-member L2 coefficients (``coefficients``) and smoothed log val/train ratios (``log_ratio``,
    ``None`` until a member's first reading). ``active=False`` keeps the coefficients fixed."""

    def __init__(self, n_members: int, init: float, band: tuple[float, float], step: float,
                 smoothing: float, lowest: float, highest: float, active: bool = True) -> None:
        self.band, self.step, self.smoothing = band, step, smoothing
        self.lowest, self.highest, self.active = lowest, highest, active
        self.coefficients = [float(init)] * n_members
        self.log_ratio: list[float | None] = [None] * n_members

    def ratios(self) -> tuple[float, ...]:
        """The smoothed val/train ratio per member (nan before its first reading)."""
        return tuple(math.nan if s is None else math.exp(s) for s in self.log_ratio)

    def update(self, train_loss: Sequence[float], val_loss: Sequence[float]) -> None:
        """One check: fold each member's reading into its average and step its coefficient."""
        if not self.active:
            return
        low, high = math.log(self.band[0]), math.log(self.band[1])
        for m, (tr, va) in enumerate(zip(train_loss, val_loss, strict=True)):
            if not (math.isfinite(tr) and math.isfinite(va)) or tr <= 0 or va <= 0:
                continue  # no validation labels (or a perfect fit): nothing to compare
            reading = math.log(va / tr)
            prev = self.log_ratio[m]
            s = reading if prev is None else (1 - self.smoothing) * prev + self.smoothing * reading
            self.log_ratio[m] = s
            c = self.coefficients[m]
            if s > high:
                c = min(self.highest, max(c * self.step, self.lowest))  # from 0, start at the floor
            elif s < low:
                c = max(self.lowest, c / self.step)
            self.coefficients[m] = c

    def state_dict(self) -> dict[str, Any]:
        return {"l2": list(self.coefficients), "l2_log_ratio": list(self.log_ratio)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        k = len(self.coefficients)
        l2, smoothed = state.get("l2"), state.get("l2_log_ratio")
        if l2 is None or smoothed is None or len(l2) != k or len(smoothed) != k:
            raise UserError(f"L2 controller state has {len(l2 or ())} coefficients and "
                            f"{len(smoothed or ())} smoothed ratios; this ensemble has {k} members")
        self.coefficients = [float(v) for v in l2]
        self.log_ratio = [None if s is None else float(s) for s in smoothed]
