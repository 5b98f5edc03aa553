"""Evaluation envs and episodes: a policy's returns on the task's true reward, optionally with frames."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecFrameStack

from rlhf_control.tasks.spec import TaskSpec


@dataclass(frozen=True)
class EvalResult:
    """Episode returns of the true (Gymnasium) reward, as the training env gives it."""

    returns: tuple[float, ...]

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


def evaluate_policy_returns(agent, venv: VecEnv, episodes: int, deterministic: bool = True,
                            frames: list[np.ndarray] | None = None, render_env=None) -> list[float]:
    """Run ``episodes`` episodes; returns come from Monitor (the env reward, un-normalised)."""
    returns: list[float] = []
    obs = venv.reset()
    while len(returns) < episodes:
        if frames is not None and not returns:
            frames.append(render_env.render())
        action, _ = agent.predict(obs, deterministic=deterministic)
        obs, _, dones, infos = venv.step(action)
        if dones[0] and "episode" in infos[0]:
            returns.append(float(infos[0]["episode"]["r"]))
    return returns
