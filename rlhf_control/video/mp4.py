"""Frames to mp4: the project's one writer, and side-by-side pairs.

Clips are H.264 in an mp4 (yuv420p, even sizes, ``+faststart``), which browsers play, encoded by
imageio-ffmpeg's ffmpeg binary. The container is named on the command line (``-f mp4``), so the
temporary file of :func:`rlhf_control.rundir.atomic_path` needs no ``.mp4`` suffix.
"""

from __future__ import annotations

import os
import subprocess
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from rlhf_control.rundir import atomic_path

__all__ = ["PRESETS", "check_encoding", "side_by_side", "write_mp4"]

PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")


def check_encoding(fps: Any, preset: Any, crf: Any) -> None:
    """Raise ValueError unless ``fps`` is in (0, 1000], ``preset`` an x264 preset and ``crf`` in 0..51."""
    if isinstance(fps, bool) or not isinstance(fps, (int, float, np.integer, np.floating)) or not 0 < fps <= 1000:
        raise ValueError(f"fps={fps!r} is not allowed; use a number in (0, 1000]")
    if preset not in PRESETS:
        raise ValueError(f"preset={preset!r} is not allowed; allowed: {', '.join(PRESETS)}")
    if isinstance(crf, bool) or not isinstance(crf, (int, np.integer)) or not 0 <= crf <= 51:
        raise ValueError(f"crf={crf!r} is not allowed; use an integer in 0..51")


def _check_frames(frames: Any) -> np.ndarray:
    arr = np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.shape[0] < 1 or arr.dtype != np.uint8:
        raise ValueError(f"frames must be a (T>=1, H, W, 3) uint8 array, got {arr.dtype} {arr.shape}")
    pad_h, pad_w = arr.shape[1] % 2, arr.shape[2] % 2
    if pad_h or pad_w:  # yuv420p needs even sizes: repeat the last row/column
        arr = np.pad(arr, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return np.ascontiguousarray(arr)


def write_mp4(frames: Any, path: str | os.PathLike, fps: float, *, preset: str = "veryfast", crf: int = 23) -> Path:
    """Write ``frames: (T, H, W, 3) uint8`` as an H.264/yuv420p mp4 at ``fps`` frames per second; returns ``path``.

    ``preset``: x264 speed/size trade-off; ``crf``: quality, 0 (lossless) .. 51 (worst). Odd sizes are
    padded to even by repeating the last row/column. Missing parent folders are made. The file
    appears complete or not at all (:func:`rlhf_control.rundir.atomic_path`).
    """
    import imageio_ffmpeg

    check_encoding(fps, preset, crf)
    arr = _check_frames(frames)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
               "-s", f"{arr.shape[2]}x{arr.shape[1]}", "-r", str(Fraction(float(fps)).limit_denominator(1001)),
               "-i", "-", "-an", "-c:v", "libx264", "-preset", preset, "-crf", str(int(crf)), "-pix_fmt", "yuv420p",
               "-movflags", "+faststart", "-f", "mp4", str(tmp)]
        proc = subprocess.run(cmd, input=arr.tobytes(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if proc.returncode != 0:
            lines = proc.stderr.decode(errors="replace").strip().splitlines() or [f"exit code {proc.returncode}"]
            raise RuntimeError(f"ffmpeg failed writing {path}: {lines[-1]}")
    return path


def side_by_side(first: np.ndarray, second: np.ndarray, gap: int = 8, fill: int = 255) -> np.ndarray:
    """``(T, H1, W1, 3)`` and ``(T, H2, W2, 3)`` -> ``(T, max(H1, H2), W1 + gap + W2, 3)``, gap in ``fill``."""
    a, b = np.asarray(first), np.asarray(second)
    if a.ndim != 4 or b.ndim != 4 or a.shape[0] != b.shape[0]:
        raise ValueError(f"clips must be (T, H, W, 3) with the same T, got {a.shape} and {b.shape}")
    if isinstance(gap, bool) or not isinstance(gap, (int, np.integer)) or gap < 0:
        raise ValueError(f"gap={gap!r} is not allowed; use an integer >= 0 (pixels)")
    out = np.full((a.shape[0], max(a.shape[1], b.shape[1]), a.shape[2] + gap + b.shape[2], 3), fill, np.uint8)
    out[:, : a.shape[1], : a.shape[2]] = a
    out[:, : b.shape[1], a.shape[2] + gap:] = b
    return out
