"""Benchmark an Atari Pong run: frames per second and peak memory, RLHF loop vs plain A2C, on the
CPU or (``--device cuda``) with the agent and the reward ensemble on a GPU.

Units: one agent step is one env step of one of the ``--n-envs`` envs, which is 4 emulator frames
(the task's ``atari_frames`` wrapper repeats each action 4 frames). ``--frames 100000`` therefore
means 25,000 agent steps (1,563 vector steps of 16 envs, 313 A2C rollouts of 5 steps).

Each run goes in its own subprocess, so ``ru_maxrss`` (peak resident memory) is that run's own:

* A2C: the task's agent (A2C, CnnPolicy, the catalogue hyperparameters, same n_envs and seed) on the
  env's own reward (Pong's +-1 rewards are already clipped; no normalisation, as the RL Zoo).
* RLHF: ``RLHFTrainer`` with the perfect synthetic oracle and the paper's CNN reward ensemble (3
  members, variance selector). The paper's pretraining (500 labels, 1,000 random-policy clips =
  25,000 agent steps, then 200 reward epochs) takes hours on a CPU, so by default this benchmark
  pretrains on ``--pretrain-labels 50`` for ``--pretrain-epochs 5`` and asks for online labels at
  the rate of the start of a full 10M-step, 5,500-label run. It prints where the time goes and an
  estimate of what the reward-model training of a full run costs at the measured rate.

Usage::

    python scripts/bench_atari.py                         # 100k frames
    python scripts/bench_atari.py --frames 20000          # a quicker look
    python scripts/bench_atari.py --window                # peak memory of main + worker at the 3,000-label window
    python scripts/bench_atari.py --device cuda --frames 400000   # on a GPU (scripts/gpu_check.sh)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

FRAME_SKIP = 4
TASK = "Pong"
FULL = {"steps": 10_000_000, "labels": 5500, "pretrain": 500, "pretrain_epochs": 200, "window": 3000,
        "epochs": 3, "horizon": 5e6}


def peak_mb() -> float:
    """Peak resident set size of this process (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def online_labels(steps: int) -> int:
    """Online labels a full paper-schedule run asks for in its first ``steps`` agent steps."""
    from rlhf_control.queries.schedule import make_schedule

    s = make_schedule("paper", FULL["labels"], FULL["pretrain"], FULL["steps"], FULL["horizon"])
    return max(1, s.target(steps) - FULL["pretrain"])


# ----------------------------------------------------------------------------- children
def child_a2c(args: argparse.Namespace) -> dict[str, Any]:
    from rlhf_control.agent.factory import make_agent
    from rlhf_control.config import RunConfig, resolve

    torch.set_num_threads(1)
    r = resolve(RunConfig(task=TASK, n_envs=args.n_envs, steps=args.steps, seed=args.seed))
    t0 = time.perf_counter()
    env = r.task.make_vec_env(r.n_envs, seed=args.seed)
    agent = make_agent(r.algo, env, r.agent_params, seed=args.seed, device=args.device, policy=r.task.policy)
    setup = time.perf_counter() - t0
    w0, c0 = time.perf_counter(), time.process_time()
    agent.learn(total_timesteps=args.steps)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    steps = int(agent.num_timesteps)
    env.close()
    return {"run": "a2c", "device": args.device, "algo": r.algo, "agent_params": {k: str(v) for k, v in r.agent_params.items()},
            "steps": steps, "frames": steps * FRAME_SKIP, "setup_s": setup, "wall_s": wall, "cpu_s": cpu,
            "peak_mb": peak_mb()}


def child_rlhf(args: argparse.Namespace) -> dict[str, Any]:
    from bench_overhead import instrument_trainer

    from rlhf_control.config import RunConfig
    from rlhf_control.loop.trainer import RLHFTrainer

    labels = args.pretrain_labels + args.online_labels
    cfg = RunConfig(task=TASK, oracle="perfect", selector="variance", labels=labels,
                    pretrain_labels=args.pretrain_labels, pretrain_epochs=args.pretrain_epochs,
                    steps=args.steps, seed=args.seed, n_envs=args.n_envs, torch_threads=1, device=args.device,
                    reward_async=not args.sync_reward, reward_wait=not args.no_reward_wait,
                    eval_episodes=0)  # A2C's side evaluates nothing either
    t0 = time.perf_counter()
    trainer = RLHFTrainer(cfg, args.run_dir)
    setup = time.perf_counter() - t0
    pt = instrument_trainer(trainer)
    # Labelled pairs x epochs trained: in this process (pretraining, the last iteration, --sync-reward)
    # and in the reward worker (every other retraining).
    pair_epochs = {"pretrain": 0, "online": 0, "worker": 0}

    def counting(method, key_fn):
        def counted(epochs):
            pair_epochs[key_fn()] += len(trainer.dataset) * int(epochs)
            return method(epochs)
        return counted

    updater = trainer.updater
    local = updater.train_now  # already timed as train_reward (in process)
    updater.train_now = counting(local, lambda: "online" if trainer.pretrain_done else "pretrain")
    start_job = updater.submit

    def start_counted(epochs):
        if trainer.worker is not None and len(trainer.dataset):
            pair_epochs["worker"] += len(trainer.dataset) * int(epochs)
            # submit falls back to train_now without a worker; not counted twice.
        return start_job(epochs)

    updater.submit = start_counted
    taken = {"jobs": 0}
    take = updater.take

    def counted_take(*a, **k):
        took = take(*a, **k)
        taken["jobs"] += bool(took)
        return took

    updater.take = counted_take
    pretrain = trainer.pretrain
    env_in_pretrain = {}

    def pretrain_noting_env() -> None:
        before = pt.seconds["env.step_wait"] + pt.seconds["env.step_async"]
        pretrain()
        env_in_pretrain["s"] = pt.seconds["env.step_wait"] + pt.seconds["env.step_async"] - before

    trainer.pretrain = pretrain_noting_env
    w0, c0 = time.perf_counter(), time.process_time()
    trainer.run()
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # the reward worker, reaped when the run closed
    steps = int(trainer.agent.num_timesteps)
    pool_segments = len(trainer.pool)
    return {"run": "rlhf", "device": args.device, "steps": steps, "frames": steps * FRAME_SKIP, "setup_s": setup, "wall_s": wall,
            "cpu_s": cpu, "peak_mb": peak_mb(), "worker_cpu_s": kids.ru_utime + kids.ru_stime,
            "worker_peak_mb": kids.ru_maxrss / 1024, "reward_async": cfg.reward_async, "reward_wait": cfg.reward_wait,
            "iterations": trainer.iterations, "jobs_taken": taken["jobs"],
            "labels": labels, "pretrain_labels": args.pretrain_labels,
            "pretrain_epochs": args.pretrain_epochs, "online_labels": args.online_labels,
            "pair_epochs": pair_epochs, "phases_s": dict(pt.seconds), "calls": dict(pt.calls),
            "pool_segments": pool_segments, "env_in_pretrain_s": env_in_pretrain.get("s", 0.0)}


def _proc_mb(pid: int, key: str) -> float:
    """``VmRSS`` / ``VmHWM`` (peak) of a process from /proc, in MiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def child_window(args: argparse.Namespace) -> dict[str, Any]:
    """The loop's parts at the paper's label window: main process (agent, envs, pool, window) and the
    reward worker running one retraining (1 epoch) over the full window, memory sampled meanwhile."""
    import threading

    from rlhf_control.config import RunConfig
    from rlhf_control.loop.build import build_run
    from rlhf_control.types import Label, Segment, SegmentPair, StackedFrames

    cfg = RunConfig(task=TASK, seed=args.seed, n_envs=args.n_envs, torch_threads=1, device="cpu",
                    label_window=args.window_labels, eval_episodes=0)
    parts = build_run(cfg, args.run_dir)
    if args.frames_in_memory:
        parts.dataset.frame_file = None  # the way before: the window's frames in both processes,
        parts.pool.frames = None  # and the pool's in the main process
    rng = np.random.default_rng(args.seed)
    uid = [0]

    def clip() -> Segment:  # random 84x84 frames: the same bytes as Pong's (nothing is compressed)
        uid[0] += 1
        return Segment(StackedFrames(rng.integers(0, 256, (28, 84, 84), dtype=np.uint8), 4),
                       rng.integers(0, 6, 25), rng.normal(size=25), uid=uid[0])

    for _ in range(args.window_labels):
        parts.dataset.add(Label(SegmentPair(clip(), clip()), int(rng.choice([-1, 0, 1]))))
    for _ in range(args.pool_clips):  # the newest clips, which the queries and the normalisation use
        parts.pool.add(clip())
    updater = parts.updater
    updater.start()
    pids = {"main": os.getpid(), "worker": updater.worker.proc.pid}
    peak = {"sum": 0.0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak["sum"] = max(peak["sum"], sum(_proc_mb(p, "VmRSS") for p in pids.values()))
            time.sleep(0.2)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    w0 = time.perf_counter()
    updater.submit(1)
    updater.take()
    seconds = time.perf_counter() - w0
    hwm = {k: _proc_mb(p, "VmHWM") for k, p in pids.items()}
    done.set()
    t.join()
    ff, ring = parts.dataset.frame_file, parts.pool.frames
    in_ram = [s for s in parts.pool.segments() if isinstance(s.obs.frames, np.ndarray)]
    res = {"run": "window", "labels": len(parts.dataset), "pool_clips": len(parts.pool),
           "pool_mb": sum(s.obs.nbytes for s in parts.pool.segments()) / 2**20,
           "pool_ram_mb": sum(s.obs.nbytes for s in in_ram) / 2**20,
           "pool_file_mb": ring.path.stat().st_size / 2**20 if ring is not None and ring.path.exists() else 0.0,
           "pool_capacity": parts.pool.capacity, "frames_in_memory": args.frames_in_memory,
           "frame_file_mb": (ff.size / 2**20) if ff is not None else 0.0, "job_s": seconds,
           "main_peak_mb": hwm["main"], "worker_peak_mb": hwm["worker"], "sampled_sum_peak_mb": peak["sum"],
           "train_loss": updater.last_report.mean_train_loss}
    updater.close()
    parts.agent_env.close()
    parts.pool.close()
    parts.store.close()
    return res


def report_window(w: dict[str, Any]) -> None:
    how = "in both processes' memory, the pool's in main's (as before)" if w["frames_in_memory"] else \
        (f"in the run's frame file ({w['frame_file_mb']:.0f} MiB, read a batch at a time), the pool's in its "
         f"ring file ({w.get('pool_file_mb', 0):.0f} MiB)")
    print(f"\n=== {TASK}: memory at the label window, {w['labels']} labels ({2 * w['labels']} clips of 25 steps), "
          f"frames {how}")
    print(f"one retraining (1 epoch over the window) in the worker: {w['job_s']:.0f} s; train loss {w['train_loss']:.3f}")
    print(f"peak RSS: main {w['main_peak_mb']:.0f} MiB + worker {w['worker_peak_mb']:.0f} MiB = "
          f"{w['main_peak_mb'] + w['worker_peak_mb']:.0f} MiB (largest sampled sum at one moment "
          f"{w['sampled_sum_peak_mb']:.0f} MiB); the issue's target: 1,536 MiB "
          f"({'met' if w['main_peak_mb'] + w['worker_peak_mb'] <= 1536 else 'not met'})")
    print(f"main's pool: {w['pool_clips']} clips ({w['pool_mb']:.0f} MiB of frames, {w.get('pool_ram_mb', w['pool_mb']):.0f} "
          f"MiB of them in its memory); a run's pool can grow to {w['pool_capacity']} clips "
          f"({w['pool_mb'] / max(w['pool_clips'], 1) * w['pool_capacity'] / 1024:.1f} GiB)")
    if not w["frames_in_memory"]:
        print(f"the files' pages ({w['frame_file_mb'] + w.get('pool_file_mb', 0):.0f} MiB) are in the kernel's page "
              "cache, once, counted in neither process's RSS (read with pread, never mapped)")


# ----------------------------------------------------------------------------- parent
def run_child(kind: str, args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", kind, "--frames", str(args.frames), "--n-envs", str(args.n_envs),
           "--seed", str(args.seed), "--pretrain-labels", str(args.pretrain_labels),
           "--pretrain-epochs", str(args.pretrain_epochs), "--online-labels", str(args.online_labels),
           "--device", args.device, *(["--sync-reward"] if args.sync_reward else []), *extra]
    print(f"[{kind}] {' '.join(cmd[1:])}", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"{kind} run failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def full_run_reward_cost(sec_per_pair_epoch: float, n_envs: int, n_steps: int) -> tuple[float, float, int]:
    """Reward-training seconds of a full paper run at ``sec_per_pair_epoch``: (pretraining, online,
    trainings), replaying the paper schedule one rollout (iteration) at a time; every iteration that
    gets a label retrains ``epochs`` passes over the window, as ``RLHFTrainer.iteration`` does."""
    from rlhf_control.queries.schedule import make_schedule

    s = make_schedule("paper", FULL["labels"], FULL["pretrain"], FULL["steps"], FULL["horizon"])
    per_iter = n_envs * n_steps
    asked, pair_epochs, trainings = FULL["pretrain"], 0, 0
    for step in range(per_iter, FULL["steps"] + per_iter, per_iter):
        due = s.target(step) - asked
        if due > 0:
            asked += due
            pair_epochs += FULL["epochs"] * min(asked, FULL["window"])
            trainings += 1
    pre = FULL["pretrain_epochs"] * FULL["pretrain"] * sec_per_pair_epoch
    return pre, pair_epochs * sec_per_pair_epoch, trainings


def report(a2c: dict[str, Any], rlhf: dict[str, Any], args: argparse.Namespace) -> None:
    ph = rlhf["phases_s"]
    pre = ph.get("pretrain", 0.0)
    rl_phase = rlhf["wall_s"] - pre
    fps = {
        "a2c": a2c["frames"] / a2c["wall_s"],
        "rlhf_total": rlhf["frames"] / rlhf["wall_s"],
        "rlhf_rl_phase": rlhf["frames"] / rl_phase,
    }
    print(f"\n=== {TASK} (ALE/Pong-v5), {args.n_envs} envs, seed {args.seed}, device {args.device}; "
          f"1 agent step = {FRAME_SKIP} frames")
    print(f"A2C : {a2c['steps']} agent steps = {a2c['frames']} frames in {a2c['wall_s']:.1f} s wall "
          f"({a2c['cpu_s']:.1f} s CPU): {fps['a2c']:.0f} frames/s ({fps['a2c'] / FRAME_SKIP:.0f} steps/s); "
          f"peak RSS {a2c['peak_mb']:.0f} MiB")
    print(f"RLHF: {rlhf['steps']} agent steps = {rlhf['frames']} frames in {rlhf['wall_s']:.1f} s wall "
          f"({rlhf['cpu_s']:.1f} s CPU + {rlhf['worker_cpu_s']:.1f} s in the reward worker): "
          f"{fps['rlhf_total']:.0f} frames/s overall, {fps['rlhf_rl_phase']:.0f} frames/s after pretraining; "
          f"peak RSS {rlhf['peak_mb']:.0f} MiB (+ {rlhf['worker_peak_mb']:.0f} MiB reward worker)")
    print(f"      labels {rlhf['labels']} ({rlhf['pretrain_labels']} pretraining x {rlhf['pretrain_epochs']} epochs, "
          f"{rlhf['online_labels']} online); pool {rlhf['pool_segments']} clips at the end")
    wait = "waits for each retraining" if rlhf.get("reward_wait", True) else \
        "takes a retraining only once finished (--no-reward-wait)"
    print(f"      each iteration {wait}: {rlhf.get('jobs_taken', '?')} jobs taken from the worker in "
          f"{rlhf.get('iterations', '?')} iterations")
    print(f"ratio RLHF/A2C wall: {rlhf['wall_s'] / a2c['wall_s']:.2f} overall, {rl_phase / a2c['wall_s']:.2f} "
          f"after pretraining; CPU-time ratio {rlhf['cpu_s'] / a2c['cpu_s']:.2f} overall; "
          f"peak memory ratio {rlhf['peak_mb'] / a2c['peak_mb']:.2f}")
    print(f"RLHF: where the wall-clock goes (of {rlhf['wall_s']:.1f} s; pretrain holds its own ask/train_reward)")
    env = ph.get("env.step_wait", 0.0) + ph.get("env.step_async", 0.0)
    env_pre = rlhf.get("env_in_pretrain_s", 0.0)
    rows = {"env step, pretraining": env_pre, "env step, RL phase": env - env_pre,
            "recorder own work": ph.get("recorder.step_wait (incl. env)", 0.0) - ph.get("env.step_wait", 0.0)}
    rows.update({k: v for k, v in ph.items() if not k.startswith(("env.", "recorder.step_wait"))})
    for name, secs in sorted(rows.items(), key=lambda kv: -kv[1]):
        print(f"  {name:28s} {secs:9.2f} s  {100 * secs / rlhf['wall_s']:5.1f} %  calls {rlhf['calls'].get(name, '')}")
    total_pe = sum(rlhf["pair_epochs"].values())
    if total_pe:
        train_s = ph.get("reward_trainer.train", 0.0) + rlhf["worker_cpu_s"]
        c = train_s / total_pe
        print(f"reward training: {total_pe} pair-epochs ({rlhf['pair_epochs']['worker']} in the worker) in "
              f"{train_s:.1f} s (in process, plus the worker's CPU) = {c:.3f} s per labelled pair per epoch "
              f"(incl. evaluation, pre-stacking, output normalisation and the worker's unpickling)")
        n_steps = 5
        pre_s, online_s, trainings = full_run_reward_cost(c, args.n_envs, n_steps)
        print(f"full paper run at that rate ({FULL['steps']:,} steps = {FULL['steps'] * FRAME_SKIP:,} frames, "
              f"{FULL['labels']} labels, window {FULL['window']}): pretraining {FULL['pretrain']} pairs x "
              f"{FULL['pretrain_epochs']} epochs = {pre_s / 3600:.1f} h; online {trainings} retrainings x "
              f"{FULL['epochs']} epochs over the window = {online_s / 3600:.0f} h of reward training alone")
        in_process = ph.get("train_reward (in process)", 0.0) + ph.get("wait for reward worker", 0.0)
        per_frame_other = (rl_phase - in_process) / rlhf["frames"]
        print(f"full run, everything but reward training at this run's rate: "
              f"{per_frame_other * FULL['steps'] * FRAME_SKIP / 3600:.0f} h "
              f"(A2C alone: {FULL['steps'] * FRAME_SKIP / fps['a2c'] / 3600:.0f} h)")
    print("\n| run | agent steps | frames | wall s | frames/s | peak RSS MiB |")
    print("|---|---|---|---|---|---|")
    print(f"| A2C | {a2c['steps']} | {a2c['frames']} | {a2c['wall_s']:.0f} | {fps['a2c']:.0f} | {a2c['peak_mb']:.0f} |")
    print(f"| RLHF (total) | {rlhf['steps']} | {rlhf['frames']} | {rlhf['wall_s']:.0f} | {fps['rlhf_total']:.0f} | "
          f"{rlhf['peak_mb']:.0f} |")
    print(f"| RLHF (after pretraining) | {rlhf['steps']} | {rlhf['frames']} | {rl_phase:.0f} | "
          f"{fps['rlhf_rl_phase']:.0f} | |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=100_000, help=f"emulator frames (agent steps x {FRAME_SKIP})")
    p.add_argument("--n-envs", type=int, default=None, help="parallel envs (default: the task's, 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu",
                   help="cpu, cuda, cuda:N or auto: where the agent and the reward ensemble run (default cpu)")
    p.add_argument("--pretrain-labels", type=int, default=50, help="paper: 500 (hours on a CPU)")
    p.add_argument("--pretrain-epochs", type=int, default=5, help="paper: 200")
    p.add_argument("--online-labels", type=int, default=None,
                   help="labels asked during the run (default: a full paper run's count over the same steps)")
    p.add_argument("--out", type=Path, default=None, help="directory for the RLHF run dir and results.json")
    p.add_argument("--only", choices=("a2c", "rlhf"), default=None, help="run one side only")
    p.add_argument("--sync-reward", action="store_true", help="retrain the reward in the main process (no worker)")
    p.add_argument("--reward-wait", choices=("wait", "no-wait", "both"), default="wait",
                   help="the RLHF run waits for each retraining (the default), goes on without it until it has "
                        "finished (--no-reward-wait, the paper's asynchronous processes), or one run of each")
    p.add_argument("--no-reward-wait", action="store_true", help=argparse.SUPPRESS)  # (the child's flag)
    p.add_argument("--window", action="store_true",
                   help="instead: peak memory of main + worker at the label window (--window-labels)")
    p.add_argument("--window-labels", type=int, default=3000, help="labels in the window (paper: 3,000)")
    p.add_argument("--pool-clips", type=int, default=2000, help="clips in main's pool for --window (its floor)")
    p.add_argument("--frames-in-memory", action="store_true",
                   help="--window with the frames in memory, not in the frame and pool files (as before)")
    p.add_argument("--child", choices=("a2c", "rlhf", "window"), default=None, help=argparse.SUPPRESS)
    p.add_argument("--run-dir", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.frames < FRAME_SKIP:
        p.error(f"--frames must be at least {FRAME_SKIP}")
    if args.n_envs is None:
        from rlhf_control.tasks.catalogue import get_task

        args.n_envs = get_task(TASK).n_envs
    args.steps = math.ceil(args.frames / FRAME_SKIP)
    if args.child is None:
        from rlhf_control.config import resolve_device
        from rlhf_control.errors import UserError

        try:
            args.device = resolve_device(args.device)
        except UserError as e:
            p.error(str(e))
    if args.online_labels is None:
        args.online_labels = online_labels(args.steps)
    if args.child is not None:
        res = {"a2c": child_a2c, "rlhf": child_rlhf, "window": child_window}[args.child](args)
        print(json.dumps(res))
        return
    args.out = args.out or Path(f"/tmp/bench_atari-{time.strftime('%Y%m%d-%H%M%S')}")
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"bench_atari: {args.frames} frames = {args.steps} agent steps, n_envs {args.n_envs}, out {args.out}")
    results: dict[str, Any] = {}
    if args.window:
        extra = ["--window-labels", str(args.window_labels), "--pool-clips", str(args.pool_clips),
                 "--run-dir", str(args.out / "window-run"), *(["--frames-in-memory"] if args.frames_in_memory else [])]
        results["window"] = run_child("window", args, extra)
        (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        report_window(results["window"])
        return
    kinds = {"wait": ["rlhf"], "no-wait": ["rlhf-nowait"], "both": ["rlhf-nowait", "rlhf"]}[args.reward_wait]
    runs = (["a2c"] if args.only in (None, "a2c") else []) + (kinds if args.only in (None, "rlhf") else [])
    for kind in runs:
        extra = [] if kind == "a2c" else ["--run-dir", str(args.out / f"{kind}-run")]
        if kind != "a2c":
            shutil.rmtree(args.out / f"{kind}-run", ignore_errors=True)  # (a bench's own run of an earlier call)
        results[kind] = run_child("a2c" if kind == "a2c" else "rlhf", args,
                                  extra + (["--no-reward-wait"] if kind == "rlhf-nowait" else []))
        print(f"  {kind}: {results[kind]['wall_s']:.1f} s, peak {results[kind]['peak_mb']:.0f} MiB", flush=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")  # (kept if a later run fails)
    if "a2c" in results and len(results) > 1:
        for kind in kinds:
            report(results["a2c"], results[kind], args)
    else:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
