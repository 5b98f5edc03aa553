"""Clip rendering: states recorded per step redraw the frames seen live; mp4s decode as H.264."""

import json

import gymnasium as gym
import imageio.v2 as iio
import numpy as np
import pytest
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

from rlhf_control.recording.render_states import capture_state, render_state_fn, restore_state
from rlhf_control.types import Segment, SegmentPair
from rlhf_control.video.mp4 import side_by_side, write_mp4
from rlhf_control.video.render import SegmentRenderer


def _rollout(env_id, steps, warmup=0, live=None, n_envs=1, seed=0, **make_kwargs):
    """Run random actions; per step t (before acting) keep env 0's render state, obs and live frame.

    The state is read where TrajectoryRecorder reads it: right after reset / step_wait."""
    if env_id.startswith("ALE/"):
        import ale_py

        gym.register_envs(ale_py)
    venv = DummyVecEnv([lambda: gym.make(env_id, **make_kwargs)] * n_envs)
    venv.seed(seed)
    venv.action_space.seed(seed)
    fn = render_state_fn(env_id)
    obs = venv.reset()
    states, observations, frames = [], [], []
    for t in range(warmup + steps):
        st = fn(venv)
        assert len(st) == n_envs and all(isinstance(s, str) for s in st)
        if t >= warmup:
            states.append(st[0])
            observations.append(obs[0].copy())
            if live is not None:
                frames.append(live(venv.envs[0]))
        obs, _, _, _ = venv.step(np.array([venv.action_space.sample() for _ in range(n_envs)]))
    venv.close()
    # The store keeps render_ref as JSON: use what comes back from it.
    ref = json.loads(json.dumps(states))
    seg = Segment(obs=np.stack(observations), acts=np.zeros((steps, 1)), render_ref=ref)
    return seg, np.stack(observations), (np.stack(frames) if frames else None)


def _differs_step_to_step(frames):
    return np.mean([not np.array_equal(frames[i], frames[i + 1]) for i in range(len(frames) - 1)])


@pytest.fixture(scope="module")
def pendulum():
    seg, obs, live = _rollout("Pendulum-v1", 12, render_mode="rgb_array", live=lambda e: e.render())
    return seg, obs, live


def test_pendulum_frames_from_states_equal_live_frames(pendulum):
    seg, obs, live = pendulum
    assert max(len(s) for s in seg.render_ref) < 64  # theta, thetadot, last torque
    renderer = SegmentRenderer("Pendulum-v1")
    frames = renderer.frames(seg)
    renderer.close()
    assert frames.shape == (12, 500, 500, 3) and frames.dtype == np.uint8
    assert np.mean(frames != live) < 1e-3
    assert _differs_step_to_step(frames) == 1.0
    # Step t's state is the one the obs of step t came from.
    env = gym.make("Pendulum-v1")
    env.reset(seed=1)
    for t in (0, 5, 11):
        restore_state(env, seg.render_ref[t])
        np.testing.assert_allclose(env.unwrapped._get_obs(), obs[t], rtol=1e-6, atol=1e-6)


def test_mujoco_frames_from_states_equal_live_frames():
    renderer = SegmentRenderer("HalfCheetah-v5")
    seg, obs, live = _rollout("HalfCheetah-v5", 10, warmup=5, live=renderer.render_env)
    frames = renderer.frames(seg)
    assert frames.shape == (10, 240, 320, 3) and renderer.fps == pytest.approx(20.0)
    assert np.abs(frames.astype(np.int16) - live).mean() < 0.5
    assert _differs_step_to_step(frames) == 1.0
    assert frames.std() > 20  # a scene, not a blank image
    env = gym.make("HalfCheetah-v5")
    env.reset(seed=3)
    for t in (0, 9):
        restore_state(env, seg.render_ref[t])
        np.testing.assert_allclose(env.unwrapped._get_obs(), obs[t], rtol=1e-6, atol=1e-8)
    # A clip of a second rollout looks different.
    other, _, _ = _rollout("HalfCheetah-v5", 10, warmup=5, seed=7)
    assert np.abs(renderer.frames(other).astype(np.int16) - frames).mean() > 1.0
    renderer.close()


def test_atari_frames_from_states_equal_live_colour_frames():
    seg, _, live = _rollout("ALE/Pong-v5", 15, warmup=60, render_mode="rgb_array", live=lambda e: e.render())
    renderer = SegmentRenderer("ALE/Pong-v5")
    frames = renderer.frames(seg)
    assert frames.shape == (15, 420, 320, 3) and renderer.fps == 15.0
    np.testing.assert_array_equal(frames, live.repeat(2, axis=1).repeat(2, axis=2))
    assert (frames[..., 0] != frames[..., 1]).any()  # colour, not grey
    assert _differs_step_to_step(frames) >= 0.5
    assert max(len(s) for s in seg.render_ref) < 2000  # a compressed screen, not raw pixels (33,600 bytes)


