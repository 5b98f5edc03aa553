"""LabelPacer: a few pairs at a time, as a person's labellers need them, never more than the schedule
owes; the agent waits while the labels are more than the slack behind the schedule (none at the end)."""

from __future__ import annotations

import threading
import time

import numpy as np

from rlhf_control.config import RunConfig
from rlhf_control.loop.pacing import LabelPacer
from rlhf_control.oracles.human import HumanOracle
from rlhf_control.queries.schedule import make_schedule
from rlhf_control.queries.selection import make_selector
from rlhf_control.store.store import PreferenceStore
from rlhf_control.types import Answer
from rlhf_control.web.demo import make_segments


class FakeTrainer:
    """What LabelPacer uses of RLHFTrainer, over a real store and human oracle (no renderer)."""

    def __init__(self, path, **cfg) -> None:
        self.cfg = RunConfig(oracle="human", **cfg)
        self.store = PreferenceStore.create(path)
        self.oracle = HumanOracle(self.store)
        self.schedule = make_schedule("constant", budget=20, pretrain=4, total_steps=1000)
        self.segments = make_segments(30, np.random.default_rng(0))
        self.selector = make_selector("random")
        self.rng = np.random.default_rng(1)
        self._pairs = {}
        self.asked_from: list[set[int]] = []

    def _asked(self) -> int:
        return self.store.count_labels() + self.store.count_pending()

    def candidates(self):
        return self.segments

    def _ask(self, n, step, selector=None, segments=None):
        segments = self.candidates() if segments is None else segments
        self.asked_from.append({s.uid for s in segments})
        for pair in (selector or self.selector).select(segments, n, None, self.rng):
            q = self.store.add_query(pair, step)
            self._pairs[q.query_id] = q.pair
        return n

    def _collect(self) -> int:
        return 0


def test_the_buffer_follows_the_labellers_and_the_schedule(tmp_path):
    t = FakeTrainer(tmp_path / "p.sqlite", label_buffer=3, label_slack=2)
    pacer = LabelPacer(t)
    # the schedule wants 4 + 16 * 50 / 1000 = 5 labels by step 50: 3 free pairs ahead, no more
    assert t.schedule.target(50) == 5
    assert pacer.top_up(50) == 3 and pacer.top_up(50) == 0 and t.store.count_pending() == 3
    # a labeller takes one (and preloads another): two more are chosen, but never past what is owed
    t.store.claim_next("ann", newest_first=True)
    t.store.claim_next("ann", exclude=[3])
    assert pacer.top_up(50) == 2 and t.store.count_pending() == 5
    t.store.claim_next("bob", exclude=[3])
    assert pacer.top_up(50) == 0  # 5 owed, 5 asked
    # between iterations (a short rollout's end) at most one top-up a second
    t.store.record_answer(Answer(3, 1, "ann"))
    assert pacer.top_up(200, every_s=1000.0) == 0  # (the last top-up was just now)
    assert pacer.top_up(200) == 1  # 7 wanted by step 200, 5 asked, one pair free of two
    # the next pairs avoid the clips of pending ones while fresh clips remain
    t.store.claim_next("cat")
    used = {uid for p in t._pairs.values() for uid in (p.first.uid, p.second.uid)}
    assert pacer.top_up(900) > 0 and not (t.asked_from[-1] & used)
    t.store.close()


def test_the_agent_waits_within_the_slack_and_for_the_budget_at_the_end(tmp_path):
    t = FakeTrainer(tmp_path / "p.sqlite", label_buffer=2, label_slack=2)
    states = []
    pacer = LabelPacer(t, status=lambda **kw: states.append(kw["state"]))
    assert pacer.wait(0, target=2) == 0 and states == []  # 2 wanted, slack 2: no wait

    def labeller(n: int) -> None:
        done = 0
        while done < n:
            rec = t.store.claim_next("ann", newest_first=True)
            if rec is None:
                time.sleep(0.02)
                continue
            t.store.record_answer(Answer(rec.query_id, 1, "ann"))
            done += 1

    # 12 wanted by step 500, slack 2: the agent waits until the labeller has given 10
    worker = threading.Thread(target=labeller, args=(10,))
    worker.start()
    pacer.wait(500)
    worker.join()
    assert t.store.count_labels() == 10 and states == ["waiting", "training"] and pacer.waited_s > 0
    # the end of the run: no slack, the whole budget of 20
    worker = threading.Thread(target=labeller, args=(10,))
    worker.start()
    pacer.wait(1000, final=True)
    assert t.store.count_labels() == 20
    worker.join()
    assert t.store.count_pending() <= 2  # never more than the buffer ahead of the labeller
    t.store.close()
