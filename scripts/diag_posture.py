"""Which evaluation episodes of a run were spent upside down, or standing still.

Replays a run's final deterministic evaluation (its newest checkpoint, the evaluation env seeded as the
run's own evaluations, ``--episodes`` back to back: with the run's ``eval_episodes`` the mean printed is
its last ``eval_true_return``), and prints per episode the true return and the share of its steps on
which the body's pitch (observation entry ``--index``: HalfCheetah's torso angle, its second entry) is
beyond ``--limit`` radians (90 degrees by default). On HalfCheetah a run's mean is set less by how fast
it runs than by whether it turns over or stalls, and this tells which of the two happened where.

    python scripts/diag_posture.py runs/results-mujoco/HalfCheetah-v5/L700-*-s0
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

from rlhf_control.agent.evaluation import EVAL_SEED
from rlhf_control.errors import UserError
from rlhf_control.loop.evaluate import run_task
from rlhf_control.rundir import check_run_dir

sys.path.insert(0, str(Path(__file__).resolve().parent))
from diag_learned_reward import rollout  # noqa: E402


def episode_postures(obs: np.ndarray, rewards: np.ndarray, horizon: int, index: int = 1,
                     limit: float = math.pi / 2) -> list[tuple[float, float]]:
    """Per episode of ``horizon`` steps (``obs (E*horizon, D)``, ``rewards (E*horizon,)``), its
    return and the share of its steps with ``|obs[:, index]| > limit``."""
    if len(obs) != len(rewards) or len(obs) % horizon:
        raise ValueError(f"{len(obs)} observations and {len(rewards)} rewards are not whole episodes of {horizon}")
    pitched = (np.abs(obs[:, index]) > limit).reshape(-1, horizon).mean(axis=1)
    returns = np.asarray(rewards, dtype=np.float64).reshape(-1, horizon).sum(axis=1)
    return [(float(r), float(p)) for r, p in zip(returns, pitched, strict=True)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", type=Path, nargs="+")
    p.add_argument("--episodes", type=int, default=5, help="evaluation episodes (the MuJoCo grid's: 5)")
    p.add_argument("--index", type=int, default=1, help="observation entry of the pitch (HalfCheetah: 1)")
    p.add_argument("--limit", type=float, default=math.pi / 2, help="radians beyond which a step counts")
    args = p.parse_args(argv)
    if args.episodes < 1:
        raise SystemExit(f"--episodes={args.episodes} is not allowed; use an int >= 1")
    try:
        for run in args.runs:
            check_run_dir(run)
            task = run_task(run)
            if not task.horizon:
                raise UserError(f"task {task.name!r} of {str(run)!r} has no fixed episode length to cut episodes by")
            obs, _, rewards = rollout(run, task, args.episodes * task.horizon, EVAL_SEED)
            if not 0 <= args.index < obs.shape[1]:
                raise UserError(f"--index={args.index} is not allowed; {task.name} observations have "
                                f"{obs.shape[1]} entries")
            eps = episode_postures(obs, rewards, task.horizon, args.index, args.limit)
            mean = np.mean([r for r, _ in eps])
            shown = " ".join(f"{r:.0f} ({100 * s:.0f}%)" for r, s in eps)
            print(f"{run}: mean {mean:.1f}; per episode, return (share pitched beyond {args.limit:.2f}): {shown}")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