def test_mp4_decodes_as_h264_with_frame_count_size_and_fps(tmp_path, pendulum):
    seg, _, _ = pendulum
    renderer = SegmentRenderer("Pendulum-v1", fps=20, size=(250, 250))
    path = renderer.render_clip(seg, tmp_path / "clip.mp4")
    reader = iio.get_reader(path)
    meta = reader.get_meta_data()
    decoded = [f for f in reader]
    reader.close()
    assert len(decoded) == 12 and decoded[0].shape == (250, 250, 3)
    assert meta["codec"] == "h264" and meta["pix_fmt"].startswith("yuv420p") and meta["fps"] == pytest.approx(20)
    # Odd sizes are padded to even (yuv420p), and content survives encoding.
    rng = np.random.default_rng(0)
    frames = np.repeat(rng.integers(0, 256, (5, 1, 1, 3), dtype=np.uint8), 33, axis=1).repeat(21, axis=2)
    reader = iio.get_reader(write_mp4(frames, tmp_path / "odd.mp4", fps=12.5))
    decoded = np.stack([f for f in reader.iter_data()])
    assert reader.get_meta_data()["fps"] == pytest.approx(12.5)
    reader.close()
    assert decoded.shape == (5, 34, 22, 3)
    assert np.abs(decoded[:, :33, :21].astype(int) - frames).mean() < 8
    assert not list(tmp_path.glob(".*.tmp"))  # no temp files left behind


def test_render_pair_writes_both_clips_and_side_by_side(tmp_path, pendulum):
    seg, _, _ = pendulum
    rev = Segment(obs=seg.obs[::-1], acts=seg.acts, render_ref=seg.render_ref[::-1])
    renderer = SegmentRenderer("Pendulum-v1", fps=20, size=(200, 200), gap=8)
    # By default only the two clips the page plays (the side-by-side one cost a third of the time).
    assert renderer.render_pair(SegmentPair(seg, rev), tmp_path / "only", query_id=42)[2] is None
    assert sorted(p.name for p in (tmp_path / "only").iterdir()) == ["query_42_first.mp4", "query_42_second.mp4"]
    first, second, both = renderer.render_pair(SegmentPair(seg, rev), tmp_path / "clips", query_id=42,
                                               side_by_side_clip=True)
    assert [p.name for p in (first, second, both)] == ["query_42_first.mp4", "query_42_second.mp4",
                                                      "query_42_pair.mp4"]
    clips = []
    for p in (first, second, both):
        reader = iio.get_reader(p)
        clips.append(np.stack([f for f in reader.iter_data()]).astype(int))
        reader.close()
    assert all(len(c) == 12 for c in clips)
    assert clips[2].shape[2] == clips[0].shape[2] + 8 + clips[1].shape[2] == 408
    assert np.abs(clips[2][:, :, :200] - clips[0]).mean() < 6
    assert np.abs(clips[2][:, :, 208:] - clips[1]).mean() < 6
    assert np.abs(clips[2][:, :, :200] - clips[1]).mean() > np.abs(clips[2][:, :, :200] - clips[0]).mean()
    assert side_by_side(np.zeros((2, 4, 6, 3), np.uint8), np.zeros((2, 6, 4, 3), np.uint8), gap=2).shape == (2, 6, 12, 3)


def test_subproc_vec_env_states_equal_in_process_states(pendulum):
    acts = np.random.default_rng(0).uniform(-2, 2, (4, 2, 1)).astype(np.float32)
    out = []
    for cls, kw in ((DummyVecEnv, {}), (SubprocVecEnv, {"start_method": "fork"})):
        venv = cls([lambda: gym.make("Pendulum-v1")] * 2, **kw)
        venv.seed(5)
        venv.reset()
        fn = render_state_fn("Pendulum-v1")
        states = [fn(venv)]
        for a in acts:
            venv.step(a)
            states.append(fn(venv))
        venv.close()
        out.append(states)
    assert out[0] == out[1]
    assert out[0][0][0] != out[0][1][0]


def test_clear_errors():
    seg = Segment(obs=np.zeros((3, 1)), acts=np.zeros((3, 1)))
    with pytest.raises(ValueError, match="no render_ref"):
        SegmentRenderer("Pendulum-v1").frames(seg)
    env = gym.make("Pendulum-v1")
    env.reset(seed=0)
    cc = capture_state(env)
    with pytest.raises(ValueError, match="not a 'ale' state"):
        SegmentRenderer("ALE/Pong-v5").frames(Segment(obs=np.zeros((1, 1)), acts=np.zeros((1, 1)), render_ref=[cc]))
    with pytest.raises(ValueError, match="T=3 states"):
        SegmentRenderer("Pendulum-v1").frames(Segment(obs=np.zeros((3, 1)), acts=np.zeros((3, 1)), render_ref=[cc]))
    with pytest.raises(ValueError, match="unknown Gymnasium env id"):
        render_state_fn("NoSuchEnv-v0")
    with pytest.raises(ValueError, match="size="):
        SegmentRenderer("Pendulum-v1", size=(320,))
    with pytest.raises(ValueError, match="frames must be"):
        write_mp4(np.zeros((2, 8, 8), np.uint8), "/tmp/never.mp4", fps=10)
