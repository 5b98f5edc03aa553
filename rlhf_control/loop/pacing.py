"""Labelling at a person's pace: pairs chosen when a labeller is ready for them, and an agent that
pauses when the labeller falls behind.

A synthetic oracle answers a round's queries at once. A person labels a pair in 3-5 s while the agent
steps far faster, so for a :class:`~rlhf_control.oracles.base.PacedOracle` the loop keeps only
``label_buffer`` pairs that nobody holds ahead of the labellers (chosen from the agent's newest clips
each time a labeller takes one) and never more than the label schedule still owes; and it pauses
the agent while the labels are more than ``label_slack`` behind the schedule (``--wait-for-labels``:
none), going on as soon as answers arrive. The last iteration waits for the whole budget.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rlhf_control.types import Segment

POLL_S = 0.2


class LabelPacer:
    """Keeps a paced oracle's buffer full and pauses the agent for it.

    ``trainer``: the :class:`~rlhf_control.loop.trainer.RLHFTrainer` (its store, oracle, schedule,
    config, ``_ask``, ``_collect``, ``_asked``, ``candidates`` and pending pairs). ``status``: called
    with what the labelling page shows (``state``: pretraining, training, waiting; ``step``,
    ``wanted``: labels the schedule wants by now).
    """

    def __init__(self, trainer: Any, status: Callable[..., None] | None = None) -> None:
        self.t = trainer
        self.status = status or (lambda **_: None)
        self.waited_s = 0.0  # time the agent spent paused for the labeller
        self._topped_up = -float("inf")

    def slack(self, final: bool = False) -> int:
        """Labels the answers may lag the schedule before the agent pauses."""
        return 0 if final or self.t.cfg.wait_for_labels else self.t.cfg.label_slack

    def top_up(self, step: int, target: int | None = None, selector: Any = None,
               segments: list[Segment] | None = None, every_s: float = 0.0) -> int:
        """Ask for pairs until ``label_buffer`` pending ones are free for a labeller, at most what the
        schedule (or ``target``) still owes and ``max_pending`` allows; returns how many were asked.
        ``every_s``: do nothing if the last top-up was less than this many seconds ago."""
        now = time.monotonic()
        if now - self._topped_up < every_s:
            return 0
        self._topped_up = now
        t = self.t
        owed = (t.schedule.target(step) if target is None else target) - t._asked()
        room = min(t.cfg.label_buffer - t.oracle.unheld(), t.cfg.max_pending - t.store.count_pending())
        n = min(owed, room)
        if n <= 0:
            return 0
        segments = t.candidates() if segments is None else segments
        # While the agent waits no new clips arrive: keep the clips of pending pairs out of the next ones.
        used = {uid for pair in t._pairs.values() for uid in (pair.first.uid, pair.second.uid)}
        fresh = [s for s in segments if s.uid not in used]
        return t._ask(n, step, selector=selector, segments=fresh if len(fresh) >= 2 else segments)

    def wait(self, step: int, final: bool = False, target: int | None = None, selector: Any = None,
             segments: list[Segment] | None = None) -> int:
        """Keep the buffer full and collect answers until the labels are within the slack of the
        schedule's count at ``step`` (or ``target``); returns the new labels collected."""
        t = self.t
        want = t.schedule.target(step) if target is None else target
        new, since = 0, None
        while True:
            new += t._collect()
            self.top_up(step, target, selector, segments)
            if t.store.count_labels() >= want - self.slack(final):
                break
            if since is None:
                since = time.monotonic()
                self.status(state="waiting", step=step, wanted=want)
            time.sleep(POLL_S)
        if since is not None:
            self.waited_s += time.monotonic() - since
            self.status(state="pretraining" if target is not None else "training", step=step, wanted=want)
        return new
