"""The paper's experiment grids as data, and the driver shared by ``rlhf-control sweep`` and the
scripts in ``scripts/``: the flags ``--backend``, ``--address``, ``--workers``, ``--dry-run``
(:func:`add_backend_args`), running or dry-running a spec from them (:func:`execute_spec`), and a
script's whole ``main`` (:func:`preset_main`, which adds ``--scale``, ``--tasks``, ``--seeds``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rlhf_control.errors import UserError
from rlhf_control.experiments.backends import ERROR_FILE, stop_on_sigterm
from rlhf_control.experiments.sweep import SweepSpec, format_plan, plan_sweep, run_sweep

# Christiano et al. 2017: the eight MuJoCo tasks and seven Atari games, in the paper's order.
MUJOCO_TASKS = ("Reacher-v5", "HalfCheetah-v5", "Hopper-v5", "Walker2d-v5", "Swimmer-v5", "Ant-v5",
                "InvertedPendulum-v5", "InvertedDoublePendulum-v5")
ATARI_TASKS = ("ALE/BeamRider-v5", "ALE/Breakout-v5", "ALE/Enduro-v5", "ALE/Pong-v5", "ALE/Qbert-v5",
               "ALE/Seaquest-v5", "ALE/SpaceInvaders-v5")
MUJOCO_LABELS = (350, 700, 1400)
ATARI_LABELS = (3300, 5500, 10000)
# B-Pref's scripted teachers (Lee et al. 2021) at their default parameters, with the perfect oracle first.
BPREF_TEACHERS = ("perfect", "stochastic", "mistake", "skip", "equal", "myopic")


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive integer")
    return int(text)


def flag_value(argv: list[str], flag: str, default: str) -> str:
    """The value of ``flag`` in ``argv`` (``--flag V`` or ``--flag=V``), read before the full parse
    because it sets other flags' defaults; ``default`` when absent (argparse checks it later)."""
    for i, a in enumerate(argv):
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
    return default


def add_backend_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=["local", "ray"], default="local",
                   help="local: a process pool on this machine; ray: a Ray cluster (default local)")
    p.add_argument("--address", help="Ray cluster address (host:port, ray://host:port or auto); "
                                     "default: start a local Ray cluster")
    p.add_argument("--workers", type=positive_int,
                   help="runs at once (default: the machine's cores / cpus_per_run; Ray: all the cluster takes)")
    p.add_argument("--dry-run", action="store_true", help="print the grid and each run's status; run nothing")


def execute_spec(spec: SweepSpec, out: Path, args: Any) -> int:
    """Dry-run or run a sweep from parsed ``--backend/--address/--workers/--dry-run`` flags.

    Returns the exit status: 0, 1 if some run failed, 130 if interrupted.
    """
    if args.dry_run:
        print(format_plan(plan_sweep(spec, out)))
        return 0
    try:
        with stop_on_sigterm():
            result = run_sweep(spec, out, backend=args.backend, address=args.address, workers=args.workers)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (backends.Terminated): the runs checkpointed first
        print("sweep interrupted; run the same command again to continue it", flush=True)
        return 130
    if result.failed:
        print(f"{len(result.failed)} run(s) failed; see {ERROR_FILE} in their directories under {result.out}")
        return 1
    return 0


def preset_main(description: str, default_out: str, tasks: tuple[str, ...], seeds: int,
                build: Callable[[Any], SweepSpec], extra_args: Callable[[Any], None] | None = None,
                argv: list[str] | None = None) -> int:
    """``main`` of a script in ``scripts/``: ``build(args)`` makes the spec from the parsed ``--scale``,
    ``--tasks``, ``--seeds`` (and ``extra_args``) flags; user errors print one line and return 2."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiply every run's agent steps by this (e.g. 0.1 on a small machine; default 1)")
    p.add_argument("--tasks", type=lambda t: tuple(x for x in t.split(",") if x), default=tasks,
                   help=f"comma-separated subset of the tasks (default {','.join(tasks)})")
    p.add_argument("--seeds", type=positive_int, default=seeds, help=f"seeds 0..N-1 per point (default {seeds})")
    p.add_argument("--out", type=Path, default=Path(default_out), help=f"output directory (default {default_out})")
    add_backend_args(p)
    if extra_args:
        extra_args(p)
    args = p.parse_args(argv)
    try:
        if not args.scale > 0:
            raise UserError(f"--scale {args.scale} must be positive")
        return execute_spec(build(args), args.out, args)
    except ValueError as exc:
        print(f"{p.prog}: error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 2
