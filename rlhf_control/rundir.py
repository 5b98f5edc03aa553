"""Run directories: every file name in one, the atomic-write helper, the DONE marker, and the check
that a directory holds a run written by this version.

Layout of a run directory (``rlhf-control train`` and the RL baseline)::

    config.toml          resolved config (rerun with --config); [meta] version names the writer
    metrics.csv          one row per iteration
    tb/                  TensorBoard events
    preferences.sqlite   every query and answer, committed as it arrives (RLHF runs)
    checkpoints/         see rlhf_control.loop.checkpoint
    clips/               mp4 clips shown to a person (human oracle)
    reward_frames.u8     the label window's Atari frames, written once, read by both processes (+ .idx)
    instructions.md      the labelling page's instructions, when edited there
    baseline.json        a baseline run's random-policy return
    DONE                 written last, when the run has finished
    .lock                held (flock) by the process training in the run, so that a second one is refused
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rlhf_control import __version__
from rlhf_control.errors import UserError

CONFIG_FILE = "config.toml"
METRICS_FILE = "metrics.csv"
TB_DIR = "tb"
STORE_FILE = "preferences.sqlite"
CHECKPOINTS_DIR = "checkpoints"
CLIPS_DIR = "clips"
FRAMES_FILE = "reward_frames.u8"
POOL_FRAMES_FILE = "pool_frames.u8"
INSTRUCTIONS_FILE = "instructions.md"
BASELINE_FILE = "baseline.json"
DONE_FILE = "DONE"
LOCK_FILE = ".lock"


class RunDirError(UserError):
    """A path that is not a usable run directory (missing, not a run, another version's)."""


class RunExistsError(RunDirError, FileExistsError):
    """A new run asked for a directory that already holds one (resume it, or choose another)."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds it replaces ``path`` in one
    rename, when it raises the temporary file is removed and ``path`` is untouched. A reader never
    sees a half-written file, and a kill leaves at most a hidden ``.tmp`` file behind."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_atomic(path: str | os.PathLike, data: str | bytes, fsync: bool = False) -> None:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` through :func:`atomic_path`."""
    with atomic_path(path, fsync=fsync) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8")


def write_json(path: str | os.PathLike, doc: Any) -> None:
    """``doc`` as indented JSON, atomically."""
    write_atomic(path, json.dumps(doc, indent=1) + "\n")


class RunLock:
    """An exclusive lock on a run directory for as long as one process trains in it: ``flock`` on its
    :data:`LOCK_FILE`, which the kernel releases when the process ends, however it ends. A second
    process (another ``train --resume``, a sweep started twice) is refused in one line."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._fd)
            self._fd = None
            raise RunDirError(f"run directory {str(Path(run_dir))!r} is in use by another process (it holds "
                              f"{LOCK_FILE}); wait for that process to end or stop it first") from None

    def close(self) -> None:
        """Release the lock (closing the only descriptor releases it)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def mark_done(run_dir: str | os.PathLike, step: int) -> None:
    """Write the DONE marker: the run finished at agent step ``step``."""
    write_json(Path(run_dir) / DONE_FILE, {"step": int(step)})


def is_done(run_dir: str | os.PathLike) -> bool:
    return (Path(run_dir) / DONE_FILE).is_file()


def is_run_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def check_run_dir(path: str | os.PathLike) -> Path:
    """Return ``path`` if it is a run directory, else raise a one-line :class:`RunDirError`."""
    path = Path(path)
    if not path.is_dir():
        raise RunDirError(f"run directory {str(path)!r} does not exist")
    if not is_run_dir(path):
        raise RunDirError(f"{str(path)!r} is not a run directory (no {CONFIG_FILE})")
    return path


def read_toml(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """A TOML file's contents; a one-line :class:`RunDirError` naming ``what`` (e.g. "config file")
    when it does not exist or does not parse."""
    path = Path(path)
    if not path.is_file():
        raise RunDirError(f"{what} {str(path)!r} does not exist")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RunDirError(f"{what} {str(path)!r} is not valid TOML: {exc}") from None


def read_config_doc(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``config.toml`` of a run directory (one-line error when it is not valid TOML)."""
    config = Path(run_dir) / CONFIG_FILE
    try:
        return tomllib.loads(config.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RunDirError(f"{str(config)!r} is not valid TOML ({exc})") from None


def check_version(run_dir: str | os.PathLike, doc: dict[str, Any] | None = None, hint: str = "") -> None:
    """Refuse a run directory written by another version of rlhf-control (``[meta] version``)."""
    doc = read_config_doc(run_dir) if doc is None else doc
    version = doc.get("meta", {}).get("version")
    if version != __version__:
        raise RunDirError(f"run directory {str(run_dir)!r} was written by rlhf-control {version}, "
                          f"this is {__version__}{'; ' + hint if hint else ''}")
