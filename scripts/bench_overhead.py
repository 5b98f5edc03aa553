"""Benchmark the RLHF loop's overhead and final score against plain RL on the true reward.

For each task, in one process: plain SB3 RL on the env's true reward (the DESIGN.md baseline:
same task env, n_envs, seed, hyperparameters and steps as the RLHF run, ``VecNormalize`` reward
normalisation as the RL Zoo does, observation normalisation where the task says ``normalize``),
then the RLHF loop (``RLHFTrainer``: perfect synthetic oracle, 700 labels, an ensemble of 3, the
``variance`` selector). Both use one torch thread; the RLHF loop retrains its reward in a second
process (its default; ``--sync-reward`` keeps it in the main process, as RL has nothing to run there).

Printed per task: training wall-clock and CPU seconds of each (evaluation excluded: the RLHF run's
periodic evaluation is off, and both final policies are evaluated after training; the RLHF figure
includes its pretraining and checkpoints, and its CPU the reward worker's), the ratio RLHF/RL of
wall-clock (target <= 1.15) and of CPU, where the RLHF run's time goes (instrumented phases), and
the final returns of each and of a uniformly random policy. Returns come from the project's
evaluation (``agent.evaluation.evaluate_agent``: the deterministic policy, ``--eval-episodes``
episodes on a separate env seeded ``EVAL_SEED``, the training env's observation statistics frozen; a
run's ``eval_true_return`` is the same evaluation), on the task's true reward, the paper's (for MuJoCo,
Gymnasium's reward without the control cost: what RL trains on and the oracle compares), and on the
standard Gymnasium reward beside it. The normalised score (RLHF - random) / (RL - random) is on the
true reward (target >= 0.9); the Gymnasium one is printed for reference. A markdown table at the end.

Usage::

    python scripts/bench_overhead.py                                   # Pendulum-v1 200k, HalfCheetah-v5 300k
    python scripts/bench_overhead.py --tasks HalfCheetah-v5 --algo ppo
    python scripts/bench_overhead.py --tasks HalfCheetah-v5 --seeds 0 1 2   # scores over seeds, too
    python scripts/bench_overhead.py --steps-scale 0.1 --profile       # quick check, with cProfile

Ratios are only meaningful within one run (the same machine load for both halves); absolute
seconds are not comparable across machines or runs.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import resource
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.vec_env import VecNormalize

from rlhf_control.agent.evaluation import (
    EVAL_SEED,
    EvalResult,
    RandomPolicy,
    evaluate_agent,
    evaluate_episodes,
    make_eval_env,
)
from rlhf_control.agent.factory import make_agent
from rlhf_control.config import RunConfig, resolve
from rlhf_control.loop.trainer import RLHFTrainer
from rlhf_control.tasks.catalogue import get_task
from rlhf_control.tasks.spec import ALGOS

DEFAULT_STEPS = {"Pendulum-v1": 200_000, "HalfCheetah-v5": 300_000}
LABELS, MEMBERS, SELECTOR = 700, 3, "variance"  # --labels changes the budget
WALL_TARGET, SCORE_TARGET = 1.15, 0.9


# ----------------------------------------------------------------------------- instrumentation
class PhaseTimer:
    """Wall seconds and call counts of wrapped callables, by phase name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - t0
                self.calls[name] += 1

        return timed

    def patch(self, obj: Any, attr: str, name: str) -> None:
        """Replace ``obj.attr`` (a bound method) on this instance by a timed version (frozen dataclasses too)."""
        object.__setattr__(obj, attr, self.wrap(name, getattr(obj, attr)))


def instrument_trainer(trainer: RLHFTrainer) -> PhaseTimer:
    """Time the trainer's phases by wrapping methods on this instance only (no code changed).

    ``env.step`` is the raw vec env; ``recorder`` the TrajectoryRecorder's own work (segment cutting,
    obs copies); ``reward_inference`` the ensemble's reward (one call per rollout); ``wait for reward
    worker`` the time the loop waited for a retraining running in the worker process (and took its
    weights); the trainer methods nest:
    ``pretrain`` holds its own ``ask``/``collect``/``train_reward``.
    """
    pt = PhaseTimer()
    rec = trainer.recorder
    pt.patch(rec.venv, "step_wait", "env.step_wait")
    pt.patch(rec.venv, "step_async", "env.step_async")
    pt.patch(rec, "step_wait", "recorder.step_wait (incl. env)")
    trainer.learned._reward_fn = pt.wrap("reward_inference", trainer.learned._reward_fn)
    for attr, name in [("pretrain", "pretrain"), ("iteration", "iteration (total)"), ("_ask", "ask"),
                       ("_collect", "collect"), ("_log", "log"), ("checkpoint", "checkpoint")]:
        pt.patch(trainer, attr, name)
    pt.patch(trainer.updater, "train_now", "train_reward (in process)")
    pt.patch(trainer.updater, "take", "wait for reward worker")
    pt.patch(trainer.selector, "select", "select")
    pt.patch(trainer.ensemble, "update_normalization", "update_normalization")
    pt.patch(trainer.updater.fitter, "train", "reward_trainer.train")
    return pt


