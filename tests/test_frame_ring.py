"""The segment pool's frames in a ring file: held by reference, a reused slot refused, labels kept."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from rlhf_control.recording.frame_ring import FrameRing
from rlhf_control.recording.pool import SegmentPool
from rlhf_control.reward import EnsembleConfig, RewardEnsemble
from rlhf_control.reward.frame_file import FrameFile
from rlhf_control.types import FrameRef, Label, Segment, SegmentPair, StackedFrames, segment_steps

CLIP = (8, 84, 84)  # frames of a 5-step clip of 4-frame stacks


def clip(rng: np.random.Generator, frames: tuple[int, ...] = CLIP) -> Segment:
    t = frames[0] - 3
    return Segment(StackedFrames(rng.integers(0, 256, size=frames, dtype=np.uint8), 4),
                   rng.integers(0, 6, size=t), rng.normal(size=t))


def test_a_pool_with_a_ring_holds_references_to_the_same_frames(tmp_path):
    rng = np.random.default_rng(0)
    clips = [clip(rng) for _ in range(7)]
    ring = FrameRing(tmp_path / "pool.u8", slots=6)
    pool, plain = SegmentPool(4, np.random.default_rng(1), frames=ring), SegmentPool(4, np.random.default_rng(1))
    for c in clips:
        pool.add(c)
        plain.add(c)
    stored = pool.segments()
    assert [s.uid for s in stored] == [s.uid for s in plain.segments()] == [3, 4, 5, 6]
    assert all(isinstance(s.obs.frames, FrameRef) for s in stored)
    assert ring.path.stat().st_size <= 6 * ring.slot_bytes  # the file stays at its slots, however many clips came
    for a, b in zip(segment_steps(stored), segment_steps(plain.segments()), strict=True):
        assert np.array_equal(a, b)
    for s, c in zip(stored, clips[3:], strict=True):
        assert np.array_equal(np.asarray(s.obs.frames), c.obs.frames)
        assert np.array_equal(s.acts, c.acts) and np.array_equal(s.true_rewards, c.true_rewards)
    # A reference is what goes to the reward worker: a few dozen bytes, not the frames.
    assert len(pickle.dumps(stored[0])) < 2_000 < stored[0].obs.nbytes
    assert np.array_equal(np.asarray(pickle.loads(pickle.dumps(stored[0])).obs.frames), clips[3].obs.frames)
    pool.close()


def test_an_evicted_clip_stays_readable_until_its_slot_is_reused_then_is_refused(tmp_path):
    rng = np.random.default_rng(2)
    pool = SegmentPool(2, np.random.default_rng(0), frames=FrameRing(tmp_path / "pool.u8", slots=3))
    first = pool.add(clip(rng))
    pool.add(clip(rng))
    pool.add(clip(rng))  # evicts `first` from the pool; its slot is still its own
    assert first not in pool.segments() and np.asarray(first.obs.frames).shape == CLIP
    pool.add(clip(rng))  # uid 3 takes slot 0
    with pytest.raises(ValueError, match="no longer holds clip 0") as e:
        np.asarray(first.obs.frames)
    assert "\n" not in str(e.value)


def test_a_clip_copied_to_the_label_file_outlives_its_ring_slot(tmp_path):
    # A query's clips are copied to the window's frame file when it is asked: its label is not lost
    # when the pool's ring reuses their slots before the answer arrives.
    rng = np.random.default_rng(3)
    pool = SegmentPool(2, np.random.default_rng(0), frames=FrameRing(tmp_path / "pool.u8", slots=3))
    a, b = pool.add(clip(rng)), pool.add(clip(rng))
    want = (np.asarray(a.obs.frames).copy(), np.asarray(b.obs.frames).copy())
    ff = FrameFile(tmp_path / "frames.u8")
    pair = ff.put_pair(SegmentPair(a, b))
    assert ff.put_pair(pair) is pair  # already there: nothing written twice
    for _ in range(4):
        pool.add(clip(rng))
    with pytest.raises(ValueError):
        np.asarray(a.obs.frames)
    label = ff.put_label(Label(pair, 1))
    assert label.pair is pair and ff.size == 2 * np.prod(CLIP)
    for seg, frames in zip((label.pair.first, label.pair.second), want, strict=True):
        assert seg.obs.frames.path == str(ff.path) and np.array_equal(np.asarray(seg.obs.frames), frames)


def test_other_clips_stay_in_memory_and_a_ring_no_larger_than_the_pool_is_refused(tmp_path):
    rng = np.random.default_rng(4)
    ring = FrameRing(tmp_path / "pool.u8", slots=5)
    pool = SegmentPool(4, np.random.default_rng(0), frames=ring)
    pool.add(clip(rng))
    short = pool.add(clip(rng, (6, 84, 84)))  # another frame count than the slots hold
    floats = pool.add(Segment(StackedFrames(np.zeros(CLIP, dtype=np.float32), 4), np.zeros(5, dtype=np.int64)))
    vectors = pool.add(Segment(np.zeros((5, 3)), np.zeros(5, dtype=np.int64)))
    assert isinstance(short.obs.frames, np.ndarray) and isinstance(floats.obs.frames, np.ndarray)
    assert isinstance(vectors.obs, np.ndarray)
    with pytest.raises(ValueError, match="more slots than the pool's capacity"):
        SegmentPool(5, np.random.default_rng(0), frames=ring)
    with pytest.raises(ValueError, match="slots"):
        FrameRing(tmp_path / "x.u8", slots=0)


def test_a_truncated_ring_file_is_refused_when_read(tmp_path):
    rng = np.random.default_rng(5)
    ring = FrameRing(tmp_path / "pool.u8", slots=3)
    seg = SegmentPool(2, np.random.default_rng(0), frames=ring).add(clip(rng))
    with open(ring.path, "r+b") as f:
        f.truncate(100)
    with pytest.raises(ValueError, match="ends before"):
        np.asarray(seg.obs.frames)
    ring.close()


def test_the_reward_scale_set_on_ring_clips_is_the_one_set_on_the_clips_in_memory(tmp_path):
    rng = np.random.default_rng(6)
    clips = [clip(rng) for _ in range(6)]
    pool = SegmentPool(6, np.random.default_rng(0), frames=FrameRing(tmp_path / "pool.u8", slots=7))
    ring_clips = [pool.add(c) for c in clips]
    scales = []
    for segs in (clips, ring_clips):
        ens = RewardEnsemble(EnsembleConfig.atari(n_members=2, cnn_filters=4, cnn_fc=8), (84, 84, 4), (),
                             n_actions=6, seed=0)
        ens.update_normalization(segs)
        scales.append((ens.norm_mean.clone(), ens.norm_std.clone()))
    assert all(float(s) > 0 for s in scales[0][1])
    assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(scales[0], scales[1], strict=True))


def test_closing_the_ring_deletes_its_file(tmp_path):
    ring = FrameRing(tmp_path / "pool_frames.u8", 4)
    SegmentPool(2, np.random.default_rng(0), frames=ring).add(clip(np.random.default_rng(0)))
    assert (tmp_path / "pool_frames.u8").stat().st_size > 0
    ring.close()
    assert not (tmp_path / "pool_frames.u8").exists()
