"""The ``rlhf-control`` command: a thin layer over the trainer, evaluation and the catalogue.

User errors (:class:`~rlhf_control.errors.UserError`: bad flag values, unknown names, a directory
that is not a run, a damaged checkpoint) print one line on stderr and exit with status 2, without a
traceback; any other exception is a bug and keeps its traceback. The flags of ``train`` are
generated from :class:`~rlhf_control.config.RunConfig`'s fields and their docstrings.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from rlhf_control.errors import UserError


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


def run_config_flag(f: dataclasses.Field) -> str:
    """The ``train`` flag of a RunConfig field: ``--name-with-dashes`` unless its metadata names another."""
    return f.metadata.get("flag", "--" + f.name.replace("_", "-"))


def _add_run_config_flags(t: argparse.ArgumentParser) -> None:
    """One flag per RunConfig field (but those kept to config files), its help the field's docstring."""
    from rlhf_control.config import RunConfig, field_docs

    docs = field_docs()
    for f in dataclasses.fields(RunConfig):
        if not f.metadata.get("cli", True):
            continue
        kw: dict[str, Any] = {"dest": f.name, "default": None, "help": docs[f.name].replace("%", "%%")}
        if f.type == "bool":
            kw["action"] = "store_false" if f.metadata.get("invert") else "store_true"
            kw["help"] += "; this flag turns it off" if f.metadata.get("invert") else ""
        else:
            kw["type"] = int if "int" in f.type else float if "float" in f.type else str
            kw["choices"] = f.metadata.get("choices")
            kw["metavar"] = None if kw["choices"] else "N" if kw["type"] is int else "X" if kw["type"] is float \
                else f.name.upper()
            kw["help"] += "" if f.default is None else f"; default {f.default}"
        t.add_argument(run_config_flag(f), **kw)


def train_flags_markdown() -> str:
    """The flags of ``train`` as a markdown table (flag, help), from the parser itself: the README's
    copy is checked against it (``scripts/update_readme_flags.py`` rewrites it)."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    rows = ["| flag | what it sets |", "|---|---|"]
    for action in sub.choices["train"]._actions:
        if not action.option_strings or action.dest == "help":
            continue
        flag = action.option_strings[0]
        if action.choices:
            flag += " " + "|".join(map(str, action.choices))
        elif action.nargs != 0:
            flag += " " + (action.metavar or action.dest.upper())
        rows.append(f"| `{flag}` | {(action.help or '').replace('%%', '%').replace('|', '/')} |")
    return "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="rlhf-control", description="Deep RL from human preferences (Christiano et al. 2017).")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train an agent on a reward learned from preferences")
    _add_run_config_flags(t)
    t.add_argument("--env", dest="env", help="any Gymnasium id (same as --task for ids outside the catalogue)")
    t.add_argument("--label-token", default=os.environ.get("RLHF_CONTROL_LABEL_TOKEN"),
                   help="secret labellers need (or RLHF_CONTROL_LABEL_TOKEN); never written to the run")
    t.add_argument("--run-dir", type=Path, help="where the run goes (default runs/<task>-<time>)")
    t.add_argument("--config", type=Path, help="a config TOML (a run's config.toml reruns it)")
    t.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue a stopped or killed run")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    e = sub.add_parser("eval", help="true return of a run's saved policy")
    e.add_argument("run_dir", type=Path)
    e.add_argument("--episodes", type=_positive_int, default=10)
    e.add_argument("--video", type=Path, help="write an mp4 of the first episode")
    e.add_argument("--seed", type=int, help="the evaluation env's seed (default: that of a run's own evaluations; "
                   "with the run's eval_episodes as --episodes, its last eval_true_return is reproduced)")
    e.add_argument("--per-episode", action="store_true", help="also print each episode's return, in order")

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
    ex.add_argument("--history", action="store_true", help="export undone answers too, with when and by whom")

    sub.add_parser("tasks", help="list the task catalogue")

    _add_sweep_and_report(sub)
    return p


def _train(args: argparse.Namespace) -> int:
    from rlhf_control.config import RunConfig, load_config_file
    from rlhf_control.loop.trainer import RLHFTrainer
    from rlhf_control.rundir import CONFIG_FILE, RunExistsError, check_run_dir
    from rlhf_control.tasks.spec import TaskSpec

    if args.env and args.task:
        raise UserError(f"give --task or --env, not both (got --task {args.task!r} and --env {args.env!r})")
    if args.env:
        args.task = args.env
    fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    overrides = {name: getattr(args, name) for name in fields if getattr(args, name, None) is not None}

    task_spec = None
    if args.resume:
        run_dir = check_run_dir(args.resume)
        if args.config:
            raise UserError("--resume uses the run's own config; drop --config")
        if args.run_dir is not None and Path(args.run_dir).resolve() != run_dir.resolve():
            raise UserError(f"--resume continues {str(run_dir)!r} in place; drop --run-dir {str(args.run_dir)!r}")
        cfg, task_dict = load_config_file(run_dir / CONFIG_FILE)
        allowed = {name for name, f in fields.items() if f.metadata.get("resumable")}
        bad = sorted(set(overrides) - allowed)
        if bad:
            raise UserError(f"--resume cannot change {', '.join(run_config_flag(fields[b]) for b in bad)}; "
                            f"only {', '.join(sorted(run_config_flag(fields[a]) for a in allowed))} may be given")
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
        if run_dir.exists() and not run_dir.is_dir():
            raise UserError(f"--run-dir {str(run_dir)!r} is a file, not a directory")
        if run_dir.exists() and any(run_dir.iterdir()):
            raise RunExistsError(f"run directory {str(run_dir)!r} already exists and is not empty; "
                                  f"use --resume {run_dir} or another --run-dir")
        resume = False

    _stop_on_sigterm()
    trainer = RLHFTrainer(cfg, run_dir, resume=resume, progress=not args.no_progress, task=task_spec,
                          label_token=args.label_token)
    print(f"run directory: {run_dir}", flush=True)
    trainer.run()
    print(f"finished; run directory: {run_dir}", flush=True)
    return 0


def _stop_on_sigterm() -> None:
    """SIGTERM stops the command as Ctrl-C does: the trainer checkpoints, stops its worker and server."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name).strip("-")


