"""Task presets: the catalogue in ``envs/*.toml`` (installed as ``rlhf_control.envs``) as :class:`TaskSpec`s,
and defaults for any other registered Gymnasium id.

A catalogue file has an optional ``[defaults]`` table and one ``[tasks."<name>"]`` table per task; an
entry's keys are :class:`TaskSpec` fields (all but ``name``, which is the table key). Dict-valued fields
(``agent``, ``env_kwargs``, ``reward_net_kwargs``) are merged one level deep over the defaults; any
other field replaces the default. ``horizon`` left out means none.

>>> task = load_task("Pendulum-v1")
>>> venv = task.make_vec_env(task.n_envs, seed=0)
"""

from __future__ import annotations

import copy
import re
import tomllib
from collections.abc import Mapping
from importlib import resources
from typing import Any

import gymnasium as gym

from rlhf_control.errors import UserError
from rlhf_control.registry import UnknownNameError, unknown_name_message
from rlhf_control.tasks.spec import DICT_FIELDS, TaskSpec, check_choice, check_fields
from rlhf_control.tasks.suites import SUITES, suite_of_id

DEFAULT_TASK = "Pendulum-v1"


def _merge(defaults: Mapping[str, Any], entry: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(defaults))
    for key, value in entry.items():
        if key in DICT_FIELDS and isinstance(out.get(key), dict):
            out[key] = {**out[key], **copy.deepcopy(value)}
        else:
            out[key] = copy.deepcopy(value)
    return out


def _spec_from_entry(name: str, data: Mapping[str, Any]) -> TaskSpec:
    data = dict(data)
    data["wrappers"] = tuple(data.get("wrappers", ()))
    data["obs_mask"] = tuple(tuple(b) for b in data.get("obs_mask", ()))
    return TaskSpec(name=name, **data)


def tasks_from_toml(text: str, source: str = "<string>") -> dict[str, TaskSpec]:
    """Parse one catalogue file: ``{name: TaskSpec}`` in file order. Raises ``ValueError`` on an
    unknown key, a bad value or malformed TOML."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{source}: invalid TOML: {exc}") from None
    extra = set(doc) - {"defaults", "tasks"}
    if extra:
        raise UserError(f"{source}: unknown top-level table(s) {sorted(extra)}; allowed: defaults, tasks")
    defaults = doc.get("defaults", {})
    check_fields(defaults, "[defaults]", source)
    out: dict[str, TaskSpec] = {}
    for name, entry in doc.get("tasks", {}).items():
        if not isinstance(entry, dict):
            raise UserError(f"{source}: task {name!r} must be a table")
        check_fields(entry, name, source)
        out[name] = _spec_from_entry(name, _merge(defaults, entry))
    return out


def _catalogue_texts(suite: str | None = None) -> list[tuple[str, str]]:
    """(file name, text) for the catalogue files, the paper's suites first."""
    root = resources.files("rlhf_control.envs")
    names = sorted(p.name for p in root.iterdir() if p.name.endswith(".toml"))
    order = {"classic.toml": 0, "mujoco.toml": 1, "atari.toml": 2}
    names.sort(key=lambda n: (order.get(n, 3), n))
    if suite is not None:
        names = [n for n in names if n == f"{suite}.toml"]
    return [(n, root.joinpath(n).read_text(encoding="utf-8")) for n in names]


def load_catalogue() -> dict[str, TaskSpec]:
    """Every task in ``rlhf_control.envs/*.toml``, by name."""
    out: dict[str, TaskSpec] = {}
    for source, text in _catalogue_texts():
        for name, spec in tasks_from_toml(text, source).items():
            if name in out:
                raise UserError(f"task {name!r} is defined twice in the catalogue ({source})")
            out[name] = spec
    return out


def list_tasks(suite: str | None = None) -> list[str]:
    """Catalogue task names (classic, MuJoCo, Atari, then others; file order within a suite)."""
    if suite is not None:
        check_choice("suite", suite, SUITES)
    return [n for n, s in load_catalogue().items() if suite is None or s.suite == suite]


