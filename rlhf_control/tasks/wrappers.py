"""Single-env wrappers for the paper's environment changes, one change each, registered by name.

The rewards a task's env reports, per step (the contract the rest of the project reads):

- the step's ``reward`` is the task's **true reward**: the paper's. For MuJoCo that is Gymnasium's reward
  without its control (torque) cost (``drop_control_cost``) and with ``fixed_horizon``'s penalty on each
  step on which the inner env reports termination. RL on the true reward trains on it, SB3's ``Monitor``
  sums it (``info["episode"]["r"]``), evaluations and every reported ``true_return`` are returns of it,
  and ``LearnedReward`` keeps it in ``info["true_reward"]``.
- ``info["oracle_reward"]`` (:data:`ORACLE_KEY`): what the synthetic oracle compares. It equals the step's
  reward, except where a wrapper shows the oracle something the agent's reward does not carry: only
  ``fixed_horizon`` with ``penalize_reward = false`` (the Atari games: the game-over penalty is the
  oracle's; the reward stays the game score). Where no wrapper sets it, the oracle reads the reward.
- ``info["gym_reward"]`` (:data:`GYM_REWARD_KEY`): the unmodified Gymnasium reward of the step (for Atari
  summed over the skipped frames), on every step.
- ``info["gym_return"]`` (:data:`GYM_RETURN_KEY`): on the last step of each of the task's episodes (the
  step with ``terminated or truncated``, on which ``Monitor`` writes ``info["episode"]``; in a VecEnv,
  the step whose ``done`` is True), the sum of ``info["gym_reward"]`` over that episode. Both are set by
  :class:`GymReturn`, which ``TaskSpec.make_env`` puts outermost on every task with a true reward
  (classic, MuJoCo and Atari alike). Under ``fixed_horizon`` the task's episode is the fixed-horizon one,
  so where the wrapped env terminates inside it (Hopper falls, Atari's game over), ``gym_return`` sums the
  Gymnasium reward over the whole horizon, not over Gymnasium's own, shorter episode.

A wrapper that changes the reward starts from ``info.get(key, reward)`` of the env it wraps for
``oracle_reward`` and ``gym_reward`` and writes both back, so wrappers compose in any order and
``gym_reward`` always holds the innermost env's reward.

Names in :data:`WRAPPERS` (the ``wrappers`` list of a task entry):

- ``fixed_horizon``: :class:`FixedHorizon` (no termination; penalty; fixed episode length)
- ``drop_control_cost``: :class:`DropControlCost` (the reward without the control cost)
- ``height_reward``: :class:`HeightReward` (a height term in place of the healthy reward)
- ``atari_frames``: :class:`AtariFrames` (frame skip with max-pooling, 84x84 grayscale)
- ``noop_reset``: SB3's ``NoopResetEnv`` (random 1..noop_max no-ops after each reset)
- ``flatten_obs``: a dict of arrays (DeepMind Control's observations) as one float32 vector

:class:`ScoreMask` is not a wrapper: it is the function that blanks screen regions in what the reward
model sees (``TaskSpec.reward_obs_fn``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, SupportsFloat

import cv2
import gymnasium as gym
import numpy as np
from stable_baselines3.common.atari_wrappers import NoopResetEnv

from rlhf_control.errors import UserError
from rlhf_control.registry import Registry

ORACLE_KEY = "oracle_reward"
GYM_REWARD_KEY = "gym_reward"
GYM_RETURN_KEY = "gym_return"


INNER_TERMINAL_KEY = "inner_terminal_observation"


def with_terminal_obs(obs: np.ndarray, dones: np.ndarray, infos: list[dict]) -> np.ndarray:
    """A vector step's observations, each as the step left its env: a finished episode's last one (SB3's
    ``info["terminal_observation"]``) in place of the next episode's first, which SB3's auto-reset
    returns, and the state before a restart within the episode (:class:`FixedHorizon`'s
    ``info["inner_terminal_observation"]``, the fallen pole) in place of the restart's."""
    swap = [(i, "terminal_observation") for i in np.flatnonzero(dones)]
    swap += [(i, INNER_TERMINAL_KEY) for i, info in enumerate(infos) if not dones[i] and INNER_TERMINAL_KEY in info]
    if not swap:
        return obs
    out = np.array(obs, copy=True)
    for i, key in swap:
        before = np.asarray(infos[i][key])
        if before.shape != out.shape[1:]:
            raise ValueError(f"info[{key!r}] has shape {before.shape}, the observations {out.shape[1:]}: "
                             "a wrapper outside fixed_horizon changes observations")
        out[i] = before
    return out


WRAPPERS: Registry[gym.Env] = Registry("wrapper")


