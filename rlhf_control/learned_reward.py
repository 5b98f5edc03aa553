"""VecEnv wrapper that replaces the env reward by a learned one (the reward ensemble's output)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvStepReturn, VecEnvWrapper

RewardFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
ObsFn = Callable[[np.ndarray], np.ndarray]


class LearnedReward(VecEnvWrapper):
    """Each step's reward := ``reward_fn(obs, acts)``, one batched call per vector step.

    ``reward_fn(obs: (n_envs, *obs_shape), acts: (n_envs, *act_shape)) -> (n_envs,)`` gets the
    observations the actions were taken from (after ``obs_fn``, which keeps the shape) and the
    actions (``(n_envs,)`` ints for a discrete action space). The env's own reward goes to
    ``info["true_reward"]``; when an env's episode ends, its learned and true returns go to
    ``info["episode_learned_return"]`` / ``info["episode_true_return"]`` and to the last ``history``
    finished episodes read by :meth:`recent_returns`.

    The learned reward is computed right after the actions are dispatched, so with a
    subprocess VecEnv the reward model runs while the envs step.
    """

    def __init__(
        self,
        venv: VecEnv,
        reward_fn: RewardFn,
        obs_fn: ObsFn | None = None,
        history: int = 100,
    ) -> None:
        super().__init__(venv)
        if not callable(reward_fn):
            raise ValueError(
                f"reward_fn={reward_fn!r} is not allowed; use a callable (obs, acts) -> (n_envs,)"
            )
        if isinstance(history, bool) or not isinstance(history, (int, np.integer)) or history < 1:
            raise ValueError(f"history={history!r} is not allowed; use an integer >= 1")
        self._reward_fn = reward_fn
        self.obs_fn = obs_fn
        self._last_obs: np.ndarray | None = None
        self._pending: np.ndarray | None = None
        self._learned_ret = np.zeros(self.num_envs, dtype=np.float64)
        self._true_ret = np.zeros(self.num_envs, dtype=np.float64)
        self._recent_learned: deque[float] = deque(maxlen=int(history))
        self._recent_true: deque[float] = deque(maxlen=int(history))

    @property
    def reward_fn(self) -> RewardFn:
        return self._reward_fn

    def set_reward_fn(self, reward_fn: RewardFn) -> None:
        """Use ``reward_fn`` from the next step on (e.g. after the ensemble was retrained)."""
        if not callable(reward_fn):
            raise ValueError(
                f"reward_fn={reward_fn!r} is not allowed; use a callable (obs, acts) -> (n_envs,)"
            )
        self._reward_fn = reward_fn

    def recent_returns(self) -> tuple[list[float], list[float]]:
        """(learned, true) undiscounted returns of the most recent finished episodes, oldest first."""
        return list(self._recent_learned), list(self._recent_true)

    def reset(self) -> np.ndarray:
        obs = self.venv.reset()
        self._last_obs = self._transform(obs)
        self._learned_ret[:] = 0.0
        self._true_ret[:] = 0.0
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        if self._last_obs is None:
            raise RuntimeError("LearnedReward: call reset() before step()")
        acts = np.asarray(actions)
        self.venv.step_async(actions)
        out = np.asarray(self._reward_fn(self._last_obs, acts), dtype=np.float32)
        if out.shape != (self.num_envs,):
            raise ValueError(f"reward_fn must return shape ({self.num_envs},), got {out.shape}")
        if not np.all(np.isfinite(out)):
            raise ValueError(f"reward_fn returned non-finite rewards {out.tolist()}")
        self._pending = out

    def step_wait(self) -> VecEnvStepReturn:
        obs, rews, dones, infos = self.venv.step_wait()
        learned, self._pending = self._pending, None
        true = np.asarray(rews, dtype=np.float64)
        self._learned_ret += learned
        self._true_ret += true
        for i in range(self.num_envs):
            infos[i]["true_reward"] = float(true[i])
            if dones[i]:
                ret_learned, ret_true = float(self._learned_ret[i]), float(self._true_ret[i])
                infos[i]["episode_learned_return"] = ret_learned
                infos[i]["episode_true_return"] = ret_true
                self._recent_learned.append(ret_learned)
                self._recent_true.append(ret_true)
                self._learned_ret[i] = 0.0
                self._true_ret[i] = 0.0
        # After an auto-reset this is the new episode's first obs, which the next action is taken from.
        self._last_obs = self._transform(obs)
        return obs, learned, dones, infos

    def _transform(self, obs: np.ndarray) -> np.ndarray:
        # A copy: some VecEnvs hand out a buffer they later overwrite.
        x = np.array(obs if self.obs_fn is None else self.obs_fn(obs), copy=True)
        if x.shape != np.shape(obs):
            raise ValueError(f"obs_fn must keep the observation shape {np.shape(obs)}, got {x.shape}")
        return x
