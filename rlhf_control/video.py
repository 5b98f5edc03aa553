"""Clips for the human labeller: small per-step render states while the agent runs, mp4s on demand.

Only queried segments are drawn, and lazily. While the agent runs, :func:`render_state_fn` hands the
``TrajectoryRecorder`` one short JSON-safe string per env and step (a segment's ``render_ref`` is the
list of its T strings); a :class:`SegmentRenderer` later restores each step into its own render env,
draws it and encodes H.264 mp4s (yuv420p, even sizes, ``+faststart``: they play in browsers).

State formats (tag, then base64):

- ``"mj:"``  MuJoCo: float64 ``[qpos, qvel]`` (HalfCheetah: 18 values, ~200 chars). Drawn headless
  through EGL or OSMesa, 320x240 by default, shadows on, floor reflections off; the camera tracks a
  free-moving base (HalfCheetah, Hopper, Ant, ...), fixed-base tasks get the env's default view.
- ``"cc:"``  classic control: float64 ``[env.unwrapped.state, last_u]`` (``last_u``, NaN for None, only
  where the env has it: Pendulum's torque arrow). Drawn by the env's own pygame ``render()``.
- ``"ale:"`` Atari: zlib of the emulator's palette-index screen (210, 160) (Pong: ~300 bytes). The frame,
  not the emulator state: ALE's ``restoreState`` does not restore the screen and a state is ~8 KB.
  Drawn in colour (NTSC palette), unmasked, scaled x2 (nearest) by default.

Timing: step t's state is that of the observation the action of step t is taken from, so call the
function after ``venv.reset()`` and after every ``venv.step_wait()`` (SB3's auto-reset has then put a
finished env at its next episode's start), as ``TrajectoryRecorder`` does.

Headless OpenGL: importing this module sets ``MUJOCO_GL`` (a value the user set wins) to ``egl`` when
an EGL device initialises (Debian: libegl1, libegl-mesa0, libgl1-mesa-dri; or an NVIDIA driver), else
``osmesa`` when libOSMesa is found (libosmesa6); and ``SDL_VIDEODRIVER``/``SDL_AUDIODRIVER=dummy`` on a
Linux machine without a display. MuJoCo clips create their GL context from that choice themselves,
so it holds even if ``mujoco`` was imported first.
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import ctypes.util
import importlib
import os
import subprocess
import sys
import threading
import weakref
import zlib
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from rlhf_control.types import Segment, SegmentPair

__all__ = ["SUITES", "SegmentRenderer", "capture_state", "configure_gl", "render_state_fn", "restore_state",
           "side_by_side", "write_mp4"]

SUITES = ("classic", "mujoco", "atari")
_TAGS = {"mujoco": "mj", "classic": "cc", "atari": "ale"}
_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
_ATARI_SHAPE = (210, 160)
_ATARI_FPS = 15.0  # 60 Hz emulator, 4 frames per agent step (ALE v5 and the AtariFrames wrapper)
# The Atari 2600 NTSC palette as ALE's getScreenRGB applies it (entry i for index 2i; TIA ignores bit 0).
_NTSC_HEX = (
    "0000004a4a4a6f6f6f8e8e8eaaaaaac0c0c0d6d6d6ececec48480069690f86861da2a22abbbb35d2d240e8e84afcfc54"
    "7c2c00904811a26221b47a30c3903dd2a44adfb755ecc860901c00a33915b55328c66c3ad5824ae39759f0aa67fcbc74"
    "940000a71a1ab83232c84848d65c5ce46f6ff08080fc909084006497197aa8308fb846a2c659b3d46cc3e07cd2ec8ce0"
    "50008468199a7d30ad9246c0a459d0b56ce0c57ceed48cfc140090331aa34e32b56848c67f5cd5956fe3a980f0bc90fc"
    "000094181aa72d32b84248c8545cd6656fe47580f08490fc001c88183b9d2d57b04272c2548ad265a0e175b5ef84c8fc"
    "0030641850802d6d984288b054a0c565b7d975cceb84e0fc00403018624e2d8169429e8254b89965d1ae75e7c284fcd4"
    "0044001a661a32843248a0485cba5c6fd26f80e88090fc90143c00355f18527e2d6e9c4287b7549ed065b4e775c8fc84"
    "3038005059166d762b88923ea0ab4fb7c25fccd86ee0ec7c482c00694d14866a26a28638bb9f47d2b656e8cc63fce070"
)
_ATARI_RGB = np.repeat(np.frombuffer(bytes.fromhex(_NTSC_HEX), np.uint8).reshape(128, 3), 2, axis=0)  # (256, 3)


# --- headless OpenGL ---------------------------------------------------------------------------------
def _egl_device_works() -> bool:
    """Whether an EGL device display initialises (what ``mujoco.egl`` needs); ~30 ms with Mesa."""
    try:
        egl = ctypes.CDLL("libEGL.so.1")
        gpa = egl.eglGetProcAddress
        gpa.restype, gpa.argtypes = ctypes.c_void_p, [ctypes.c_char_p]
        query_p, display_p = gpa(b"eglQueryDevicesEXT"), gpa(b"eglGetPlatformDisplayEXT")
        if not query_p or not display_p:
            return False
        c_int_p = ctypes.POINTER(ctypes.c_int)
        query = ctypes.CFUNCTYPE(ctypes.c_uint, ctypes.c_int, ctypes.POINTER(ctypes.c_void_p), c_int_p)(query_p)
        get_display = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_uint, ctypes.c_void_p, c_int_p)(display_p)
        egl.eglInitialize.argtypes = [ctypes.c_void_p, c_int_p, c_int_p]
        egl.eglTerminate.argtypes = [ctypes.c_void_p]
        n = ctypes.c_int(0)
        if not query(0, None, ctypes.byref(n)) or n.value < 1:
            return False
        devices = (ctypes.c_void_p * n.value)()
        query(n.value, devices, ctypes.byref(n))
        for device in devices[: n.value]:
            display = get_display(0x313F, device, None)  # EGL_PLATFORM_DEVICE_EXT
            major, minor = ctypes.c_int(), ctypes.c_int()
            if display and egl.eglInitialize(display, ctypes.byref(major), ctypes.byref(minor)):
                egl.eglTerminate(display)
                return True
    except (OSError, AttributeError, TypeError, ValueError):
        pass
    return False


def configure_gl() -> str:
    """Choose MuJoCo's headless OpenGL backend once per process; returns ``MUJOCO_GL`` ('' = MuJoCo's default).

    A ``MUJOCO_GL`` set by the user wins; a ``PYOPENGL_PLATFORM`` of ``egl``/``osmesa`` is followed.
    """
    chosen = os.environ.get("MUJOCO_GL", "").strip().lower()
    if chosen or not sys.platform.startswith("linux"):
        return chosen
    platform = os.environ.get("PYOPENGL_PLATFORM", "").strip().lower()
    if platform in ("egl", "osmesa"):
        chosen = platform
    elif platform:
        return ""
    elif _egl_device_works():
        chosen = "egl"
    elif ctypes.util.find_library("OSMesa"):
        chosen = "osmesa"
    else:
        return ""
    os.environ["MUJOCO_GL"] = chosen
    return chosen


if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # pygame (classic control) without a display
    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
GL_BACKEND = configure_gl()


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


# --- what a task is ------------------------------------------------------------------------------------
def _register_ale() -> None:
    import ale_py
    import gymnasium as gym

    gym.register_envs(ale_py)


def _suite_of_env(unwrapped: Any) -> str:
    if hasattr(unwrapped, "ale"):
        return "atari"
    if type(getattr(unwrapped, "data", None)).__module__.startswith("mujoco"):
        return "mujoco"
    if hasattr(unwrapped, "state"):
        return "classic"
    raise ValueError(f"cannot draw {type(unwrapped).__name__}: allowed are classic control (with .state), "
                     "MuJoCo and Atari (ALE) envs")


class _Target:
    """A task as the renderer needs it: its suite, frame rate (None: from the env) and an env factory."""

    def __init__(self, task: Any) -> None:
        import gymnasium as gym

        if isinstance(task, str):
            self.env_id, self.fps, suite = task, None, None
            self._make: Callable[[str | None], Any] = lambda mode: gym.make(task, render_mode=mode)
        elif hasattr(task, "env_id") and hasattr(task, "make_env"):
            self.env_id, self.fps = str(task.env_id), getattr(task, "fps", None)
            suite = getattr(task, "suite", None)
            self._make = lambda mode: task.make_env(0, render_mode=mode)
        else:
            raise ValueError(f"task {task!r} is not allowed; use a Gymnasium env id or a TaskSpec")
        if self.env_id.startswith("ALE/"):
            _register_ale()
        if suite not in SUITES:
            try:
                entry = gym.spec(self.env_id).entry_point
            except gym.error.Error as exc:
                raise ValueError(f"unknown Gymnasium env id {self.env_id!r}: {exc}") from None
            entry = entry if isinstance(entry, str) else getattr(entry, "__module__", "")
            suite = ("atari" if "ale_py" in entry else "mujoco" if "mujoco" in entry
                     else "classic" if "classic_control" in entry else None)
            if suite is None:
                env = self._make(None)
                try:
                    suite = _suite_of_env(env.unwrapped)
                finally:
                    env.close()
        self.suite: str = suite

    def make_env(self, render_mode: str | None) -> Any:
        env = self._make(render_mode)
        if self.suite == "classic":  # render() needs a state; a TaskSpec's env is reset already
            env.reset(seed=0)
        return env


# --- capturing and restoring states ------------------------------------------------------------------
def _encode_floats(tag: str, values: np.ndarray) -> str:
    return tag + ":" + base64.b64encode(values.astype("<f8", copy=False).tobytes()).decode("ascii")


def _decode(state: Any, tag: str) -> bytes:
    if not isinstance(state, str) or not state.startswith(tag + ":"):
        head = state[:8] if isinstance(state, str) else type(state).__name__
        raise ValueError(f"render state {head!r}... is not a {tag!r} state; record it with "
                         "render_state_fn of the same task")
    try:
        return base64.b64decode(state[len(tag) + 1:], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"render state {state[:16]!r}... is not valid base64") from None


def _decode_floats(state: Any, tag: str, n: int) -> np.ndarray:
    raw = _decode(state, tag)
    if len(raw) != 8 * n:
        raise ValueError(f"render state holds {len(raw) // 8} values; this env needs {n}")
    return np.frombuffer(raw, dtype="<f8")


def _capture_mujoco(u: Any) -> str:
    d = u.data
    return _encode_floats("mj", np.concatenate((d.qpos, d.qvel)))


def _capture_classic(u: Any) -> str:
    x = np.asarray(u.state, dtype=np.float64).ravel()
    if hasattr(u, "last_u"):
        x = np.append(x, np.nan if u.last_u is None else float(np.asarray(u.last_u).ravel()[0]))
    return _encode_floats("cc", x)


def _capture_atari(u: Any) -> str:
    return "ale:" + base64.b64encode(zlib.compress(u.ale.getScreen(), 1)).decode("ascii")


_CAPTURE = {"mujoco": _capture_mujoco, "classic": _capture_classic, "atari": _capture_atari}


def capture_state(env: Any) -> str:
    """The render state of one env (any wrappers) now: what :func:`render_state_fn` records per env."""
    u = env.unwrapped
    return _CAPTURE[_suite_of_env(u)](u)


def restore_state(env: Any, state: str) -> None:
    """Put a classic-control or MuJoCo render state back into ``env`` (same task); Atari states are frames."""
    u = env.unwrapped
    suite = _suite_of_env(u)
    if suite == "mujoco":
        import mujoco

        x = _decode_floats(state, "mj", u.model.nq + u.model.nv)
        u.data.qpos[:], u.data.qvel[:] = x[: u.model.nq], x[u.model.nq:]
        mujoco.mj_forward(u.model, u.data)
    elif suite == "classic":
        n = np.asarray(u.state).size
        x = _decode_floats(state, "cc", n + hasattr(u, "last_u"))
        u.state = x[:n].copy()
        if hasattr(u, "last_u"):
            u.last_u = None if np.isnan(x[n]) else float(x[n])
    else:
        raise ValueError("Atari render states are screens, not emulator states; they cannot be restored")


def _check_palette(u: Any) -> None:
    if not np.array_equal(_ATARI_RGB[u.ale.getScreen()], u.ale.getScreenRGB()):
        raise RuntimeError("this ale-py's colour palette differs from rlhf_control.video's NTSC table; "
                           "Atari clips would have wrong colours")


class _StateRecorder:
    """``callable(venv) -> list[str]``: one render state per env (see :func:`render_state_fn`)."""

    def __init__(self, suite: str) -> None:
        self.suite = suite
        self._capture = _CAPTURE[suite]
        self._base: weakref.ref | None = None
        self._units: list[Any] = []
        self._has_last_u: bool | None = None

    def __call__(self, venv: Any) -> list[str]:
        base = venv.unwrapped
        envs = getattr(base, "envs", None)
        if envs is None:
            return self._remote(base)
        if self._base is None or self._base() is not base:  # first call on this venv: find the raw envs once
            self._units = [e.unwrapped for e in envs]
            self._base = weakref.ref(base)
            if self.suite == "atari":
                _check_palette(self._units[0])
        return [self._capture(u) for u in self._units]

    def _remote(self, base: Any) -> list[str]:
        """Envs in other processes (SubprocVecEnv): read through get_attr/env_method."""
        if self.suite == "mujoco":
            return [_encode_floats("mj", np.asarray(x)) for x in base.env_method("state_vector")]
        if self.suite == "classic":
            if self._has_last_u is None:
                self._has_last_u = bool(base.has_attr("last_u"))
            states = [np.asarray(s, dtype=np.float64).ravel() for s in base.get_attr("state")]
            if self._has_last_u:
                states = [np.append(s, np.nan if u is None else float(np.asarray(u).ravel()[0]))
                          for s, u in zip(states, base.get_attr("last_u"), strict=True)]
            return [_encode_floats("cc", s) for s in states]
        raise ValueError(f"Atari render states read the screen in this process; use a DummyVecEnv, "
                         f"not {type(base).__name__}")


def render_state_fn(task: Any) -> Callable[[Any], list[str]]:
    """``fn(venv) -> list[str]``, one small JSON-safe render state per env, for ``TrajectoryRecorder``.

    ``task``: a Gymnasium env id or a ``TaskSpec``. Call ``fn`` after ``venv.reset()`` and after each
    ``venv.step_wait()`` (the state of the obs the next action is taken from). In-process envs
    (DummyVecEnv, any VecEnvWrappers on top) are read directly (MuJoCo ~3 us per env, Atari ~40 us);
    other VecEnvs through ``env_method``/``get_attr`` (not Atari).
    """
    return _StateRecorder(_Target(task).suite)


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
