"""PEBBLE against SAC on the true reward, per task and seed, in one process.

For each task and seed: SAC on the task's true reward (the yardstick), then the RLHF loop with SAC
(PEBBLE: random steps, unsupervised pre-training on the state entropy, labels in B-Pref's rounds,
the replay buffer relabelled after every reward update) at each label budget, with the perfect
oracle. Prints the final deterministic returns (``--eval-episodes`` episodes on separate seeded
envs), the normalised score (PEBBLE - random) / (SAC - random), the wall time of each run and the
relabelling cost (seconds and share of the run's wall time).

    python scripts/bench_pebble.py                                       # the small scale (minutes)
    python scripts/bench_pebble.py --tasks walker-walk --seeds 0 1 2 --labels 100 --steps 500000 \\
        --unsup-steps 9000 --iteration-steps 20000                       # B-Pref's scale (days on a CPU)
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from stable_baselines3.common.vec_env import VecNormalize

from rlhf_control.agent.evaluation import evaluate_agent
from rlhf_control.agent.factory import make_agent
from rlhf_control.config import RunConfig, resolve
from rlhf_control.experiments.baseline import random_policy_return
from rlhf_control.loop.trainer import RLHFTrainer
from rlhf_control.tasks.catalogue import get_task


def sac_true_reward(task_name: str, seed: int, steps: int, agent: dict, episodes: int, n_envs: int
                    ) -> tuple[float, float]:
    """SAC with the task's settings on the true reward: (deterministic return, wall seconds). Its
    observations are normalised where the task's are (``normalize``), as the RLHF loop's SAC sees them;
    its rewards are not, as the loop's learned rewards are not."""
    r = resolve(RunConfig(task=task_name, algo="sac", steps=steps, seed=seed, unsup_steps=0, agent=agent,
                          n_envs=n_envs))
    t0 = time.perf_counter()
    venv = r.task.make_vec_env(r.n_envs, seed=seed)
    if r.task.normalize:
        venv = VecNormalize(venv, norm_obs=True, norm_reward=False)
    model = make_agent("sac", venv, r.agent_params, seed=seed, policy=r.task.policy)
    model.learn(total_timesteps=steps)
    wall = time.perf_counter() - t0
    ret = evaluate_agent(model, r.task, episodes, agent_env=venv).mean
    venv.close()
    return ret, wall


