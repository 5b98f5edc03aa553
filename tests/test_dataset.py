"""PreferenceDataset: FIFO window, seqs, targets, save/load without pickle."""

import numpy as np
import pytest

from rlhf_control.reward import PreferenceDataset
from rlhf_control.types import Label, Segment, SegmentPair, StackedFrames


def seg(rng, t=4, obs=3, true=True, **kw):
    o = rng.normal(size=(t, obs)).astype(np.float32)
    return Segment(o, rng.normal(size=(t, 2)), rng.normal(size=t) if true else None, **kw)


def label(rng, value=1, **kw):
    return Label(SegmentPair(seg(rng, **kw), seg(rng, **kw)), value)


def test_fifo_window_keeps_most_recent_and_seqs_increase():
    rng = np.random.default_rng(0)
    ds = PreferenceDataset(max_size=3)
    labels = [label(rng, v) for v in (1, -1, 0, 1, -1)]
    seqs = [ds.add(lb) for lb in labels[:2]]
    ds.extend(labels[2:])
    assert seqs == [0, 1]
    assert len(ds) == 3
    assert ds.labels == labels[2:]  # oldest dropped first, oldest first
    np.testing.assert_array_equal(ds.seqs, [2, 3, 4])
    np.testing.assert_array_equal(ds.targets(), [0.5, 1.0, 0.0])  # ties are 0.5
    assert ds.next_seq == 5
    unbounded = PreferenceDataset(max_size=None)
    unbounded.extend(labels)
    assert len(unbounded) == 5


def test_save_load_round_trip_with_stacked_frames_and_shared_segments(tmp_path):
    rng = np.random.default_rng(1)

    def frames_seg(uid):
        frames = rng.integers(0, 256, size=(7, 6, 6), dtype=np.uint8)
        return Segment(StackedFrames(frames, 4), rng.integers(0, 5, size=4), rng.normal(size=4),
                       episode_id=uid // 2, start_step=10 * uid, render_ref={"env": uid}, uid=uid)

    a, b, c = frames_seg(0), frames_seg(1), frames_seg(2)
    c = Segment(c.obs, c.acts, None, uid=2, render_ref=object())  # no true reward, unsaveable ref
    ds = PreferenceDataset(max_size=2)
    ds.extend([Label(SegmentPair(a, c), 1), Label(SegmentPair(a, b), 0), Label(SegmentPair(b, c), -1)])
    path = tmp_path / "labels.npz"
    ds.save(path)
    with np.load(path, allow_pickle=False) as z:  # readable without pickle
        assert "obs_frames" in z.files and z["obs_frames"].shape == (3 * 7, 6, 6)  # each segment once
    back = PreferenceDataset.load(path)
    assert len(back) == 2 and back.max_size == 2 and back.next_seq == 3
    np.testing.assert_array_equal(back.seqs, ds.seqs)
    np.testing.assert_array_equal(back.targets(), ds.targets())
    for old, new in zip(ds.labels, back.labels, strict=True):
        for s0, s1 in ((old.pair.first, new.pair.first), (old.pair.second, new.pair.second)):
            assert isinstance(s1.obs, StackedFrames) and s1.obs.k == 4
            np.testing.assert_array_equal(s1.obs.frames, s0.obs.frames)
            np.testing.assert_array_equal(s1.acts, s0.acts)
            assert s1.acts.dtype == s0.acts.dtype and s1.obs.dtype == np.uint8
            assert (s1.episode_id, s1.start_step, s1.uid) == (s0.episode_id, s0.start_step, s0.uid)
            if s0.true_rewards is None:
                assert s1.true_rewards is None and s1.render_ref is None
            else:
                np.testing.assert_array_equal(s1.true_rewards, s0.true_rewards)
                assert s1.render_ref == s0.render_ref
    assert back.labels[0].pair.second is back.labels[1].pair.first  # shared segment stays shared
    assert back.add(back.labels[0]) == 3  # seqs continue across saves


def test_save_load_plain_arrays(tmp_path):
    rng = np.random.default_rng(2)
    ds = PreferenceDataset()
    ds.extend(label(rng, v, true=False) for v in (1, -1))
    ds.save(tmp_path / "d.npz")
    back = PreferenceDataset.load(tmp_path / "d.npz")
    for old, new in zip(ds.labels, back.labels, strict=True):
        np.testing.assert_array_equal(new.pair.second.obs, old.pair.second.obs)
        assert new.pair.second.obs.dtype == np.float32 and new.value == old.value


def test_empty_dataset_round_trips(tmp_path):
    PreferenceDataset(5).save(tmp_path / "e.npz")
    back = PreferenceDataset.load(tmp_path / "e.npz")
    assert len(back) == 0 and back.max_size == 5 and back.targets().shape == (0,)


def test_bad_inputs_raise_one_line(tmp_path):
    rng = np.random.default_rng(3)
    ds = PreferenceDataset()
    ds.add(label(rng))
    (tmp_path / "junk.npz").write_bytes(b"junk")
    cases = [
        (lambda: PreferenceDataset(max_size=0), "max_size=0"),
        (lambda: PreferenceDataset(max_size=2.5), "max_size=2.5"),
        (lambda: ds.add("not a label"), "expected a Label"),
        (lambda: ds.add(label(rng, obs=5)), "differ from the dataset's"),
        (lambda: PreferenceDataset.load(tmp_path / "missing.npz"), "does not exist"),
        (lambda: PreferenceDataset.load(tmp_path / "junk.npz"), "not readable"),
    ]
    for call, fragment in cases:
        with pytest.raises(ValueError) as err:
            call()
        assert fragment in str(err.value) and "\n" not in str(err.value)
    assert len(ds) == 1  # a rejected label is not added


def test_explicit_seqs_must_increase_and_survive_save(tmp_path):
    rng = np.random.default_rng(4)
    ds = PreferenceDataset()
    assert ds.add(label(rng), seq=10) == 10
    assert ds.add(label(rng)) == 11
    with pytest.raises(ValueError, match="seq=5 is not allowed"):
        ds.add(label(rng), seq=5)
    assert ds.add(label(rng), seq=40) == 40
    ds.save(tmp_path / "s.npz")
    back = PreferenceDataset.load(tmp_path / "s.npz")
    np.testing.assert_array_equal(back.seqs, [10, 11, 40])
    assert back.next_seq == 41
