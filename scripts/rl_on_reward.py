#!/usr/bin/env python
"""RL on a chosen reward: a task's true reward, Gymnasium's own reward (control cost included), the
forward speed read off the observation before or after each step (what a reward model of (o_t, a_t) or
(o_{t+1}, a_t) can read most directly), or a finished RLHF run's final learned reward, held fixed
(``learned --reward-run RUN``: the run's task, its ensemble from the newest checkpoint, read from the
observation before or after each step as the run did), or, on Walker2d-v5 alone, the true reward
with its premium for standing re-weighted (``standing --standing-weight W``: vx + W*healthy - 1 read
off the observation after each step; the true reward has W = 2). Same agent, hyperparameters and reward
normalisation as the RL baseline; the policy is evaluated (5 deterministic episodes, true and
Gymnasium return) after each of ``--evals`` parts of the run (README, "The eight MuJoCo tasks").

The ``learned`` mode separates two reasons an RLHF agent can lag RL on the true reward while its
reward ranks the better gaits first: the learned reward's shape (TRPO on it, fixed, lags too) or its
changing from iteration to iteration during the run (TRPO on the fixed final one keeps up with RL).
The ``standing`` mode asks what a reward that pays too little for staying up costs RL (the reward
learnt from the pretraining clips of Walker2d pays 0.6-0.9 where the true one pays 2; README).

    python scripts/rl_on_reward.py before 0                  # HalfCheetah-v5, seed 0, 300k steps
    python scripts/rl_on_reward.py true 1 --steps 300000
    python scripts/rl_on_reward.py gym 0 --task Ant-v5       # Ant on Gymnasium's reward
    python scripts/rl_on_reward.py true 0 --task Ant-v5 --env-kwargs '{"include_cfrc_ext_in_observation": false}'
    python scripts/rl_on_reward.py learned 0 --reward-run runs/x/Walker2d-v5/L700-perfect-variance-s0 --steps 400000
    python scripts/rl_on_reward.py standing 0 --standing-weight 0.7 --steps 400000 --evals 10
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from stable_baselines3.common.vec_env import VecEnvWrapper, VecNormalize

from rlhf_control.agent.evaluation import evaluate_agent
from rlhf_control.agent.factory import make_agent
from rlhf_control.config import RunConfig, load_config_file, resolve
from rlhf_control.errors import UserError
from rlhf_control.loop.checkpoint import ENSEMBLE_FILE
from rlhf_control.loop.evaluate import newest_checkpoint, run_task
from rlhf_control.reward.ensemble import RewardEnsemble
from rlhf_control.rundir import CONFIG_FILE, check_run_dir
from rlhf_control.tasks.catalogue import get_task
from rlhf_control.tasks.spec import TaskSpec
from rlhf_control.tasks.wrappers import GYM_REWARD_KEY, with_terminal_obs


class ChosenReward(VecEnvWrapper):
    """The env's reward replaced by ``obs[:, index]`` of the observation before (``before``) or after
    (``after``, the terminal one at an episode's end) each step, by Gymnasium's own reward (``gym``,
    the info's ``gym_reward``: control cost included), or by ``reward_fn(obs, actions)`` (``learned``:
    a fixed learned reward of the observation before each step, or after it with ``next_obs``, after
    ``obs_fn``); ``true`` leaves it."""

    def __init__(self, venv, mode: str, index: int = 0, reward_fn=None, obs_fn=None, next_obs: bool = False) -> None:
        super().__init__(venv)
        if mode in ("learned", "standing") and reward_fn is None:
            raise ValueError(f"mode {mode!r} needs a reward_fn")
        self.mode, self.index, self.prev, self.actions = mode, index, None, None
        self.reward_fn, self.obs_fn, self.next_obs = reward_fn, obs_fn or (lambda x: x), next_obs

    def reset(self):
        self.prev = self.venv.reset()
        return self.prev

    def step_async(self, actions):
        self.actions = actions
        self.venv.step_async(actions)

    def step_wait(self):
        obs, rew, done, info = self.venv.step_wait()
        if self.mode == "before":
            rew = self.prev[:, self.index].astype(np.float32)
        elif self.mode == "after":
            rew = with_terminal_obs(obs, done, info)[:, self.index].astype(np.float32)
        elif self.mode == "gym":
            rew = np.array([i[GYM_REWARD_KEY] for i in info], dtype=np.float32)
        elif self.mode in ("learned", "standing"):
            seen = with_terminal_obs(obs, done, info) if self.next_obs else self.prev
            rew = np.asarray(self.reward_fn(self.obs_fn(seen), self.actions), dtype=np.float32)
        self.prev = obs
        return obs, rew, done, info


def walker_upright(obs: np.ndarray) -> np.ndarray:
    """Per step of Walker2d-v5 observations (no x position: obs[0] height, obs[1] torso angle): is the
    walker in Gymnasium's healthy range (height in (0.8, 2), angle in (-1, 1))?"""
    z, angle = obs[:, 0], obs[:, 1]
    return (z > 0.8) & (z < 2.0) & (angle > -1.0) & (angle < 1.0)


def standing_reward(weight: float):
    """Walker2d-v5's true reward with the standing premium ``weight`` (the true reward's is 2): forward
    speed (obs[8]) + ``weight`` while upright (:func:`walker_upright`) - 1."""
    def reward(obs: np.ndarray, acts: np.ndarray) -> np.ndarray:
        return obs[:, 8] + weight * walker_upright(obs) - 1.0
    return reward


def learned_reward(run: Path, task_name: str | None) -> tuple[RunConfig, TaskSpec, RewardEnsemble]:
    """The RLHF run ``run``'s config, task (its config's copy) and final reward ensemble; a one-line
    error for a directory that is not an RLHF run with a checkpoint, or is of another task."""
    run = check_run_dir(run)
    cfg, _ = load_config_file(run / CONFIG_FILE)
    task = run_task(run)
    if task_name is not None and task_name != task.name:
        raise UserError(f"--task {task_name!r} does not match the reward run's task {task.name!r}; leave --task out")
    ens_file = newest_checkpoint(run) / ENSEMBLE_FILE
    if not ens_file.is_file():
        raise UserError(f"run {str(run)!r} has no learned reward ({ENSEMBLE_FILE}): an RL baseline? give an RLHF run")
    return cfg, task, RewardEnsemble.load(ens_file)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=("true", "gym", "before", "after", "learned", "standing"))
    p.add_argument("seed", type=int)
    p.add_argument("--task", default=None, help="catalogue task (default HalfCheetah-v5; learned: the run's)")
    p.add_argument("--reward-run", type=Path, default=None, help="learned: the RLHF run whose final reward is used")
    p.add_argument("--evals", type=int, default=3, help="evaluations, one after each equal part of the run (default 3)")
    p.add_argument("--speed-index", type=int, default=8, help="the observation's forward speed (HalfCheetah: 8)")
    p.add_argument("--standing-weight", type=float, default=None,
                   help="standing: the premium for a healthy step (the true reward's: 2)")
    p.add_argument("--steps", type=int, default=300_000)
    p.add_argument("--env-kwargs", type=json.loads, default={}, help="JSON merged into the task's env_kwargs")
    args = p.parse_args(argv)
    try:
        if args.steps < 1 or args.evals < 1 or args.evals > args.steps:
            raise UserError(f"--steps {args.steps} --evals {args.evals} is not allowed; use 1 <= evals <= steps")
        if (args.mode == "learned") != (args.reward_run is not None):
            raise UserError(f"--reward-run {args.reward_run} with mode {args.mode!r} is not allowed; "
                            "give --reward-run with mode learned, and only then")
        if (args.mode == "standing") != (args.standing_weight is not None):
            raise UserError(f"--standing-weight {args.standing_weight} with mode {args.mode!r} is not allowed; "
                            "give --standing-weight with mode standing, and only then")
        wrap: dict = {"index": args.speed_index}
        cfg = RunConfig(task=args.task or ("Walker2d-v5" if args.mode == "standing" else "HalfCheetah-v5"))
        if args.mode == "standing":
            if not np.isfinite(args.standing_weight):
                raise UserError(f"--standing-weight {args.standing_weight} is not allowed; use a finite number")
            if cfg.task != "Walker2d-v5":
                raise UserError(f"--task {cfg.task!r} with mode standing is not allowed; it reads Walker2d-v5's "
                                "observation: use Walker2d-v5")
            wrap = {"reward_fn": standing_reward(args.standing_weight), "next_obs": True}
        if args.mode == "learned":  # the run's task and agent settings, its reward held fixed
            cfg, task, ensemble = learned_reward(args.reward_run, args.task)
            wrap = {"reward_fn": ensemble.reward, "obs_fn": task.reward_obs_fn, "next_obs": cfg.reward_obs == "after"}
        else:
            task = get_task(cfg.task)
        task = task.with_overrides(env_kwargs=args.env_kwargs)
    except (UserError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    r = resolve(cfg.replace(seed=args.seed, steps=args.steps), task=task)
    params = dict(r.agent_params)
    venv = VecNormalize(ChosenReward(r.task.make_vec_env(r.n_envs, seed=args.seed), args.mode, **wrap),
                        norm_obs=bool(r.task.normalize), norm_reward=True, gamma=float(params.get("gamma", 0.99)))
    agent = make_agent(r.algo, venv, params, seed=args.seed, device="cpu", policy=r.task.policy)
    t0 = time.time()
    for _ in range(args.evals):
        agent.learn(total_timesteps=args.steps // args.evals, reset_num_timesteps=False)
        ev = evaluate_agent(agent, r.task, 5, agent_env=venv)
        gym = f", Gymnasium return {np.mean(ev.gym_returns):.1f}" if ev.gym_returns else ""
        print(f"{args.mode} seed {args.seed}: {int(agent.num_timesteps)} steps, true return {ev.mean:.1f}{gym} "
              f"({time.time() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
