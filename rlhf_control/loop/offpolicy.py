"""The off-policy side of :class:`~rlhf_control.loop.trainer.RLHFTrainer` (SAC): PEBBLE's phases and the
learned reward in the replay buffer.

An off-policy run has no pretraining on random-policy clips before ``learn``. Instead, inside SB3's
``learn``: ``learning_starts`` random steps; then, unless ``unsup_steps`` is 0, PEBBLE's unsupervised
pre-training (SAC trains on the state entropy of the replay buffer's states); then, at step
``Resolved.rl_start``, the first round of labels on random pairs of the clips gathered so far, the
reward trained here and now, the replay buffer relabelled, SAC's critics started afresh with 100
gradient steps on the relabelled buffer (PEBBLE's reset; ``critic_reset``), a checkpoint, and SAC
trains on the learned reward from then on.

SB3 ends an off-policy "rollout" every ``train_freq`` steps; an RLHF iteration comes every
``iteration_steps`` of them. The reward worker keeps training while SAC does: each time its job is
done (polled at every rollout end), its weights are taken and, with ``relabel``, every stored
transition's reward is recomputed (:func:`~rlhf_control.agent.replay.relabel_replay`); the same after
any other change of the weights (an iteration's take, training in this process).
"""

from __future__ import annotations

import sys
from typing import Any

from rlhf_control.agent.factory import RESET_UPDATES, reset_critic
from rlhf_control.agent.replay import (
    REPLAY_FILE,
    HybridReplay,
    SampleRewards,
    StateEntropy,
    relabel_replay,
    save_replay,
)
from rlhf_control.queries.selection import make_selector


class OffPolicyPhases:
    """What an RLHFTrainer ``t`` does differently for an off-policy agent (see the module docstring)."""

    def __init__(self, t: Any) -> None:
        self.t = t
        self.rl_start = t.r.rl_start
        self.hybrid = None  # (installed before SampleRewards, which then wraps its batches)
        if t.cfg.recent_replay:
            self.hybrid = HybridReplay(t.agent, t.cfg.recent_replay, t.r.recent_replay_steps)
        self.samples = SampleRewards(t.agent)
        self.entropy = StateEntropy(t.agent.replay_buffer, k=5)
        self._seen_report = t.updater.last_report
        self.relabels = 0
        self.relabel_seconds = 0.0
        self.relabelled_transitions = 0

    def start(self) -> None:
        """Before ``learn``: the state-entropy reward while the unsupervised phase is not over. (Weights
        trained since the build, e.g. on labels that came in while a run was stopped, relabel the
        loaded buffer at the first rollout end.)"""
        unsup = self.rl_start > self._random_steps()
        self.samples.fn = self.entropy if (unsup and not self.t.pretrain_done) else None

    def _random_steps(self) -> int:
        return int(self.t.agent.learning_starts)

    def rollout_end(self, step: int) -> None:
        """SB3's rollout end (every ``train_freq`` steps)."""
        t = self.t
        if not t.pretrain_done:
            if step >= self.rl_start:
                self.first_round(step)
            return
        t.updater.take(wait=False)  # a job the worker finished while SAC trained: its reward takes over now
        self.sync()
        if step - t.last_iteration_step >= t.r.iteration_steps or step >= t.r.steps:
            t.iteration(step)

    def first_round(self, step: int) -> None:
        """PEBBLE's first labels, random pairs of every clip so far (random and unsupervised steps: an
        untrained ensemble's disagreement says nothing, as in the on-policy loop's pretraining), then the
        reward trained here, the buffer relabelled, the critics reset, and the learned reward from now on."""
        t = self.t
        t.query_mark = t.rl_start_uid = 0
        n = t.schedule.target(step)
        pick = {"selector": make_selector("random"), "segments": t.pool.segments()}
        if t.pacer is not None:
            t._status(state="pretraining", step=step, wanted=n)
            t.pacer.top_up(step, target=n, **pick)
            t.pacer.wait(step, target=n, **pick)
        else:
            t._ask(n - t._asked(), step, **pick)
            t._collect()
            t._wait_answers()
        t.updater.train_now(max(1, t.r.pretrain_epochs))
        self.samples.fn = None
        self.sync()
        if t.cfg.critic_reset:  # PEBBLE: critics fitted to the state entropy start afresh on the new reward
            reset_critic(t.agent)
            t.agent.train(gradient_steps=RESET_UPDATES, batch_size=t.agent.batch_size)
        t.pretrain_done = True
        t.last_iteration_step = step
        # Later queries may still come from these clips: B-Pref samples from the agent's last 100
        # episodes, its random and unsupervised ones included (rl_start_uid stays 0).
        t.query_mark = t._iteration_mark = t.pool.next_uid
        t.checkpoint(step)  # a kill must never make the run redo the first round

    def sync(self) -> None:
        """After any change of the reward's weights: relabel the replay buffer (unless switched off)."""
        report = self.t.updater.last_report
        if report is self._seen_report:
            return
        self._seen_report = report
        if not self.t.cfg.relabel:
            return
        cost = relabel_replay(self.t.agent, self.t.ensemble, obs_fn=self.t.task.reward_obs_fn,
                              next_obs=self.t.cfg.reward_obs == "after")
        self.relabels += 1
        self.relabel_seconds += cost.seconds
        self.relabelled_transitions += cost.transitions
        if self.t.progress or self.relabels == 1:
            print(f"relabelled {cost.transitions:,} transitions in {cost.seconds:.2f} s "
                  f"({self.relabel_seconds:.1f} s over {self.relabels} relabellings)", file=sys.stderr, flush=True)

    def writers(self) -> dict[str, Any]:
        """Checkpoint files of an off-policy run: the replay buffer."""
        return {REPLAY_FILE: lambda p: save_replay(self.t.agent, p)}
