"""Run directories and checkpoints.

Inside a run directory (file names: rlhf_control.rundir)::

    checkpoints/LATEST   name of the newest complete checkpoint
    checkpoints/ckpt-<step>/  agent.zip, ensemble.pt, reward_trainer.pt, state.json
    checkpoints/ckpt-<step>-r<n>/  the same step written again (a stop right after a checkpoint)

A checkpoint is written to a temporary folder, each file's SHA-256 recorded in ``state.json``,
renamed into place under a name no other checkpoint has, and only then named in ``LATEST`` (atomic
replace); older ones are deleted after that. A kill at any moment leaves the previous checkpoint
intact and named; a damaged one is detected by its hashes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from rlhf_control.rundir import CHECKPOINTS_DIR, RunDirError, write_atomic

# The files of an RLHF run's checkpoint (besides state.json).
AGENT_FILE = "agent.zip"
ENSEMBLE_FILE = "ensemble.pt"
FITTER_FILE = "reward_trainer.pt"  # the reward fitter's state (its name predates pluggable fitters)
OBS_NORM_FILE = "obs_norm.npz"

KEEP = 2


class CheckpointError(RunDirError):
    """A checkpoint or run directory that cannot be used."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(run_dir: Path, step: int, writers: dict[str, Callable[[Path], None]], state: dict[str, Any]) -> Path:
    """Write a checkpoint: ``writers`` maps file names to functions that write them."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    name = f"ckpt-{step:012d}"
    tmp = root / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    hashes = {}
    for fname, write in writers.items():
        target = tmp / fname
        write(target)
        with open(target, "rb") as f:
            os.fsync(f.fileno())
        hashes[fname] = _sha256(target)
    doc = dict(state, step=step, files=hashes)
    with open(tmp / "state.json", "w") as f:
        json.dump(doc, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)
    # The same step again (a stop right after a checkpoint): a new name after every copy of that step,
    # never deleting the one LATEST may still name.
    copies = [q.name[len(name):] for q in root.glob(f"{name}*") if q.is_dir()]
    if copies:
        name += f"-r{1 + max(int(c[2:]) if c.startswith('-r') else 0 for c in copies):03d}"
    final = root / name
    tmp.rename(final)
    write_atomic(root / "LATEST", name + "\n", fsync=True)
    _fsync_dir(root)
    _prune(root, keep=name)
    return final


def _prune(root: Path, keep: str) -> None:
    ckpts = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("ckpt-"))
    for old in ckpts[:-KEEP]:
        if old.name != keep:
            shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-*"):
        if not stale.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(stale, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, or None if it has none yet."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    latest = root / "LATEST"
    if not latest.is_file():
        return None
    name = latest.read_text().strip()
    path = root / name
    if not name.startswith("ckpt-") or not path.is_dir():
        raise CheckpointError(f"checkpoint {str(path)!r} named in {latest} is missing")
    return path


def load_checkpoint_state(path: Path, verify: bool = True) -> dict[str, Any]:
    """Read a checkpoint's ``state.json`` and, with ``verify``, check its files' hashes (a reader of
    the state alone need not hash a replay buffer)."""
    path = Path(path)
    try:
        state = json.loads((path / "state.json").read_text())
        files = state["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"corrupt or truncated checkpoint {str(path)!r}: state.json unreadable ({exc})") from None
    if not verify:
        return state
    for fname, digest in files.items():
        f = path / fname
        if not f.is_file():
            raise CheckpointError(f"corrupt or truncated checkpoint {str(path)!r}: {fname} is missing")
        if _sha256(f) != digest:
            raise CheckpointError(f"corrupt or truncated checkpoint {str(path)!r}: {fname} does not match its hash")
    return state


def load_run_checkpoint(run_dir: Path) -> tuple[Path | None, dict[str, Any] | None]:
    """The newest complete checkpoint of a run and its verified state, or ``(None, None)`` if the run
    has none yet (killed before its first). Raises :class:`CheckpointError` if it is damaged."""
    path = latest_checkpoint(run_dir)
    return (path, load_checkpoint_state(path)) if path is not None else (None, None)


def jsonable(obj: Any) -> Any:
    """``obj`` with NumPy scalars and arrays turned into JSON types (for ``state.json``)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj
