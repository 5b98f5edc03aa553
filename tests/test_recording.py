"""TrajectoryRecorder and SegmentPool on tiny deterministic envs whose observations encode
(env tag, episode index, step index), so every recorded value can be checked against its source."""

from __future__ import annotations

from collections import Counter

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from stable_baselines3.common.vec_env import DummyVecEnv, VecFrameStack

from rlhf_control.recording.pool import SegmentPool
from rlhf_control.recording.recorder import TrajectoryRecorder
from rlhf_control.types import Segment, StackedFrames


def env_reward(tag: int, t: int, a: int) -> float:
    return float(100 * tag + 10 * t + a)


class CounterEnv(gym.Env):
    """obs = [tag, episode, step]; reward depends on the pre-step step index and the action.

    Episode e lasts ``lengths[e % len(lengths)]`` steps; ends by termination or truncation.
    With ``oracle=True`` it reports ``info["oracle_reward"] = -reward``.
    """

    def __init__(self, tag: int, lengths: list[int], oracle: bool = False, truncate: bool = False) -> None:
        self.observation_space = spaces.Box(-np.inf, np.inf, (3,), np.float32)
        self.action_space = spaces.Discrete(3)
        self.tag, self.lengths, self.oracle, self.truncate = tag, lengths, oracle, truncate
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
        info = {"oracle_reward": -r} if self.oracle else {}
        self.t += 1
        end = self.t >= self.lengths[self.ep % len(self.lengths)]
        return self._obs(), r, end and not self.truncate, end and self.truncate, info


class ImageEnv(gym.Env):
    """(4, 5, 1) uint8 frames: pixel (0,0)=tag, (0,1)=episode, (0,2)=step+1, the rest a pattern."""

    def __init__(self, tag: int, lengths: list[int], shape: tuple[int, int] = (4, 5)) -> None:
        self.observation_space = spaces.Box(0, 255, (*shape, 1), np.uint8)
        self.action_space = spaces.Discrete(2)
        self.tag, self.lengths, self.shape = tag, lengths, shape
        self.ep, self.t = -1, 0

    def _obs(self) -> np.ndarray:
        n = self.shape[0] * self.shape[1]
        frame = (np.arange(n) * 3 + self.t * 7 + self.ep * 13 + self.tag * 29 + 1) % 251 + 1
        frame = frame.reshape(self.shape)
        frame[0, :3] = (self.tag, self.ep, self.t + 1)
        return frame.astype(np.uint8)[..., None]

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.ep += 1
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        end = self.t >= self.lengths[self.ep % len(self.lengths)]
        return self._obs(), 1.0, end, False, {}


def make_counter_venv() -> DummyVecEnv:
    return DummyVecEnv(
        [lambda: CounterEnv(0, [7, 12, 5]), lambda: CounterEnv(1, [9, 6], oracle=True, truncate=True)]
    )


def run_random(venv, n_steps: int, n_actions: int, seed: int = 0):
    """Step ``venv`` with random actions; return per (tag, ep, t) the obs seen and the action taken."""
    rng = np.random.default_rng(seed)
    obs = venv.reset()
    log = []
    for _ in range(n_steps):
        acts = rng.integers(0, n_actions, size=venv.num_envs)
        log.append((obs.copy(), acts.copy()))
        obs, rews, dones, infos = venv.step(acts)
    return log, obs


SHIFT = np.array([0.0, 0.0, 1000.0], dtype=np.float32)


