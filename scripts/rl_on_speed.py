#!/usr/bin/env python
"""RL on a locomotion task's true reward, on Gymnasium's own reward (control cost included), or on the
forward speed read off the observation before or after each step: what a reward model of (o_t, a_t) or
(o_{t+1}, a_t) can read most directly (README, HalfCheetah and Ant under "The eight MuJoCo tasks").
Same agent, hyperparameters and reward normalisation as the RL baseline; the policy is evaluated
(5 deterministic episodes, true and Gymnasium return) after each third of the run.

    python scripts/rl_on_speed.py before 0                  # HalfCheetah-v5, seed 0, 300k steps
    python scripts/rl_on_speed.py true 1 --steps 300000
    python scripts/rl_on_speed.py gym 0 --task Ant-v5       # Ant on Gymnasium's reward
    python scripts/rl_on_speed.py true 0 --task Ant-v5 --env-kwargs '{"include_cfrc_ext_in_observation": false}'
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from stable_baselines3.common.vec_env import VecEnvWrapper, VecNormalize

from rlhf_control.agent.evaluation import evaluate_agent
from rlhf_control.agent.factory import make_agent
from rlhf_control.config import RunConfig, resolve
from rlhf_control.tasks.catalogue import get_task
from rlhf_control.tasks.wrappers import GYM_REWARD_KEY, with_terminal_obs


class SpeedReward(VecEnvWrapper):
    """The env's reward replaced by ``obs[:, index]`` of the observation before (``before``) or after
    (``after``, the terminal one at an episode's end) each step, or by Gymnasium's own reward (``gym``,
    the info's ``gym_reward``: control cost included); ``true`` leaves it."""

    def __init__(self, venv, mode: str, index: int) -> None:
        super().__init__(venv)
        self.mode, self.index, self.prev = mode, index, None

    def reset(self):
        self.prev = self.venv.reset()
        return self.prev

    def step_wait(self):
        obs, rew, done, info = self.venv.step_wait()
        if self.mode == "before":
            rew = self.prev[:, self.index].astype(np.float32)
        elif self.mode == "after":
            rew = with_terminal_obs(obs, done, info)[:, self.index].astype(np.float32)
        elif self.mode == "gym":
            rew = np.array([i[GYM_REWARD_KEY] for i in info], dtype=np.float32)
        self.prev = obs
        return obs, rew, done, info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=("true", "gym", "before", "after"))
    p.add_argument("seed", type=int)
    p.add_argument("--task", default="HalfCheetah-v5")
    p.add_argument("--speed-index", type=int, default=8, help="the observation's forward speed (HalfCheetah: 8)")
    p.add_argument("--steps", type=int, default=300_000)
    p.add_argument("--env-kwargs", type=json.loads, default={}, help="JSON merged into the task's env_kwargs")
    args = p.parse_args()
    torch.set_num_threads(1)
    task = get_task(args.task).with_overrides(env_kwargs=args.env_kwargs)
    r = resolve(RunConfig(task=args.task, seed=args.seed, steps=args.steps), task=task)
    params = dict(r.agent_params)
    venv = VecNormalize(SpeedReward(r.task.make_vec_env(r.n_envs, seed=args.seed), args.mode, args.speed_index),
                        norm_obs=bool(r.task.normalize), norm_reward=True, gamma=float(params.get("gamma", 0.99)))
    agent = make_agent(r.algo, venv, params, seed=args.seed, device="cpu", policy=r.task.policy)
    t0 = time.time()
    for _ in range(3):
        agent.learn(total_timesteps=args.steps // 3, reset_num_timesteps=False)
        ev = evaluate_agent(agent, r.task, 5, agent_env=venv)
        gym = f", Gymnasium return {np.mean(ev.gym_returns):.1f}" if ev.gym_returns else ""
        print(f"{args.mode} seed {args.seed}: {int(agent.num_timesteps)} steps, true return {ev.mean:.1f}{gym} "
              f"({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