def _short_name(name: str) -> str:
    return re.sub(r"-v\d+$", "", name.split("/")[-1]).lower()


def load_task(name: str) -> TaskSpec:
    """The catalogue entry ``name`` (exact, else case-insensitive); unknown -> ``UnknownNameError``."""
    catalogue = load_catalogue()
    if name in catalogue:
        return catalogue[name]
    folded = {n.lower(): n for n in catalogue}
    if name.lower() in folded:
        return catalogue[folded[name.lower()]]
    # Short names: "Pong" for ALE/Pong-v5, "HalfCheetah" for HalfCheetah-v5, when unambiguous.
    short = [n for n in catalogue if _short_name(n) == name.lower()]
    if len(short) == 1:
        return catalogue[short[0]]
    raise UnknownNameError(unknown_name_message("task", name, list(catalogue)))


def get_task(name_or_env_id: str) -> TaskSpec:
    """A catalogue task by name, else defaults for a registered Gymnasium id (:func:`task_from_env_id`)."""
    try:
        return load_task(name_or_env_id)
    except UnknownNameError as exc:
        try:
            return task_from_env_id(name_or_env_id)
        except ValueError:
            raise exc from None


def _suite_defaults(suite: str) -> dict[str, Any]:
    texts = _catalogue_texts(suite)
    if not texts:
        return {}
    doc = tomllib.loads(texts[0][1])
    return dict(doc.get("defaults", {}))


def task_from_env_id(env_id: str) -> TaskSpec:
    """Defaults for any registered Gymnasium id, named ``env_id``: Atari (``ALE/`` namespace or an
    ``ale_py`` entry point), MuJoCo (a ``mujoco`` entry point) or classic, with that suite's
    ``[defaults]`` from the catalogue. Atari gets no score mask and no game-over penalty; MuJoCo
    gets a fixed horizon (penalty 0) and, if its info reports ``reward_ctrl``, ``drop_control_cost``
    (the paper's true reward: no control cost).
    Builds the env once to read its time step and info keys."""
    suite = suite_of_id(env_id) or "classic"  # registers ALE ids; an unknown id is a ValueError
    spec = gym.spec(env_id)
    data = _suite_defaults(suite)
    data["description"] = f"{env_id} with {suite} defaults (not a catalogue entry)"
    if suite == "atari":
        data["paper_departures"] = "Not one of the paper's games: no score mask, no game-over penalty."
        return _spec_from_entry(env_id, {**data, "env_id": env_id})
    env = gym.make(env_id)
    try:
        env.reset(seed=0)
        info = env.step(env.action_space.sample())[4]
        unwrapped = env.unwrapped
        dt = getattr(unwrapped, "dt", None) or getattr(unwrapped, "tau", None)
        fps = 1.0 / float(dt) if dt else float(env.metadata.get("render_fps") or 30)
    finally:
        env.close()
    horizon = spec.max_episode_steps or (1000 if suite == "mujoco" else None)
    data.update(env_id=env_id, fps=fps, horizon=horizon)
    if suite == "mujoco":
        clip = int(min(60, max(15, round(1.5 * fps))))
        wrappers = [{"name": "drop_control_cost", "kwargs": {}}] if "reward_ctrl" in info else []
        wrappers.append({"name": "fixed_horizon", "kwargs": {"penalty": 0.0}})
        data["wrappers"] = wrappers
        data["paper_departures"] = "Not one of the paper's tasks: termination continues with penalty 0."
    else:
        clip = int(data.get("clip_length", 25))
        data["paper_departures"] = "Not one of the paper's tasks: classic-control defaults."
    data["clip_length"] = clip if horizon is None else min(clip, horizon)
    if horizon is None:
        data.pop("horizon")
    return _spec_from_entry(env_id, data)