def pebble(task_name: str, seed: int, steps: int, labels: int, args: argparse.Namespace, run_dir: Path
           ) -> dict:
    cfg = RunConfig(task=task_name, algo="sac", steps=steps, seed=seed, labels=labels, pretrain_labels=0,
                    n_envs=args.n_envs,
                    schedule="bpref", label_batch=max(1, labels // args.rounds), unsup_steps=args.unsup_steps,
                    iteration_steps=args.iteration_steps, eval_episodes=args.eval_episodes, eval_every=10**6,
                    relabel=not args.no_relabel, critic_reset=not args.no_critic_reset,
                    recent_replay=args.recent_replay, query_min_clips=args.query_min_clips or None,
                    reward_l2=not args.no_reward_l2, reward_crop=args.reward_crop, agent=agent_overrides(args),
                    reward_epochs=args.reward_epochs or None, selector=args.selector, reward_obs=args.reward_obs)
    t0 = time.perf_counter()
    trainer = RLHFTrainer(cfg, run_dir)
    trainer.run()
    wall = time.perf_counter() - t0
    # With the agent's observation statistics (the task may normalise them), as the loop evaluates.
    ret = evaluate_agent(trainer.agent, trainer.task, args.eval_episodes, agent_env=trainer.agent_env).mean
    op = trainer.offpolicy
    return {"return": ret, "wall": wall, "relabel_s": op.relabel_seconds, "relabels": op.relabels,
            "transitions": op.relabelled_transitions}


def on_policy(task_name: str, seed: int, steps: int, labels: int, args: argparse.Namespace, run_dir: Path
              ) -> tuple[float, float]:
    """The on-policy loop (the task's own agent if it is on-policy, else ``--on-policy``) with the paper's
    schedule and 25% of the labels before RL: (deterministic return, wall seconds)."""
    task = get_task(task_name)
    algo = task.algo if task.algo in ("ppo", "a2c", "trpo") else args.on_policy
    cfg = RunConfig(task=task_name, algo=algo, steps=steps, seed=seed, labels=labels, schedule="paper",
                    pretrain_labels=labels // 4, eval_episodes=args.eval_episodes, eval_every=10**6,
                    **({} if algo == task.algo else {"n_envs": 1}))
    t0 = time.perf_counter()
    trainer = RLHFTrainer(cfg, run_dir)
    trainer.run()
    wall = time.perf_counter() - t0
    return evaluate_agent(trainer.agent, trainer.task, args.eval_episodes, agent_env=trainer.agent_env).mean, wall


def relabel_million(task_name: str, transitions: int = 1_000_000) -> float:
    """Seconds to relabel a full replay buffer of ``transitions`` of the task's shapes (random contents)
    with a 3-member ensemble of the task's reward net."""
    from rlhf_control.agent.replay import relabel_replay
    from rlhf_control.reward.ensemble import EnsembleConfig, RewardEnsemble

    task = get_task(task_name)
    venv = task.make_vec_env(1, seed=0)
    model = make_agent("sac", venv, {"buffer_size": transitions, "learning_starts": 0}, seed=0)
    buf, rng = model.replay_buffer, np.random.default_rng(0)
    buf.observations[:] = rng.normal(size=buf.observations.shape)
    buf.actions[:] = rng.uniform(-1, 1, size=buf.actions.shape)
    buf.full = True
    ens = RewardEnsemble(EnsembleConfig(n_members=3, net=task.reward_net, **dict(task.reward_net_kwargs)),
                         tuple(venv.observation_space.shape), tuple(venv.action_space.shape), seed=0)
    venv.close()
    return relabel_replay(model, ens).seconds


def agent_overrides(args: argparse.Namespace) -> dict:
    out = {"learning_starts": args.random_steps}
    if args.net:
        out["policy_kwargs"] = {"net_arch": [args.net, args.net]}
    if args.batch_size:
        out["batch_size"] = args.batch_size
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", nargs="+", default=["walker-walk"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--labels", nargs="+", type=int, default=[20, 50])
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--random-steps", type=int, default=1000, help="SAC's learning_starts (PEBBLE: 1,000)")
    ap.add_argument("--unsup-steps", type=int, default=2000, help="PEBBLE: 9,000")
    ap.add_argument("--iteration-steps", type=int, default=1000, help="B-Pref's num_interact (20,000)")
    ap.add_argument("--rounds", type=int, default=5, help="label rounds the budget is split into (B-Pref: 10)")
    ap.add_argument("--eval-episodes", type=int, default=5)
    ap.add_argument("--n-envs", type=int, default=1, help="envs stepped together (PEBBLE: 1)")
    ap.add_argument("--net", type=int, default=64, help="SAC hidden width (0: the task's, 256)")
    ap.add_argument("--batch-size", type=int, default=128, help="SAC batch size (0: the task's, 256)")
    ap.add_argument("--no-relabel", action="store_true", help="the no-relabelling ablation")
    ap.add_argument("--query-min-clips", type=int, default=0,
                    help="the query window's floor in clips (0: the run's default, 256, or B-Pref's 100 "
                         "episodes on a DeepMind Control task)")
    ap.add_argument("--recent-replay", type=float, default=0.0,
                    help="share of each SAC batch from the last 10 episodes (QPA's hybrid replay: 0.5; 0: off)")
    ap.add_argument("--no-critic-reset", action="store_true",
                    help="keep SAC's critics trained on the state entropy at the first labels (PEBBLE resets them)")
    ap.add_argument("--no-reward-l2", action="store_true",
                    help="no adaptive L2 on the reward predictors (PEBBLE's reward model has none)")
    ap.add_argument("--reward-crop", type=int, default=0,
                    help="SURF's temporal crop of the reward's training clips, in steps (0: off)")
    ap.add_argument("--reward-epochs", type=int, default=0,
                    help="reward epochs per label round after the first (0: the task's)")
    ap.add_argument("--reward-obs", choices=("before", "after"), default="before",
                    help="the learned reward reads the observation before each step (the paper's) or the one it "
                         "led to")
    ap.add_argument("--selector", default="variance", help="query selector (default: variance, the ensemble's disagreement)")
    ap.add_argument("--skip-sac", action="store_true",
                    help="no SAC on the true reward (its return and the score print as nan)")
    ap.add_argument("--on-policy-labels", type=int, default=0,
                    help="also run the on-policy loop with this many labels (0: not)")
    ap.add_argument("--on-policy", default="ppo", help="the on-policy agent for tasks whose own agent is off-policy")
    ap.add_argument("--out", type=Path, default=None, help="keep the run directories here")
    args = ap.parse_args()
    torch.set_num_threads(1)  # as the loop does (--torch-threads 1): the same for both
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-pebble-"))
    print(f"steps {args.steps}: {args.random_steps} random, {args.unsup_steps} unsupervised, labels in "
          f"{args.rounds} rounds every {args.iteration_steps} steps; {args.eval_episodes} evaluation episodes")
    print("task | seed | random | SAC (true reward) | labels | PEBBLE | normalised | wall SAC / PEBBLE s | "
          "relabel s (share of wall) | transitions relabelled")
    for task_name in args.tasks:
        print(f"{task_name}: relabelling a full buffer of 1,000,000 transitions takes "
              f"{relabel_million(task_name):.2f} s", flush=True)
    for task_name in args.tasks:
        task = get_task(task_name)
        for seed in args.seeds:
            rand, _ = random_policy_return(task, seed=seed + 1000, episodes=args.eval_episodes)
            sac, sac_wall = (float("nan"), float("nan")) if args.skip_sac else sac_true_reward(
                task_name, seed, args.steps, agent_overrides(args), args.eval_episodes, args.n_envs)
            for labels in args.labels:
                res = pebble(task_name, seed, args.steps, labels, args, out / f"{task_name}-L{labels}-s{seed}")
                score = (res["return"] - rand) / (sac - rand) if sac != rand else float("nan")
                print(f"{task_name} | {seed} | {rand:.1f} | {sac:.1f} | {labels} | {res['return']:.1f} | {score:.2f} | "
                      f"{sac_wall:.0f} / {res['wall']:.0f} | {res['relabel_s']:.2f} "
                      f"({100 * res['relabel_s'] / res['wall']:.2f}%) | {res['transitions']:,} in {res['relabels']}",
                      flush=True)
            if args.on_policy_labels:
                ret, wall = on_policy(task_name, seed, args.steps, args.on_policy_labels, args,
                                      out / f"{task_name}-onpolicy-L{args.on_policy_labels}-s{seed}")
                score = (ret - rand) / (sac - rand) if sac != rand else float("nan")
                print(f"{task_name} | {seed} | {rand:.1f} | {sac:.1f} | {args.on_policy_labels} (on-policy) | "
                      f"{ret:.1f} | {score:.2f} | {sac_wall:.0f} / {wall:.0f} | - | -", flush=True)
    if args.out is None:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
