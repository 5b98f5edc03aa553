"""RLHFTrainer: the loop of DESIGN.md, and nothing else. One SB3 ``learn`` call drives the agent; at
the end of each rollout that completes an iteration the trainer takes the reward weights retrained
during that rollout, asks the schedule how many queries are due, selects them from the segment pool,
hands them to the oracle, moves the answers into the store and the label window, starts retraining
the reward, logs a metrics row and, every few iterations, checkpoints (parts: ``loop/build.py``)."""

from __future__ import annotations

import inspect
import time
from pathlib import Path
from typing import Any

import torch
from stable_baselines3.common.vec_env import VecNormalize

from rlhf_control.agent.evaluation import evaluate_agent
from rlhf_control.agent.factory import OnRolloutEnd, pretrain_actor, save_obs_normalization
from rlhf_control.agent.learned_reward import relabel_rollouts
from rlhf_control.config import RunConfig
from rlhf_control.loop.asking import QueryRounds
from rlhf_control.loop.build import build_run
from rlhf_control.loop.checkpoint import (
    AGENT_FILE,
    ENSEMBLE_FILE,
    FITTER_FILE,
    OBS_NORM_FILE,
    jsonable,
    save_checkpoint,
)
from rlhf_control.loop.metrics import (
    MetricsLogger,
    iteration_row,
    progress_postfix,
    reward_correlations,
    truncate_metrics,
)
from rlhf_control.loop.offpolicy import OffPolicyPhases
from rlhf_control.loop.pacing import LabelPacer
from rlhf_control.oracles import ClosableOracle, PacedOracle, ResumableOracle, StatefulOracle
from rlhf_control.queries.selection import make_selector
from rlhf_control.rundir import DONE_FILE, METRICS_FILE, is_done, mark_done
from rlhf_control.tasks.spec import OFF_POLICY, TaskSpec
from rlhf_control.types import SegmentPair


