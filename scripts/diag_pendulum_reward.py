"""Where does a Pendulum-v1 run's learned reward follow the true one, and where is it flat?

Loads the reward ensemble of each RUN's newest checkpoint and reads it on a grid of pendulum states
(angle from the top, theta in [-pi, pi]; angular velocity in [-8, 8]; zero torque), beside the true
reward -(theta^2 + 0.1 thetadot^2). Prints, per run:

- the learned and the true reward along the angle at rest (thetadot = 0), from the bottom through
  the top to the bottom;
- the share of each reward's range that lies over the lowest ``--bottom`` radians at rest: the true
  reward is steepest there (theta^2 has a cusp where theta wraps), so a learned reward with a much
  smaller share gives an agent at the bottom little to climb;
- Spearman rank correlations with the true reward over the grid, its lower half (|theta| > pi/2) and
  its upper half.

    python scripts/diag_pendulum_reward.py runs/default/Pendulum-v1/L300-perfect-variance-s1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from rlhf_control.errors import UserError
from rlhf_control.loop.checkpoint import ENSEMBLE_FILE
from rlhf_control.loop.evaluate import newest_checkpoint, run_task
from rlhf_control.reward.ensemble import RewardEnsemble
from rlhf_control.rundir import check_run_dir


def true_reward(theta: np.ndarray, thetadot: np.ndarray) -> np.ndarray:
    """Pendulum-v1's reward at zero torque."""
    return -(theta**2 + 0.1 * thetadot**2)


def states(theta: np.ndarray, thetadot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Observations (cos, sin, thetadot) and zero torques for the reward model."""
    obs = np.stack([np.cos(theta), np.sin(theta), thetadot], axis=1).astype(np.float32)
    return obs, np.zeros((len(theta), 1), np.float32)


def reward_profile(model: Any, bottom: float = 0.6, points: int = 11) -> dict[str, Any]:
    """What ``model`` (anything with ``reward(obs, acts)``) makes of the pendulum's states.

    ``at_rest``: (theta, learned, true) at ``points`` angles from -pi to pi, thetadot = 0.
    ``bottom_share``: (learned, true) share of each reward's range at rest over |theta| >= pi - bottom.
    ``spearman``: {"all", "lower", "upper"} rank correlations over a 61 x 41 grid."""
    theta = np.linspace(-np.pi, np.pi, 241)
    rest = np.zeros_like(theta)
    learned = np.asarray(model.reward(*states(theta, rest)), np.float64)
    true = true_reward(theta, rest)
    low = np.abs(theta) >= np.pi - bottom

    def share(r: np.ndarray) -> float:
        return float((r[low].max() - r[low].min()) / (r.max() - r.min()))

    pick = np.linspace(0, len(theta) - 1, points).round().astype(int)
    th, td = (g.ravel() for g in np.meshgrid(np.linspace(-np.pi, np.pi, 61), np.linspace(-8, 8, 41)))
    grid_learned = np.asarray(model.reward(*states(th, td)), np.float64)
    grid_true = true_reward(th, td)
    halves = {"all": np.ones_like(th, bool), "lower": np.abs(th) > np.pi / 2, "upper": np.abs(th) <= np.pi / 2}
    return {
        "at_rest": (theta[pick], learned[pick], true[pick]),
        "bottom_share": (share(learned), share(true)),
        "spearman": {k: float(spearmanr(grid_learned[m], grid_true[m])[0]) for k, m in halves.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+", help="Pendulum-v1 run directories")
    parser.add_argument("--bottom", type=float, default=0.6, help="radians from the bottom (default 0.6)")
    args = parser.parse_args(argv)
    try:
        if not 0 < args.bottom < np.pi:
            raise UserError(f"--bottom {args.bottom} must be between 0 and pi")
        for run in args.runs:
            run = check_run_dir(run)
            task = run_task(run)
            if task.env_id != "Pendulum-v1":
                raise UserError(f"run {str(run)!r} is on {task.env_id!r}; this reads Pendulum-v1 runs only")
            prof = reward_profile(RewardEnsemble.load(newest_checkpoint(run) / ENSEMBLE_FILE), args.bottom)
            theta, learned, true = prof["at_rest"]
            print(f"{run}")
            print("  theta at rest  " + " ".join(f"{x:+6.2f}" for x in theta))
            print("  learned reward " + " ".join(f"{x:+6.2f}" for x in learned))
            print("  true reward    " + " ".join(f"{x:+6.2f}" for x in true))
            lo, tr = prof["bottom_share"]
            rho = prof["spearman"]
            print(f"  share of the range over the bottom {args.bottom} rad: learned {lo:.2f}, true {tr:.2f}")
            print(f"  Spearman with the true reward: all {rho['all']:.3f}, lower half {rho['lower']:.3f}, "
                  f"upper half {rho['upper']:.3f}")
    except UserError as exc:
        print(f"diag_pendulum_reward: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
