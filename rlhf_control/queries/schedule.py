"""Label schedules: how many labels should have been asked for by agent step T.

A schedule gives the cumulative number of labels due by step ``T``: ``pretrain`` labels before
RL starts, then the rest of the ``budget`` spread over ``[0, total_steps]`` so that the whole
budget is spent by the last step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rlhf_control.errors import UserError
from rlhf_control.registry import Registry


@dataclass(frozen=True)
class LabelSchedule:
    """Base: ``budget`` labels in all, ``pretrain`` of them on random-policy clips before step 0."""

    budget: int
    pretrain: int
    total_steps: int

    def __post_init__(self) -> None:
        if self.budget < 1:
            raise UserError(f"label budget {self.budget} must be a positive integer")
        if not 0 <= self.pretrain <= self.budget:
            raise UserError(f"pretraining labels {self.pretrain} must be between 0 and the budget {self.budget}")
        if self.total_steps < 1:
            raise UserError(f"total steps {self.total_steps} must be a positive integer")

    def fraction(self, step: int) -> float:
        """Fraction in [0, 1] of the post-pretraining labels due by ``step``."""
        raise NotImplementedError

    def target(self, step: int) -> int:
        """Cumulative labels due by agent step ``step`` (pretraining included)."""
        frac = min(max(self.fraction(max(step, 0)), 0.0), 1.0)
        return min(self.budget, self.pretrain + int(round((self.budget - self.pretrain) * frac)))


SCHEDULES: Registry[LabelSchedule] = Registry("label schedule")


@SCHEDULES.register("paper")
@dataclass(frozen=True)
class HyperbolicSchedule(LabelSchedule):
    """The paper's: label rate proportional to ``c / (T + c)`` (c = 2e6 MuJoCo, 5e6 Atari).

    The cumulative count is the integral, ``c * ln(1 + T / c)``, scaled to reach the budget at
    ``total_steps``.
    """

    horizon: float = 2e6

    def fraction(self, step: int) -> float:
        c = float(self.horizon)
        return math.log1p(step / c) / math.log1p(self.total_steps / c)


@SCHEDULES.register("constant")
@dataclass(frozen=True)
class ConstantSchedule(LabelSchedule):
    """A constant label rate over the run."""

    horizon: float = 0.0

    def fraction(self, step: int) -> float:
        return step / self.total_steps


@SCHEDULES.register("offline")
@dataclass(frozen=True)
class OfflineSchedule(LabelSchedule):
    """The paper's "no online queries" ablation: every label is asked before RL starts."""

    horizon: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "pretrain", self.budget)
        super().__post_init__()

    def fraction(self, step: int) -> float:
        return 1.0


def make_schedule(name: str, budget: int, pretrain: int, total_steps: int, horizon: float = 2e6) -> LabelSchedule:
    """Build a schedule by name (``paper``, ``constant``, ``offline``)."""
    cls = SCHEDULES.get(name)
    if horizon <= 0 and name == "paper":
        raise UserError(f"schedule horizon {horizon} must be positive")
    return cls(budget=budget, pretrain=pretrain, total_steps=total_steps, horizon=horizon)