def _oracle_base(reward: SupportsFloat, info: Mapping[str, Any]) -> float:
    """The oracle reward so far: an inner wrapper's value if it set one, else the env reward."""
    return float(info.get(ORACLE_KEY, reward))


def _gym_base(reward: SupportsFloat, info: Mapping[str, Any]) -> float:
    """The Gymnasium reward of the step: an inner wrapper's record if there is one, else ``reward``
    (which, below every reward-changing wrapper, is the Gymnasium env's own)."""
    return float(info.get(GYM_REWARD_KEY, reward))


@WRAPPERS.register("fixed_horizon")
class FixedHorizon(gym.Wrapper):
    """No variable-length episodes: every episode lasts exactly ``horizon`` steps.

    The agent never sees ``terminated=True``; ``truncated`` is True at step ``horizon`` only. On each
    step on which the wrapped env reports termination, ``penalty`` is added to ``info["oracle_reward"]``
    and, if ``penalize_reward`` (the default; every MuJoCo and classic task), to the step's reward, which
    is the task's true reward (the paper's "termination becomes a penalty the agent must learn to
    avoid"): the oracle, RL on the true reward and the reported returns then all count it.
    ``penalize_reward=False`` (the Atari games) gives the penalty to the oracle only: the reward, and so
    the true return, stays the game score. ``info["gym_reward"]`` never carries the penalty.

    After a termination, ``on_termination`` decides how the episode goes on:

    - ``"continue"`` (MuJoCo): keep stepping the same physics. The body lies where it fell; the penalty
      recurs on every step the env still reports termination (e.g. the Hopper is still down). If the
      state becomes invalid (non-finite observation) or the env refuses to step
      (``gym.error.ResetNeeded``), the env is reset and the episode goes on from a fresh start state.
    - ``"reset"`` (Atari game over, CartPole): reset the wrapped env at once and go on from its start
      state; the observation returned is the reset one.

    An inner time limit reached before ``horizon`` also resets the wrapped env without ending the
    episode. ``info["inner_reset"]`` is True on a step after which the wrapped env was reset, and
    ``info["inner_terminal_observation"]`` then holds the observation the step led to (the fallen pole),
    where the returned one is the restart's; :func:`with_terminal_obs` puts it back for a learned reward
    read from the observation after each step.
    """

    def __init__(
        self,
        env: gym.Env,
        horizon: int,
        penalty: float = 0.0,
        on_termination: str = "continue",
        penalize_reward: bool = True,
    ) -> None:
        super().__init__(env)
        if int(horizon) < 1:
            raise UserError(f"fixed_horizon horizon={horizon} must be >= 1")
        if on_termination not in ("continue", "reset"):
            raise UserError(f"fixed_horizon on_termination={on_termination!r}; allowed: continue, reset")
        self.horizon = int(horizon)
        self.penalty = float(penalty)
        self.on_termination = on_termination
        self.penalize_reward = bool(penalize_reward)
        self._t = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        self._t = 0
        return self.env.reset(seed=seed, options=options)

    def step(self, action: Any):
        self._t += 1
        try:
            obs, reward, terminated, truncated, info = self.env.step(action)
        except gym.error.ResetNeeded:
            # The env will not step past its terminal state: restart it, count this step as terminal.
            obs, info = self.env.reset()
            info = dict(info)
            reward, terminated, truncated = 0.0, True, False
            info["inner_reset"] = True
        info = dict(info)
        oracle = _oracle_base(reward, info)
        info[GYM_REWARD_KEY] = _gym_base(reward, info)
        reward = float(reward)
        if terminated:
            oracle += self.penalty
            if self.penalize_reward:
                reward += self.penalty
        invalid = isinstance(obs, np.ndarray) and obs.dtype.kind == "f" and not np.all(np.isfinite(obs))
        need_reset = invalid or truncated or (terminated and self.on_termination == "reset")
        # At the horizon the episode ends anyway: keep the real last observation (SB3 bootstraps on it)
        # unless it is invalid.
        if need_reset and (invalid or self._t < self.horizon) and not info.get("inner_reset", False):
            if not invalid:  # the state the step led to, for a reward read from the observation after it
                info[INNER_TERMINAL_KEY] = obs
            obs, reset_info = self.env.reset()
            info.update(reset_info)
            info["inner_reset"] = True
        info[ORACLE_KEY] = oracle
        info.setdefault("inner_reset", False)
        return obs, reward, False, self._t >= self.horizon, info


