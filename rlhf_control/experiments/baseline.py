"""RL on the true reward: the yardstick of every result (DESIGN.md, "Baselines").

The same agent as an RLHF run of the task (``agent.factory.make_agent`` with the task's algorithm and
hyperparameters, the same steps and seed, resolved by ``config.resolve``), trained on the task's true
reward, which is the env's reward (the paper's: for MuJoCo, Gymnasium's without the control cost and with
termination a penalty; see ``tasks/wrappers.py``), through SB3's ``VecNormalize`` with reward
normalisation, as the RL Zoo does (observation normalisation only where the task says
``normalize = true``, as its RLHF runs do).

It writes the run directory layout of an RLHF run: ``config.toml`` (``[meta] baseline =
"rl-true-reward"`` marks it), ``metrics.csv`` with the same columns (``true_return`` is the mean
undiscounted true return of the last 100 finished training episodes, as ``LearnedReward`` reports
it for RLHF runs, and ``gym_return`` the same episodes' standard Gymnasium return; every ``eval_every`` x
``iteration_steps`` steps (where the RLHF run evaluates) and at the end, ``eval_true_return`` and ``eval_gym_return`` of
``eval_episodes`` deterministic episodes on their own env, ``agent.evaluation.evaluate_agent``, as an
RLHF run evaluates; label and reward-model columns stay empty), ``checkpoints/`` (agent and
``VecNormalize`` statistics as npz, no pickle: ``obs_norm.npz`` as an RLHF run writes it, so
``rlhf-control eval`` reads it, and ``return_norm.npz``), ``DONE``, and ``baseline.json`` with the
return of a uniformly random policy on the same task (the zero of the report's normalised score), on
the true reward (``random_return``) and on the Gymnasium reward (``random_gym_return``).
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper, VecNormalize

from rlhf_control import __version__, rundir
from rlhf_control.agent.evaluation import evaluate_agent
from rlhf_control.agent.factory import (
    OnRolloutEnd,
    load_agent,
    load_obs_normalization,
    make_agent,
    save_obs_normalization,
)
from rlhf_control.config import RunConfig, load_config_file, resolve, resolve_device, write_config_file
from rlhf_control.errors import UserError
from rlhf_control.loop.checkpoint import (
    AGENT_FILE,
    OBS_NORM_FILE,
    latest_checkpoint,
    load_checkpoint_state,
    save_checkpoint,
)
from rlhf_control.loop.metrics import MetricsLogger, truncate_metrics
from rlhf_control.tasks.spec import OFF_POLICY
from rlhf_control.tasks.wrappers import GYM_RETURN_KEY

# ``[meta] baseline`` of a baseline run's config.toml, and the name of its run directory in a sweep.
BASELINE_MARKER = "rl-true-reward"
RANDOM_EPISODES = 10
RANDOM_MAX_STEPS = 25_000
RANDOM_SEED_OFFSET = 10_000  # the random-policy env never shares a seed with a training env
# VecNormalize's return statistics in a checkpoint (its observation statistics are in OBS_NORM_FILE,
# as in an RLHF run's checkpoint, where evaluation reads them).
RETURN_NORM_FILE = "return_norm.npz"
LEGACY_NORM_FILE = "normalization.npz"  # both statistics in one file, before the re-layout


def is_baseline_dir(run_dir: Path) -> bool:
    """True if ``run_dir`` holds a baseline run (its config's ``[meta] baseline`` marker)."""
    if not rundir.is_run_dir(run_dir):
        return False
    return rundir.read_config_doc(run_dir).get("meta", {}).get("baseline") is not None


class EpisodeReturns(VecEnvWrapper):
    """Passes everything through and keeps, of the last ``history`` episodes, the undiscounted env
    return (``returns``: the true reward) and the Gymnasium return the env reports at each episode's
    end (``gym_returns``: ``info["gym_return"]``; none for a task without a true reward)."""

    def __init__(self, venv: VecEnv, history: int = 100) -> None:
        super().__init__(venv)
        self._running = np.zeros(self.num_envs, dtype=np.float64)
        self.returns: deque[float] = deque(maxlen=history)
        self.gym_returns: deque[float] = deque(maxlen=history)

    def reset(self) -> np.ndarray:
        self._running[:] = 0.0
        return self.venv.reset()

    def step_wait(self):
        obs, rews, dones, infos = self.venv.step_wait()
        self._running += np.asarray(rews, dtype=np.float64)
        for i in np.flatnonzero(dones):
            self.returns.append(float(self._running[i]))
            self._running[i] = 0.0
            if GYM_RETURN_KEY in infos[i]:
                self.gym_returns.append(float(infos[i][GYM_RETURN_KEY]))
        return obs, rews, dones, infos


def save_return_normalization(venv: VecNormalize, path: Path) -> None:
    """``VecNormalize``'s return statistics (running mean and variance of the discounted return, and
    each env's discounted return so far: ``returns: (n_envs,)``) as npz. Observation statistics are
    saved by ``agent.factory.save_obs_normalization``."""
    ret = venv.ret_rms
    with open(path, "wb") as f:
        np.savez(f, mean=ret.mean, var=ret.var, count=np.array(ret.count), returns=venv.returns)


def load_return_normalization(venv: VecNormalize, path: Path) -> None:
    with np.load(path, allow_pickle=False) as d:
        venv.ret_rms.mean, venv.ret_rms.var, venv.ret_rms.count = d["mean"], d["var"], float(d["count"])
        venv.returns = d["returns"].copy()


def _load_legacy_normalization(venv: VecNormalize, path: Path) -> None:
    """Both statistics from one ``normalization.npz``, as checkpoints of version 0.1.0 before the
    re-layout wrote them (``ret_*``, ``returns``, and ``obs_*`` when observations are normalised)."""
    with np.load(path, allow_pickle=False) as d:
        venv.ret_rms.mean, venv.ret_rms.var, venv.ret_rms.count = d["ret_mean"], d["ret_var"], float(d["ret_count"])
        venv.returns = d["returns"].copy()
        if venv.norm_obs:
            venv.obs_rms.mean, venv.obs_rms.var, venv.obs_rms.count = d["obs_mean"], d["obs_var"], float(d["obs_count"])


def random_policy_returns(task: Any, seed: int, episodes: int = RANDOM_EPISODES,
                          max_steps: int = RANDOM_MAX_STEPS) -> EpisodeReturns:
    """Uniformly random actions on one env of ``task`` for up to ``episodes`` episodes (at most
    ``max_steps`` steps); the closed tracker holds their true and Gymnasium returns."""
    venv = EpisodeReturns(task.make_vec_env(1, seed=seed))
    try:
        venv.reset()
        space = venv.action_space
        space.seed(seed)
        for _ in range(max_steps):
            venv.step(np.array([space.sample()]))
            if len(venv.returns) >= episodes:
                break
    finally:
        venv.close()
    return venv


def random_policy_return(task: Any, seed: int, episodes: int = RANDOM_EPISODES,
                         max_steps: int = RANDOM_MAX_STEPS) -> tuple[float | None, int]:
    """Mean true return of uniformly random actions over up to ``episodes`` episodes (one env,
    at most ``max_steps`` steps); ``(None, 0)`` if no episode ended within them."""
    rets = list(random_policy_returns(task, seed, episodes, max_steps).returns)
    return (float(np.mean(rets)) if rets else None), len(rets)


def _mean(values: Any) -> float | None:
    return float(np.mean(values)) if len(values) else None


class BaselineTrainer:
    """Trains the task's agent on its true reward into ``run_dir`` (``resume`` continues a stopped one)."""

    def __init__(self, cfg: RunConfig, run_dir: Path, resume: bool = False, task: Any = None) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.r = resolve(cfg, task)
        self.task = self.r.task
        device = resolve_device(cfg.device)
        config_path = self.run_dir / rundir.CONFIG_FILE
        if resume:
            stored, _ = load_config_file(config_path)
            if stored.replace(device=cfg.device) != cfg:
                raise UserError(f"--resume of {str(self.run_dir)!r} with settings other than its config.toml")
        elif config_path.exists():
            raise rundir.RunExistsError(f"run directory {str(self.run_dir)!r} already holds a run; resume it instead")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            write_config_file(config_path, cfg, self.task.to_dict(),
                              {"version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                               "baseline": BASELINE_MARKER})
        params = dict(self.r.agent_params)
        self.tracker = EpisodeReturns(self.task.make_vec_env(self.r.n_envs, seed=cfg.seed))
        # gamma as the RL Zoo sets it: the agent's discount, so returns are normalised on its horizon.
        self.venv = VecNormalize(self.tracker, norm_obs=bool(self.task.normalize), norm_reward=True,
                                 gamma=float(params.get("gamma", 0.99)))
        self.iterations = 0
        self.step_at_start = 0
        ckpt = latest_checkpoint(self.run_dir) if resume else None
        if ckpt is not None:
            state = load_checkpoint_state(ckpt)
            if (ckpt / LEGACY_NORM_FILE).is_file():  # a checkpoint written before the split files
                _load_legacy_normalization(self.venv, ckpt / LEGACY_NORM_FILE)
            else:
                load_return_normalization(self.venv, ckpt / RETURN_NORM_FILE)
                if self.venv.norm_obs:
                    load_obs_normalization(self.venv, ckpt / OBS_NORM_FILE)
            self.agent = load_agent(self.r.algo, str(ckpt / AGENT_FILE), self.venv, device=device, resume=True)
            self.iterations = int(state["iteration"])
            self.tracker.returns.extend(float(x) for x in state["returns"])
            self.tracker.gym_returns.extend(float(x) for x in state.get("gym_returns", []))
            truncate_metrics(self.run_dir / rundir.METRICS_FILE, int(state["step"]))
        else:
            # A run killed before its first checkpoint starts over; drop the rows it logged.
            truncate_metrics(self.run_dir / rundir.METRICS_FILE, -1)
            self.agent = make_agent(self.r.algo, self.venv, params, seed=cfg.seed, device=device,
                                    policy=self.task.policy)
        self.last_ckpt_step = int(self.agent.num_timesteps)
        self.last_iteration_step = self.last_ckpt_step
        self.last_eval_step = self.last_ckpt_step
        self.ckpt_min_steps = max(1, self.r.steps // 50)  # cheap rollouts (A2C) must not checkpoint each time
        self.metrics = MetricsLogger(self.run_dir)
        self.t_start = time.time()

    def iteration(self, step: int) -> None:
        """Log a metrics row after a rollout (evaluated on crossing each multiple of ``eval_every`` x
        ``iteration_steps`` steps, as the RLHF run is, but not the last step, which :meth:`run` evaluates); checkpoint every ``checkpoint_every`` of them. An off-policy agent's
        "rollout" is ``train_freq`` steps: it logs every ``iteration_steps``, as the RLHF loop does."""
        if self.r.algo in OFF_POLICY and (step - self.last_iteration_step < self.r.iteration_steps
                                          or step >= self.r.steps):  # (run() logs the last step)
            return
        self.last_iteration_step = step
        self.iterations += 1
        # Every eval_every RLHF iterations' worth of steps, whatever this agent's rollout length (A2C's
        # are 80 steps on Atari, the RLHF loop's 2,048), so RL and RLHF are evaluated at the same steps.
        interval = self.r.eval_every * self.r.iteration_steps
        evaluate = step // interval > self.last_eval_step // interval and step < self.r.steps
        if evaluate:
            self.last_eval_step = step
        self._log(step, evaluate=evaluate)
        if self.iterations % self.cfg.checkpoint_every == 0 and step - self.last_ckpt_step >= self.ckpt_min_steps:
            self.checkpoint(step)

    def _log(self, step: int, evaluate: bool = False) -> None:
        ev = None
        if evaluate and self.r.eval_episodes > 0 and self.task.has_true_reward:
            ev = evaluate_agent(self.agent, self.task, self.r.eval_episodes, agent_env=self.venv)
        elapsed = max(time.time() - self.t_start, 1e-9)
        self.metrics.log({"step": step, "iteration": self.iterations,
                          "true_return": _mean(self.tracker.returns), "gym_return": _mean(self.tracker.gym_returns),
                          "eval_true_return": ev.mean if ev else None, "eval_gym_return": ev.gym_mean if ev else None,
                          "steps_per_second": (step - self.step_at_start) / elapsed, "wall_seconds": elapsed})

    def checkpoint(self, step: int) -> None:
        state = {"iteration": self.iterations, "algo": self.r.algo, "returns": list(self.tracker.returns),
                 "gym_returns": list(self.tracker.gym_returns)}
        writers = {AGENT_FILE: lambda p: self.agent.save(str(p)),
                   RETURN_NORM_FILE: lambda p: save_return_normalization(self.venv, p)}
        if self.venv.norm_obs:
            writers[OBS_NORM_FILE] = lambda p: save_obs_normalization(self.venv, p)
        save_checkpoint(self.run_dir, step, writers, state)
        self.last_ckpt_step = step

    def run(self) -> Path:
        """Measure the random policy (once), train for the remaining steps, write ``DONE``."""
        try:
            info = self.run_dir / rundir.BASELINE_FILE
            if not info.is_file():
                seed = self.cfg.seed + RANDOM_SEED_OFFSET
                rnd = random_policy_returns(self.task, seed)
                rundir.write_json(info, {"random_return": _mean(rnd.returns), "random_gym_return": _mean(rnd.gym_returns),
                                         "random_episodes": len(rnd.returns), "random_seed": seed})
            done = int(self.agent.num_timesteps)
            self.step_at_start = done
            self.t_start = time.time()
            if self.r.steps - done > 0:
                self.agent.learn(total_timesteps=self.r.steps - done, callback=OnRolloutEnd(self.iteration),
                                 reset_num_timesteps=False)
            step = int(self.agent.num_timesteps)
            self._log(step, evaluate=True)
            self.checkpoint(step)
            rundir.mark_done(self.run_dir, step)
        finally:
            self.close()
        return self.run_dir

    def close(self) -> None:
        self.metrics.close()
        self.venv.close()


def train_baseline(cfg: RunConfig, run_dir: Path, resume: bool = False, task: Any = None) -> Path:
    """Train the RL-on-true-reward baseline for ``cfg`` (task, seed, steps, agent) into ``run_dir``."""
    return BaselineTrainer(cfg, run_dir, resume=resume, task=task).run()
