"""``TaskSpec``: one task as typed, validated data (the env, its wrappers, clips, agent preset, label budget
and reward model), and how its envs are built.

The catalogue (:mod:`rlhf_control.tasks.catalogue`) reads these from ``envs/*.toml``; a run writes one
back into its resolved config (:meth:`TaskSpec.to_dict`). Label schedule names are checked where the
task is resolved into a run (``rlhf_control.config.resolve``), against the schedule registry.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecFrameStack

from rlhf_control.errors import UserError
from rlhf_control.registry import UnknownNameError, unknown_name_message
from rlhf_control.tasks.suites import SUITES, register_ale, register_dmc
from rlhf_control.tasks.wrappers import WRAPPERS, AtariFrames, GymReturn, ScoreMask, apply_wrappers

ALGOS = ("ppo", "a2c", "trpo", "sac")  # the agents a task can name; agent/factory.py builds them
OFF_POLICY = ("sac",)  # agents that learn from a replay buffer (continuous actions only)
# Reward epochs per label round when a task written for an on-policy agent runs an off-policy one:
# PEBBLE's reward_update. An on-policy entry's reward_epochs are passes per iteration, of which a run
# has hundreds; an off-policy run retrains only once per round (7-10 times), and 6 passes a round left
# the reward barely fitted (HalfCheetah, README: "PEBBLE").
OFF_POLICY_REWARD_EPOCHS = 50
QUERY_MIN_CLIPS = 256  # the query window's floor (README: measured against 64 and 1,024 on-policy)
REWARD_NETS = ("mlp", "cnn")
POLICIES = ("MlpPolicy", "CnnPolicy", "MultiInputPolicy")
ACTIVATIONS = ("relu", "tanh", "elu", "leaky_relu", "gelu", "silu")
# Optimisers a task entry may name (policy_kwargs.optimizer_class); rmsprop_tf_like is TensorFlow's
# RMSprop (epsilon inside the square root, the average starting at 1), which OpenAI baselines' A2C and
# so the paper's Atari agent used.
OPTIMIZERS = ("adam", "rmsprop", "rmsprop_tf_like")
DICT_FIELDS = ("agent", "env_kwargs", "reward_net_kwargs")
# Arguments the run sets, not the task preset.
_RUN_LEVEL_ARGS = {"self", "policy", "env", "seed", "device", "verbose", "tensorboard_log", "_init_setup_model",
                   "rollout_buffer_class", "rollout_buffer_kwargs", "replay_buffer_class"}


def algo_class(algo: str) -> type:
    """The SB3 (or sb3-contrib) class of ``algo``, one of ``ALGOS``."""
    if algo == "ppo":
        from stable_baselines3 import PPO

        return PPO
    if algo == "a2c":
        from stable_baselines3 import A2C

        return A2C
    if algo == "trpo":
        from sb3_contrib import TRPO

        return TRPO
    if algo == "sac":  # SB3's SAC, with PEBBLE's settings as options (agent/sac.py)
        from rlhf_control.agent.sac import PebbleSAC

        return PebbleSAC
    raise UserError(f"unknown algorithm {algo!r}; allowed: {', '.join(ALGOS)}")


def default_iteration_steps(algo: str, agent_params: dict[str, Any], n_envs: int, total_steps: int) -> int:
    """One rollout, but at least 2,048 steps: A2C's rollouts (80 steps for Atari) are far too short to
    retrain the reward, log and checkpoint after each. A run shorter than 16,384 steps still gets
    about eight iterations."""
    if algo in OFF_POLICY:  # SB3 ends a "rollout" every train_freq steps: B-Pref's 20,000 (num_interact)
        return max(1, min(20_000, total_steps // 8))
    n_steps = agent_params.get("n_steps", inspect.signature(algo_class(algo)).parameters["n_steps"].default)
    return max(int(n_steps) * n_envs, min(2048, total_steps // 8))


def default_query_window(task: TaskSpec, algo: str) -> int:
    """The default floor of the query window in clips: 256; for an off-policy agent on a task whose entry
    sets ``query_episodes`` (the DeepMind Control tasks: B-Pref's reward model samples queries from the
    last 100 episodes it stored), that many episodes' worth of clips."""
    if algo not in OFF_POLICY or not task.query_episodes:
        return QUERY_MIN_CLIPS
    return task.query_episodes * max(1, task.episode_steps // task.clip_length)


def _agent_params(algo: str) -> list[str]:
    """Keyword arguments the algorithm's constructor takes that a task may set."""
    return [p for p in inspect.signature(algo_class(algo).__init__).parameters if p not in _RUN_LEVEL_ARGS]


def _is_type(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def check_choice(what: str, value: Any, allowed: Sequence[str]) -> None:
    """Refuse ``value`` unless it is one of ``allowed``, in one line naming both."""
    if value not in allowed:
        raise UserError(f"{what} {value!r} is not allowed; allowed: {', '.join(allowed)}")


@dataclass(frozen=True)
class TaskSpec:
    """One task: the env, how clips are cut and shown, the agent, the label budget and reward model.

    Units: ``clip_length``, ``horizon``, ``total_steps``, ``schedule_horizon`` in agent steps (one
    vector-env step per env; Atari steps are 4 frames); ``fps`` in steps per second of play (MuJoCo:
    ``1 / env.unwrapped.dt``, Atari: 60 / 4). Dict fields are plain data; treat them as read-only.
    """

    name: str
    env_id: str
    suite: str = "custom"
    description: str = ""
    clip_length: int = 25
    fps: float = 30.0
    horizon: int | None = None  # fixed episode length, or None for the env's own episodes
    reward_std: float = 1.0  # std of the normalised learned reward
    algo: str = "ppo"
    policy: str = "MlpPolicy"
    agent: dict[str, Any] = field(default_factory=dict)  # SB3 constructor kwargs
    n_envs: int = 1
    total_steps: int = 1_000_000
    normalize: bool = False  # RL Zoo's `normalize`: VecNormalize observations (and the true reward in baselines)
    label_budget: int = 700
    pretrain_labels: int = 175
    pretrain_share: bool = True  # pretraining scales with --labels (MuJoCo's 25%); false: a fixed count (Atari's 500)
    pretrain_epochs: int = 50
    reward_epochs: int = 3  # passes over the label window after each iteration that got new labels
    label_window: int = 3000
    schedule: str = "paper"
    eval_episodes: int = 10  # episodes of each deterministic evaluation during a run
    eval_every: int = 5  # iterations between evaluations
    iteration_steps: int | None = None  # agent steps per iteration (None: one rollout; see config.resolve)
    unsup_steps: int = 9000  # off-policy agents: PEBBLE's unsupervised (state-entropy) steps after learning_starts
    query_episodes: int = 0  # off-policy agents: query candidates from the agent's last N episodes' clips (B-Pref: 100); 0: query_min_clips
    schedule_horizon: float = 2e6  # c of the paper's rate c/(T+c), T in emulator frames (see frames_per_step)
    reward_net: str = "mlp"
    reward_net_kwargs: dict[str, Any] = field(default_factory=dict)  # EnsembleConfig fields
    frame_stack: int = 0
    env_kwargs: dict[str, Any] = field(default_factory=dict)  # passed to gymnasium.make
    wrappers: tuple[dict[str, Any], ...] = ()  # {name, kwargs}, innermost first
    obs_mask: tuple[tuple[int, int, int, int], ...] = ()  # (row0, row1, col0, col1) hidden from the reward model
    has_true_reward: bool = True  # the env reward is a true reward (the paper's; see tasks/wrappers.py)
    instructions: str = ""  # for a human labeller
    paper_departures: str = ""

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), _FIELD_TYPES.get(f.name)
            if kind is not None and value is not None and not _is_type(value, kind):
                raise UserError(f"task {self.name!r}: {f.name}={value!r} must be of type {kind.__name__}")
        for name in DICT_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, Mapping):
                raise UserError(f"task {self.name!r}: {name} must be a table, got {value!r}")
            set_(self, name, copy.deepcopy(dict(value)))
        set_(self, "wrappers", tuple(self._check_wrapper(w) for w in self.wrappers))
        set_(self, "obs_mask", tuple(ScoreMask(self.obs_mask).regions))
        for name in ("fps", "reward_std", "schedule_horizon"):
            set_(self, name, float(getattr(self, name)))
        choices = {"suite": SUITES, "algo": ALGOS, "policy": POLICIES, "reward_net": REWARD_NETS}
        for name, allowed in choices.items():
            check_choice(f"task {self.name!r}: {name}", getattr(self, name), allowed)
        checks = [
            (self.clip_length >= 1, f"clip_length={self.clip_length} must be >= 1"),
            (self.horizon is None or self.horizon >= self.clip_length,
             f"horizon={self.horizon} must be >= clip_length={self.clip_length}"),
            (self.fps > 0, f"fps={self.fps} must be > 0"),
            (self.reward_std > 0, f"reward_std={self.reward_std} must be > 0"),
            (self.n_envs >= 1, f"n_envs={self.n_envs} must be >= 1"),
            (self.total_steps >= 1, f"total_steps={self.total_steps} must be >= 1"),
            (0 <= self.pretrain_labels <= self.label_budget,
             f"pretrain_labels={self.pretrain_labels} must be in [0, label_budget={self.label_budget}]"),
            (self.pretrain_epochs >= 0, f"pretrain_epochs={self.pretrain_epochs} must be >= 0"),
            (self.reward_epochs >= 1, f"reward_epochs={self.reward_epochs} must be >= 1"),
            (self.label_window >= 1, f"label_window={self.label_window} must be >= 1"),
            (self.schedule_horizon > 0, f"schedule_horizon={self.schedule_horizon} must be > 0"),
            (self.frame_stack >= 0, f"frame_stack={self.frame_stack} must be >= 0"),
            (self.iteration_steps is None or self.iteration_steps >= 1,
             f"iteration_steps={self.iteration_steps} must be >= 1"),
            (self.unsup_steps >= 0, f"unsup_steps={self.unsup_steps} must be >= 0"),
            (self.query_episodes >= 0, f"query_episodes={self.query_episodes} must be >= 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UserError(f"task {self.name!r}: {msg}")
        for w in self.wrappers:
            h = w["kwargs"].get("horizon")
            if w["name"] == "fixed_horizon" and (self.horizon is None or h not in (None, self.horizon)):
                raise UserError(f"task {self.name!r}: fixed_horizon needs horizon={h} to equal the task's horizon={self.horizon}")
        allowed = _agent_params(self.algo)
        for key in self.agent:
            if key not in allowed:
                raise UserError(f"task {self.name!r}: " + unknown_name_message(f"{self.algo} argument", key, allowed))
        act = self.agent.get("policy_kwargs", {}).get("activation_fn")
        if act is not None:
            check_choice(f"task {self.name!r}: policy_kwargs.activation_fn", act, ACTIVATIONS)
        opt = self.agent.get("policy_kwargs", {}).get("optimizer_class")
        if opt is not None:
            check_choice(f"task {self.name!r}: policy_kwargs.optimizer_class", opt, OPTIMIZERS)

    def _check_wrapper(self, spec: Any) -> dict[str, Any]:
        if not isinstance(spec, Mapping) or "name" not in spec or set(spec) - {"name", "kwargs"}:
            raise UserError(f"task {self.name!r}: wrapper {spec!r} must be a table with keys name and kwargs")
        if spec["name"] not in WRAPPERS:
            raise UnknownNameError(unknown_name_message("wrapper", str(spec["name"]), WRAPPERS.names()))
        return {"name": str(spec["name"]), "kwargs": copy.deepcopy(dict(spec.get("kwargs", {})))}

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    # --- config round trip -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, dicts, scalars; ``None`` fields left out) that :meth:`from_dict` reads back."""
        out = dataclasses.asdict(self)  # deep copies
        out["wrappers"] = list(out["wrappers"])
        out["obs_mask"] = [list(box) for box in out["obs_mask"]]
        return {k: v for k, v in out.items() if v is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskSpec:
        """Inverse of :meth:`to_dict`; an unknown key is a ``ValueError``."""
        check_fields(data, str(data.get("name", "?")), "config", with_name=True)
        missing = [k for k in ("name", "env_id") if k not in data]
        if missing:
            raise UserError(f"task config lacks required field(s) {', '.join(missing)}")
        return cls(**dict(data))

    def with_overrides(self, **kw: Any) -> TaskSpec:
        """A copy with fields replaced; dict fields (agent, env_kwargs, reward_net_kwargs) are merged, and
        so are tables within them (an override of ``policy_kwargs.net_arch`` keeps the entry's other
        policy keywords)."""
        check_fields(kw, self.name, "overrides", with_name=True)
        for name in DICT_FIELDS:
            if isinstance(kw.get(name), Mapping):
                old = getattr(self, name)
                kw[name] = {**old, **{k: {**old[k], **v} if isinstance(v, Mapping) and isinstance(old.get(k), Mapping)
                                      else v for k, v in kw[name].items()}}
        return dataclasses.replace(self, **kw)

    # --- agent -----------------------------------------------------------------------------------
    def agent_kwargs(self) -> dict[str, Any]:
        """SB3 constructor kwargs (a copy) with ``policy_kwargs.activation_fn`` resolved to a torch class."""
        import torch.nn as nn

        kwargs = copy.deepcopy(self.agent)
        pk = kwargs.get("policy_kwargs")
        if pk and "activation_fn" in pk:
            names = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "leaky_relu": nn.LeakyReLU,
                     "gelu": nn.GELU, "silu": nn.SiLU}
            pk["activation_fn"] = names[pk["activation_fn"]]
        if pk and "optimizer_class" in pk:
            import torch.optim as optim
            from stable_baselines3.common.sb2_compat.rmsprop_tf_like import RMSpropTFLike

            pk["optimizer_class"] = {"adam": optim.Adam, "rmsprop": optim.RMSprop,
                                     "rmsprop_tf_like": RMSpropTFLike}[pk["optimizer_class"]]
        return kwargs

    # --- environments ----------------------------------------------------------------------------
    def make_env(self, seed: int, render_mode: str | None = None) -> gym.Env:
        """One env with the task's wrappers (innermost first), reset once with ``seed`` and its
        action space seeded, so runs are reproducible without a further seeded reset. Its reward is the
        task's true reward; a task with one also gets :class:`GymReturn` outermost (``info["gym_reward"]``
        each step, ``info["gym_return"]`` at each episode's end: the contract in ``tasks/wrappers.py``)."""
        if self.suite == "atari" or self.env_id.startswith("ALE/"):
            register_ale()
        elif self.suite == "dmc" or self.env_id.startswith("dm_control/"):
            register_dmc()
        kwargs = dict(self.env_kwargs)
        if self.horizon is not None and self.suite != "atari":
            # Keep the inner time limit in line with the horizon (Atari's inner steps are frames).
            kwargs.setdefault("max_episode_steps", self.horizon)
        try:
            env = gym.make(self.env_id, render_mode=render_mode, **kwargs)
        except (gym.error.Error, TypeError) as exc:  # unknown id, or env_kwargs the env does not take
            raise UserError(f"task {self.name!r}: cannot make env {self.env_id!r}: {exc}") from None
        headless = sys.platform.startswith("linux") and not os.environ.get("DISPLAY")
        if render_mode is not None and headless and "mujoco" in type(env.unwrapped).__module__:
            # MuJoCo's default GLFW renderer needs a display; EGL renders off-screen (read at first render).
            os.environ.setdefault("MUJOCO_GL", "egl")
        # fixed_horizon takes the task's horizon unless the entry repeats it.
        specs = [{"name": w["name"], "kwargs": {"horizon": self.horizon, **w["kwargs"]}}
                 if w["name"] == "fixed_horizon" else w for w in self.wrappers]
        env = apply_wrappers(env, specs)
        if self.has_true_reward:
            env = GymReturn(env)
        env.reset(seed=int(seed))
        env.action_space.seed(int(seed))
        return env

    def make_vec_env(
        self, n_envs: int | None = None, seed: int = 0, vec_cls: type[VecEnv] = DummyVecEnv, monitor: bool = True
    ) -> VecEnv:
        """``n_envs`` (default ``self.n_envs``) envs seeded ``seed + i``, each in SB3's ``Monitor`` (episode
        stats of the env reward) unless ``monitor=False``; Atari adds ``VecFrameStack(frame_stack, "last")``
        so obs are ``(n_envs, 84, 84, 4)`` uint8."""
        n = self.n_envs if n_envs is None else int(n_envs)
        if n < 1:
            raise UserError(f"n_envs={n} must be >= 1")
        fns = [_EnvFactory(self, int(seed) + i, monitor) for i in range(n)]
        venv: VecEnv = vec_cls(fns)
        if self.frame_stack > 0:
            venv = VecFrameStack(venv, self.frame_stack, channels_order="last")
        return venv

    @property
    def frames_per_step(self) -> int:
        """Emulator frames per agent step: ALE's own ``frameskip`` times the ``atari_frames`` wrapper's
        frame skip (1 for tasks without either). The paper counts its Atari label schedule in frames."""
        skip = self.env_kwargs.get("frameskip", 1)
        frames = skip if isinstance(skip, int) and not isinstance(skip, bool) else 1
        default = inspect.signature(AtariFrames.__init__).parameters["frame_skip"].default
        for w in self.wrappers:
            if w["name"] == "atari_frames":
                frames *= int(w["kwargs"].get("frame_skip", default))
        return frames

    @property
    def episode_steps(self) -> int:
        """Agent steps of one episode: the fixed horizon, else the env's registered time limit (1,000,
        DeepMind Control's, when it has none)."""
        if self.horizon is not None:
            return self.horizon
        try:
            limit = gym.spec(self.env_id).max_episode_steps
        except gym.error.Error:  # an id outside Gymnasium's registry
            limit = None
        return int(limit or 1000)

    def require_box_actions(self, algo: str) -> None:
        """Refuses an agent that needs continuous (Box) actions (``algo``) on this task when its
        actions are not; one env is made to read the space, which the catalogue does not record."""
        env = self.make_env(0)
        space = env.action_space
        env.close()
        if not isinstance(space, gym.spaces.Box):
            raise UserError(f"algo {algo!r} needs continuous (Box) actions; task {self.name!r} has {space}: "
                            "use ppo, a2c or trpo")

    @property
    def reward_obs_fn(self) -> Callable[[np.ndarray], np.ndarray] | None:
        """Mask for what the reward model sees, on ``(N, H, W[, C])`` obs; None when nothing is hidden."""
        return ScoreMask(self.obs_mask) if self.obs_mask else None


class _EnvFactory:
    """Picklable env constructor for SB3 vec envs (SubprocVecEnv sends it to the workers)."""

    def __init__(self, task: TaskSpec, seed: int, monitor: bool) -> None:
        self.task, self.seed, self.monitor = task, seed, monitor

    def __call__(self) -> gym.Env:
        env = self.task.make_env(self.seed)
        return Monitor(env) if self.monitor else env


# Scalar field types from the annotations (strings under `from __future__ import annotations`).
_SCALARS: dict[str, type] = {"int": int, "float": float, "str": str, "bool": bool, "int | None": int}
_FIELD_TYPES = {f.name: _SCALARS[f.type] for f in dataclasses.fields(TaskSpec) if f.type in _SCALARS}

_FIELDS = tuple(f.name for f in dataclasses.fields(TaskSpec))


def check_fields(data: Mapping[str, Any], task: str, source: str, with_name: bool = False) -> None:
    """Refuse a key of ``data`` that is not a TaskSpec field (``name`` only ``with_name``), in one line
    naming the task and ``source`` (a file name, "config", "overrides")."""
    allowed = list(_FIELDS) if with_name else [f for f in _FIELDS if f != "name"]
    for key in data:
        if key not in allowed:
            raise UserError(unknown_name_message(f"field in task {task!r} ({source})", str(key), allowed))

