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


def pretrain_count(schedule: str, labels: int, given: int | None, task_pretrain: int, task_budget: int,
                   share: bool) -> int:
    """How many of ``labels`` are asked before RL: all of them for the ``offline`` schedule (the paper's
    "no online queries" ablation), else ``given`` (a flag), else the task's count, scaled with the budget
    when ``share`` (MuJoCo keeps its 25%) or fixed (Atari: the paper's 500)."""
    if schedule == "offline":
        if given is not None and given != labels:
            raise UserError(f"pretrain-labels {given} contradicts the offline schedule, which asks all {labels} "
                            "labels before RL: leave pretrain-labels out")
        return labels
    n = given if given is not None else (int(round(task_pretrain * labels / task_budget)) if share
                                         else min(task_pretrain, labels))
    if n > labels:
        raise UserError(f"pretrain-labels {n} must not exceed labels {labels}")
    return n


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


@SCHEDULES.register("bpref")
@dataclass(frozen=True)
class BPrefSchedule(LabelSchedule):
    """B-Pref's (and PEBBLE's): ``batch`` labels (its ``reward_batch``) at step 0 and every ``interval``
    steps after (its ``num_interact``) until the budget (its ``max_feedback``) is spent; ``pretrain``
    labels come on top of the first round. Runs whose rounds do not reach the budget by the last step
    ask what is left at the last iteration (as every schedule's last iteration does)."""

    horizon: float = 0.0
    batch: int = 1
    interval: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch < 1:
            raise UserError(f"label batch {self.batch!r} must be a positive integer")
        if isinstance(self.interval, bool) or not isinstance(self.interval, int) or self.interval < 1:
            raise UserError(f"label interval {self.interval!r} must be a positive number of steps")

    def fraction(self, step: int) -> float:
        return 1.0 if step >= self.total_steps else 0.0

    def target(self, step: int) -> int:
        if step >= self.total_steps:
            return self.budget
        return min(self.budget, self.pretrain + self.batch * (1 + max(step, 0) // self.interval))


@dataclass(frozen=True)
class ShiftedSchedule:
    """``schedule`` with its step 0 at agent step ``start`` (nothing due before): for off-policy agents,
    whose first labels come after the random and unsupervised pre-training steps."""

    schedule: LabelSchedule
    start: int

    @property
    def budget(self) -> int:
        return self.schedule.budget

    @property
    def pretrain(self) -> int:
        return self.schedule.pretrain

    def target(self, step: int) -> int:
        return 0 if step < self.start else self.schedule.target(step - self.start)


def make_schedule(name: str, budget: int, pretrain: int, total_steps: int, horizon: float = 2e6,
                  batch: int | None = None, interval: int | None = None) -> LabelSchedule:
    """Build a schedule by name (``paper``, ``constant``, ``offline``, ``bpref``); ``batch`` (default a
    tenth of the budget, B-Pref's ratio) and ``interval`` (agent steps) are the ``bpref`` schedule's."""
    cls = SCHEDULES.get(name)
    if horizon <= 0 and name == "paper":
        raise UserError(f"schedule horizon {horizon} must be positive")
    extra = {}
    if cls is BPrefSchedule:
        extra = {"batch": batch if batch is not None else max(1, -(-budget // 10)),
                 "interval": interval if interval is not None else max(1, total_steps // 10)}
    return cls(budget=budget, pretrain=pretrain, total_steps=total_steps, horizon=horizon, **extra)
