"""LearnedReward on tiny deterministic envs, and stacked with TrajectoryRecorder under SB3 PPO."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv

from rlhf_control.agent.learned_reward import LearnedReward
from rlhf_control.recording.pool import SegmentPool
from rlhf_control.recording.recorder import TrajectoryRecorder


def env_reward(tag: int, t: int, a: int) -> float:
    return float(100 * tag + 10 * t + a)


class CounterEnv(gym.Env):
    """obs = [tag, episode, step]; reward = 100*tag + 10*step + action; episodes of fixed length."""

    def __init__(self, tag: int, length: int) -> None:
        self.observation_space = spaces.Box(-np.inf, np.inf, (3,), np.float32)
        self.action_space = spaces.Discrete(3)
        self.tag, self.length = tag, length
        self.ep, self.t = -1, 0

    def _obs(self) -> np.ndarray:
        return np.array([self.tag, self.ep, self.t], dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.ep += 1
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        r = env_reward(self.tag, self.t, int(action))
        self.t += 1
        return self._obs(), r, self.t >= self.length, False, {}


class RecordingRewardFn:
    """A reward function that remembers every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[np.ndarray, np.ndarray]] = []

    def __call__(self, obs: np.ndarray, acts: np.ndarray) -> np.ndarray:
        self.calls.append((obs.copy(), acts.copy()))
        return obs[:, 2] * 0.5 - acts + obs[:, 0]


def counter_venv() -> DummyVecEnv:
    return DummyVecEnv([lambda: CounterEnv(0, 5), lambda: CounterEnv(1, 8)])


SHIFT = np.array([0.0, 0.0, 1000.0], dtype=np.float32)


@pytest.mark.parametrize("use_obs_fn", [False, True])
def test_reward_fn_called_once_per_step_with_pre_step_obs(use_obs_fn):
    fn = RecordingRewardFn()
    obs_fn = (lambda o: o + SHIFT) if use_obs_fn else None
    env = LearnedReward(counter_venv(), fn, obs_fn=obs_fn)
    rng = np.random.default_rng(0)
    obs = env.reset()
    learned_ret, true_ret = np.zeros(2), np.zeros(2)
    finished_learned, finished_true = [], []
    n_steps = 37
    for step in range(n_steps):
        acts = rng.integers(0, 3, size=2)
        prev = obs.copy()
        obs, rews, dones, infos = env.step(acts)
        assert len(fn.calls) == step + 1
        seen_obs, seen_acts = fn.calls[-1]
        np.testing.assert_array_equal(seen_obs, prev + SHIFT if use_obs_fn else prev)
        np.testing.assert_array_equal(seen_acts, acts)
        expected = (seen_obs[:, 2] * 0.5 - acts + seen_obs[:, 0]).astype(np.float32)
        np.testing.assert_array_equal(rews, expected)
        for i in range(2):
            true_r = env_reward(int(prev[i, 0]), int(prev[i, 2]), int(acts[i]))
            assert infos[i]["true_reward"] == true_r
            learned_ret[i] += rews[i]
            true_ret[i] += true_r
            if dones[i]:
                assert infos[i]["episode_learned_return"] == pytest.approx(learned_ret[i])
                assert infos[i]["episode_true_return"] == pytest.approx(true_ret[i])
                finished_learned.append(learned_ret[i])
                finished_true.append(true_ret[i])
                learned_ret[i] = true_ret[i] = 0.0
                np.testing.assert_array_equal(obs[i, 1:], [prev[i, 1] + 1, 0])  # auto-reset obs
            else:
                assert "episode_learned_return" not in infos[i]
    assert len(fn.calls) == n_steps
    assert len(finished_true) == 37 // 5 + 37 // 8
    got_learned, got_true = env.recent_returns()
    np.testing.assert_allclose(got_learned, finished_learned)
    np.testing.assert_allclose(got_true, finished_true)


def test_set_reward_fn_swaps_and_history_is_bounded():
    env = LearnedReward(counter_venv(), RecordingRewardFn(), history=2)
    env.reset()
    env.step(np.array([0, 0]))
    env.set_reward_fn(lambda obs, acts: np.full(len(obs), 7.0))
    for _ in range(15):
        _, rews, _, _ = env.step(np.array([1, 1]))
        np.testing.assert_array_equal(rews, [7.0, 7.0])
    learned, true = env.recent_returns()
    # 3 + 2 episodes finished, only the last 2 kept: env 0's third (5 steps of 7), env 1's second (8 of 7).
    assert learned == [pytest.approx(35.0), pytest.approx(56.0)] and len(true) == 2


def test_bad_reward_fn_output_and_arguments_raise():
    env = LearnedReward(counter_venv(), lambda obs, acts: np.zeros(3))
    env.reset()
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        env.step(np.array([0, 0]))
    env = LearnedReward(counter_venv(), lambda obs, acts: np.array([0.0, np.nan]))
    env.reset()
    with pytest.raises(ValueError, match="non-finite"):
        env.step(np.array([0, 0]))
    with pytest.raises(ValueError, match="reward_fn"):
        LearnedReward(counter_venv(), reward_fn=3)
    with pytest.raises(ValueError, match="history"):
        LearnedReward(counter_venv(), RecordingRewardFn(), history=0)


