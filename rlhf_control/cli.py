"""The ``rlhf-control`` command: a thin layer over the trainer, evaluation and the catalogue.

User errors (bad flag values, unknown names, a directory that is not a run, a damaged checkpoint)
print one line on stderr and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, FileExistsError)


def _int_at_least(minimum: int, what: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} must be a {what} integer")
        return value

    return parse


_positive_int = _int_at_least(1, "positive")
_nonneg_int = _int_at_least(0, "non-negative")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


# Flags of `train` and the RunConfig field each one sets.
TRAIN_FLAGS = {
    "task": "task", "oracle": "oracle", "selector": "selector", "labels": "labels", "steps": "steps",
    "seed": "seed", "algo": "algo", "device": "device", "n_envs": "n_envs", "schedule": "schedule",
    "pretrain_labels": "pretrain_labels", "reward_members": "reward_members", "clip_length": "clip_length",
    "wait_for_labels": "wait_for_labels", "max_pending": "max_pending", "checkpoint_every": "checkpoint_every",
    "label_host": "label_host", "label_port": "label_port", "stale_after": "stale_after_steps",
    "iteration_steps": "iteration_steps", "reward_async": "reward_async",
}


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="rlhf-control", description="Deep RL from human preferences (Christiano et al. 2017).")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train an agent on a reward learned from preferences")
    t.add_argument("--task", help="catalogue task name or Gymnasium id (default Pendulum-v1)")
    t.add_argument("--env", dest="env", help="any Gymnasium id (same as --task for ids outside the catalogue)")
    t.add_argument("--oracle", help="perfect, a B-Pref teacher (stochastic, mistake, skip, equal, myopic, "
                                    "combined with +), or human")
    t.add_argument("--selector", help="random, variance, entropy, kcenter-variance")
    t.add_argument("--labels", type=_positive_int, help="label budget")
    t.add_argument("--pretrain-labels", type=_nonneg_int, help="labels asked on random-policy clips first")
    t.add_argument("--steps", type=_positive_int, help="agent steps")
    t.add_argument("--seed", type=int)
    t.add_argument("--algo", choices=["ppo", "a2c", "trpo"])
    t.add_argument("--device", help="cpu, cuda or auto")
    t.add_argument("--n-envs", type=_positive_int)
    t.add_argument("--schedule", help="paper, constant or offline")
    t.add_argument("--reward-members", type=_positive_int)
    t.add_argument("--clip-length", type=_positive_int)
    t.add_argument("--checkpoint-every", type=_positive_int, help="iterations between checkpoints")
    t.add_argument("--iteration-steps", type=_positive_int,
                   help="agent steps per iteration (default one rollout, at least 2048)")
    t.add_argument("--max-pending", type=_positive_int, help="cap on queries waiting for an answer")
    t.add_argument("--stale-after", type=_positive_int, metavar="STEPS",
                   help="retire queries not answered within STEPS agent steps (default a quarter of the run)")
    t.add_argument("--wait-for-labels", action="store_true", default=None,
                   help="wait for pending answers instead of running ahead (human oracle)")
    t.add_argument("--sync-reward", dest="reward_async", action="store_false", default=None,
                   help="retrain the reward in this process between rollouts instead of in a second "
                        "process during the next rollout")
    t.add_argument("--run-dir", type=Path, help="where the run goes (default runs/<task>-<time>)")
    t.add_argument("--config", type=Path, help="a config TOML (a run's config.toml reruns it)")
    t.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue a stopped or killed run")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    e = sub.add_parser("eval", help="true return of a run's saved policy")
    e.add_argument("run_dir", type=Path)
    e.add_argument("--episodes", type=_positive_int, default=10)
    e.add_argument("--video", type=Path, help="write an mp4 of the first episode")
    e.add_argument("--seed", type=int, default=12345)

    t.add_argument("--label-host", default=None, help="address of the labelling app with --oracle human "
                                                      "(default 127.0.0.1; anything else needs --label-token)")
    t.add_argument("--label-port", type=_nonneg_int, default=None, help="port of the labelling app (default 8765)")
    t.add_argument("--label-token", default=os.environ.get("RLHF_CONTROL_LABEL_TOKEN"),
                   help="secret labellers need (or RLHF_CONTROL_LABEL_TOKEN)")

    lb = sub.add_parser("label", help="serve the browser labelling app for a run's queries")
    lb.add_argument("run_dir", type=Path)
    lb.add_argument("--host", default="127.0.0.1", help="address to listen on; anything but 127.0.0.1 needs --token")
    lb.add_argument("--port", type=_nonneg_int, default=8765, help="0 picks a free port")
    lb.add_argument("--token", default=os.environ.get("RLHF_CONTROL_LABEL_TOKEN"), help="secret labellers need")
    lb.add_argument("--instructions", help="text shown when the run has no instructions.md")

    ex = sub.add_parser("labels", help="export a run's answers to JSONL or CSV, or import answers from JSONL")
    ex.add_argument("run_dir", type=Path)
    group = ex.add_mutually_exclusive_group(required=True)
    group.add_argument("--export", type=Path, metavar="FILE", help="write FILE (.jsonl or .csv)")
    group.add_argument("--import", dest="import_", type=Path, metavar="FILE", help="read answers from FILE (.jsonl)")

    sub.add_parser("tasks", help="list the task catalogue")

    _add_sweep_and_report(sub)
    return p


def _train(args: argparse.Namespace) -> int:
    from rlhf_control.config import RunConfig, load_config_file
    from rlhf_control.loop.trainer import RLHFTrainer
    from rlhf_control.rundir import CONFIG_FILE, check_run_dir
    from rlhf_control.tasks.spec import TaskSpec

    if args.env and args.task:
        raise ValueError(f"give --task or --env, not both (got --task {args.task!r} and --env {args.env!r})")
    if args.env:
        args.task = args.env
    overrides = {field: getattr(args, flag) for flag, field in TRAIN_FLAGS.items() if getattr(args, flag) is not None}

    task_spec = None
    if args.resume:
        run_dir = check_run_dir(args.resume)
        if args.config:
            raise ValueError("--resume uses the run's own config; drop --config")
        cfg, task_dict = load_config_file(run_dir / CONFIG_FILE)
        allowed = {"wait_for_labels", "max_pending", "device", "label_host", "label_port", "stale_after_steps",
                   "reward_async"}
        bad = sorted(set(overrides) - allowed)
        if bad:
            flag = {f: "--" + k.replace("_", "-") for k, f in TRAIN_FLAGS.items()}
            flag["reward_async"] = "--sync-reward"
            raise ValueError(f"--resume cannot change {', '.join(flag[b] for b in bad)}; "
                             f"only {', '.join(sorted(flag[a] for a in allowed))} may be given")
        cfg = cfg.replace(**overrides)
        task_spec = TaskSpec.from_dict(task_dict) if task_dict else None
        resume = True
    else:
        if args.config:
            cfg, task_dict = load_config_file(args.config)
            if task_dict and "task" not in overrides:
                task_spec = TaskSpec.from_dict(task_dict)
        else:
            cfg = RunConfig()
        cfg = cfg.replace(**overrides)
        run_dir = args.run_dir or Path("runs") / f"{_slug(cfg.task)}-{time.strftime('%Y%m%d-%H%M%S')}-s{cfg.seed}"
        if run_dir.exists() and any(run_dir.iterdir()):
            raise FileExistsError(f"run directory {str(run_dir)!r} already exists and is not empty; "
                                  f"use --resume {run_dir} or another --run-dir")
        resume = False

    trainer = RLHFTrainer(cfg, run_dir, resume=resume, progress=not args.no_progress, task=task_spec,
                          label_token=args.label_token)
    print(f"run directory: {run_dir}", flush=True)
    trainer.run()
    print(f"finished; run directory: {run_dir}", flush=True)
    return 0


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name).strip("-")


def _eval(args: argparse.Namespace) -> int:
    from rlhf_control.loop.evaluate import evaluate_run

    result = evaluate_run(args.run_dir, episodes=args.episodes, seed=args.seed, video=args.video)
    print(f"true return over {result.episodes} episodes: mean {result.mean:.2f}, std {result.std:.2f}, "
          f"min {result.min:.2f}, max {result.max:.2f}")
    if args.video:
        print(f"video: {args.video}")
    return 0


def _label(args: argparse.Namespace) -> int:
    from rlhf_control.rundir import check_run_dir
    from rlhf_control.web.server import serve

    serve(check_run_dir(args.run_dir), host=args.host, port=args.port, token=args.token,
          instructions=args.instructions)
    return 0


def _labels(args: argparse.Namespace) -> int:
    from rlhf_control.rundir import STORE_FILE, check_run_dir
    from rlhf_control.store.io import export_csv, export_jsonl, import_jsonl
    from rlhf_control.store.store import PreferenceStore

    store = PreferenceStore.open(check_run_dir(args.run_dir) / STORE_FILE)
    try:
        if args.export:
            suffix = args.export.suffix.lower()
            if suffix not in (".jsonl", ".csv"):
                raise ValueError(f"export file {str(args.export)!r} must end in .jsonl or .csv")
            n = export_jsonl(store, args.export) if suffix == ".jsonl" else export_csv(store, args.export)
            print(f"exported {n} answers to {args.export}")
        else:
            n = import_jsonl(store, args.import_)
            print(f"imported {n} new answers from {args.import_}")
    finally:
        store.close()
    return 0


def _tasks(_: argparse.Namespace) -> int:
    from rlhf_control.tasks.catalogue import list_tasks, load_task

    rows = [("task", "env id", "suite", "algo", "clip", "fps", "horizon", "labels", "pretrain", "steps", "reward")]
    for name in list_tasks():
        t = load_task(name)
        rows.append((t.name, t.env_id, t.suite, t.algo, str(t.clip_length), f"{t.fps:g}", str(t.horizon or "-"),
                     str(t.label_budget), str(t.pretrain_labels), str(t.total_steps),
                     "true" if t.has_true_reward else "human only"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0


# ----------------------------------------------------------------------------- sweep and report
def _add_sweep_and_report(sub: argparse._SubParsersAction) -> None:
    """``sweep`` and ``report``; each sets ``args.handler``."""
    from rlhf_control.experiments.presets import add_backend_args

    s = sub.add_parser("sweep", help="run a grid of RLHF runs and baselines from a spec TOML (resumable)")
    s.add_argument("spec", type=Path, help="sweep spec TOML (see rlhf_control/experiments/sweep.py)")
    s.add_argument("--out", type=Path, help="output directory (default runs/sweeps/<spec name>)")
    add_backend_args(s)
    s.set_defaults(handler=_sweep)

    r = sub.add_parser("report", help="figure and table of true returns from run directories or sweeps")
    r.add_argument("paths", nargs="+", type=Path, metavar="RUN_DIR_OR_SWEEP")
    r.add_argument("--out", type=Path, help="output directory (default: SWEEP/report for one sweep, else ./report)")
    r.set_defaults(handler=_report)


def _sweep(args: argparse.Namespace) -> int:
    from rlhf_control.experiments.presets import execute_spec
    from rlhf_control.experiments.sweep import load_spec, slug

    spec = load_spec(args.spec)
    return execute_spec(spec, args.out or Path("runs") / "sweeps" / slug(args.spec.stem), args)


def _report(args: argparse.Namespace) -> int:
    from rlhf_control.experiments.report import write_report
    from rlhf_control.rundir import is_run_dir

    out = args.out
    if out is None:
        one = args.paths[0]
        sweep = len(args.paths) == 1 and one.is_dir() and not is_run_dir(one)
        out = one / "report" if sweep else Path("report")
    files = write_report(args.paths, out)
    print((out / "results.md").read_text().split("\n\n")[2])
    for f in files:
        print(f"wrote {f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    args = build_parser().parse_args(argv)
    handlers = {"train": _train, "eval": _eval, "tasks": _tasks, "label": _label, "labels": _labels}
    try:
        return (handlers.get(args.command) or args.handler)(args)
    except USER_ERRORS as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        sys.stderr.write(f"rlhf-control: error: {msg}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("rlhf-control: interrupted; the run can be continued with --resume\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