@pytest.mark.parametrize("use_obs_fn", [False, True])
def test_segments_match_env_and_stay_within_episodes(use_obs_fn):
    pool = SegmentPool(1000, np.random.default_rng(0))
    obs_fn = (lambda o: o + SHIFT) if use_obs_fn else None
    rec = TrajectoryRecorder(make_counter_venv(), clip_length=3, pool=pool, obs_fn=obs_fn)
    log, last_obs = run_random(rec, 80, 3)

    acted = {}  # (tag, ep, t) -> action
    for obs, acts in log:
        for i in range(2):
            tag, ep, t = (int(v) for v in obs[i])
            acted[(tag, ep, t)] = int(acts[i])
    lengths = {0: [7, 12, 5], 1: [9, 6]}

    ids = {}
    assert len(pool) > 10
    for seg in pool.segments():
        raw = seg.obs - SHIFT if use_obs_fn else seg.obs
        assert seg.obs.shape == (3, 3) and seg.acts.shape == (3,) and seg.acts.dtype.kind == "i"
        tag, ep = int(raw[0, 0]), int(raw[0, 1])
        assert np.all(raw[:, 0] == tag) and np.all(raw[:, 1] == ep), "segment spans two episodes"
        np.testing.assert_array_equal(raw[:, 2], seg.start_step + np.arange(3))
        assert seg.start_step % 3 == 0
        ep_len = lengths[tag][ep % len(lengths[tag])]
        assert seg.start_step + 3 <= ep_len  # never reaches the terminal obs / next episode
        acts = [acted[(tag, ep, seg.start_step + j)] for j in range(3)]
        np.testing.assert_array_equal(seg.acts, acts)
        sign = -1.0 if tag == 1 else 1.0  # env 1 reports oracle_reward = -reward
        expected = [sign * env_reward(tag, seg.start_step + j, acts[j]) for j in range(3)]
        np.testing.assert_array_equal(seg.true_rewards, expected)
        assert ids.setdefault(seg.episode_id, (tag, ep)) == (tag, ep), "episode_id shared by two episodes"
    assert len(set(ids.values())) == len(ids)

    # Every full clip of every episode was recorded, partial remainders dropped.
    steps_done = Counter((tag, ep) for (tag, ep, t) in acted)
    expected_count = sum(n // 3 for n in steps_done.values())
    assert len(pool) == rec.n_segments == expected_count
    assert rec.n_steps == 160
    finished = sum(1 for (tag, ep), n in steps_done.items() if n == lengths[tag][ep % len(lengths[tag])])
    assert rec.n_episodes == finished
    uids = [s.uid for s in pool.segments()]
    assert uids == list(range(len(uids)))


def test_passes_env_outputs_through_and_auto_reset():
    rec = TrajectoryRecorder(
        make_counter_venv(), clip_length=4, pool=SegmentPool(100, np.random.default_rng(0))
    )
    obs = rec.reset()
    for _ in range(7):
        obs, rews, dones, infos = rec.step(np.array([2, 1]))
    # env 0 ended after 7 steps: the returned obs is the next episode's first, the last one is in info.
    assert dones[0] and not dones[1]
    np.testing.assert_array_equal(obs[0], [0, 1, 0])
    np.testing.assert_array_equal(infos[0]["terminal_observation"], [0, 0, 7])
    assert rews[0] == env_reward(0, 6, 2) and rews[1] == env_reward(1, 6, 1)  # env reward, not oracle's
    segs = rec.pool.segments()
    assert [(int(s.obs[0, 0]), s.start_step) for s in segs] == [(0, 0), (1, 0)]
    # Steps 4..6 of env 0's first episode are dropped; its next clip is from the new episode.
    for _ in range(4):
        rec.step(np.array([0, 0]))
    new = [s for s in rec.pool.segments() if s.obs[0, 0] == 0][-1]
    assert new.start_step == 0 and new.obs[0, 1] == 1 and new.episode_id != segs[0].episode_id


def test_reset_drops_partial_segments_and_starts_new_episode_ids():
    rec = TrajectoryRecorder(
        make_counter_venv(), clip_length=3, pool=SegmentPool(100, np.random.default_rng(0))
    )
    rec.reset()
    rec.step(np.array([0, 0]))
    rec.step(np.array([0, 0]))
    rec.reset()
    rec.step(np.array([1, 1]))
    assert len(rec.pool) == 0
    rec.step(np.array([1, 1]))
    rec.step(np.array([1, 1]))
    segs = rec.pool.segments()
    assert len(segs) == 2 and all(s.start_step == 0 for s in segs)
    assert sorted(s.episode_id for s in segs) == [2, 3]
    np.testing.assert_array_equal(segs[0].acts, [1, 1, 1])


def test_render_state_fn_records_per_step_states():
    def states(venv):
        return list(zip(venv.get_attr("ep"), venv.get_attr("t"), strict=True))

    rec = TrajectoryRecorder(
        make_counter_venv(), 3, SegmentPool(100, np.random.default_rng(0)), render_state_fn=states
    )
    run_random(rec, 30, 3)
    assert len(rec.pool) > 5
    for seg in rec.pool.segments():
        expected = [(int(seg.obs[j, 1]), int(seg.obs[j, 2])) for j in range(3)]
        assert seg.render_ref == expected
    plain = TrajectoryRecorder(make_counter_venv(), 3, SegmentPool(100, np.random.default_rng(0)))
    run_random(plain, 10, 3)
    assert all(s.render_ref is None for s in plain.pool.segments())


def mask_row3(o: np.ndarray) -> np.ndarray:
    out = o.copy()
    out[:, 3, :, :] = 0  # e.g. blanking the score: the same for every frame of the stack
    return out


@pytest.mark.parametrize("obs_fn", [None, mask_row3])
def test_frame_stacked_segments_reproduce_stacks(obs_fn):
    k, clip = 4, 4
    venv = VecFrameStack(DummyVecEnv([lambda: ImageEnv(0, [6, 9]), lambda: ImageEnv(1, [11])]), n_stack=k)
    rec = TrajectoryRecorder(
        venv, clip, SegmentPool(1000, np.random.default_rng(0)), obs_fn=obs_fn, frame_stack=k
    )
    log, _ = run_random(rec, 60, 2)
    seen = {}  # (tag, ep, t) -> stack the agent saw (before obs_fn)
    for obs, _acts in log:
        for i in range(2):
            tag, ep, t1 = (int(v) for v in obs[i, 0, :3, -1])
            seen[(tag, ep, t1 - 1)] = obs[i].copy()

    segs = rec.pool.segments()
    assert len(segs) > 8
    starts = set()
    for seg in segs:
        assert isinstance(seg.obs, StackedFrames) and seg.obs.frames.shape == (clip + k - 1, 4, 5)
        arr = np.asarray(seg.obs)
        assert arr.shape == (clip, 4, 5, k) and arr.dtype == np.uint8
        tag, ep = int(arr[0, 0, 0, -1]), int(arr[0, 0, 1, -1])
        expected = np.stack([seen[(tag, ep, seg.start_step + j)] for j in range(clip)])
        if obs_fn is not None:
            expected = obs_fn(expected)
            assert not arr[:, 3].any()
        np.testing.assert_array_equal(arr, expected)
        if seg.start_step == 0:
            assert not arr[0, ..., : k - 1].any(), "episode start must keep VecFrameStack's zero padding"
        else:
            # A later clip starts with the episode's previous frames (pixel (0, 2) holds step + 1).
            np.testing.assert_array_equal(arr[0, 0, 2, :], seg.start_step + 1 - np.arange(k)[::-1])
        starts.add(seg.start_step)
    assert {0, 4} <= starts


def test_atari_sized_segment_stores_each_frame_once():
    k, clip = 4, 25
    venv = VecFrameStack(DummyVecEnv([lambda: ImageEnv(0, [1000], shape=(84, 84))]), n_stack=k)
    rec = TrajectoryRecorder(venv, clip, SegmentPool(10, np.random.default_rng(0)), frame_stack=k)
    run_random(rec, 30, 2)
    (seg,) = rec.pool.segments()
    assert seg.obs.nbytes == (25 + 3) * 84 * 84
    assert seg.obs.frames.base is None  # owns exactly its frames, not a view into a larger buffer
    per_segment = seg.obs.nbytes + seg.acts.nbytes + seg.true_rewards.nbytes
    assert 6000 * per_segment < 1.5e9


def test_recorder_rejects_bad_arguments():
    pool = SegmentPool(10, np.random.default_rng(0))
    with pytest.raises(ValueError, match="clip_length"):
        TrajectoryRecorder(make_counter_venv(), 0, pool)
    with pytest.raises(ValueError, match="frame_stack"):
        TrajectoryRecorder(make_counter_venv(), 3, pool, frame_stack=4)
    rec = TrajectoryRecorder(make_counter_venv(), 3, pool, obs_fn=lambda o: o[:, :2])
    with pytest.raises(ValueError, match="obs_fn"):
        rec.reset()


def test_recorder_state_dict_keeps_episode_ids_unique_across_resume():
    rec = TrajectoryRecorder(make_counter_venv(), 3, SegmentPool(100, np.random.default_rng(0)))
    run_random(rec, 20, 3)
    state = rec.state_dict()
    first_ids = {s.episode_id for s in rec.pool.segments()}
    resumed = TrajectoryRecorder(make_counter_venv(), 3, SegmentPool(100, np.random.default_rng(0)))
    resumed.reset()
    resumed.load_state_dict(state)
    run_random(resumed, 20, 3)  # run_random resets again: fresh ids
    assert resumed.n_steps == state["n_steps"] + 40
    assert not first_ids & {s.episode_id for s in resumed.pool.segments()}
    with pytest.raises(ValueError, match="next_episode_id"):
        resumed.load_state_dict({**state, "next_episode_id": -1})


def make_segment(i: int) -> Segment:
    return Segment(obs=np.full((2, 1), i, dtype=np.float32), acts=np.zeros(2, dtype=np.int64), uid=99)


def test_pool_evicts_oldest_and_assigns_unique_uids():
    pool = SegmentPool(3, np.random.default_rng(0))
    stored = [pool.add(make_segment(i)) for i in range(5)]
    assert [s.uid for s in stored] == [0, 1, 2, 3, 4] and pool.next_uid == 5
    assert len(pool) == 3
    assert [int(s.obs[0, 0]) for s in pool.segments()] == [2, 3, 4]
    assert [s.uid for s in pool.recent(2)] == [3, 4]
    assert pool.recent(0) == [] and len(pool.recent(10)) == 3
    sample = pool.sample(2)
    assert len({s.uid for s in sample}) == 2 and {s.uid for s in sample} <= {2, 3, 4}
    assert sorted(s.uid for s in pool.sample(10)) == [2, 3, 4]
    again = SegmentPool(3, np.random.default_rng(0))
    for i in range(5):
        again.add(make_segment(i))
    assert [s.uid for s in again.sample(2)] == [s.uid for s in sample]  # deterministic for a seed
    pool.clear()
    assert len(pool) == 0 and pool.add(make_segment(9)).uid == 5


def test_pool_state_dict_continues_uids():
    pool = SegmentPool(2, np.random.default_rng(0))
    for i in range(4):
        pool.add(make_segment(i))
    fresh = SegmentPool(2, np.random.default_rng(1))
    fresh.load_state_dict(pool.state_dict())
    assert fresh.add(make_segment(0)).uid == 4
    with pytest.raises(ValueError, match="next_uid"):
        fresh.load_state_dict({"next_uid": 2})  # would reuse uid 4's neighbours
    with pytest.raises(ValueError, match="capacity"):
        SegmentPool(0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="n=-1"):
        pool.sample(-1)


def test_clips_carry_the_agent_step_they_began_at():
    """Counted over all envs from step_origin (the agent's step 0); -1 while step_origin is None."""
    venv = DummyVecEnv([lambda: gym.make("Pendulum-v1")] * 2)
    pool = SegmentPool(capacity=100, rng=np.random.default_rng(0))
    rec = TrajectoryRecorder(venv, clip_length=5, pool=pool)
    rec.reset()
    rec.step_origin = None  # pretraining
    for _ in range(5):
        rec.step(np.zeros((2, 1), dtype=np.float32))
    assert [s.agent_step for s in pool.segments()] == [-1, -1]
    rec.step_origin = rec.n_steps  # the agent starts
    for _ in range(10):
        rec.step(np.zeros((2, 1), dtype=np.float32))
    # the agent's clips began at its steps 0 and 10 (5 vector steps of 2 envs each)
    assert [s.agent_step for s in pool.segments()[2:]] == [0, 0, 10, 10]
    state = rec.state_dict()
    other = TrajectoryRecorder(DummyVecEnv([lambda: gym.make("Pendulum-v1")] * 2), clip_length=5,
                               pool=SegmentPool(10, rng=np.random.default_rng(0)))
    other.load_state_dict(state)
    assert other.step_origin == rec.step_origin == 10


@pytest.mark.parametrize("use_obs_fn", [False, True])
def test_next_obs_records_the_observation_each_action_led_to_and_the_terminal_one(use_obs_fn):
    pool = SegmentPool(1000, np.random.default_rng(0))
    obs_fn = (lambda o: o + SHIFT) if use_obs_fn else None
    rec = TrajectoryRecorder(make_counter_venv(), clip_length=3, pool=pool, obs_fn=obs_fn, next_obs=True)
    log, _ = run_random(rec, 80, 3)
    acted = {(int(o[i, 0]), int(o[i, 1]), int(o[i, 2])): int(a[i]) for o, a in log for i in range(2)}
    lengths = {0: [7, 12, 5], 1: [9, 6]}
    ends = 0
    for seg in pool.segments():
        raw = seg.obs - SHIFT if use_obs_fn else seg.obs
        tag, ep = int(raw[0, 0]), int(raw[0, 1])
        assert np.all(raw[:, :2] == [tag, ep]), "a clip holds another episode's observation"
        np.testing.assert_array_equal(raw[:, 2], seg.start_step + 1 + np.arange(3))  # one step later
        np.testing.assert_array_equal(seg.acts, [acted[(tag, ep, seg.start_step + j)] for j in range(3)])
        ends += seg.start_step + 3 == lengths[tag][ep % len(lengths[tag])]
    assert ends > 0  # clips that end with their episode hold its terminal observation, not the reset one
    with pytest.raises(ValueError, match="next_obs=True is not supported with frame_stack"):
        TrajectoryRecorder(DummyVecEnv([lambda: ImageEnv(0, [5])]), 3, pool, frame_stack=1, next_obs=True)