def print_phases(pt: PhaseTimer, total: float, title: str) -> None:
    print(f"  {title}: where the wall-clock goes (of {total:.1f} s)")
    env = pt.seconds["env.step_wait"] + pt.seconds["env.step_async"]
    derived = {
        "env step (raw vec env)": env,
        "recorder own work": pt.seconds["recorder.step_wait (incl. env)"] - pt.seconds["env.step_wait"],
    }
    for name, secs in list(derived.items()) + sorted(pt.seconds.items(), key=lambda kv: -kv[1]):
        if name.startswith("env.") or name.startswith("recorder.step_wait"):
            continue
        print(f"    {name:28s} {secs:9.2f} s  {100 * secs / max(total, 1e-9):5.1f} %  calls {pt.calls.get(name, '')}")


# ----------------------------------------------------------------------------- baseline
def make_baseline_env(task, n_envs: int, seed: int, gamma: float) -> VecNormalize:
    """The task env as the RLHF run builds it, with VecNormalize on the true reward (RL Zoo style)."""
    venv = task.make_vec_env(n_envs, seed=seed)
    return VecNormalize(venv, norm_obs=task.normalize, norm_reward=True, gamma=gamma)


def random_eval(task, episodes: int) -> EvalResult:
    """Uniformly random actions, evaluated as the policies are (same env and seed)."""
    venv = make_eval_env(task, EVAL_SEED)
    try:
        return evaluate_episodes(RandomPolicy(venv.action_space, EVAL_SEED), venv, episodes)
    finally:
        venv.close()


def score(value: float | None, rl: float | None, rand: float | None) -> float:
    """(value - random) / (RL - random); NaN where undefined."""
    if value is None or rl is None or rand is None or abs(rl - rand) <= 1e-9:
        return float("nan")
    return (value - rand) / (rl - rand)