def _eval(args: argparse.Namespace) -> int:
    from rlhf_control.loop.evaluate import evaluate_run

    if args.seed is not None and not 0 <= args.seed < 2**32:
        raise UserError(f"--seed {args.seed} must be an integer in [0, 2**32 - 1]")
    seed = {} if args.seed is None else {"seed": args.seed}
    result = evaluate_run(args.run_dir, episodes=args.episodes, video=args.video, **seed)
    print(f"true return over {result.episodes} episodes: mean {result.mean:.2f}, std {result.std:.2f}, "
          f"min {result.min:.2f}, max {result.max:.2f}"
          + (f"; Gymnasium return: mean {result.gym_mean:.2f}, std {result.gym_std:.2f}" if result.gym_returns else ""))
    if args.per_episode:  # the same episodes, in the order the seeded env started them
        gym = result.gym_returns or (None,) * result.episodes
        for i, (ret, g) in enumerate(zip(result.returns, gym, strict=True)):
            print(f"episode {i}: true return {ret:.2f}" + ("" if g is None else f", Gymnasium return {g:.2f}"))
    if args.video:
        print(f"video: {args.video}")
    return 0


def trained_answer_id(run_dir: Path) -> int:
    """The last answer the run's saved reward model had trained on (0: none, or no readable
    checkpoint: ``train --resume`` refuses a damaged one, labelling does not need it)."""
    from rlhf_control.loop.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint_state

    try:
        path = latest_checkpoint(run_dir)
        state = load_checkpoint_state(path, verify=False) if path is not None else {}
    except CheckpointError:
        return 0
    return int(state.get("trained_answer_id") or 0)


def _label(args: argparse.Namespace) -> int:
    """Serve a stopped run's pending pairs, rendering the clips they still lack (newest first)."""
    from rlhf_control.config import load_config_file
    from rlhf_control.oracles.human import HumanOracle
    from rlhf_control.rundir import CLIPS_DIR, CONFIG_FILE, RunDirError, RunLock, check_run_dir
    from rlhf_control.tasks.catalogue import get_task
    from rlhf_control.tasks.spec import TaskSpec
    from rlhf_control.video.render import SegmentRenderer
    from rlhf_control.web.server import make_server

    run_dir = check_run_dir(args.run_dir)
    cfg, task_dict = load_config_file(run_dir / CONFIG_FILE)
    task = TaskSpec.from_dict(task_dict) if task_dict else get_task(cfg.task)
    try:  # a training run serves its own page; two renderers in one clips folder would undo each other's files
        lock = RunLock(run_dir)
    except RunDirError:
        raise UserError(f"run {str(run_dir)!r} is in use by another process (a training run serves its own "
                        "labelling page, whose address it printed); label serves stopped runs") from None
    try:
        server = make_server(run_dir, host=args.host, port=args.port, token=args.token, instructions=args.instructions)
    except BaseException:
        lock.close()
        raise
    server.app.set_run(trained_answer_id=trained_answer_id(run_dir))  # so that an undo can say so
    _stop_on_sigterm()
    oracle = None
    try:
        oracle = HumanOracle(server.store, renderer=SegmentRenderer(task), clips_dir=run_dir / CLIPS_DIR)
        print(f"labelling app: {server.url}  (Ctrl-C stops)", flush=True)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        if oracle is not None:
            oracle.close(timeout=5, finish=False)
        server.stop()
        lock.close()
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
                raise UserError(f"export file {str(args.export)!r} must end in .jsonl or .csv")
            n = (export_jsonl if suffix == ".jsonl" else export_csv)(store, args.export, history=args.history)
            print(f"exported {n} answers{' (with the undone ones)' if args.history else ''} to {args.export}")
        else:
            if args.history:
                raise UserError("--history goes with --export")
            if not args.import_.is_file():
                raise UserError(f"import file {str(args.import_)!r} does not exist")
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
    except UserError as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        sys.stderr.write(f"rlhf-control: error: {msg}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("rlhf-control: interrupted; the run can be continued with --resume\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
