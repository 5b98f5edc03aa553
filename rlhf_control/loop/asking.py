"""Query rounds of the loop: which clips queries come from, asking the oracle, and moving its answers
into the store and the label window. A part of :class:`~rlhf_control.loop.trainer.RLHFTrainer` (its
base class), which holds the state these methods use (store, pool, window, oracle, marks)."""

from __future__ import annotations

import time
from typing import Any

from rlhf_control.oracles import BehaviourScaledOracle
from rlhf_control.types import Label, Segment


class QueryRounds:
    """The trainer's label-asking methods (see the module docstring)."""

    store: Any
    pool: Any
    dataset: Any
    oracle: Any

    def _asked(self) -> int:
        return self.store.count_labels() + self.store.count_pending()

    def candidates(self) -> list[Segment]:
        """The clips online queries are chosen from: those of the rollouts since the last query round,
        widened to the ``query_min_clips`` newest clips of the agent's own (post-pretraining) behaviour."""
        fresh = self.pool.since(self.query_mark)
        if len(fresh) >= self.r.query_min_clips:
            return fresh
        return self.pool.since(self.rl_start_uid)[-self.r.query_min_clips:]

    def _ask(self, n: int, step: int, selector=None, segments: list[Segment] | None = None) -> int:
        """Select up to ``n`` pairs from ``segments`` (default: :meth:`candidates`), store them as queries
        and hand them to the oracle."""
        segments = self.candidates() if segments is None else segments
        if n <= 0 or len(segments) < 2:
            return 0
        pairs = (selector or self.selector).select(segments, n, self.ensemble, self.rng)
        if isinstance(self.oracle, BehaviourScaledOracle):  # B-Pref's thresholds: the agent's recent clips
            self.oracle.observe_behaviour([s.true_return for s in segments if s.true_rewards is not None])
        self.query_mark = self.pool.next_uid
        queries = []
        frames = self.dataset.frame_file
        for pair in pairs:
            q = self.store.add_query(pair, step)
            # Image frames go to the window's frame file now: the pool's ring reuses its slots.
            self._pairs[q.query_id] = q.pair if frames is None else frames.put_pair(q.pair)
            queries.append(q)
        self.oracle.submit(queries)
        return len(queries)

    def _collect(self) -> int:
        """Arrived answers into the store, new labels from it into the window, undone ones out of it."""
        for answer in self.oracle.collect():
            self.store.record_answer(answer)
        new = 0
        for answer_id, answer in self.store.answers_since(self.last_answer_id):
            self.last_answer_id = max(self.last_answer_id, answer_id)
            pair = self._pairs.pop(answer.query_id, None)
            if answer.label is None:
                continue
            pair = pair or self.store.load_query(answer.query_id).pair
            self.dataset.add(Label(pair, answer.label), seq=answer_id)
            new += 1
        undone = self.store.undone_answer_ids()
        self.dataset.remove(undone - self._undone)
        self._undone = undone
        return new

    def _wait_answers(self) -> int:
        """``wait_for_labels``, an oracle not paced: wait for every pending answer; the new labels."""
        new = 0
        while self.cfg.wait_for_labels and self.store.count_pending() > 0:
            time.sleep(0.5)
            new += self._collect()
        return new

    def _ask_due(self, step: int) -> int:
        """An oracle not paced: ask what the schedule owes at ``step``, ``max_pending`` pairs at a time,
        for as long as the answers come (a synthetic oracle answers each batch at once); the new labels.
        A round whose answers are all skips, or whose queries stay pending, ends the asking."""
        new = 0
        while True:
            due = self.schedule.target(step) - self._asked()
            room = self.cfg.max_pending - self.store.count_pending()
            asked = self._ask(min(due, room), step)
            got = self._collect() + self._wait_answers()
            new += got
            if asked == 0 or got == 0 or self.store.count_pending() > 0:
                return new