def children_cpu() -> float:
    """User + system CPU seconds of this process's finished (waited-for) children."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def timed_learn(agent, steps: int, callback=None) -> tuple[float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    agent.learn(total_timesteps=steps, callback=callback)
    return time.perf_counter() - w0, time.process_time() - c0


# ----------------------------------------------------------------------------- one task
def bench_task(name: str, steps: int, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    # eval_episodes=0: no periodic evaluation inside the timed RLHF run (RL has none); both final
    # policies are evaluated below, with the same evaluation.
    cfg = RunConfig(task=name, oracle="perfect", selector=SELECTOR, labels=args.labels, reward_members=MEMBERS,
                    steps=steps, seed=seed, algo=args.algo, torch_threads=1, device="cpu",
                    reward_async=not args.sync_reward, eval_episodes=0,
                    query_min_clips=args.query_min_clips, reward_continuous=args.reward_continuous,
                    reward_return_norm=args.reward_return_norm, reward_norm=args.reward_norm)
    r = resolve(cfg)
    task = r.task
    gamma = float(r.agent_params.get("gamma", 0.99))
    print(f"\n=== {name}: {r.algo.upper()} ({'task default' if args.algo is None else '--algo'}), "
          f"{steps} steps, n_envs {r.n_envs}, seed {seed}, obs normalisation {task.normalize}")
    print(f"  agent hyperparameters (both runs): {r.agent_params}")
    print(f"  RLHF: {r.labels} labels ({r.pretrain_labels} pretraining, {r.pretrain_epochs} pretrain epochs), "
          f"{MEMBERS} members, selector {SELECTOR}, schedule {r.schedule}, reward retrained "
          f"{'in the main process' if args.sync_reward else 'in a worker process'}")
    torch.set_num_threads(1)

    # Plain RL on the true reward.
    env = make_baseline_env(task, r.n_envs, seed, gamma)
    agent = make_agent(r.algo, env, r.agent_params, seed=seed, device="cpu", policy=task.policy)
    rl_pt = PhaseTimer()
    rl_pt.patch(env.venv, "step_wait", "env.step_wait")
    rl_pt.patch(env.venv, "step_async", "env.step_async")
    rl_wall, rl_cpu = timed_learn(agent, steps)
    env_s = rl_pt.seconds["env.step_wait"] + rl_pt.seconds["env.step_async"]
    print(f"  RL   train: {rl_wall:9.1f} s wall, {rl_cpu:9.1f} s CPU  ({steps / rl_wall:.0f} steps/s; "
          f"raw env step {env_s:.1f} s)")
    env.training = False
    rl_eval = evaluate_agent(agent, task, args.eval_episodes, seed=EVAL_SEED, agent_env=env)
    env.close()

    # The RLHF loop.
    run_dir = args.out / f"{name.replace('/', '_')}-{r.algo}-s{seed}-rlhf"
    if run_dir.exists():
        raise SystemExit(f"{run_dir} exists; pass another --out")
    trainer = RLHFTrainer(cfg, run_dir)
    pt = instrument_trainer(trainer)
    prof = cProfile.Profile() if args.profile else None
    w0, c0, k0 = time.perf_counter(), time.process_time(), children_cpu()
    if prof is not None:
        prof.enable()
    trainer.run()
    if prof is not None:
        prof.disable()
    rlhf_wall, rlhf_cpu = time.perf_counter() - w0, time.process_time() - c0
    worker_cpu = children_cpu() - k0  # the reward worker, reaped when the run closed
    note = " (under cProfile: inflated)" if prof is not None else ""
    print(f"  RLHF train: {rlhf_wall:9.1f} s wall, {rlhf_cpu:9.1f} s CPU + {worker_cpu:.1f} s CPU in the reward "
          f"worker  ({steps / rlhf_wall:.0f} steps/s){note}")
    print_phases(pt, rlhf_wall, "RLHF")
    if prof is not None:
        report_profile(prof, run_dir.parent / f"{run_dir.name}.prof")
    # The final policy (the run's last checkpoint holds the same), observation statistics frozen.
    rlhf_eval = evaluate_agent(trainer.agent, task, args.eval_episodes, seed=EVAL_SEED, agent_env=trainer.agent_env)
    rand_eval = random_eval(task, args.eval_episodes)
    res = {
        "task": name, "algo": r.algo, "steps": steps, "n_envs": r.n_envs, "seed": seed,
        "rl_wall_s": rl_wall, "rl_cpu_s": rl_cpu, "rlhf_wall_s": rlhf_wall, "rlhf_cpu_s": rlhf_cpu, "worker_cpu_s": worker_cpu,
        "wall_ratio": rlhf_wall / rl_wall, "cpu_ratio": (rlhf_cpu + worker_cpu) / rl_cpu, "profiled": prof is not None,
        "rl_return": rl_eval.mean, "rl_return_std": rl_eval.std,
        "rlhf_return": rlhf_eval.mean, "rlhf_return_std": rlhf_eval.std, "random_return": rand_eval.mean,
        "normalised_score": score(rlhf_eval.mean, rl_eval.mean, rand_eval.mean),
        "rl_gym_return": rl_eval.gym_mean, "rlhf_gym_return": rlhf_eval.gym_mean, "random_gym_return": rand_eval.gym_mean,
        "gym_normalised_score": score(rlhf_eval.gym_mean, rl_eval.gym_mean, rand_eval.gym_mean),
        "eval_episodes": args.eval_episodes, "eval_seed": EVAL_SEED,
        "labels": args.labels, "query_min_clips": args.query_min_clips, "reward_continuous": args.reward_continuous,
        "reward_return_norm": args.reward_return_norm, "reward_norm": args.reward_norm,
        "phases_s": dict(pt.seconds), "rlhf_run_dir": str(run_dir),
    }
    print(f"  wall ratio RLHF/RL {res['wall_ratio']:.3f} (target <= {WALL_TARGET}); CPU ratio (main + worker) {res['cpu_ratio']:.3f}")
    print(f"  true return, the paper's reward ({args.eval_episodes} episodes, deterministic): "
          f"RL {rl_eval.mean:.1f} +- {rl_eval.std:.1f}, RLHF {rlhf_eval.mean:.1f} +- {rlhf_eval.std:.1f}, "
          f"random {rand_eval.mean:.1f}")
    if rl_eval.gym_returns and rlhf_eval.gym_returns and rand_eval.gym_returns:
        print(f"  Gymnasium return, the standard reward (same episodes): RL {rl_eval.gym_mean:.1f} +- {rl_eval.gym_std:.1f}, "
              f"RLHF {rlhf_eval.gym_mean:.1f} +- {rlhf_eval.gym_std:.1f}, random {rand_eval.gym_mean:.1f}; "
              f"normalised {res['gym_normalised_score']:.3f}")
    print(f"  normalised score (RLHF - random) / (RL - random) on the true return = {res['normalised_score']:.3f} "
          f"(target >= {SCORE_TARGET})")
    return res


def report_profile(prof: cProfile.Profile, path: Path, top: int = 25) -> None:
    prof.dump_stats(str(path))
    for key, title in (("cumulative", "cumulative"), ("tottime", "own time")):
        buf = io.StringIO()
        stats = pstats.Stats(prof, stream=buf).sort_stats(key)
        stats.print_stats(r"rlhf_control" if key == "cumulative" else "", top)
        lines = [ln for ln in buf.getvalue().splitlines() if ln.strip()]
        start = next((i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls")), 0)
        print(f"  cProfile, top {top} by {title}{' (rlhf_control only)' if key == 'cumulative' else ''}; "
              f"full stats in {path}")
        for ln in lines[start:start + top + 1]:
            print("    " + ln)


def print_table(results: list[dict[str, Any]]) -> None:
    def num(x: float | None) -> str:
        return "–" if x is None or x != x else f"{x:.1f}"

    print("\nReturns: true = the task's reward (the paper's), Gymnasium = the standard reward, same episodes.")
    print("\n| task | algo | steps | seed | RL wall s | RLHF wall s | wall ratio | CPU ratio | RL return | "
          "RLHF return | random | normalised score | RL Gymnasium | RLHF Gymnasium | random Gymnasium |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        flag = " (profiled)" if r["profiled"] else ""
        print(f"| {r['task']} | {r['algo']} | {r['steps']} | {r['seed']} | {r['rl_wall_s']:.0f} | {r['rlhf_wall_s']:.0f} | "
              f"{r['wall_ratio']:.2f}{flag} | {r['cpu_ratio']:.2f} | {r['rl_return']:.1f} | {r['rlhf_return']:.1f} | "
              f"{r['random_return']:.1f} | {r['normalised_score']:.2f} | {num(r['rl_gym_return'])} | "
              f"{num(r['rlhf_gym_return'])} | {num(r['random_gym_return'])} |")
    tasks = sorted({r["task"] for r in results}, key=[r["task"] for r in results].index)
    if len(results) > len(tasks):
        print("\nOver seeds: wall ratio = total RLHF / total RL wall-clock; score = (mean RLHF - random) / "
              "(mean RL - random), on the true return")
        print("| task | seeds | wall ratio | score | per-seed scores |")
        print("|---|---|---|---|---|")
        for t in tasks:
            rs = [r for r in results if r["task"] == t]
            ratio = sum(r["rlhf_wall_s"] for r in rs) / sum(r["rl_wall_s"] for r in rs)
            rand = rs[0]["random_return"]
            rl, rlhf = np.mean([r["rl_return"] for r in rs]), np.mean([r["rlhf_return"] for r in rs])
            score = (rlhf - rand) / (rl - rand)
            per = ", ".join(f"{r['normalised_score']:.2f}" for r in rs)
            print(f"| {t} | {len(rs)} | {ratio:.2f} | {score:.2f} | {per} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", default=list(DEFAULT_STEPS), help="catalogue task names")
    p.add_argument("--steps-scale", type=float, default=1.0, help="multiply each task's steps (quick checks)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="one RL and one RLHF run per seed")
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--algo", choices=ALGOS, default=None,
                   help="agent for both runs (default: the task's own; another algo gets SB3 defaults + task gamma)")
    p.add_argument("--out", type=Path, default=None, help="directory for the RLHF run dirs and results.json")
    p.add_argument("--profile", action="store_true", help="run the RLHF loop under cProfile (inflates its time)")
    p.add_argument("--sync-reward", action="store_true", help="retrain the reward in the main process (no worker)")
    p.add_argument("--labels", type=int, default=LABELS, help=f"label budget of the RLHF runs (default {LABELS})")
    p.add_argument("--steps", type=int, default=None, help="agent steps of every task (default: the table's, x --steps-scale)")
    p.add_argument("--query-min-clips", type=int, default=RunConfig.query_min_clips,
                   help="the floor of the query window (RunConfig.query_min_clips)")
    p.add_argument("--reward-continuous", action="store_true", help="continuous reward training in the worker")
    p.add_argument("--reward-return-norm", action=argparse.BooleanOptionalAction, default=RunConfig.reward_return_norm,
                   help="scale the learned reward by its return's running std (RunConfig.reward_return_norm)")
    p.add_argument("--reward-norm", choices=("reference", "recent"), default=RunConfig.reward_norm,
                   help="the clips the reward's output is normalised on (RunConfig.reward_norm)")
    args = p.parse_args()
    if args.eval_episodes < 1 or args.steps_scale <= 0:
        p.error("--eval-episodes must be >= 1 and --steps-scale > 0")
    args.out = args.out or Path(f"/tmp/bench_overhead-{time.strftime('%Y%m%d-%H%M%S')}")
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"bench_overhead: tasks {args.tasks}, steps-scale {args.steps_scale}, seeds {args.seeds}, "
          f"torch threads 1, out {args.out}")
    results = []
    for name in args.tasks:
        steps = args.steps or max(1, int(round(DEFAULT_STEPS.get(name, get_task(name).total_steps) * args.steps_scale)))
        for seed in args.seeds:
            results.append(bench_task(name, steps, seed, args))
            (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)


if __name__ == "__main__":
    main()