class RLHFTrainer(QueryRounds):
    """Trains an agent on a reward learned online from an oracle's preferences.

    ``run_dir`` must not hold a run unless ``resume`` is set; a resumed run continues from its
    last checkpoint with the labels in its store.
    """

    def __init__(self, cfg: RunConfig, run_dir: Path, resume: bool = False, progress: bool = False,
                 task: TaskSpec | None = None, label_token: str | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.parts = p = build_run(cfg, self.run_dir, resume=resume, task=task, label_token=label_token)
        self.r, self.cfg, self.task = p.r, p.r.cfg, p.r.task
        self.rng, self.schedule, self.selector, self.pool = p.rng, p.schedule, p.selector, p.pool
        self.recorder, self.learned, self.agent_env, self.agent = p.recorder, p.learned, p.agent_env, p.agent
        self.ensemble, self.dataset, self.updater = p.ensemble, p.dataset, p.updater
        self.store, self.oracle = p.store, p.oracle
        self.progress = progress
        self._pairs: dict[int, SegmentPair] = {}  # pairs of this process's pending queries
        # Online queries come from clips added since the last query round (uids from ``query_mark``),
        # and never from the random-policy clips before ``rl_start_uid``.
        self.query_mark = self.rl_start_uid = 0
        self._iteration_mark = 0  # first uid of the latest iteration's rollout(s)
        self.last_answer_id = 0
        self.iterations = 0
        self.last_iteration_step = 0
        self.pretrain_done = False
        self.t_start = time.time()
        self.step_at_start = 0
        self._pbar = None
        self._last_logged = -1
        self._train_on_resume = False
        self._last_checkpoint = time.monotonic()
        self._stopping = False
        self._undone = self.store.undone_answer_ids()  # (the window rebuilt on resume holds live answers only)
        self._status = p.label_server.app.set_run if p.label_server is not None else (lambda **_: None)
        self._status(state="starting", budget=self.r.labels, steps=self.r.steps)
        paced = isinstance(self.oracle, PacedOracle) and not self.cfg.run_ahead  # a person's pace (pacing.py)
        self.pacer = LabelPacer(self, self._status) if paced else None
        self.offpolicy = OffPolicyPhases(self) if self.r.algo in OFF_POLICY else None
        purge = self._restore(p.checkpoint) if resume else None
        self.metrics = MetricsLogger(self.run_dir, purge_step=purge)

    worker = property(lambda self: self.updater.worker, doc="The reward worker process, while one runs.")

    @property
    def trained_answer_id(self) -> int:
        """The last answer the ensemble's weights were trained on."""
        return self.updater.trained_answer_id

    # ----------------------------------------------------------------- phases
    def pretrain(self) -> None:
        """The paper's pretraining: labels on clips of a random policy (the agent's untrained one, the paper's
        "randomly initialized policy network", or uniform actions), then extra reward epochs."""
        n = self.schedule.target(0)  # the pretraining labels, and B-Pref's first round (due at step 0)
        if n > 0:
            want = min(self.pool.capacity, max(2 * n, 20))
            # The recorder alone: random-policy steps need no learned reward. The agent's first
            # learn() resets the envs, and with them the learned-reward wrapper.
            env = self.recorder
            obs = env.reset()
            env.step_origin = None  # pretraining clips are not the agent's: no agent step
            act = self._pretrain_actor()
            max_steps = want * self.task.clip_length * 4 + 10_000
            steps = 0
            while len(self.pool) < want and steps < max_steps:
                obs = env.step(act(obs))[0]
                steps += env.num_envs
            pick = {"selector": make_selector("random"), "segments": self.pool.segments()}
            if self.pacer is not None:
                self._status(state="pretraining", step=0, wanted=n)
                self.pacer.top_up(0, target=n, **pick)
                self.pacer.wait(0, target=n, **pick)
            else:
                self._ask(n - self._asked(), 0, **pick)
                self._collect()
                self._wait_answers()
            self.updater.train_now(max(1, self.r.pretrain_epochs))
        self.pretrain_done = True
        self.recorder.step_origin = self.recorder.n_steps  # the agent's step 0
        self.query_mark = self.rl_start_uid = self._iteration_mark = self.pool.next_uid

    def _pretrain_actor(self):
        """``obs -> actions`` of the pretraining policy (its own seeded randomness: the run's streams stay as they are)."""
        return pretrain_actor(self.agent, self.agent_env, self.recorder, self.cfg.pretrain_policy, self.cfg.seed)

    def _rollout_end(self, step: int) -> None:
        if self.offpolicy is not None:  # SAC: PEBBLE's phases, relabelling (loop/offpolicy.py)
            return self.offpolicy.rollout_end(step)
        if self._ends_iteration(step):
            self.iteration(step)
        elif self.pacer is not None:  # short rollouts (A2C): refill the labellers' buffer between iterations
            self.pacer.top_up(step, every_s=1.0)

    def _ends_iteration(self, step: int) -> bool:
        # The last rollout always ends an iteration, so that the schedule's whole budget is asked for.
        return step - self.last_iteration_step >= self.r.iteration_steps or step >= self.r.steps

    def _before_rewards(self, step: int) -> None:
        """Just before an on-policy rollout's learned rewards are computed: when the rollout ends an
        iteration, the reward job trained during it takes over now, so that the update that follows
        learns from it (as it does when the reward trains in this process), not from the one before."""
        if self._ends_iteration(step):
            self._take_reward(step)

    def _take_reward(self, step: int) -> None:
        """The job trained during the last rollout takes over; with --no-reward-wait only a finished
        one, the last iteration's always."""
        self.updater.take(wait=self.cfg.reward_wait or step >= self.r.steps)

    def iteration(self, step: int) -> None:
        """One RLHF iteration at agent step ``step`` (called after each rollout)."""
        self.iterations += 1
        self.last_iteration_step = step
        final = step >= self.r.steps
        self._take_reward(step)  # (on-policy agents: taken already, before the rollout was scored)
        if self.offpolicy is not None:
            self.offpolicy.sync()  # its replay buffer relabelled with the new reward
        # Clips from a much older policy are retired rather than shown (a quarter of the run by default);
        # never a pair a labeller holds.
        stale_after = self.cfg.stale_after_steps or max(self.r.steps // 4, 1)
        self.store.retire_older_than(step - stale_after, keep_held=True)
        pending = {q.query_id for q in self.store.pending_queries()}
        self._pairs = {qid: pair for qid, pair in self._pairs.items() if qid in pending}
        if self.pacer is not None:
            self._status(state="training", step=step, wanted=self.schedule.target(step),
                         trained_answer_id=self.trained_answer_id)
            self.pacer.top_up(step)
            new = self._collect()
            new += self.pacer.wait(step, final=final)
        else:
            new = self._ask_due(step)
        retrain = new or self.updater.behind()  # (--no-reward-wait: labels that came while a job ran)
        if retrain and final:
            self.updater.train_now(self.r.reward_epochs)  # the last: no rollout left to overlap with
        elif retrain and not self.updater.running:  # (a job still running: its labels wait for the next)
            self.updater.submit(self.r.reward_epochs)
        if not final:  # run() logs the last row after the agent's last update: its checkpointed policy
            self._log(step, evaluate=self.iterations % self.r.eval_every == 0)
        self._iteration_mark = self.pool.next_uid
        overdue = self.cfg.checkpoint_minutes and \
            time.monotonic() - self._last_checkpoint >= 60.0 * self.cfg.checkpoint_minutes
        if self.iterations % self.cfg.checkpoint_every == 0 or overdue:
            self.checkpoint(step)

    def _log(self, step: int, evaluate: bool = False) -> None:
        learned, true = self.learned.recent_returns()
        gym = self.learned.recent_gym_returns()
        rep = self.updater.last_report
        corr, rank_corr = (None, None)
        if self.task.has_true_reward:
            # 64 recent clips: enough for a correlation, cheap even for the Atari CNN.
            corr, rank_corr = reward_correlations(self.ensemble, self.pool.since(self.rl_start_uid)[-64:],
                                                  self.pool.since(self._iteration_mark)[-256:])
        ev = None
        if evaluate and self.r.eval_episodes and self.task.has_true_reward:
            ev = evaluate_agent(self.agent, self.task, self.r.eval_episodes, agent_env=self.agent_env)
        elapsed = max(time.time() - self.t_start, 1e-9)
        row = iteration_row(step, self.iterations, self.store.count_labels(), self.store.count_pending(),
                            learned, true if self.task.has_true_reward else [], gym, ev, rep, corr, rank_corr,
                            (step - self.step_at_start) / elapsed, elapsed)
        self.metrics.log(row)
        self._last_logged = step
        if self._pbar is not None:
            self._pbar.update(step - self._pbar.n)
            self._pbar.set_postfix(progress_postfix(row))

    # ----------------------------------------------------------------- checkpoints
    def checkpoint(self, step: int) -> None:
        state = {
            "iteration": self.iterations,
            "pretrain_done": self.pretrain_done,
            "trained_answer_id": self.trained_answer_id,
            "query_mark": self.query_mark,
            "rl_start_uid": self.rl_start_uid,
            "rng": self.rng.bit_generator.state,
            "pool": self.pool.state_dict(),
            "recorder": self.recorder.state_dict(),
            "oracle": self.oracle.state_dict() if isinstance(self.oracle, StatefulOracle) else None,
            "return_scale": self.learned.scale_state(),
            "algo": self.r.algo,
        }
        writers = {
            AGENT_FILE: lambda p: self.agent.save(str(p)),
            ENSEMBLE_FILE: lambda p: self.ensemble.save(p),
            FITTER_FILE: lambda p: torch.save(self.updater.fitter.state_dict(), p),
        }
        writers.update(self.offpolicy.writers() if self.offpolicy is not None else {})
        if isinstance(self.agent_env, VecNormalize):
            writers[OBS_NORM_FILE] = lambda p: save_obs_normalization(self.agent_env, p)
        save_checkpoint(self.run_dir, step, writers, jsonable(state))
        self._last_checkpoint = time.monotonic()

    def _restore(self, state: dict[str, Any] | None) -> int:
        """Continue a run: the agent, ensemble and fitter came from the checkpoint (build_run); here
        the loop's own state, and the labels from the store. Without a checkpoint (killed before the
        first) the run starts over, keeping the labels already in the store. The metrics are cut back
        to the checkpoint's step (all of them without one); returns the first step to log again."""
        if state is not None:
            self.iterations = int(state["iteration"])
            self.last_iteration_step = int(state["step"])
            self.pretrain_done = bool(state["pretrain_done"])
            self.rng.bit_generator.state = state["rng"]
            self.pool.load_state_dict(state["pool"])
            # (older checkpoints: every clip after the resume is the agent's own)
            self.query_mark = int(state.get("query_mark", 0))
            self.rl_start_uid = int(state.get("rl_start_uid", 0))
            self.recorder.load_state_dict(state["recorder"])
            if state.get("oracle") and isinstance(self.oracle, StatefulOracle):
                self.oracle.load_state_dict(state["oracle"])
            self.learned.load_scale_state(state.get("return_scale"))
        resume_step = int(state["step"]) if state is not None else -1
        if state is not None and is_done(self.run_dir):  # a finished run, resumed to learn later answers:
            (self.run_dir / DONE_FILE).unlink()  # its last row is written again at the end
            resume_step -= 1
        truncate_metrics(self.run_dir / METRICS_FILE, resume_step)
        # The store is the source of truth for labels, including those answered after the checkpoint.
        for answer_id, label in self.store.labels_with_ids(limit=self.r.label_window):
            self.dataset.add(label, seq=answer_id)
        trained_up_to = int(state.get("trained_answer_id", state.get("last_answer_id", 0))) if state else 0
        self.updater.trained_answer_id = trained_up_to
        self.last_answer_id = self.store.last_answer_id()
        # Labels that arrived after the checkpoint (or while the run was stopped) are trained on first;
        # a skip or an undone answer after it is no label to train on.
        self._train_on_resume = self.pretrain_done and len(self.dataset) > 0 and int(self.dataset.seqs[-1]) > trained_up_to
        # Segments stored after the checkpoint keep their ids: new pool ids start above them.
        if self.store.max_segment_id() >= self.pool.next_uid:
            self.pool.load_state_dict({"next_uid": self.store.max_segment_id() + 1})
        # Queries that were asked but not answered before the stop go back to the oracle.
        pending = [self.store.load_query(q.query_id) for q in self.store.pending_queries()]
        if pending:
            (self.oracle.resume if isinstance(self.oracle, ResumableOracle) else self.oracle.submit)(pending)
        return resume_step + 1

    # ----------------------------------------------------------------- run
    def run(self) -> Path:
        """Pretrain (unless resumed past it), train for the configured steps, checkpoint at the end."""
        try:
            done = int(self.agent.num_timesteps)
            self.step_at_start = done
            self.t_start = time.time()
            if self.progress:
                from tqdm import tqdm

                self._pbar = tqdm(total=self.r.steps, initial=done, unit="step", dynamic_ncols=True)
            remaining = self.r.steps - done
            if remaining > 0:
                self.updater.start()  # now, so that the worker boots while pretraining runs
            if not self.pretrain_done and self.offpolicy is None:  # (off-policy: inside learn)
                self.pretrain()
                self.checkpoint(int(self.agent.num_timesteps))  # a kill must never make the run redo it
            elif self._train_on_resume:
                self.updater.train_now(self.r.reward_epochs)
            if remaining > 0:
                if self.offpolicy is None:
                    relabel_rollouts(self.agent, self.learned, before=self._before_rewards)
                else:
                    self.offpolicy.start()
                self.agent.learn(total_timesteps=remaining, callback=OnRolloutEnd(self._rollout_end),
                                 reset_num_timesteps=False)
            final = int(self.agent.num_timesteps)
            self.updater.take()  # (the last iteration trains in this process: normally none)
            new = self._collect()
            if new:  # answers that came in after the last iteration (or while the run was stopped)
                self.updater.train_now(self.r.reward_epochs)
            if new or self._last_logged != final:
                self._log(final, evaluate=True)  # the final policy, the one checkpointed next
            if self.offpolicy is not None:
                self.offpolicy.sync()  # the saved buffer holds the saved reward's values
            self.checkpoint(final)
            mark_done(self.run_dir, final)
            self._status(state="finished", step=final, trained_answer_id=self.trained_answer_id)
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM as the CLI turns it: keep what was done
            self._stopping = True
            self._status(state="stopped", trained_answer_id=self.trained_answer_id)
            if self.pretrain_done:
                self.checkpoint(int(self.agent.num_timesteps))
            raise
        finally:
            self.close()
        return self.run_dir

    def close(self) -> None:
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        self.updater.close()
        self.metrics.close()
        self.agent_env.close()
        self.pool.close()
        if self.parts.label_server is not None:
            # An open page polls every 2 s: let it see that the run is over before the server goes.
            self.parts.label_server.stop(grace_s=0.0 if self._stopping else 2.5)
        if isinstance(self.oracle, ClosableOracle):
            now = self._stopping and "finish" in inspect.signature(self.oracle.close).parameters
            self.oracle.close(timeout=5, **({"finish": False} if now else {}))
        self.store.close()
        self.parts.lock.close()