@WRAPPERS.register("drop_control_cost")
class DropControlCost(gym.Wrapper):
    """The reward without the control (torque) cost, as in the paper: "torques are not directly visible
    to a human supervisor", so the paper removed them from the MuJoCo rewards (App. A.1).

    MuJoCo v5 envs report the (negative) control term as ``info["reward_ctrl"]``; it is subtracted from
    the step's reward (the task's true reward: what the agent on the true reward trains on and results
    report) and from ``info["oracle_reward"]`` (what the synthetic oracle compares), so the two stay
    equal. ``info["gym_reward"]`` keeps the reward with the control cost. A step whose info lacks ``key``
    raises, so a task that names this wrapper on an env without a control cost fails loudly.
    """

    def __init__(self, env: gym.Env, key: str = "reward_ctrl") -> None:
        super().__init__(env)
        self.key = key

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self.key not in info:
            raise UserError(f"drop_control_cost: info has no {self.key!r}; keys: {', '.join(sorted(info))}")
        info = dict(info)
        ctrl = float(info[self.key])
        info[GYM_REWARD_KEY] = _gym_base(reward, info)
        info[ORACLE_KEY] = _oracle_base(reward, info) - ctrl
        return obs, float(reward) - ctrl, terminated, truncated, info


@WRAPPERS.register("height_reward")
class HeightReward(gym.Wrapper):
    """Gymnasium's healthy reward (``info[key]``, v5's ``reward_survive``: a constant while the body is in
    its healthy range, 0 outside it) replaced by ``scale * (z - offset)``, z the body's height
    (``data.qpos[index]`` of the MuJoCo env after the step). This is rl-teacher's walker and hopper
    reward (the open-source code of the paper's team; for Walker2d, offset 1: vx + z - 1), where the
    catalogue's entries keep the paper's text (a penalty while out of range). A continuous height term
    grades a fallen body too (lying flat, sitting, rising), where a healthy indicator is the same 0 on
    all of them. Applied to the step's reward and to ``info["oracle_reward"]`` alike; ``gym_reward``
    keeps the unmodified reward. A step whose info lacks ``key``, or an env without MuJoCo's ``data``,
    raises.
    """

    def __init__(self, env: gym.Env, offset: float = 1.0, scale: float = 1.0, index: int = 1,
                 key: str = "reward_survive") -> None:
        super().__init__(env)
        qpos = getattr(getattr(env.unwrapped, "data", None), "qpos", None)
        if qpos is None:
            raise UserError(f"height_reward needs a MuJoCo env (with data.qpos); {env.unwrapped!r} has none")
        if not 0 <= int(index) < len(qpos):
            raise UserError(f"height_reward index={index}; allowed: 0..{len(qpos) - 1} (this env's qpos)")
        self.offset, self.scale, self.index, self.key = float(offset), float(scale), int(index), key

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self.key not in info:
            raise UserError(f"height_reward: info has no {self.key!r}; keys: {', '.join(sorted(info))}")
        info = dict(info)
        z = float(self.env.unwrapped.data.qpos[self.index])
        delta = self.scale * (z - self.offset) - float(info[self.key])
        info[GYM_REWARD_KEY] = _gym_base(reward, info)
        info[ORACLE_KEY] = _oracle_base(reward, info) + delta
        return obs, float(reward) + delta, terminated, truncated, info


@WRAPPERS.register("atari_frames")
class AtariFrames(gym.Wrapper):
    """Frame skip (repeat the action, sum rewards, max over the last two frames) and resize to
    ``size x size`` by area averaging (OpenCV's ``INTER_AREA``, as SB3's ``WarpFrame``). Wraps an ALE
    env made with ``frameskip=1``; a grayscale ALE observation ``(210, 160)`` gives
    ``obs: (size, size, 1)`` uint8, an RGB one is converted with ITU-R 601 luma weights first. Stops
    skipping at a terminal frame.
    """

    def __init__(self, env: gym.Env, frame_skip: int = 4, size: int = 84) -> None:
        super().__init__(env)
        if int(frame_skip) < 1:
            raise UserError(f"atari_frames frame_skip={frame_skip} must be >= 1")
        if int(size) < 1:
            raise UserError(f"atari_frames size={size} must be >= 1")
        shape = env.observation_space.shape
        if shape is None or len(shape) not in (2, 3):
            raise UserError(f"atari_frames needs image observations (H, W[, C]), got shape {shape}")
        self.frame_skip = int(frame_skip)
        self.size = int(size)
        self.observation_space = gym.spaces.Box(0, 255, (size, size, 1), np.uint8)

    def _process(self, frame: np.ndarray) -> np.ndarray:
        """``(H, W)`` or ``(H, W, 3)`` uint8 frame -> ``(size, size, 1)`` uint8."""
        img = np.ascontiguousarray(frame, dtype=np.uint8)
        if img.ndim == 3:
            img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        return cv2.resize(img, (self.size, self.size), interpolation=cv2.INTER_AREA)[:, :, None]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        return self._process(obs), info

    def step(self, action: Any):
        total = 0.0
        frames: list[np.ndarray] = []
        oracle, has_oracle = 0.0, False
        gym_total, has_gym = 0.0, False
        terminated = truncated = False
        info: dict[str, Any] = {}
        for _ in range(self.frame_skip):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            # An inner oracle (or Gymnasium) reward is summed over the skipped frames too.
            has_oracle = has_oracle or ORACLE_KEY in info
            oracle += float(info.get(ORACLE_KEY, reward))
            has_gym = has_gym or GYM_REWARD_KEY in info
            gym_total += _gym_base(reward, info)
            frames = [*frames[-1:], np.asarray(obs)]
            if terminated or truncated:
                break
        # Max over the last two frames removes the flicker of sprites drawn on alternate frames.
        frame = frames[0] if len(frames) == 1 else np.maximum(frames[0], frames[1])
        info = dict(info)
        if has_oracle:
            info[ORACLE_KEY] = oracle
        if has_gym:
            info[GYM_REWARD_KEY] = gym_total
        return self._process(frame), total, terminated, truncated, info


