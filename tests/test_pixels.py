"""Frame stacks built where the reward CNN runs (reward/pixels.py) are exactly the host's stacks.

On a CPU device the host path is the default; ``on_device=True`` forces the device path here, so
these tests check on a CPU what a GPU run uses.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlhf_control.reward import (
    EnsembleConfig,
    PreferenceDataset,
    RewardEnsemble,
    RewardTrainer,
    RewardTrainerConfig,
)
from rlhf_control.reward import training as training_mod
from rlhf_control.reward.fast_cnn import float32_convolutions
from rlhf_control.reward.pixels import encode_segments, expand_stacks, segment_frames
from rlhf_control.types import Label, Segment, SegmentPair, StackedFrames, segment_steps


def clip(rng: np.random.Generator, t: int, k: int = 4, size: int = 84) -> Segment:
    frames = rng.integers(0, 256, size=(t + k - 1, size, size), dtype=np.uint8)
    return Segment(StackedFrames(frames, k), rng.integers(0, 6, size=t), true_rewards=rng.normal(size=t))


def atari_ensemble(k: int = 4, size: int = 84) -> RewardEnsemble:
    return RewardEnsemble(EnsembleConfig.atari(n_members=2), (size, size, k), (), n_actions=6, seed=3)


@pytest.mark.parametrize("k,t", [(4, 25), (2, 7), (1, 3)])
def test_stacks_built_from_frames_equal_the_hosts_expansion(k, t):
    rng = np.random.default_rng(k * 10 + t)
    segs = [clip(rng, t, k) for _ in range(5)]
    host, _ = segment_steps(segs)
    frames, got_k = segment_frames(segs)
    assert got_k == k and frames.shape == (5, t + k - 1, 84, 84)
    built = expand_stacks(torch.as_tensor(frames), k)
    assert built.dtype == torch.uint8 and tuple(built.shape) == host.shape
    assert torch.equal(built, torch.from_numpy(host))
    # Stack j of a clip is its frames j..j+k-1, newest last.
    assert torch.equal(built[t + 2, :, :, -1], torch.from_numpy(np.asarray(segs[1].obs.frames[2 + k - 1])))


def test_encode_segments_on_the_device_path_gives_encodes_tensor_and_falls_back_when_it_cannot():
    rng = np.random.default_rng(0)
    ens = atari_ensemble()
    segs = [clip(rng, 25) for _ in range(3)]
    direct = ens.encode(*segment_steps(segs))
    assert torch.equal(encode_segments(ens, segs, on_device=True), direct)
    assert torch.equal(encode_segments(ens, segs), direct)  # CPU default: the host path
    mixed = [clip(rng, 25), clip(rng, 10)]  # two lengths: no common frame array, the host path
    assert segment_frames(mixed) is None
    assert torch.equal(encode_segments(ens, mixed, on_device=True), ens.encode(*segment_steps(mixed)))
    plain = [Segment(rng.integers(0, 256, size=(4, 84, 84, 4), dtype=np.uint8), rng.integers(0, 6, size=4))]
    assert segment_frames(plain) is None


def test_training_and_scoring_learn_the_same_through_the_device_path(monkeypatch):
    rng = np.random.default_rng(1)
    ds = PreferenceDataset(max_size=None)
    for _ in range(12):
        a, b = clip(rng, 6, size=48), clip(rng, 6, size=48)
        ds.add(Label(SegmentPair(a, b), 1 if a.true_return > b.true_return else -1))
    clips = [s for lb in ds.labels for s in (lb.pair.first, lb.pair.second)]

    def learn() -> tuple[np.ndarray, list[float]]:
        ens = atari_ensemble(size=48)
        rep = RewardTrainer(ens, RewardTrainerConfig(epochs=2, batch_size=4, seed=0)).train(ds)
        return ens.member_segment_returns(clips), list(rep.train_loss)

    host = learn()
    calls = []
    real = training_mod.encode_segments

    def forced(ens, segs, on_device=None):
        calls.append(len(segs))
        return real(ens, segs, on_device=True)

    monkeypatch.setattr(training_mod, "encode_segments", forced)
    monkeypatch.setattr("rlhf_control.reward.ensemble.encode_segments", forced)
    device = learn()
    assert calls, "training did not go through encode_segments"
    np.testing.assert_array_equal(device[0], host[0])
    assert device[1] == host[1]


def test_cuda_ensembles_turn_tf32_convolutions_off(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    float32_convolutions(torch.device("cpu"))
    assert torch.backends.cudnn.allow_tf32 is True
    float32_convolutions(torch.device("cuda"))
    assert torch.backends.cudnn.allow_tf32 is False
