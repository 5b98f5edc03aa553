"""VecEnv wrapper that replaces the env reward by a learned one (the reward ensemble's output)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
from stable_baselines3.common.running_mean_std import RunningMeanStd
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvStepReturn, VecEnvWrapper

from rlhf_control.tasks.wrappers import GYM_RETURN_KEY, with_terminal_obs

RewardFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
ObsFn = Callable[[np.ndarray], np.ndarray]


class ReturnScale:
    """Divide rewards by the running std of the discounted return, as SB3's ``VecNormalize`` does
    with ``norm_reward=True`` (the RL baseline's setting): per vector step the running return
    ``G = gamma * G + r`` updates the statistics, the step's rewards are divided by their std and
    clipped to ``+-clip``, and ``G`` restarts where an episode ended. The mean is not subtracted."""

    def __init__(self, n_envs: int, gamma: float, clip: float = 10.0, epsilon: float = 1e-8) -> None:
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma={gamma!r} is not allowed; use a number in [0, 1]")
        self.gamma, self.clip, self.epsilon = float(gamma), float(clip), float(epsilon)
        self.rms = RunningMeanStd(shape=())
        self.returns = np.zeros(int(n_envs), dtype=np.float64)

    def __call__(self, rewards: np.ndarray, dones: np.ndarray) -> np.ndarray:
        """Scaled rewards of one vector step ``(n_envs,)`` (float32)."""
        return self.scale_steps(np.asarray(rewards)[None], np.asarray(dones)[None])[0]

    def scale_steps(self, rewards: np.ndarray, dones: np.ndarray) -> np.ndarray:
        """Scaled rewards ``(T, n_envs)`` of T vector steps in order, as T calls would give them: the
        statistics after step t combine the previous ones with every return up to t (what
        ``RunningMeanStd.update`` does batch by batch), from cumulative sums instead of T updates."""
        rewards = np.asarray(rewards, dtype=np.float64)
        dones = np.asarray(dones, dtype=bool)
        steps, n = rewards.shape
        returns = np.empty_like(rewards)
        g = self.returns
        for t in range(steps):
            g = g * self.gamma + rewards[t]
            returns[t] = g
            g = np.where(dones[t], 0.0, g)
        self.returns = g
        c0, m0, v0 = float(self.rms.count), float(self.rms.mean), float(self.rms.var)
        counts = c0 + n * np.arange(1, steps + 1, dtype=np.float64)
        means = (c0 * m0 + np.cumsum(returns.sum(axis=1))) / counts
        variances = np.maximum((c0 * (v0 + m0 * m0) + np.cumsum((returns ** 2).sum(axis=1))) / counts - means ** 2, 0.0)
        self.rms.mean, self.rms.var, self.rms.count = np.float64(means[-1]), np.float64(variances[-1]), float(counts[-1])
        out = np.clip(rewards / np.sqrt(variances[:, None] + self.epsilon), -self.clip, self.clip)
        return out.astype(np.float32)

    def state_dict(self) -> dict[str, Any]:
        return {"mean": float(self.rms.mean), "var": float(self.rms.var), "count": float(self.rms.count),
                "returns": self.returns.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        returns = np.asarray(state["returns"], dtype=np.float64)
        if returns.shape != self.returns.shape:
            raise ValueError(f"return scale state for {returns.shape[0]} envs does not fit a run with {len(self.returns)} envs")
        self.rms.mean, self.rms.var = np.float64(state["mean"]), np.float64(state["var"])
        self.rms.count = float(state["count"])
        self.returns = returns


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

    ``deferred=True``: each step returns reward 0 and keeps the step's inputs; :meth:`flush` then
    computes the rewards of all steps since the last flush in one call (what :func:`relabel_rollouts`
    does at the end of each SB3 rollout, so that the agent trains on exactly the per-step rewards at a
    fraction of the per-call cost). Episode returns (``recent_returns``) are counted at the flush and
    the ``info["episode_*_return"]`` keys are not set.

    ``scale``: a :class:`ReturnScale` applied to the rewards the agent gets; the episode returns
    counted here stay on the ensemble's scale.

    ``next_obs=True``: ``reward_fn`` gets the observations the actions led to instead (at an
    episode's end ``info["terminal_observation"]``), so a step's reward is computed after it.
    """

    def __init__(
        self,
        venv: VecEnv,
        reward_fn: RewardFn,
        obs_fn: ObsFn | None = None,
        history: int = 100,
        deferred: bool = False,
        scale: ReturnScale | None = None,
        next_obs: bool = False,
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
        self._recent_gym: deque[float] = deque(maxlen=int(history))
        self.deferred = bool(deferred)
        self._batch: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []  # obs, acts, true, dones
        self._pending_acts: np.ndarray | None = None
        self.scale = scale
        self.next_obs = bool(next_obs)

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

    def recent_gym_returns(self) -> list[float]:
        """Standard Gymnasium returns (``info["gym_return"]``) of the most recent finished episodes, for
        tasks whose env reports them (every task with a true reward), oldest first."""
        return list(self._recent_gym)

    def reset(self) -> np.ndarray:
        obs = self.venv.reset()
        self._last_obs = self._transform(obs)
        self._batch.clear()
        self._learned_ret[:] = 0.0
        self._true_ret[:] = 0.0
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        if self._last_obs is None:
            raise RuntimeError("LearnedReward: call reset() before step()")
        acts = np.asarray(actions)
        self.venv.step_async(actions)
        if self.deferred or self.next_obs:
            self._pending_acts = np.array(acts, copy=True)
            return
        self._pending = self._checked(self._reward_fn(self._last_obs, acts), self.num_envs)

    def _checked(self, out: np.ndarray, n: int) -> np.ndarray:
        out = np.asarray(out, dtype=np.float32)
        if out.shape != (n,):
            raise ValueError(f"reward_fn must return shape ({n},), got {out.shape}")
        if not np.all(np.isfinite(out)):
            raise ValueError(f"reward_fn returned non-finite rewards {out.tolist()}")
        return out

    def step_wait(self) -> VecEnvStepReturn:
        obs, rews, dones, infos = self.venv.step_wait()
        true = np.asarray(rews, dtype=np.float64)
        for i in range(self.num_envs):
            infos[i]["true_reward"] = float(true[i])
            if dones[i] and GYM_RETURN_KEY in infos[i]:
                self._recent_gym.append(float(infos[i][GYM_RETURN_KEY]))
        seen = self._last_obs
        if self.next_obs:
            seen = self._transform(with_terminal_obs(obs, dones, infos))
        if self.deferred:
            self._batch.append((seen, self._pending_acts, true, np.array(dones, dtype=bool)))
            learned = np.zeros(self.num_envs, dtype=np.float32)
        else:
            if self.next_obs:
                self._pending = self._checked(self._reward_fn(seen, self._pending_acts), self.num_envs)
            learned, self._pending = self._pending, None
            for i, ret_learned, ret_true in self._count_step(learned, true, dones):
                infos[i]["episode_learned_return"] = ret_learned
                infos[i]["episode_true_return"] = ret_true
            if self.scale is not None:
                learned = self.scale(learned, dones)
        # After an auto-reset this is the new episode's first obs, which the next action is taken from
        # (with next_obs it is not read again, only checked for having been set: no obs_fn, no copy).
        self._last_obs = obs if self.next_obs else self._transform(obs)
        return obs, learned, dones, infos

    def _count_step(self, learned: np.ndarray, true: np.ndarray, dones: np.ndarray) -> list[tuple[int, float, float]]:
        """Add one vector step to the running returns; ``(env, learned return, true return)`` of the
        episodes it ended, which also go to :meth:`recent_returns`."""
        self._learned_ret += learned
        self._true_ret += true
        ended = []
        for i in np.flatnonzero(dones):
            ret_learned, ret_true = float(self._learned_ret[i]), float(self._true_ret[i])
            self._recent_learned.append(ret_learned)
            self._recent_true.append(ret_true)
            self._learned_ret[i] = 0.0
            self._true_ret[i] = 0.0
            ended.append((int(i), ret_learned, ret_true))
        return ended

    def scale_state(self) -> dict[str, Any] | None:
        """The :class:`ReturnScale`'s statistics for a checkpoint (None without a scale)."""
        return self.scale.state_dict() if self.scale is not None else None

    def load_scale_state(self, state: dict[str, Any] | None) -> None:
        """Restore :meth:`scale_state`; a checkpoint without one (older, or written unscaled) leaves the
        statistics to start afresh."""
        if state and self.scale is not None:
            self.scale.load_state_dict(state)

    def pending_steps(self) -> int:
        """Vector steps waiting for :meth:`flush` (always 0 unless ``deferred``)."""
        return len(self._batch)

    def flush(self) -> np.ndarray:
        """Learned rewards ``(T, n_envs)`` float32 of the T vector steps since the last flush (or reset),
        from one ``reward_fn`` call (then ``scale``d, step by step); counts the episodes that ended in them."""
        n = self.num_envs
        if not self._batch:
            return np.zeros((0, n), dtype=np.float32)
        batch, self._batch = self._batch, []
        obs = np.concatenate([b[0] for b in batch])
        acts = np.concatenate([b[1] for b in batch])
        learned = self._checked(self._reward_fn(obs, acts), len(obs)).reshape(len(batch), n)
        for t, (_, _, true, dones) in enumerate(batch):
            self._count_step(learned[t], true, dones)
        if self.scale is not None:
            learned = self.scale.scale_steps(learned, np.stack([b[3] for b in batch]))
        return learned

    def _transform(self, obs: np.ndarray) -> np.ndarray:
        # A copy: some VecEnvs hand out a buffer they later overwrite.
        x = np.array(obs if self.obs_fn is None else self.obs_fn(obs), copy=True)
        if x.shape != np.shape(obs):
            raise ValueError(f"obs_fn must keep the observation shape {np.shape(obs)}, got {x.shape}")
        return x


def relabel_rollouts(agent: Any, learned: LearnedReward, before: Callable[[int], None] | None = None) -> None:
    """Give an SB3 on-policy ``agent`` (PPO, A2C, TRPO) the rewards of a ``deferred`` ``learned``
    env in one batch per rollout.

    SB3 fills its rollout buffer with the rewards the env returned (0 here) plus, where an episode
    was cut by a time limit, ``gamma * V(terminal obs)``; then it computes returns and advantages.
    Just before that computation the rollout's learned rewards are added to the buffer, which gives
    the buffer exactly what per-step rewards would have. ``before(agent steps so far)`` runs first,
    so that a reward trained during the rollout can take over before it is scored (SB3 calls the
    rollout-end callback only after this computation). Call again after the agent's buffer is
    rebuilt (a loaded agent gets a new one).
    """
    if not learned.deferred:
        raise ValueError("relabel_rollouts needs a LearnedReward built with deferred=True")
    buf = agent.rollout_buffer
    original = buf.compute_returns_and_advantage

    def compute_returns_and_advantage(last_values: Any, dones: np.ndarray) -> None:
        if before is not None:
            before(int(agent.num_timesteps))
        rewards = learned.flush()
        if rewards.shape != (buf.pos if not buf.full else buf.buffer_size, buf.n_envs):
            raise RuntimeError(
                f"learned rewards for {rewards.shape[0]} steps do not match a rollout of {buf.buffer_size} steps; "
                "the env was stepped outside the agent's rollout"
            )
        buf.rewards[: len(rewards)] += rewards
        return original(last_values=last_values, dones=dones)

    buf.compute_returns_and_advantage = compute_returns_and_advantage
