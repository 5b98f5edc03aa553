"""Clips for the human labeller: segments drawn from their render states, mp4s on demand.

Only queried segments are drawn, and lazily. While the agent runs, :func:`render_state_fn` (in
:mod:`rlhf_control.recording.render_states`, re-exported here) records one small render state per env and step;
a :class:`SegmentRenderer` later restores each step into its own render env, draws it and encodes
H.264 mp4s (yuv420p, even sizes, ``+faststart``: they play in browsers). The state formats, and the
headless OpenGL choice made when either module is imported, are described in
:mod:`rlhf_control.recording.render_states`.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import threading
import weakref
import zlib
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

# First: importing render_states sets MUJOCO_GL (and SDL's dummy drivers) before anything loads MuJoCo.
from rlhf_control.recording.render_states import (
    _ATARI_RGB,
    _ATARI_SHAPE,
    GL_BACKEND,
    SUITES,
    _decode,
    _decode_floats,
    _Target,
    capture_state,
    configure_gl,
    render_state_fn,
    restore_state,
)
from rlhf_control.types import Segment, SegmentPair

__all__ = ["GL_BACKEND", "SUITES", "SegmentRenderer", "capture_state", "configure_gl", "render_state_fn",
           "restore_state", "side_by_side", "write_mp4"]

_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
_ATARI_FPS = 15.0  # 60 Hz emulator, 4 frames per agent step (ALE v5 and the AtariFrames wrapper)


def _gl_context(width: int, height: int) -> Any:
    backend = os.environ.get("MUJOCO_GL", "").strip().lower()
    try:
        if backend in ("egl", "osmesa", "glfw"):
            cls = importlib.import_module(f"mujoco.{backend}").GLContext
        else:
            cls = importlib.import_module("mujoco").GLContext
        return cls(width, height)
    except Exception as exc:  # any backend failure means the same to the user
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RuntimeError(
            f"cannot create an OpenGL context for MuJoCo clips (MUJOCO_GL={backend or 'unset'}): {msg}; "
            "headless Linux needs libegl1 + libgl1-mesa-dri (MUJOCO_GL=egl) or libosmesa6 (MUJOCO_GL=osmesa)"
        ) from None


# --- drawing ------------------------------------------------------------------------------------------
def _free_gl(ctx: Any, con: Any) -> None:
    try:
        ctx.make_current()
        con.free()
    finally:
        ctx.free()


class _MujocoDrawer:
    def __init__(self, env: Any, size: tuple[int, int], camera: dict[str, Any] | None) -> None:
        import mujoco

        self.env, self._mj = env, mujoco
        u = env.unwrapped
        m = self.model = u.model
        w, h = size
        m.vis.global_.offwidth = max(m.vis.global_.offwidth, w)
        m.vis.global_.offheight = max(m.vis.global_.offheight, h)
        m.vis.quality.shadowsize = min(m.vis.quality.shadowsize, 1024)  # 4096 costs ~2x in software GL
        self.data = mujoco.MjData(m)
        self.fps = 1.0 / float(u.dt)
        env_cfg = getattr(getattr(u, "mujoco_renderer", None), "default_cam_config", None) or {}
        self.cam = self._camera(dict(env_cfg), camera or {})
        self._ctx = _gl_context(w, h)
        self._ctx.make_current()
        self._con = mujoco.MjrContext(m, mujoco.mjtFontScale.mjFONTSCALE_150)
        self._finalizer = weakref.finalize(self, _free_gl, self._ctx, self._con)
        self._finalizer.atexit = False  # at exit the backend may be torn down already; the OS frees it
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._con)
        self._scene = mujoco.MjvScene(m, maxgeom=10000)
        self._scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0  # decoration only, ~25% of a frame
        self._opt, self._pert = mujoco.MjvOption(), mujoco.MjvPerturb()
        self._rect = mujoco.MjrRect(0, 0, w, h)
        self._buf = np.empty((h, w, 3), dtype=np.uint8)

    def _camera(self, env_cfg: dict[str, Any], override: dict[str, Any]) -> Any:
        """The env's default view; a free-moving base (unlimited root slide/free joint) is tracked."""
        mj, m = self._mj, self.model
        allowed = ("distance", "azimuth", "elevation", "lookat", "trackbodyid")
        for key in override:
            if key not in allowed:
                raise ValueError(f"camera key {key!r} is not allowed; allowed: {', '.join(allowed)}")
        cfg = {**env_cfg, **override}
        cam = mj.MjvCamera()
        d0 = mj.MjData(m)
        mj.mj_forward(m, d0)
        cam.lookat[:] = np.median(d0.geom_xpos, axis=0)  # as Gymnasium's viewer starts
        # Gymnasium's start (extent); an env without a view of its own gets a closer one.
        cam.distance = float(m.stat.extent) * (1.0 if env_cfg else 0.5)
        cam.azimuth, cam.elevation = 90.0, -45.0
        for key in ("distance", "azimuth", "elevation"):
            if key in cfg:
                setattr(cam, key, float(cfg[key]))
        if "lookat" in cfg:
            cam.lookat[:] = np.asarray(cfg["lookat"], dtype=np.float64)
        track = int(cfg.get("trackbodyid", -1))
        if track <= 0 and "trackbodyid" not in override:
            moving = (int(mj.mjtJoint.mjJNT_FREE), int(mj.mjtJoint.mjJNT_SLIDE))
            roots = [int(m.jnt_bodyid[j]) for j in range(m.njnt) if int(m.jnt_type[j]) in moving
                     and not m.jnt_limited[j] and m.body_parentid[m.jnt_bodyid[j]] == 0]
            track = roots[0] if roots else -1
        if 0 < track < m.nbody:
            cam.type, cam.trackbodyid = mj.mjtCamera.mjCAMERA_TRACKING, track
            if "elevation" not in cfg:
                cam.elevation = -20.0  # a side view shows gaits better than MuJoCo's -45
        return cam

    def draw(self, state: str) -> np.ndarray:
        mj, m, d = self._mj, self.model, self.data
        x = _decode_floats(state, "mj", m.nq + m.nv)
        d.qpos[:], d.qvel[:] = x[: m.nq], x[m.nq:]
        mj.mj_forward(m, d)  # positions, subtree com (camera) from qpos
        self._ctx.make_current()
        mj.mjv_updateScene(m, d, self._opt, self._pert, self.cam, mj.mjtCatBit.mjCAT_ALL, self._scene)
        mj.mjr_render(self._rect, self._scene, self._con)
        mj.mjr_readPixels(self._buf, None, self._rect, self._con)
        return np.flipud(self._buf).copy()

    def close(self) -> None:
        self._finalizer()
        self.env.close()