def test_continuous_actions_reach_reward_fn():
    fn_calls = []

    def fn(obs, acts):
        fn_calls.append(acts.copy())
        return acts[:, 0] * 2.0

    env = LearnedReward(DummyVecEnv([lambda: gym.make("Pendulum-v1")] * 2), fn)
    env.reset()
    acts = np.array([[0.5], [-1.5]], dtype=np.float32)
    _, rews, _, infos = env.step(acts)
    assert fn_calls[0].shape == (2, 1)
    np.testing.assert_array_equal(rews, [1.0, -3.0])
    assert all(info["true_reward"] <= 0.0 for info in infos)  # Pendulum's own reward is a cost


def test_under_ppo_with_recorder_inside():
    """Recorder inside, LearnedReward outside: PPO trains on the learned reward of the obs it acted on."""

    def pole_angle_reward(obs, acts):
        return -np.abs(obs[:, 2])

    calls = []

    def reward_fn(obs, acts):
        calls.append(1)
        return pole_angle_reward(obs, acts)

    venv = DummyVecEnv([lambda: gym.make("CartPole-v1")] * 2)
    pool = SegmentPool(500, np.random.default_rng(0))
    recorder = TrajectoryRecorder(venv, clip_length=10, pool=pool)
    env = LearnedReward(recorder, reward_fn)
    model = PPO("MlpPolicy", env, n_steps=64, batch_size=64, n_epochs=1, seed=0, device="cpu")
    model.learn(total_timesteps=256)

    assert model.num_timesteps == 256
    assert len(calls) == 128 and recorder.n_steps == 256
    # The rollout buffer holds the obs PPO acted on and the rewards it trained on. Training flattened
    # the obs env-major to (n_envs * n_steps, 4); rewards stay (n_steps, n_envs).
    buf = model.rollout_buffer
    obs = buf.observations.reshape(2, 64, 4).swapaxes(0, 1) if buf.generator_ready else buf.observations
    np.testing.assert_allclose(buf.rewards, -np.abs(obs[:, :, 2]), rtol=1e-6)
    segs = pool.segments()
    assert len(segs) == recorder.n_segments > 5
    for seg in segs:
        assert seg.obs.shape == (10, 4) and seg.acts.shape == (10,)
        assert set(np.unique(seg.acts)) <= {0, 1}
        np.testing.assert_array_equal(seg.true_rewards, np.ones(10))  # CartPole's own reward
    learned, true = env.recent_returns()
    assert len(true) > 5 and all(t >= 1 for t in true)
    assert all(lr <= 0 for lr in learned)


