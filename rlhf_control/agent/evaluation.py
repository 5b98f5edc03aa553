"""Evaluation envs and episodes: a policy's returns on the task's true reward (the paper's) and on the
standard Gymnasium reward, optionally with frames.

The true reward is the task env's reward (``tasks/wrappers.py``: for MuJoCo, Gymnasium's without the
control cost, termination a penalty); the Gymnasium return of an episode is ``info["gym_return"]`` on its
last step, which every task with a true reward reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecFrameStack, VecNormalize

from rlhf_control.tasks.spec import TaskSpec
from rlhf_control.tasks.wrappers import GYM_RETURN_KEY

# Seed of evaluation envs: apart from the training envs' (run seed + env index), and the same
# for an RLHF run and its baseline, so both meet the same episodes.
EVAL_SEED = 10_007


@dataclass(frozen=True)
class EvalResult:
    """Episode returns of one evaluation: ``returns`` on the task's true reward (the paper's: what the
    oracle compares and the baseline trains on), ``gym_returns`` on the standard Gymnasium reward of the
    same episodes (empty when the env reports none: a task without a true reward)."""

    returns: tuple[float, ...]
    gym_returns: tuple[float, ...] = ()

    @property
    def episodes(self) -> int:
        return len(self.returns)

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def std(self) -> float:
        return float(np.std(self.returns))

    @property
    def min(self) -> float:
        return float(np.min(self.returns))

    @property
    def max(self) -> float:
        return float(np.max(self.returns))

    @property
    def gym_mean(self) -> float | None:
        """Mean Gymnasium return, or None when there is none."""
        return float(np.mean(self.gym_returns)) if self.gym_returns else None

    @property
    def gym_std(self) -> float | None:
        return float(np.std(self.gym_returns)) if self.gym_returns else None


class _RenderFactory:
    def __init__(self, task: TaskSpec, seed: int, render: bool) -> None:
        self.task, self.seed, self.render = task, seed, render

    def __call__(self):
        return Monitor(self.task.make_env(self.seed, render_mode="rgb_array" if self.render else None))


def make_eval_env(task: TaskSpec, seed: int, render: bool = False) -> VecEnv:
    """One env of the task (its wrappers, Monitor, frame stacking), optionally rendering rgb frames."""
    venv: VecEnv = DummyVecEnv([_RenderFactory(task, seed, render)])
    if task.frame_stack > 0:
        venv = VecFrameStack(venv, task.frame_stack, channels_order="last")
    return venv


def evaluate_episodes(agent: Any, venv: VecEnv, episodes: int, deterministic: bool = True,
                      frames: list[np.ndarray] | None = None, render_env: Any = None) -> EvalResult:
    """Run ``episodes`` episodes of ``agent`` (anything with SB3's ``predict``) on a one-env ``venv``
    from :func:`make_eval_env`: true returns from Monitor (the env reward, un-normalised), Gymnasium
    returns from ``info["gym_return"]``. With ``frames``, the first episode's frames of ``render_env``."""
    returns: list[float] = []
    gym_returns: list[float] = []
    obs = venv.reset()
    while len(returns) < episodes:
        if frames is not None and not returns:
            frames.append(render_env.render())
        action, _ = agent.predict(obs, deterministic=deterministic)
        obs, _, dones, infos = venv.step(action)
        if dones[0] and "episode" in infos[0]:
            returns.append(float(infos[0]["episode"]["r"]))
            if GYM_RETURN_KEY in infos[0]:
                gym_returns.append(float(infos[0][GYM_RETURN_KEY]))
    # All or nothing: a task either reports a Gymnasium return on every episode or on none.
    return EvalResult(tuple(returns), tuple(gym_returns) if len(gym_returns) == len(returns) else ())


def evaluate_policy_returns(agent: Any, venv: VecEnv, episodes: int, deterministic: bool = True,
                            frames: list[np.ndarray] | None = None, render_env: Any = None) -> list[float]:
    """The true returns of :func:`evaluate_episodes`."""
    return list(evaluate_episodes(agent, venv, episodes, deterministic, frames, render_env).returns)


def evaluate_agent(agent: Any, task: TaskSpec, episodes: int, seed: int = EVAL_SEED,
                   agent_env: VecEnv | None = None, deterministic: bool = True) -> EvalResult:
    """``episodes`` episodes of ``agent`` on a new env of ``task`` seeded ``seed`` (every evaluation with
    the same seed starts from the same states), observations normalised with ``agent_env``'s statistics,
    frozen, when it is a ``VecNormalize`` that normalises them."""
    venv: VecEnv = make_eval_env(task, seed)
    if isinstance(agent_env, VecNormalize) and agent_env.norm_obs:
        venv = VecNormalize(venv, norm_obs=True, norm_reward=False, training=False)
        venv.obs_rms = agent_env.obs_rms.copy()
    try:
        return evaluate_episodes(agent, venv, episodes, deterministic=deterministic)
    finally:
        venv.close()


class RandomPolicy:
    """Uniformly random actions with SB3's ``predict`` interface, for :func:`evaluate_episodes`:
    ``predict(obs: (n_envs, ...)) -> ((n_envs, *act_shape), None)``."""

    def __init__(self, action_space: Any, seed: int) -> None:
        self.space = action_space
        self.space.seed(int(seed))

    def predict(self, obs: np.ndarray, deterministic: bool = True) -> tuple[np.ndarray, None]:
        return np.stack([self.space.sample() for _ in range(len(obs))]), None
