"""scripts/rl_on_speed.py: the reward is the observation's entry before or after each step (the
terminal observation at an episode's end), Gymnasium's own (the info's gym_reward), or the env's."""

import importlib.util
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from stable_baselines3.common.vec_env import DummyVecEnv

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "rl_on_speed.py"
_spec = importlib.util.spec_from_file_location("rl_on_speed", SCRIPT)
mod = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = mod
_spec.loader.exec_module(mod)


class Steps(gym.Env):
    """obs = [step index]; reward 100 + step; episodes of 4 steps."""

    observation_space = spaces.Box(-np.inf, np.inf, (1,), np.float32)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return np.array([0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        return np.array([self.t], np.float32), 100.0 + self.t, self.t >= 4, False, {"gym_reward": -self.t}


@pytest.mark.parametrize("mode, expected", [("before", [0, 1, 2, 3, 0, 1]), ("after", [1, 2, 3, 4, 1, 2]),
                                            ("true", [101, 102, 103, 104, 101, 102]),
                                            ("gym", [-1, -2, -3, -4, -1, -2])])
def test_speed_reward_reads_the_observation_before_or_after_each_step(mode, expected):
    env = mod.SpeedReward(DummyVecEnv([Steps]), mode, 0)
    env.reset()
    got = [float(env.step(np.array([0]))[1][0]) for _ in range(6)]
    assert got == expected
