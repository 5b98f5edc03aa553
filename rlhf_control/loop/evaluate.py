"""``rlhf-control eval``: the policy in a run's newest checkpoint, on the task's true reward, optionally
written to a video."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from rlhf_control.agent.evaluation import EVAL_SEED, EvalResult, evaluate_episodes, make_eval_env
from rlhf_control.agent.factory import load_agent, load_obs_normalization
from rlhf_control.config import load_config_file
from rlhf_control.errors import UserError
from rlhf_control.loop.checkpoint import (
    AGENT_FILE,
    OBS_NORM_FILE,
    CheckpointError,
    latest_checkpoint,
    load_checkpoint_state,
)
from rlhf_control.rundir import CONFIG_FILE, check_run_dir
from rlhf_control.tasks.catalogue import get_task
from rlhf_control.tasks.spec import TaskSpec
from rlhf_control.video.mp4 import write_mp4


def run_task(run_dir: Path) -> TaskSpec:
    """The task a run directory was trained on (its ``config.toml``'s own copy, else the catalogue's)."""
    cfg, task_dict = load_config_file(run_dir / CONFIG_FILE)
    return TaskSpec.from_dict(task_dict) if task_dict else get_task(cfg.task)


def newest_checkpoint(run_dir: Path) -> Path:
    """The run's newest checkpoint directory; a one-line error when it has none yet."""
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise CheckpointError(f"run {str(run_dir)!r} has no checkpoint yet; nothing to evaluate")
    return ckpt


def load_policy(ckpt: Path, task: TaskSpec, seed: int, render: bool = False) -> tuple[VecEnv, Any]:
    """An evaluation env of ``task`` (seeded by ``seed``, with the checkpoint's observation statistics
    when it has them) and the checkpoint's agent for it, on the CPU. The agent is loaded without the
    env: attached, SB3 would reseed it with the training seed and ``seed`` would go unused."""
    venv: VecEnv = make_eval_env(task, seed, render=render)
    if (ckpt / OBS_NORM_FILE).is_file():
        venv = VecNormalize(venv, norm_obs=True, norm_reward=False, training=False)
        load_obs_normalization(venv, ckpt / OBS_NORM_FILE)
    return venv, load_agent(load_checkpoint_state(ckpt)["algo"], str(ckpt / AGENT_FILE), None, device="cpu")


def evaluate_run(run_dir: Path, episodes: int = 10, seed: int = EVAL_SEED, video: Path | None = None) -> EvalResult:
    """True return of the policy in a run's newest checkpoint over ``episodes`` episodes."""
    run_dir = check_run_dir(run_dir)
    task = run_task(run_dir)
    ckpt = newest_checkpoint(run_dir)
    if not task.has_true_reward and video is None:
        raise UserError(f"task {task.name!r} has no true reward to evaluate; use --video to watch the policy")
    venv, agent = load_policy(ckpt, task, seed, render=video is not None)
    frames: list[np.ndarray] | None = [] if video is not None else None
    base = venv.venv if isinstance(venv, VecNormalize) else venv
    while hasattr(base, "venv"):
        base = base.venv
    render_env = base.envs[0] if video is not None else None
    try:
        result = evaluate_episodes(agent, venv, episodes, frames=frames, render_env=render_env)
    finally:
        venv.close()
    if video is not None and frames:
        write_mp4(frames, video, task.fps)
    return result
