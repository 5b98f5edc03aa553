"""Does a run's learned reward rank other agents' behaviour as the true reward does?

Loads the reward ensemble of RUN's newest checkpoint, rolls out the deterministic policy of RUN and of
every OTHER run (their newest checkpoints, same task) for ``--steps`` steps on one evaluation seed,
and prints, per rolled-out policy, its true return over those steps and the learned reward per step
(the ensemble's mean, and each member's). When an agent stalls below others, this separates the two
causes: a learned reward that rates the better agents' steps no higher than the stalled agent's own
(reward learning), or one that rates them higher while the agent does not get there (the policy
search is stuck). With ``--actions`` (continuous actions) it also prints how much the learned reward
depends on the action at the rolled-out states: its spread over uniformly random actions at a fixed
state beside its spread over the states, and its mean with zero actions and with actions at the limit.

    python scripts/diag_learned_reward.py runs/x/Swimmer-v5/L1400-perfect-variance-s1 \\
        runs/x/Swimmer-v5/rl-true-reward-s0 runs/x/Swimmer-v5/L700-perfect-variance-s1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from stable_baselines3.common.vec_env import VecNormalize

from rlhf_control.errors import UserError
from rlhf_control.loop.checkpoint import ENSEMBLE_FILE
from rlhf_control.loop.evaluate import load_policy, newest_checkpoint, run_task
from rlhf_control.reward.ensemble import RewardEnsemble
from rlhf_control.rundir import check_run_dir
from rlhf_control.tasks.spec import TaskSpec


def rollout(run: Path, task: TaskSpec, steps: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Observations (as the reward model sees them), actions and true rewards of ``steps`` steps of the
    deterministic policy in ``run``'s newest checkpoint, on the evaluation env ``rlhf-control eval`` uses."""
    venv, agent = load_policy(newest_checkpoint(run), task, seed)
    obs_fn = task.reward_obs_fn or (lambda x: x)
    raw_obs, acts, rews = [], [], []
    obs = venv.reset()
    try:
        for _ in range(steps):
            raw = venv.get_original_obs() if isinstance(venv, VecNormalize) else obs
            act, _ = agent.predict(obs, deterministic=True)
            obs, rew, _, _ = venv.step(act)
            raw_obs.append(raw[0])
            acts.append(act[0])
            rews.append(rew[0])
    finally:
        venv.close()
    return obs_fn(np.asarray(raw_obs)), np.asarray(acts), np.asarray(rews, dtype=np.float64)


def action_dependence(ensemble: RewardEnsemble, obs: np.ndarray, acts: np.ndarray, draws: int = 20) -> str:
    """One line: the learned reward's spread over random actions in [-1, 1] at each state (mean std)
    against its spread over the states, and its mean per step with the policy's, zero and limit actions."""
    if acts.dtype.kind not in "f":
        return "actions: discrete; not measured"
    rng = np.random.default_rng(0)
    own = ensemble.reward(obs, acts)
    rand = np.stack([ensemble.reward(obs, rng.uniform(-1, 1, acts.shape).astype(acts.dtype)) for _ in range(draws)])
    return (f"actions: std over random actions {rand.std(axis=0).mean():.3f} vs over states {own.std():.3f};"
            f" per step with the policy's {own.mean():+.3f}, zero {ensemble.reward(obs, np.zeros_like(acts)).mean():+.3f},"
            f" at the limit {ensemble.reward(obs, np.sign(acts)).mean():+.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="the run whose learned reward is read")
    parser.add_argument("others", type=Path, nargs="*", help="runs of the same task whose policies it rates")
    parser.add_argument("--steps", type=int, default=1000, help="steps rolled out per policy (default 1000)")
    parser.add_argument("--seed", type=int, default=12345, help="the evaluation env's seed (default 12345)")
    parser.add_argument("--actions", action="store_true", help="also print the reward's dependence on the action")
    args = parser.parse_args(argv)
    try:
        if args.steps < 1:
            raise UserError(f"--steps {args.steps} is not allowed; use an integer >= 1")
        runs = [check_run_dir(r) for r in (args.run, *args.others)]
        task = run_task(runs[0])
        for r in runs[1:]:
            if (name := run_task(r).name) != task.name:
                raise UserError(f"run {str(r)!r} is of task {name!r}, not {task.name!r}")
        ensemble = RewardEnsemble.load(newest_checkpoint(runs[0]) / ENSEMBLE_FILE)
    except (UserError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"learned reward of {runs[0]} ({task.name}, {ensemble.n_members} members), "
          f"{args.steps} deterministic steps per policy")
    for r in runs:
        obs, acts, rews = rollout(r, task, args.steps, args.seed)
        members = ensemble.member_rewards(obs, acts, normalized=True).mean(axis=1)
        print(f"  {str(r):60s} true return {rews.sum():10.1f}   learned/step {ensemble.reward(obs, acts).mean():+8.3f}"
              f"   members " + " ".join(f"{m:+.3f}" for m in members), flush=True)
        if args.actions:
            print("    " + action_dependence(ensemble, obs, acts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