def test_deferred_rewards_give_ppo_the_same_rollout_as_per_step_rewards():
    """One batched call per rollout (relabel_rollouts) leaves the buffer exactly as per-step rewards do,
    time-limit bootstraps included (Pendulum's episodes are cut at 200 steps, inside the rollout)."""
    from rlhf_control.agent.learned_reward import relabel_rollouts

    def reward_fn(obs, acts):
        return (obs[:, 0] - 0.1 * acts[:, 0] ** 2).astype(np.float32)

    def rollout(deferred: bool):
        calls = []

        def fn(obs, acts):
            calls.append(len(obs))
            return reward_fn(obs, acts)

        env = LearnedReward(DummyVecEnv([lambda: gym.make("Pendulum-v1")] * 2), fn, deferred=deferred)
        env.seed(3)
        model = PPO("MlpPolicy", env, n_steps=256, batch_size=512, n_epochs=1, seed=0, device="cpu")
        if deferred:
            relabel_rollouts(model, env)
        model.learn(total_timesteps=512)  # one rollout, then one update
        return model.rollout_buffer, env, calls

    per_step, env_a, calls_a = rollout(False)
    batched, env_b, calls_b = rollout(True)
    assert calls_a == [2] * 256 and calls_b == [512]
    assert batched.rewards.shape == (256, 2) and np.any(batched.rewards != 0)
    np.testing.assert_allclose(batched.rewards, per_step.rewards, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(batched.advantages, per_step.advantages, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(batched.returns, per_step.returns, rtol=1e-4, atol=1e-4)
    (la, ta), (lb, tb) = env_a.recent_returns(), env_b.recent_returns()
    assert len(la) == len(lb) == 2  # one 200-step episode per env
    np.testing.assert_allclose(lb, la, rtol=1e-5)
    np.testing.assert_allclose(tb, ta)
    assert env_b.pending_steps() == 0


def test_deferred_rewards_out_of_step_with_the_rollout_are_refused():
    from rlhf_control.agent.learned_reward import relabel_rollouts

    env = LearnedReward(DummyVecEnv([lambda: gym.make("Pendulum-v1")]), lambda o, a: o[:, 0], deferred=True)
    model = PPO("MlpPolicy", env, n_steps=64, batch_size=64, n_epochs=1, seed=0, device="cpu")
    relabel_rollouts(model, env)
    model.learn(total_timesteps=64)
    env.step(np.zeros((1, 1), dtype=np.float32))  # a step the agent did not take
    with pytest.raises(RuntimeError, match="65 steps do not match a rollout of 64"):
        model.learn(total_timesteps=64, reset_num_timesteps=False)
    with pytest.raises(ValueError, match="deferred=True"):
        relabel_rollouts(model, LearnedReward(DummyVecEnv([lambda: gym.make("Pendulum-v1")]), lambda o, a: o[:, 0]))


def test_return_scale_gives_ppo_the_rollout_vecnormalize_gives_the_true_reward_path():
    """ReturnScale inside the deferred batch path scales each step exactly as SB3's VecNormalize
    (norm_reward=True, the RL baseline's setting) scales per-step rewards: same buffer rewards,
    advantages and returns, over two rollouts and Pendulum's time-limit cuts; a saved and loaded
    scale carries on where it stopped; unscaled episode returns are still counted."""
    from stable_baselines3.common.vec_env import VecNormalize

    from rlhf_control.agent.learned_reward import ReturnScale, relabel_rollouts

    def reward_fn(obs, acts):
        return (3.0 * obs[:, 0] - 0.1 * acts[:, 0] ** 2 + 5.0).astype(np.float32)

    def run(batched: bool):
        base = DummyVecEnv([lambda: gym.make("Pendulum-v1")] * 2)
        if batched:
            env = LearnedReward(base, reward_fn, deferred=True, scale=ReturnScale(2, gamma=0.95))
        else:
            env = VecNormalize(LearnedReward(base, reward_fn), norm_obs=False, norm_reward=True, gamma=0.95)
        env.seed(5)
        model = PPO("MlpPolicy", env, n_steps=256, batch_size=512, n_epochs=1, gamma=0.95, seed=0, device="cpu")
        if batched:
            relabel_rollouts(model, env)
        model.learn(total_timesteps=512)
        first = model.rollout_buffer.rewards.copy()
        model.learn(total_timesteps=512, reset_num_timesteps=False)
        return model.rollout_buffer, first, env

    ref, ref_first, ref_env = run(False)
    got, got_first, got_env = run(True)
    assert np.ptp(got.rewards) > 0.1 and np.abs(got.rewards).max() < 10.0
    np.testing.assert_allclose(got_first, ref_first, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.rewards, ref.rewards, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.advantages, ref.advantages, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got.returns, ref.returns, rtol=1e-4, atol=1e-4)
    # The counted returns are the ensemble's own (unscaled): 200 steps of a reward near 5 + 3 cos.
    learned, _ = got_env.recent_returns()
    assert len(learned) == 4 and min(learned) > 200.0
    # State round trip: a fresh scale loaded from the state scales the next step as the old one does.
    state = got_env.scale.state_dict()
    fresh = ReturnScale(2, gamma=0.95)
    fresh.load_state_dict(state)
    r, d = np.array([1.5, -0.5]), np.array([False, True])
    np.testing.assert_array_equal(fresh(r, d), got_env.scale(r, d))
    with pytest.raises(ValueError, match="state for 2 envs does not fit a run with 3 envs"):
        ReturnScale(3, gamma=0.95).load_state_dict(state)


@pytest.mark.parametrize("deferred", [False, True])
def test_next_obs_rewards_come_from_the_observation_each_action_led_to(deferred):
    fn = RecordingRewardFn()
    env = LearnedReward(counter_venv(), fn, deferred=deferred, next_obs=True)
    rng = np.random.default_rng(0)
    env.reset()
    expected_obs, rewards = [], []
    for _ in range(17):
        acts = rng.integers(0, 3, size=2)
        obs, rews, dones, infos = env.step(acts)
        after = np.array([infos[i]["terminal_observation"] if dones[i] else obs[i] for i in range(2)])
        assert np.all(after[:, 2] >= 1)  # never a reset observation (step 0)
        expected_obs.append((after, acts))
        rewards.append(rews)
    if deferred:
        got = env.flush()
        seen = fn.calls[-1][0].reshape(17, 2, 3)
        for t, (after, acts) in enumerate(expected_obs):
            np.testing.assert_array_equal(seen[t], after)
            np.testing.assert_allclose(got[t], after[:, 2] * 0.5 - acts + after[:, 0])
    else:
        assert len(fn.calls) == 17
        for (seen, _), (after, acts), rews in zip(fn.calls, expected_obs, rewards, strict=True):
            np.testing.assert_array_equal(seen, after)
            np.testing.assert_allclose(rews, after[:, 2] * 0.5 - acts + after[:, 0])
