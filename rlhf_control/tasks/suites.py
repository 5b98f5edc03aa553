"""Which suite an env belongs to (classic control, MuJoCo, Atari), and ALE's registration with Gymnasium.

The one place that tells the suites apart: the catalogue (defaults for a bare Gymnasium id) and the
render states (how a clip is captured and drawn) both ask here.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from rlhf_control.errors import UserError

SUITES = ("classic", "mujoco", "atari", "custom")


def register_ale() -> None:
    """Make the ``ALE/...`` ids known to Gymnasium (idempotent; needed before ``gym.make``/``gym.spec``)."""
    import ale_py

    gym.register_envs(ale_py)


def suite_of_id(env_id: str) -> str | None:
    """``"atari"``, ``"mujoco"`` or ``"classic"`` (Gymnasium's classic control) from the registered
    entry point of ``env_id``; None for an env of none of these. An unregistered id is a ``ValueError``."""
    if env_id.startswith("ALE/"):
        register_ale()
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
    if type(getattr(unwrapped, "data", None)).__module__.startswith("mujoco"):
        return "mujoco"
    if hasattr(unwrapped, "state"):
        return "classic"
    raise UserError(f"cannot draw {type(unwrapped).__name__}: allowed are classic control (with .state), "
                     "MuJoCo and Atari (ALE) envs")
