"""Render states: what a clip is drawn from, captured per env and step while the agent runs.

:func:`render_state_fn` hands the ``TrajectoryRecorder`` one short JSON-safe string per env and step
(a segment's ``render_ref`` is the list of its T strings); :mod:`rlhf_control.video.render` later draws them.
This module also picks MuJoCo's headless OpenGL backend, at import, before MuJoCo loads.

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
import os
import sys
import weakref
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np

from rlhf_control.tasks.suites import suite_of_env, suite_of_id

__all__ = ["GL_BACKEND", "SUITES", "capture_state", "configure_gl", "render_state_fn", "restore_state"]

SUITES = ("classic", "mujoco", "atari")
_TAGS = {"mujoco": "mj", "classic": "cc", "atari": "ale"}
_ATARI_SHAPE = (210, 160)
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


# --- what a task is ------------------------------------------------------------------------------------
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
        if suite not in SUITES:
            suite = suite_of_id(self.env_id)  # registers ALE ids (a TaskSpec's make_env does too)
            if suite is None:
                env = self._make(None)
                try:
                    suite = suite_of_env(env.unwrapped)
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


def _capture_dmc(u: Any) -> str:
    return _encode_floats("dm", np.asarray(u.physics.get_state()))


_CAPTURE = {"mujoco": _capture_mujoco, "classic": _capture_classic, "atari": _capture_atari, "dmc": _capture_dmc}


def capture_state(env: Any) -> str:
    """The render state of one env (any wrappers) now: what :func:`render_state_fn` records per env."""
    u = env.unwrapped
    return _CAPTURE[suite_of_env(u)](u)


def restore_state(env: Any, state: str) -> None:
    """Put a classic-control, MuJoCo or DeepMind Control render state back into ``env`` (same task);
    Atari states are frames."""
    u = env.unwrapped
    suite = suite_of_env(u)
    if suite == "mujoco":
        import mujoco

        x = _decode_floats(state, "mj", u.model.nq + u.model.nv)
        u.data.qpos[:], u.data.qvel[:] = x[: u.model.nq], x[u.model.nq:]
        mujoco.mj_forward(u.model, u.data)
    elif suite == "dmc":
        physics = u.physics
        x = _decode_floats(state, "dm", np.asarray(physics.get_state()).size)
        with physics.reset_context():  # sets the state and recomputes positions for drawing
            physics.set_state(x)
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
        raise RuntimeError("this ale-py's colour palette differs from rlhf_control.recording.render_states' NTSC table; "
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
