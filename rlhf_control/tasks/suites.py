"""Which suite an env belongs to (classic control, MuJoCo, Atari, DeepMind Control), and the registration
of ALE's and DeepMind Control's ids (through Shimmy) with Gymnasium.

The one place that tells the suites apart: the catalogue (defaults for a bare Gymnasium id) and the
render states (how a clip is captured and drawn) both ask here.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import gymnasium as gym

from rlhf_control.errors import UserError

SUITES = ("classic", "mujoco", "atari", "dmc", "custom")


def register_ale() -> None:
    """Make the ``ALE/...`` ids known to Gymnasium (idempotent; needed before ``gym.make``/``gym.spec``)."""
    import ale_py

    gym.register_envs(ale_py)


def register_dmc() -> None:
    """Make the ``dm_control/<domain>-<task>-v0`` ids known to Gymnasium (Shimmy; idempotent). Headless,
    dm_control renders through EGL unless ``MUJOCO_GL`` says otherwise (it reads it at import)."""
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
        os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        import shimmy
    except ImportError as exc:
        raise UserError(f"DeepMind Control tasks need shimmy[dm-control] ({exc}); run scripts/setup.sh") from None
    gym.register_envs(shimmy)


def suite_of_id(env_id: str) -> str | None:
    """``"atari"``, ``"mujoco"`` or ``"classic"`` (Gymnasium's classic control) from the registered
    entry point of ``env_id``; None for an env of none of these. An unregistered id is a ``ValueError``."""
    if env_id.startswith("ALE/"):
        register_ale()
    if env_id.startswith("dm_control/"):
        register_dmc()
        return "dmc"
    try:
        entry = gym.spec(env_id).entry_point
    except gym.error.Error as exc:
        raise UserError(f"unknown Gymnasium env id {env_id!r}: {exc}") from None
    entry = entry if isinstance(entry, str) else getattr(entry, "__module__", "")
    if "ale_py" in entry:
        return "atari"
    if "mujoco" in entry:
        return "mujoco"
    if "classic_control" in entry:
        return "classic"
    return None


def suite_of_env(unwrapped: Any) -> str:
    """The suite of an env instance (``env.unwrapped``), from what it holds: an ALE emulator, MuJoCo
    data, or a classic-control ``state``; anything else is a ``ValueError``."""
    if hasattr(unwrapped, "ale"):
        return "atari"
    if type(unwrapped).__module__.startswith("shimmy") and hasattr(unwrapped, "physics"):
        return "dmc"
    if type(getattr(unwrapped, "data", None)).__module__.startswith("mujoco"):
        return "mujoco"
    if hasattr(unwrapped, "state"):
        return "classic"
    raise UserError(f"cannot draw {type(unwrapped).__name__}: allowed are classic control (with .state), "
                     "MuJoCo, DeepMind Control and Atari (ALE) envs")
