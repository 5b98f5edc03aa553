#!/usr/bin/env python
"""Does TRPO with the RL Zoo's settings learn to walk on Ant-v5 here? Trains SB3-contrib TRPO (2 envs x
1,024 steps, batch 128, critic lr 1e-3 with 20 updates, CG 25 steps / damping 0.1, VecNormalize; the
Zoo's gamma 0.99 and GAE lambda 0.95 unless given) either on Gymnasium's own Ant-v5 (``plain``: its
reward with the control cost, its termination when the torso leaves the healthy height) or on this
project's Ant task (``ours``: the paper's true reward, fixed 1,000-step episodes, a fall costs 1), and
every 100k steps rolls the deterministic policy out on Gymnasium's Ant-v5 for 3 episodes of 1,000
steps (stepping on after a termination), printing the forward distance, the Gymnasium return, the
paper's true return (Gymnasium's minus its control cost), the unhealthy steps and the first
termination. The README's Ant paragraph under "The eight MuJoCo tasks" reports what it printed.

    python scripts/ant_pilot.py plain            # seed 0, 500k steps
    python scripts/ant_pilot.py ours --seed 1 --steps 1000000
    python scripts/ant_pilot.py ours --gamma 0.995 --lam 0.97 --log-std-init -1 --steps 1000000  # the catalogue's
"""
import argparse
import time

import gymnasium as gym
import numpy as np
import torch
from sb3_contrib import TRPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecNormalize

p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
p.add_argument("env", choices=("plain", "ours"))
p.add_argument("--seed", type=int, default=0)
p.add_argument("--steps", type=int, default=500_000)
p.add_argument("--gamma", type=float, default=0.99)
p.add_argument("--lam", type=float, default=0.95)
p.add_argument("--log-std-init", type=float, default=0.0, help="initial log std of the policy (SB3's default 0)")
a = p.parse_args()
torch.set_num_threads(1)
if a.env == "plain":
    venv = make_vec_env("Ant-v5", n_envs=2, seed=a.seed)
else:
    from rlhf_control.tasks.catalogue import get_task

    venv = get_task("Ant-v5").make_vec_env(2, seed=a.seed)
venv = VecNormalize(venv, norm_obs=True, norm_reward=True, gamma=a.gamma)
agent = TRPO("MlpPolicy", venv, n_steps=1024, batch_size=128, gamma=a.gamma, gae_lambda=a.lam,
             learning_rate=1e-3, n_critic_updates=20, cg_max_steps=25, cg_damping=0.1, sub_sampling_factor=1,
             policy_kwargs={"log_std_init": a.log_std_init}, seed=a.seed, device="cpu")
t0 = time.time()
env = gym.make("Ant-v5")  # one evaluation for both: 1,000 steps, stepping on after a termination
for _ in range(a.steps // 100_000):
    agent.learn(100_000, reset_num_timesteps=False)
    venv.training = False
    res = []
    for ep in range(3):
        obs, _ = env.reset(seed=1000 + ep)
        x0 = env.unwrapped.data.qpos[0]
        gym_ret = true_ret = 0.0
        unhealthy, term_at = 0, None
        for t in range(1000):
            act, _ = agent.predict(venv.normalize_obs(obs[None]), deterministic=True)
            obs, r, term, trunc, info = env.step(act[0])
            gym_ret += r
            true_ret += r - info["reward_ctrl"]
            if term and term_at is None:
                term_at = t
            unhealthy += int(not env.unwrapped.is_healthy)
        res.append((env.unwrapped.data.qpos[0] - x0, gym_ret, true_ret, unhealthy, term_at))
    venv.training = True
    r = np.array([x[:4] for x in res], dtype=float).mean(0)
    print(f"{a.env} g{a.gamma} l{a.lam} std{a.log_std_init} s{a.seed} {agent.num_timesteps}: dx {r[0]:.1f} gym {r[1]:.0f} true {r[2]:.0f} "
          f"unhealthy {r[3]:.0f} first_term {[x[4] for x in res]} ({time.time() - t0:.0f}s)", flush=True)
