"""Evaluate a run's saved policy on the task's true reward, optionally writing a video."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecFrameStack, VecNormalize

from rlhf_control.agent.factory import load_agent, load_obs_normalization
from rlhf_control.config import load_config_file
from rlhf_control.loop.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint_state
from rlhf_control.rundir import CONFIG_FILE, check_run_dir
from rlhf_control.tasks.catalogue import get_task
from rlhf_control.tasks.spec import TaskSpec
from rlhf_control.video.mp4 import write_mp4


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


def evaluate_run(run_dir: Path, episodes: int = 10, seed: int = 12345, video: Path | None = None) -> EvalResult:
    """True return of the policy in a run's newest checkpoint over ``episodes`` episodes."""
    run_dir = check_run_dir(run_dir)
    cfg, task_dict = load_config_file(run_dir / CONFIG_FILE)
    task = TaskSpec.from_dict(task_dict) if task_dict else get_task(cfg.task)
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise CheckpointError(f"run {str(run_dir)!r} has no checkpoint yet; nothing to evaluate")
    state = load_checkpoint_state(ckpt)
    if not task.has_true_reward and video is None:
        raise ValueError(f"task {task.name!r} has no true reward to evaluate; use --video to watch the policy")
    venv = make_eval_env(task, seed, render=video is not None)
    if (ckpt / "obs_norm.npz").is_file():
        venv = VecNormalize(venv, norm_obs=True, norm_reward=False, training=False)
        load_obs_normalization(venv, ckpt / "obs_norm.npz")
    agent = load_agent(state["algo"], str(ckpt / "agent.zip"), venv, device="cpu")
    frames: list[np.ndarray] | None = [] if video is not None else None
    base = venv.venv if isinstance(venv, VecNormalize) else venv
    while hasattr(base, "venv"):
        base = base.venv
    render_env = base.envs[0] if video is not None else None
    try:
        returns = evaluate_policy_returns(agent, venv, episodes, frames=frames, render_env=render_env)
    finally:
        venv.close()
    if video is not None and frames:
        write_mp4(frames, video, task.fps)
    return EvalResult(tuple(returns))
