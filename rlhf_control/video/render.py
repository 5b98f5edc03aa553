"""Clips for the human labeller: segments drawn from their render states, mp4s on demand.

Only queried segments are drawn, and lazily. While the agent runs,
:func:`rlhf_control.recording.render_states.render_state_fn` records one small render state per env
and step; a :class:`SegmentRenderer` later restores each step into its own render env, draws it and
writes mp4s with :mod:`rlhf_control.video.mp4`. The state formats, and the headless OpenGL choice
made when either module is imported, are described in :mod:`rlhf_control.recording.render_states`.
"""

from __future__ import annotations

import importlib
import os
import threading
import weakref
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

# First: importing render_states sets MUJOCO_GL (and SDL's dummy drivers) before anything loads MuJoCo.
from rlhf_control.recording.render_states import (
    _ATARI_RGB,
    _ATARI_SHAPE,
    _decode,
    _decode_floats,
    _Target,
    capture_state,
    restore_state,
)
from rlhf_control.types import Segment, SegmentPair
from rlhf_control.video.mp4 import check_encoding, side_by_side, write_mp4

__all__ = ["SegmentRenderer"]

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
        check_encoding(1.0 if fps is None else fps, preset, crf)
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
        """'classic', 'mujoco', 'dmc' or 'atari'."""
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
            elif suite in ("classic", "dmc"):  # (DeepMind Control draws itself from its restored physics)
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
        """:func:`rlhf_control.video.mp4.write_mp4` with this renderer's fps (unless given), preset and crf."""
        return write_mp4(frames, path, self.fps if fps is None else fps, preset=self.preset, crf=self.crf)

    def render_clip(self, segment: Segment, path: str | Path) -> Path:
        """Draw ``segment`` and write it to ``path`` (mp4)."""
        return self.write_mp4(self.frames(segment), path)

    def render_pair(self, pair: SegmentPair, directory: str | Path, query_id: int,
                    side_by_side_clip: bool = False) -> tuple[Path, Path, Path | None]:
        """Write ``query_<id>_first.mp4`` and ``..._second.mp4`` into ``directory`` (the labelling page
        plays the two in step); with ``side_by_side_clip`` also ``..._pair.mp4`` (both side by side, a
        ``gap``-pixel white bar between), else None in its place. Returns the three paths."""
        if isinstance(query_id, bool) or not isinstance(query_id, (int, np.integer)) or query_id < 0:
            raise ValueError(f"query_id={query_id!r} is not allowed; use an integer >= 0")
        a, b = self.frames(pair.first), self.frames(pair.second)
        d = Path(directory)
        paths = [d / f"query_{int(query_id)}_{name}.mp4" for name in ("first", "second", "pair")]
        self.write_mp4(a, paths[0])
        self.write_mp4(b, paths[1])
        if not side_by_side_clip:
            return paths[0], paths[1], None
        self.write_mp4(side_by_side(a, b, self.gap), paths[2])
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