@WRAPPERS.register("noop_reset")
def _noop_reset(env: gym.Env, noop_max: int = 30) -> gym.Env:
    return NoopResetEnv(env, noop_max=noop_max)


@WRAPPERS.register("flatten_obs")
def _flatten_obs(env: gym.Env) -> gym.Env:
    """A (dict) observation as one flat float32 vector, in the space's key order."""
    flat = gym.wrappers.FlattenObservation(env)
    space = flat.observation_space
    box = gym.spaces.Box(space.low.astype(np.float32), space.high.astype(np.float32), dtype=np.float32)
    return gym.wrappers.TransformObservation(flat, lambda o: np.asarray(o, dtype=np.float32), box)


class GymReturn(gym.Wrapper):
    """Measures, changes nothing: ``info["gym_reward"]`` on every step (an inner wrapper's record, else
    the step's reward) and, on the step that ends an episode (``terminated or truncated``),
    ``info["gym_return"]``: the sum of ``info["gym_reward"]`` since the last reset or episode end.
    Outermost of a task's wrappers (``TaskSpec.make_env`` adds it; not a catalogue name), so its
    episodes are the task's."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self._sum = 0.0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        self._sum = 0.0
        return self.env.reset(seed=seed, options=options)

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = self.env.step(action)
        info = dict(info)
        info[GYM_REWARD_KEY] = _gym_base(reward, info)
        self._sum += info[GYM_REWARD_KEY]
        if terminated or truncated:
            info[GYM_RETURN_KEY] = self._sum
            self._sum = 0.0
        return obs, reward, terminated, truncated, info


def apply_wrappers(env: gym.Env, specs: Sequence[Mapping[str, Any]]) -> gym.Env:
    """Wrap ``env`` with ``specs`` in order (the first is innermost); each is ``{name, kwargs}``."""
    for spec in specs:
        env = WRAPPERS.make(spec["name"], env, **dict(spec.get("kwargs", {})))
    return env


class ScoreMask:
    """Blank rectangles of image observations: what the reward model must not see (score, counters).

    ``regions``: ``(row0, row1, col0, col1)`` half-open pixel boxes in the ``(H, W)`` frame; ``fill``:
    the value written there. Called on ``(H, W)``, ``(N, H, W)`` or ``(N, H, W, C)`` arrays (every
    channel is a frame of the same screen, so a stack is masked per frame); returns a masked copy.
    Picklable, so it can travel to subprocess envs or into a saved config.
    """

    def __init__(self, regions: Sequence[Sequence[int]], fill: int = 0) -> None:
        boxes = []
        for box in regions:
            r0, r1, c0, c1 = (int(v) for v in box)
            if not (0 <= r0 < r1 and 0 <= c0 < c1):
                raise UserError(f"mask region {list(box)} must be [row0, row1, col0, col1] with row0 < row1, col0 < col1")
            boxes.append((r0, r1, c0, c1))
        self.regions: tuple[tuple[int, int, int, int], ...] = tuple(boxes)
        self.fill = fill

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        out = np.array(obs, copy=True)
        if out.ndim not in (2, 3, 4):
            raise UserError(f"ScoreMask expects (H, W), (N, H, W) or (N, H, W, C) arrays, got shape {out.shape}")
        for r0, r1, c0, c1 in self.regions:
            if out.ndim == 2:
                out[r0:r1, c0:c1] = self.fill
            else:  # rows and columns are axes 1 and 2 of (N, H, W) and (N, H, W, C)
                out[:, r0:r1, c0:c1, ...] = self.fill
        return out

    def __repr__(self) -> str:
        return f"ScoreMask(regions={[list(r) for r in self.regions]}, fill={self.fill})"