class _ClassicDrawer:
    def __init__(self, env: Any) -> None:
        self.env = env
        u = env.unwrapped
        dt = getattr(u, "dt", None) or getattr(u, "tau", None)
        self.fps = 1.0 / float(dt) if dt else float(env.metadata.get("render_fps") or 30)

    def draw(self, state: str) -> np.ndarray:
        restore_state(self.env, state)
        return np.ascontiguousarray(self.env.unwrapped.render(), dtype=np.uint8)

    def close(self) -> None:
        self.env.close()


class _AtariDrawer:
    fps = _ATARI_FPS

    def draw(self, state: str) -> np.ndarray:
        raw = _decode(state, "ale")
        try:
            screen = np.frombuffer(zlib.decompress(raw), dtype=np.uint8)
        except zlib.error:
            raise ValueError("Atari render state is not a zlib-compressed screen") from None
        if screen.size != _ATARI_SHAPE[0] * _ATARI_SHAPE[1]:
            raise ValueError(f"Atari render state holds {screen.size} pixels; expected 210 x 160")
        return _ATARI_RGB[screen.reshape(_ATARI_SHAPE)]

    def close(self) -> None:
        pass


def _resize(frame: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    h, w = frame.shape[:2]
    if (w, h) == size:
        return frame
    if nearest and size[0] % w == 0 and size[1] % h == 0 and size[0] // w == size[1] // h:
        k = size[0] // w
        return frame.repeat(k, axis=0).repeat(k, axis=1)
    from PIL import Image

    method = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(frame).resize(size, method))


def _check_size(size: Any) -> tuple[int, int] | None:
    if size is None:
        return None
    ok = isinstance(size, (tuple, list)) and len(size) == 2 and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 16 <= v <= 4096 for v in size)
    if not ok:
        raise ValueError(f"size={size!r} is not allowed; use (width, height) in pixels, each 16..4096")
    return int(size[0]), int(size[1])


# --- encoding -----------------------------------------------------------------------------------------
def _check_frames(frames: Any) -> np.ndarray:
    arr = np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.shape[0] < 1 or arr.dtype != np.uint8:
        raise ValueError(f"frames must be a (T>=1, H, W, 3) uint8 array, got {arr.dtype} {arr.shape}")
    pad_h, pad_w = arr.shape[1] % 2, arr.shape[2] % 2
    if pad_h or pad_w:  # yuv420p needs even sizes: repeat the last row/column
        arr = np.pad(arr, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return np.ascontiguousarray(arr)


def _check_encoding(fps: Any, preset: Any, crf: Any) -> None:
    if isinstance(fps, bool) or not isinstance(fps, (int, float, np.integer, np.floating)) or not 0 < fps <= 1000:
        raise ValueError(f"fps={fps!r} is not allowed; use a number in (0, 1000]")
    if preset not in _PRESETS:
        raise ValueError(f"preset={preset!r} is not allowed; allowed: {', '.join(_PRESETS)}")
    if isinstance(crf, bool) or not isinstance(crf, (int, np.integer)) or not 0 <= crf <= 51:
        raise ValueError(f"crf={crf!r} is not allowed; use an integer in 0..51")


def _encode(frames: Any, path: Path, fps: float, preset: str, crf: int) -> Path:
    """Encode ``frames`` to an H.264 mp4 at ``path`` through imageio-ffmpeg's ffmpeg; the file appears atomically."""
    import imageio_ffmpeg

    _check_encoding(fps, preset, crf)
    arr = _check_frames(frames)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{arr.shape[2]}x{arr.shape[1]}", "-r", str(Fraction(float(fps)).limit_denominator(1001)),
           "-i", "-", "-an", "-c:v", "libx264", "-preset", preset, "-crf", str(int(crf)), "-pix_fmt", "yuv420p",
           "-movflags", "+faststart", "-f", "mp4", str(tmp)]
    try:
        proc = subprocess.run(cmd, input=arr.tobytes(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if proc.returncode != 0:
            lines = proc.stderr.decode(errors="replace").strip().splitlines() or [f"exit code {proc.returncode}"]
            raise RuntimeError(f"ffmpeg failed writing {path}: {lines[-1]}")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_mp4(frames: Any, path: str | Path, fps: float, *, preset: str = "veryfast", crf: int = 23) -> Path:
    """Write ``frames: (T, H, W, 3) uint8`` as an H.264/yuv420p mp4 at ``fps`` frames per second.

    Odd sizes are padded to even. The file appears complete or not at all (temp file + rename).
    """
    return _encode(frames, Path(path), fps, preset, crf)


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


# --- the renderer -------------------------------------------------------------------------------------
class SegmentRenderer:
    """Draws segments from their ``render_ref`` (the states :func:`render_state_fn` recorded) and writes mp4s.

    ``task``: a Gymnasium env id or a ``TaskSpec`` (its ``fps`` and ``env_kwargs`` are used). ``fps``:
    frames per second of the clips (default: the TaskSpec's, else 1/dt, Atari 15). ``size``: (width,
    height) of a clip; default MuJoCo 320x240, Atari 210x160 scaled ``atari_scale`` times (nearest),
    classic control the env's own size. ``camera``: MuJoCo view overrides (distance, azimuth,
    elevation, lookat, trackbodyid; trackbodyid <= 0: fixed camera). ``gap``: pixels between the clips of
    a side-by-side video. The render env and GL context are made on first use, in that thread; use one
    renderer from one thread (calls are serialised by a lock).
    """

    def __init__(self, task: Any, fps: float | None = None, size: tuple[int, int] | None = None, *,
                 camera: dict[str, Any] | None = None, atari_scale: int = 2, gap: int = 8,
                 preset: str = "veryfast", crf: int = 23) -> None:
        self._target = _Target(task)
        self.size = _check_size(size)
        _check_encoding(1.0 if fps is None else fps, preset, crf)
        if isinstance(atari_scale, bool) or not isinstance(atari_scale, int) or not 1 <= atari_scale <= 8:
            raise ValueError(f"atari_scale={atari_scale!r} is not allowed; use an integer in 1..8")
        if isinstance(gap, bool) or not isinstance(gap, int) or gap < 0:
            raise ValueError(f"gap={gap!r} is not allowed; use an integer >= 0 (pixels)")
        fps = fps if fps is not None else self._target.fps
        self._fps = None if fps is None else float(fps)
        self._camera, self._atari_scale, self.gap = camera, atari_scale, gap
        self.preset, self.crf = preset, crf
        self._drawer: Any = None
        self._lock = threading.Lock()

    @property
    def suite(self) -> str:
        """'classic', 'mujoco' or 'atari'."""
        return self._target.suite

    @property
    def fps(self) -> float:
        if self._fps is None:
            self._fps = float(self._get_drawer().fps)
        return self._fps

    def _get_drawer(self) -> Any:
        if self._drawer is None:
            suite = self.suite
            if suite == "mujoco":
                env = self._target.make_env(None)
                try:
                    self._drawer = _MujocoDrawer(env, self.size or (320, 240), self._camera)
                except BaseException:
                    env.close()
                    raise
            elif suite == "classic":
                self._drawer = _ClassicDrawer(self._target.make_env("rgb_array"))
            else:
                self._drawer = _AtariDrawer()
        return self._drawer

    def _finish(self, frame: np.ndarray) -> np.ndarray:
        if self.suite == "atari":
            k = self._atari_scale
            return _resize(frame, self.size or (frame.shape[1] * k, frame.shape[0] * k), nearest=True)
        return frame if self.size is None else _resize(frame, self.size, nearest=False)

    def _draw_all(self, states: Sequence[str]) -> np.ndarray:
        with self._lock:
            drawer = self._get_drawer()
            first = self._finish(drawer.draw(states[0]))
            out = np.empty((len(states), *first.shape), dtype=np.uint8)
            out[0] = first
            for t in range(1, len(states)):
                out[t] = self._finish(drawer.draw(states[t]))
        return out

    def frames(self, segment: Segment) -> np.ndarray:
        """``(T, H, W, 3)`` uint8: step t drawn from ``segment.render_ref[t]``."""
        ref = segment.render_ref
        if ref is None:
            raise ValueError(f"segment uid={segment.uid} has no render_ref; record the run with "
                             "TrajectoryRecorder(..., render_state_fn=render_state_fn(task))")
        if isinstance(ref, (str, bytes)) or not isinstance(ref, Sequence) or len(ref) != segment.length:
            got = len(ref) if isinstance(ref, Sequence) and not isinstance(ref, (str, bytes)) else type(ref).__name__
            raise ValueError(f"segment uid={segment.uid}: render_ref must list T={segment.length} states, got {got}")
        return self._draw_all(ref)

    def render_env(self, env: Any) -> np.ndarray:
        """``(H, W, 3)`` uint8: ``env``'s current state drawn as a clip shows it (``env`` is not changed)."""
        return self._draw_all([capture_state(env)])[0]

    def write_mp4(self, frames: Any, path: str | Path, fps: float | None = None) -> Path:
        """:func:`write_mp4` with this renderer's fps (unless given), preset and crf."""
        return _encode(frames, Path(path), self.fps if fps is None else fps, self.preset, self.crf)

    def render_clip(self, segment: Segment, path: str | Path) -> Path:
        """Draw ``segment`` and write it to ``path`` (mp4)."""
        return self.write_mp4(self.frames(segment), path)

    def render_pair(self, pair: SegmentPair, directory: str | Path, query_id: int) -> tuple[Path, Path, Path]:
        """Write ``query_<id>_first.mp4``, ``..._second.mp4`` and ``..._pair.mp4`` (side by side, a
        ``gap``-pixel white bar between) into ``directory``; returns the three paths."""
        if isinstance(query_id, bool) or not isinstance(query_id, (int, np.integer)) or query_id < 0:
            raise ValueError(f"query_id={query_id!r} is not allowed; use an integer >= 0")
        a, b = self.frames(pair.first), self.frames(pair.second)
        d = Path(directory)
        paths = [d / f"query_{int(query_id)}_{name}.mp4" for name in ("first", "second", "pair")]
        for frames, path in zip((a, b, side_by_side(a, b, self.gap)), paths, strict=True):
            _encode(frames, path, self.fps, self.preset, self.crf)
        return paths[0], paths[1], paths[2]

    def close(self) -> None:
        """Free the render env and GL context (a later call makes new ones)."""
        with self._lock:
            if self._drawer is not None:
                self._drawer.close()
                self._drawer = None

    def __enter__(self) -> SegmentRenderer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
