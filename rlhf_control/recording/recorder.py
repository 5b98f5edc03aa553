"""Recording the agent's behaviour as fixed-length segments.

:class:`TrajectoryRecorder` is a VecEnv wrapper that sits between the task wrappers and the
:class:`~rlhf_control.agent.learned_reward.LearnedReward` wrapper; it cuts each env's stream of steps into
non-overlapping clips of ``clip_length`` steps inside one episode and adds them to a
:class:`~rlhf_control.recording.pool.SegmentPool`, which keeps the most recent ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from gymnasium import spaces
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvStepReturn, VecEnvWrapper

from rlhf_control.recording.pool import SegmentPool
from rlhf_control.tasks.wrappers import with_terminal_obs
from rlhf_control.types import Segment, StackedFrames

ObsFn = Callable[[np.ndarray], np.ndarray]
RenderStateFn = Callable[[VecEnv], list[Any]]


class TrajectoryRecorder(VecEnvWrapper):
    """Cuts each env's steps into segments of ``clip_length`` steps and adds them to ``pool``.

    Per step and env it keeps the observation the action was taken from (after ``obs_fn``, which maps
    ``(n_envs, *obs_shape)`` to the same shape, e.g. to blank the score), the action, and the true
    reward (``info["oracle_reward"]`` when the env gives one, else the env reward). Segments never
    span two episodes: clips start at steps 0, L, 2L, ... of an episode and the partial remainder at
    the episode's end is dropped (SB3's auto-reset makes the obs after a done the next episode's first).

    ``frame_stack=k > 0``: observations are ``(n_envs, H, W, k)`` channels-last stacks (``VecFrameStack``);
    each frame is stored once and a segment's ``obs`` is ``StackedFrames((T + k - 1, H, W), k)``.
    Then ``obs_fn`` must act on each frame on its own (the newest frame of each stack is what is kept).

    ``render_state_fn(venv) -> list`` (one opaque state per env, e.g. copies of MuJoCo qpos/qvel) is
    called after each reset/step; a segment's ``render_ref`` is the list of its T states.
    ``next_obs=True``: each step keeps the observation its action led to instead (at an episode's end
    ``info["terminal_observation"]``), for a reward model of (o_{t+1}, a_t); not with ``frame_stack``.
    Observations, rewards, dones and infos pass through unchanged.
    """

    def __init__(
        self,
        venv: VecEnv,
        clip_length: int,
        pool: SegmentPool,
        obs_fn: ObsFn | None = None,
        frame_stack: int = 0,
        render_state_fn: RenderStateFn | None = None,
        keep_true_rewards: bool = True,
        next_obs: bool = False,
    ) -> None:
        super().__init__(venv)
        if isinstance(clip_length, bool) or not isinstance(clip_length, (int, np.integer)) or clip_length < 1:
            raise ValueError(f"clip_length={clip_length!r} is not allowed; use an integer >= 1")
        if isinstance(frame_stack, bool) or not isinstance(frame_stack, (int, np.integer)) or frame_stack < 0:
            raise ValueError(
                f"frame_stack={frame_stack!r} is not allowed; use 0 (none) or the stack size k >= 1"
            )
        space = venv.observation_space
        if isinstance(space, (spaces.Dict, spaces.Tuple)):
            raise ValueError(
                f"observation space {type(space).__name__} is not supported; use Box or Discrete"
            )
        if frame_stack and (len(space.shape) != 3 or space.shape[-1] != frame_stack):
            raise ValueError(
                f"frame_stack={frame_stack} needs (H, W, {frame_stack}) channels-last observations, got {space.shape}"
            )
        if next_obs and frame_stack:
            raise ValueError("next_obs=True is not supported with frame_stack; use the observations before")
        self.next_obs = bool(next_obs)
        self.clip_length = int(clip_length)
        self.pool = pool
        self.obs_fn = obs_fn
        self.frame_stack = int(frame_stack)
        self.render_state_fn = render_state_fn
        # A task with no true reward records none, so nothing downstream can read the env's reward.
        self.keep_true_rewards = bool(keep_true_rewards)
        # Metrics: env steps (summed over envs), finished segments, finished episodes.
        self.n_steps = 0
        # n_steps at the agent's step 0 (None while clips are not the agent's: pretraining).
        self.step_origin: int | None = 0
        self.n_segments = 0
        self.n_episodes = 0
        self._next_episode_id = 0
        n = self.num_envs
        self._pos = [0] * n  # steps already recorded in each env's current segment
        self._ep_step = [0] * n  # steps taken in each env's current episode
        self._ep_id = [-1] * n
        # Per-env buffers of the segment being filled; a full one is handed to its Segment as is
        # (no second copy) and a fresh one allocated.
        self._obs_buf: list[np.ndarray | None] = [None] * n
        self._act_buf: list[np.ndarray | None] = [None] * n
        self._rew_buf: list[np.ndarray | None] = [None] * n
        self._render_buf: list[list[Any]] = [[] for _ in range(n)]
        self._actions: np.ndarray | None = None
        self._started = False

    def reset(self) -> np.ndarray:
        """Reset all envs; partial segments are dropped and every env starts a new episode id."""
        obs = self.venv.reset()
        for i in range(self.num_envs):
            self._pos[i] = 0
            self._start_episode(i)
        self._started = True
        self._observe(obs)
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        if not self._started:
            raise RuntimeError("TrajectoryRecorder: call reset() before step()")
        self._actions = np.asarray(actions)
        self.venv.step_async(actions)

    def step_wait(self) -> VecEnvStepReturn:
        obs, rews, dones, infos = self.venv.step_wait()
        acts = self._actions
        length = self.clip_length
        after = self._reward_obs(with_terminal_obs(obs, dones, infos)) if self.next_obs else None
        for i in range(self.num_envs):
            pos = self._pos[i]
            if after is not None:
                if self._obs_buf[i] is None:
                    self._obs_buf[i] = np.empty((length, *after.shape[1:]), dtype=after.dtype)
                self._obs_buf[i][pos] = after[i]
            if self._act_buf[i] is None:
                self._act_buf[i] = np.empty((length, *acts.shape[1:]), dtype=acts.dtype)
                self._rew_buf[i] = np.empty(length, dtype=np.float64)
            self._act_buf[i][pos] = acts[i]
            self._rew_buf[i][pos] = infos[i].get("oracle_reward", rews[i])
            self._ep_step[i] += 1
            pos += 1
            if pos == length:
                self._emit(i)
                pos = 0
            if dones[i]:
                # The partial segment ends here; its buffers are simply overwritten.
                pos = 0
                self.n_episodes += 1
                self._start_episode(i)
            self._pos[i] = pos
        self.n_steps += self.num_envs
        self._observe(obs)
        return obs, rews, dones, infos

    def state_dict(self) -> dict[str, int]:
        """Counters to checkpoint so episode ids stay run-unique and metrics continue on resume."""
        return {
            "next_episode_id": self._next_episode_id,
            "n_steps": self.n_steps,
            "n_segments": self.n_segments,
            "n_episodes": self.n_episodes,
            "step_origin": self.step_origin,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        keys = ("next_episode_id", "n_steps", "n_segments", "n_episodes")
        for key in keys:
            value = state.get(key) if isinstance(state, Mapping) else None
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"recorder state {key}={value!r} is not allowed; use an integer >= 0")
        # Episodes already running (started by a reset before the load) are renumbered after the
        # checkpoint's ids so that no id of the resumed run is reused.
        self._next_episode_id = max(int(state["next_episode_id"]), self._next_episode_id)
        if self._started:
            for i in range(self.num_envs):
                self._ep_id[i] = self._next_episode_id
                self._next_episode_id += 1
        self.n_steps = int(state["n_steps"])
        self.n_segments = int(state["n_segments"])
        self.n_episodes = int(state["n_episodes"])
        origin = state.get("step_origin", None)  # (older checkpoints: clip steps unknown)
        self.step_origin = None if origin is None else int(origin)

    def _start_episode(self, i: int) -> None:
        self._ep_id[i] = self._next_episode_id
        self._next_episode_id += 1
        self._ep_step[i] = 0

    def _reward_obs(self, obs: np.ndarray) -> np.ndarray:
        x = obs if self.obs_fn is None else np.asarray(self.obs_fn(obs))
        if x.shape != obs.shape:
            raise ValueError(f"obs_fn must keep the observation shape {obs.shape}, got {x.shape}")
        return x

    def _observe(self, obs: np.ndarray) -> None:
        """Write each env's new observation (the one its next action is taken from) into its buffer
        (with ``next_obs``, only the render states: step_wait wrote the observation the step led to)."""
        x = None if self.next_obs else self._reward_obs(obs)
        states = None
        if self.render_state_fn is not None:
            states = self.render_state_fn(self.venv)
            if len(states) != self.num_envs:
                raise ValueError(f"render_state_fn returned {len(states)} states for {self.num_envs} envs")
        k = self.frame_stack
        for i in range(self.num_envs):
            pos = self._pos[i]
            buf = self._obs_buf[i]
            if x is not None:
                if buf is None:
                    shape = (self.clip_length + k - 1, *x.shape[1:-1]) if k else (self.clip_length, *x.shape[1:])
                    buf = self._obs_buf[i] = np.empty(shape, dtype=x.dtype)
                if not k:
                    buf[pos] = x[i]
                elif pos == 0:
                    buf[:k] = np.moveaxis(x[i], -1, 0)  # the first step's whole stack, oldest frame first
                else:
                    buf[pos + k - 1] = x[i, ..., -1]  # later steps add only their newest frame
            if states is not None:
                if pos == 0:
                    self._render_buf[i] = [states[i]]
                else:
                    self._render_buf[i].append(states[i])

    def _emit(self, i: int) -> None:
        buf = self._obs_buf[i]
        obs = StackedFrames(buf, self.frame_stack) if self.frame_stack else buf
        segment = Segment(
            obs=obs,
            acts=self._act_buf[i],
            true_rewards=self._rew_buf[i] if self.keep_true_rewards else None,
            episode_id=self._ep_id[i],
            start_step=self._ep_step[i] - self.clip_length,
            # n_steps is not yet counted for this vector step: the clip began clip_length - 1 steps ago.
            agent_step=(-1 if self.step_origin is None
                        else max(0, self.n_steps - self.step_origin - (self.clip_length - 1) * self.num_envs)),
            render_ref=self._render_buf[i] if self.render_state_fn is not None else None,
        )
        self.pool.add(segment)
        self.n_segments += 1
        self._obs_buf[i] = self._act_buf[i] = self._rew_buf[i] = None
        self._render_buf[i] = []
