"""RLHFTrainer: the loop of DESIGN.md, and nothing else.

One SB3 ``learn`` call drives the agent; at the end of each rollout (one iteration) the trainer
asks the schedule how many queries are due, selects them from the segment pool, hands them to the
oracle, moves whatever answers have arrived into the store and the label window, retrains the
reward ensemble, logs a metrics row and, every few iterations, checkpoints.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from rlhf_control import __version__
from rlhf_control.agent.factory import load_agent, load_obs_normalization, make_agent, save_obs_normalization
from rlhf_control.agent.learned_reward import LearnedReward, relabel_rollouts
from rlhf_control.config import RunConfig, resolve, resolve_device, write_config_file
from rlhf_control.loop.checkpoint import (
    latest_checkpoint,
    load_checkpoint_state,
    save_checkpoint,
)
from rlhf_control.loop.metrics import MetricsLogger, truncate_metrics
from rlhf_control.oracles import make_oracle
from rlhf_control.queries.schedule import make_schedule
from rlhf_control.queries.selection import make_selector
from rlhf_control.recording.recorder import SegmentPool, TrajectoryRecorder
from rlhf_control.reward.dataset import PreferenceDataset
from rlhf_control.reward.ensemble import EnsembleConfig, RewardEnsemble
from rlhf_control.reward.training import RewardTrainer, RewardTrainerConfig
from rlhf_control.reward.worker import RewardWorker, RewardWorkerError
from rlhf_control.rundir import CONFIG_FILE, STORE_FILE
from rlhf_control.store.store import PreferenceStore
from rlhf_control.tasks.catalogue import TaskSpec
from rlhf_control.types import Label, Segment, SegmentPair, segment_steps


class _IterationCallback(BaseCallback):
    def __init__(self, trainer: RLHFTrainer) -> None:
        super().__init__()
        self.trainer = trainer

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        step = self.model.num_timesteps
        # The last rollout always ends an iteration, so that the schedule's whole budget is asked for.
        if (step - self.trainer.last_iteration_step >= self.trainer.r.iteration_steps
                or step >= self.trainer.r.steps):
            self.trainer.iteration(step)


class RLHFTrainer:
    """Trains an agent on a reward learned online from an oracle's preferences.

    ``run_dir`` must not hold a run unless ``resume`` is set; a resumed run continues from its
    last checkpoint with the labels in its store.
    """

    def __init__(self, cfg: RunConfig, run_dir: Path, resume: bool = False, progress: bool = False,
                 task: TaskSpec | None = None, label_token: str | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.r = resolve(cfg, task)
        self.cfg = self.r.cfg
        self.task = self.r.task
        self.device = resolve_device(cfg.device)
        # The paper's networks are tiny: one thread per process beats several on a CPU.
        torch.set_num_threads(cfg.torch_threads)
        self.progress = progress
        self.resume = resume
        self._validate_names()
        self.rng = np.random.default_rng(cfg.seed)
        self.schedule = make_schedule(self.r.schedule, self.r.labels, self.r.pretrain_labels, self.r.steps,
                                      self.task.schedule_horizon)
        self.selector = make_selector(cfg.selector)
        self.label_token, self.label_server = label_token, None
        # A synthetic oracle is built (and its spec checked) before anything is written.
        self.oracle = None if cfg.oracle == "human" else make_oracle(cfg.oracle, seed=cfg.seed)

        self.pool = SegmentPool(capacity=max(4 * self.r.labels, 2000), rng=self.rng)
        self.venv = self.task.make_vec_env(self.r.n_envs, seed=cfg.seed)
        render_fn = None
        if self.cfg.oracle == "human":
            from rlhf_control.video.render import render_state_fn

            render_fn = render_state_fn(self.task)  # only human runs keep what is needed to draw clips
        self.recorder = TrajectoryRecorder(self.venv, self.task.clip_length, self.pool,
                                           obs_fn=self.task.reward_obs_fn, frame_stack=self.task.frame_stack,
                                           render_state_fn=render_fn,
                                           keep_true_rewards=self.task.has_true_reward)
        self.ensemble = self._make_ensemble()
        # Rewards are computed once per rollout, in one batch (relabel_rollouts), not once per step.
        self.learned = LearnedReward(self.recorder, self.ensemble.reward, obs_fn=self.task.reward_obs_fn,
                                     deferred=True)
        # The agent may see normalised observations (RL Zoo's `normalize`); the reward model never does.
        self.agent_env: VecEnv = (VecNormalize(self.learned, norm_obs=True, norm_reward=False)
                                  if self.task.normalize else self.learned)
        self.reward_trainer = RewardTrainer(
            self.ensemble,
            RewardTrainerConfig(lr=cfg.reward_lr, noise=cfg.reward_noise, adaptive_l2=cfg.reward_l2,
                                **({} if cfg.reward_l2 else {"l2_init": 0.0}), seed=cfg.seed),
            rng=np.random.default_rng(cfg.seed + 1),
        )
        self.dataset = PreferenceDataset(max_size=self.r.label_window)
        self._pairs: dict[int, SegmentPair] = {}
        self.last_answer_id = 0
        self.trained_answer_id = 0  # the last answer the ensemble's weights were trained on
        self.worker: RewardWorker | None = None
        self._job: tuple[int, int] | None = None  # (epochs, last answer id) of the job in the worker
        self.iterations = 0
        self.pretrain_done = False
        self.last_report = None
        self.t_start = time.time()
        self.step_at_start = 0
        self._pbar = None
        self._last_logged = -1
        self._train_on_resume = False
        self.last_iteration_step = 0
        self.agent = None if resume else self._new_agent()

        # A damaged checkpoint is reported before the run directory is touched.
        self._ckpt = latest_checkpoint(self.run_dir) if resume else None
        self._ckpt_state = load_checkpoint_state(self._ckpt) if self._ckpt is not None else None

        # Everything is valid: only now touch the run directory.
        if resume:
            self.store = PreferenceStore.open(self.run_dir / STORE_FILE)
        else:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.store = PreferenceStore.create(self.run_dir / STORE_FILE)
            write_config_file(self.run_dir / CONFIG_FILE, self.cfg, self.task.to_dict(),
                              {"version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
        if self.oracle is None:
            self.oracle = self._make_human_oracle()
        if resume:
            self._restore()
        self.metrics = MetricsLogger(self.run_dir)

    # ----------------------------------------------------------------- setup
    def _validate_names(self) -> None:
        from rlhf_control.queries.schedule import SCHEDULES
        from rlhf_control.queries.selection import SELECTORS

        SELECTORS.get(self.cfg.selector)
        SCHEDULES.get(self.r.schedule)
        if not self.task.has_true_reward and self.cfg.oracle != "human":
            raise ValueError(f"task {self.task.name!r} has no true reward; only the human oracle can label it "
                             f"(got oracle {self.cfg.oracle!r})")

    def _new_agent(self):
        return make_agent(self.r.algo, self.agent_env, self.r.agent_params, seed=self.cfg.seed,
                          device=self.device, policy=self.task.policy)

    def _make_human_oracle(self):
        """The person in the browser: queries are rendered to clips and served while training goes on."""
        from rlhf_control.oracles.human import HumanOracle
        from rlhf_control.video.render import SegmentRenderer
        from rlhf_control.web.server import start_server

        oracle = HumanOracle(self.store, renderer=SegmentRenderer(self.task), clips_dir=self.run_dir / "clips")
        self.label_server = start_server(self.run_dir, host=self.cfg.label_host, port=self.cfg.label_port,
                                         token=self.label_token, store=self.store)
        print(f"label the clips at {self.label_server.url}", flush=True)
        return oracle

    def _make_ensemble(self) -> RewardEnsemble:
        space = self.venv.action_space
        n_actions = int(space.n) if hasattr(space, "n") else None
        act_shape = () if n_actions is not None else tuple(space.shape)
        kw = dict(self.task.reward_net_kwargs)
        econf = EnsembleConfig(n_members=self.cfg.reward_members, net=self.task.reward_net,
                               target_std=self.task.reward_std, **kw)
        return RewardEnsemble(econf, tuple(self.venv.observation_space.shape), act_shape, n_actions=n_actions,
                              device=self.device, seed=self.cfg.seed)

    # ----------------------------------------------------------------- labels
    def _asked(self) -> int:
        return self.store.count_labels() + self.store.count_pending()

    def _ask(self, n: int, step: int, selector=None) -> int:
        """Select up to ``n`` pairs from the pool, store them as queries and hand them to the oracle."""
        if n <= 0 or len(self.pool) < 2:
            return 0
        selector = selector or self.selector
        pairs = selector.select(self.pool.segments(), n, self.ensemble, self.rng)
        queries = []
        for pair in pairs:
            q = self.store.add_query(pair, step)
            self._pairs[q.query_id] = q.pair
            queries.append(q)
        self.oracle.submit(queries)
        return len(queries)

    def _collect(self) -> int:
        """Move arrived answers into the store, then new labels from the store into the window."""
        for answer in self.oracle.collect():
            self.store.record_answer(answer)
        new = 0
        for answer_id, answer in self.store.answers_since(self.last_answer_id):
            self.last_answer_id = max(self.last_answer_id, answer_id)
            if answer.label is None:
                continue
            pair = self._pairs.pop(answer.query_id, None) or self.store.load_query(answer.query_id).pair
            self.dataset.add(Label(pair, answer.label), seq=answer_id)
            new += 1
        return new

    def _train_reward(self, epochs: int) -> None:
        """Retrain the ensemble on the window here and now (pretraining, resume, end of run, and
        every iteration when ``reward_async`` is off)."""
        if len(self.dataset) == 0:
            return
        self._set_input_stats()
        self.last_report = self.reward_trainer.train(self.dataset, epochs=epochs)
        recent = self._norm_segments()
        if recent:
            self.ensemble.update_normalization(recent)
        self.trained_answer_id = int(self.dataset.seqs[-1])

    def _set_input_stats(self) -> None:
        if self.ensemble.uses_input_norm and not self.ensemble.input_stats_set:
            # Fixed once, from the first labelled clips (random-policy clips when there is pretraining).
            segs = [s for lb in self.dataset.labels for s in (lb.pair.first, lb.pair.second)]
            self.ensemble.set_input_stats(segment_steps(segs)[0])

    def _norm_segments(self) -> list[Segment]:
        return self.pool.recent(min(len(self.pool), 512))

    def _start_reward_job(self, epochs: int) -> None:
        """Retrain in the worker process while the agent's next rollout runs (synchronously without one)."""
        if self.worker is None or len(self.dataset) == 0:
            self._train_reward(epochs)
            return
        self._set_input_stats()
        try:
            self.worker.submit(self.ensemble, self.reward_trainer, self.dataset, epochs, self._norm_segments())
        except RewardWorkerError as e:
            self._drop_worker(e)
            self._train_reward(epochs)
            return
        self._job = (epochs, int(self.dataset.seqs[-1]))

    def _finish_reward_job(self) -> bool:
        """Take the running job's weights (waiting for it); False when none was running."""
        if self._job is None:
            return False
        epochs, answer_id = self._job
        self._job = None
        try:
            self.last_report = self.worker.result(self.ensemble, self.reward_trainer)
        except RewardWorkerError as e:
            # The ensemble and trainer are as they were at submission: train the job here instead.
            self._drop_worker(e)
            self._train_reward(epochs)
            return True
        self.trained_answer_id = answer_id
        return True

    def _start_worker(self) -> None:
        try:
            self.worker = RewardWorker(self.reward_trainer.config, self.r.label_window,
                                       threads=self.cfg.torch_threads, device=self.device)
        except (OSError, RewardWorkerError) as e:
            print(f"warning: no reward worker ({e}); training the reward in the main process",
                  file=sys.stderr, flush=True)
            self.worker = None

    def _drop_worker(self, err: Exception) -> None:
        print(f"warning: {err}; training the reward in the main process from now on", file=sys.stderr, flush=True)
        self.worker.close(timeout=1)
        self.worker = None

    # ----------------------------------------------------------------- phases
    def pretrain(self) -> None:
        """The paper's pretraining: labels on clips of a random policy, then extra reward epochs."""
        n = self.r.pretrain_labels
        if n > 0:
            want = min(self.pool.capacity, max(2 * n, 20))
            rng = np.random.default_rng(self.cfg.seed + 7)
            # The recorder alone: random-policy steps need no learned reward. The agent's first
            # learn() resets the envs, and with them the learned-reward wrapper.
            env = self.recorder
            env.reset()
            space = env.action_space
            space.seed(int(rng.integers(2**31)))
            max_steps = want * self.task.clip_length * 4 + 10_000
            steps = 0
            while len(self.pool) < want and steps < max_steps:
                acts = np.stack([space.sample() for _ in range(env.num_envs)])
                env.step(acts)
                steps += env.num_envs
            from rlhf_control.queries.selection import make_selector as _mk

            self._ask(n - self._asked(), 0, selector=_mk("random"))
            self._wait_answers()
            self._collect()
            self._train_reward(max(1, self.r.pretrain_epochs))
        self.pretrain_done = True

    def _wait_answers(self) -> None:
        if self.cfg.oracle != "human" or not self.cfg.wait_for_labels:
            return
        while self.store.count_pending() > 0:
            time.sleep(0.5)
            self._collect()

    def iteration(self, step: int) -> None:
        """One RLHF iteration at agent step ``step`` (called after each rollout)."""
        self.iterations += 1
        self.last_iteration_step = step
        # The reward trained during the last rollout takes over (what the agent trains on next).
        self._finish_reward_job()
        # Clips from a much older policy are retired rather than shown (a quarter of the run by default).
        stale_after = self.cfg.stale_after_steps or max(self.r.steps // 4, 1)
        self.store.retire_older_than(step - stale_after)
        due = self.schedule.target(step) - self._asked()
        room = self.cfg.max_pending - self.store.count_pending()
        self._ask(min(due, room), step)
        if self.cfg.wait_for_labels:
            self._wait_answers()
        new = self._collect()
        if new and step >= self.r.steps:
            self._train_reward(self.r.reward_epochs)  # the last: no rollout left to overlap with
        elif new:
            self._start_reward_job(self.r.reward_epochs)
        self._log(step)
        if self.iterations % self.cfg.checkpoint_every == 0:
            self.checkpoint(step)

    def _log(self, step: int) -> None:
        learned, true = self.learned.recent_returns()
        rep = self.last_report
        elapsed = max(time.time() - self.t_start, 1e-9)
        row: dict[str, Any] = {
            "step": step,
            "iteration": self.iterations,
            "labels": self.store.count_labels(),
            "pending": self.store.count_pending(),
            "learned_return": float(np.mean(learned)) if learned else None,
            "true_return": float(np.mean(true)) if (true and self.task.has_true_reward) else None,
            "reward_val_accuracy": rep.mean_val_accuracy if rep else None,
            "reward_train_loss": rep.mean_train_loss if rep else None,
            "reward_val_loss": rep.mean_val_loss if rep else None,
            "reward_l2": rep.mean_l2 if rep else None,
            "reward_return_corr": self._return_corr(),
            "steps_per_second": (step - self.step_at_start) / elapsed,
            "wall_seconds": elapsed,
        }
        self.metrics.log(row)
        self._last_logged = step
        if self._pbar is not None:
            self._pbar.update(step - self._pbar.n)
            post = {"labels": row["labels"]}
            if row["true_return"] is not None:
                post["true"] = f"{row['true_return']:.1f}"
            if row["learned_return"] is not None:
                post["learned"] = f"{row['learned_return']:.1f}"
            self._pbar.set_postfix(post)

    def _return_corr(self) -> float | None:
        """Pearson correlation of learned and true returns over recent pool segments."""
        if not self.task.has_true_reward or len(self.pool) < 8:
            return None
        # 64 recent clips: enough for a correlation, cheap even for the Atari CNN.
        segs: list[Segment] = self.pool.recent(min(len(self.pool), 64))
        true = np.array([s.true_return for s in segs])
        if np.std(true) == 0:
            return None
        pred = self.ensemble.member_segment_returns(segs, normalized=True).mean(axis=0)
        if np.std(pred) == 0:
            return None
        return float(np.corrcoef(pred, true)[0, 1])

    # ----------------------------------------------------------------- checkpoints
    def checkpoint(self, step: int) -> None:
        state = {
            "iteration": self.iterations,
            "pretrain_done": self.pretrain_done,
            "trained_answer_id": self.trained_answer_id,
            "rng": self.rng.bit_generator.state,
            "pool": self.pool.state_dict(),
            "recorder": self.recorder.state_dict(),
            "oracle": self.oracle.state_dict() if hasattr(self.oracle, "state_dict") else None,
            "algo": self.r.algo,
        }
        writers = {
            "agent.zip": lambda p: self.agent.save(str(p)),
            "ensemble.pt": lambda p: self.ensemble.save(p),
            "reward_trainer.pt": lambda p: torch.save(self.reward_trainer.state_dict(), p),
        }
        if isinstance(self.agent_env, VecNormalize):
            writers["obs_norm.npz"] = lambda p: save_obs_normalization(self.agent_env, p)
        save_checkpoint(self.run_dir, step, writers, _jsonable(state))

    def _restore(self) -> None:
        ckpt, state = self._ckpt, self._ckpt_state
        if ckpt is None:
            # Killed before the first checkpoint: start over, keeping the labels already in the store.
            self.agent = self._new_agent()
        else:
            self.agent = load_agent(self.r.algo, str(ckpt / "agent.zip"), self.agent_env, device=self.device)
            if isinstance(self.agent_env, VecNormalize):
                load_obs_normalization(self.agent_env, ckpt / "obs_norm.npz")
            self.ensemble = RewardEnsemble.load(ckpt / "ensemble.pt", device=self.device)
            self.learned.set_reward_fn(self.ensemble.reward)
            self.reward_trainer = RewardTrainer(self.ensemble, self.reward_trainer.config,
                                                rng=np.random.default_rng(self.cfg.seed + 1))
            self.reward_trainer.load_state_dict(torch.load(ckpt / "reward_trainer.pt", weights_only=True))
            self.iterations = int(state["iteration"])
            self.last_iteration_step = int(state["step"])
            self.pretrain_done = bool(state["pretrain_done"])
            self.rng.bit_generator.state = state["rng"]
            self.pool.load_state_dict(state["pool"])
            self.recorder.load_state_dict(state["recorder"])
            if state.get("oracle") and hasattr(self.oracle, "load_state_dict"):
                self.oracle.load_state_dict(state["oracle"])
            truncate_metrics(self.run_dir / "metrics.csv", int(state["step"]))
        # The store is the source of truth for labels, including those answered after the checkpoint.
        for answer_id, label in self.store.labels_with_ids(limit=self.r.label_window):
            self.dataset.add(label, seq=answer_id)
        trained_up_to = int(state.get("trained_answer_id", state.get("last_answer_id", 0))) if state else 0
        self.trained_answer_id = trained_up_to
        self.last_answer_id = self.store.last_answer_id()
        # Answers that arrived after the checkpoint (or while the run was stopped) are trained on first.
        self._train_on_resume = self.pretrain_done and self.last_answer_id > trained_up_to
        # Segments stored after the checkpoint keep their ids: new pool ids start above them.
        if self.store.max_segment_id() >= self.pool.next_uid:
            self.pool.load_state_dict({"next_uid": self.store.max_segment_id() + 1})
        # Queries that were asked but not answered before the kill go back to the oracle.
        pending = self.store.pending_queries()
        if pending and self.cfg.oracle != "human":
            self.oracle.submit([self.store.load_query(q.query_id) for q in pending])

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
            if self.cfg.reward_async and remaining > 0:
                self._start_worker()  # now, so that it boots while pretraining runs
            if not self.pretrain_done:
                self.pretrain()
            elif self._train_on_resume:
                self._train_reward(self.r.reward_epochs)
            if remaining > 0:
                relabel_rollouts(self.agent, self.learned)
                self.agent.learn(total_timesteps=remaining, callback=_IterationCallback(self),
                                 reset_num_timesteps=False)
            final = int(self.agent.num_timesteps)
            self._finish_reward_job()  # (the last iteration trains in this process: normally none)
            new = self._collect()
            if new:  # answers that came in after the last iteration (or while the run was stopped)
                self._train_reward(self.r.reward_epochs)
            if new or self._last_logged != final:
                self._log(final)
            self.checkpoint(int(self.agent.num_timesteps))
            (self.run_dir / "DONE").write_text(json.dumps({"step": int(self.agent.num_timesteps)}) + "\n")
        finally:
            self.close()
        return self.run_dir

    def close(self) -> None:
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        if self.worker is not None:
            self.worker.close()
            self.worker = None
        self.metrics.close()
        self.agent_env.close()
        if self.label_server is not None:
            self.label_server.stop()
        if hasattr(self.oracle, "close"):
            self.oracle.close(timeout=5)
        self.store.close()


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj
