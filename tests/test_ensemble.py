"""RewardEnsemble: per-member normalisation, batched segment returns, save/load, bad inputs."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from rlhf_control.reward import EnsembleConfig, PreferenceDataset, RewardEnsemble, RewardTrainer
from rlhf_control.types import Label, Segment, SegmentPair, StackedFrames


def mlp_segments(rng, n, t=6, obs=4, act=2):
    return [Segment(rng.normal(size=(t, obs)).astype(np.float32), rng.normal(size=(t, act))) for _ in range(n)]


def frame_segments(rng, n, t=5, hw=12, k=2, n_actions=3):
    return [
        Segment(StackedFrames(rng.integers(0, 256, size=(t + k - 1, hw, hw), dtype=np.uint8), k),
                rng.integers(0, n_actions, size=t))
        for _ in range(n)
    ]


TINY_CNN = EnsembleConfig.atari(cnn_filters=4, cnn_fc=8, cnn_kernels=(3, 3), cnn_strides=(2, 1))


def test_members_differ_and_seed_fixes_weights():
    a = RewardEnsemble(EnsembleConfig(), (4,), (2,), seed=3)
    b = RewardEnsemble(EnsembleConfig(), (4,), (2,), seed=3)
    c = RewardEnsemble(EnsembleConfig(), (4,), (2,), seed=4)
    obs, acts = np.ones((2, 4)), np.ones((2, 2))
    ra = a.member_rewards(obs, acts)
    assert ra.shape == (3, 2) and ra.dtype == np.float32
    assert len(np.unique(ra[:, 0])) == 3  # members are initialised differently
    np.testing.assert_array_equal(ra, b.member_rewards(obs, acts))
    assert not np.allclose(ra, c.member_rewards(obs, acts))
    assert a.n_members == 3 and a.device == torch.device("cpu")


def test_normalisation_gives_zero_mean_and_target_std_per_member():
    rng = np.random.default_rng(0)
    segs = mlp_segments(rng, 20)
    ens = RewardEnsemble(EnsembleConfig(target_std=0.05), (4,), (2,))
    ens.update_normalization(segs)
    obs = np.concatenate([s.obs for s in segs])
    acts = np.concatenate([s.acts for s in segs])
    norm = ens.member_rewards(obs, acts, normalized=True).astype(np.float64)
    np.testing.assert_allclose(norm.mean(axis=1), 0.0, atol=1e-6)
    np.testing.assert_allclose(norm.std(axis=1), 0.05, rtol=1e-4)
    raw = ens.member_rewards(obs, acts)
    assert not np.allclose(raw.std(axis=1), 0.05)
    # RL reward = mean of the normalised members.
    reward = ens.reward(obs, acts)
    assert reward.shape == (len(obs),) and reward.dtype == np.float32
    np.testing.assert_allclose(reward, norm.mean(axis=0), atol=1e-6)


def test_segment_returns_are_sums_of_step_rewards():
    rng = np.random.default_rng(1)
    segs = mlp_segments(rng, 3, t=6) + mlp_segments(rng, 2, t=3)  # lengths may differ
    ens = RewardEnsemble(EnsembleConfig(), (4,), (2,))
    ens.update_normalization(segs[:2])
    for normalized in (False, True):
        got = ens.member_segment_returns(segs, normalized=normalized)
        want = np.stack([ens.member_rewards(s.obs, s.acts, normalized).sum(axis=1) for s in segs], axis=1)
        assert got.shape == (3, 5)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_cnn_on_stacked_frames_with_discrete_actions():
    rng = np.random.default_rng(2)
    segs = frame_segments(rng, 4)
    ens = RewardEnsemble(TINY_CNN, (12, 12, 2), (), n_actions=3)
    returns = ens.member_segment_returns(segs)
    direct = np.stack([ens.member_rewards(np.asarray(s.obs), s.acts).sum(axis=1) for s in segs], axis=1)
    np.testing.assert_allclose(returns, direct, rtol=1e-5, atol=1e-5)
    # Observation only by default (paper's Atari predictor): actions do not change the reward.
    obs = np.asarray(segs[0].obs)
    np.testing.assert_array_equal(ens.reward(obs, np.zeros(5, int)), ens.reward(obs, np.full(5, 2)))
    with_acts = RewardEnsemble(replace(TINY_CNN, use_actions=True), (12, 12, 2), (), n_actions=3)
    assert not np.allclose(with_acts.reward(obs, np.zeros(5, int)), with_acts.reward(obs, np.full(5, 2)))


def test_paper_cnn_forward_on_84x84x4_uint8():
    ens = RewardEnsemble(EnsembleConfig.atari(n_members=1), (84, 84, 4), (), n_actions=6)
    obs = np.random.default_rng(0).integers(0, 256, size=(2, 84, 84, 4), dtype=np.uint8)
    out = ens.reward(obs, np.array([0, 5]))
    assert out.shape == (2,) and np.all(np.isfinite(out))


def test_save_load_round_trips_exactly(tmp_path):
    rng = np.random.default_rng(3)
    segs = frame_segments(rng, 6)
    ens = RewardEnsemble(TINY_CNN, (12, 12, 2), (), n_actions=3, seed=7)
    # Train a little so batch-norm running statistics and weights differ from initialisation.
    ds = PreferenceDataset()
    ds.extend(Label(SegmentPair(segs[i], segs[i + 3]), 1) for i in range(3))
    RewardTrainer(ens, rng=np.random.default_rng(0)).train(ds, epochs=2)
    ens.update_normalization(segs)
    path = tmp_path / "ens.pt"
    ens.save(path)
    back = RewardEnsemble.load(path)
    assert back.config == ens.config and back.n_actions == 3 and back.obs_shape == (12, 12, 2)
    for normalized in (False, True):
        np.testing.assert_array_equal(back.member_segment_returns(segs, normalized),
                                      ens.member_segment_returns(segs, normalized))
    sd_a, sd_b = ens.members.state_dict(), back.members.state_dict()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)


def test_load_rejects_missing_and_corrupt_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        RewardEnsemble.load(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not readable"):
        RewardEnsemble.load(bad)
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a RewardEnsemble checkpoint"):
        RewardEnsemble.load(tmp_path / "other.pt")


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"n_members": 0}, "n_members=0"),
        ({"net": "rnn"}, "net='rnn'"),
        ({"target_std": 0.0}, "target_std=0.0"),
        ({"batch_norm": True}, "batch_norm=True"),
        ({"hidden": (64, -1)}, "hidden="),
        ({"dropout": -0.1}, "dropout=-0.1"),
    ],
)
def test_bad_config_raises_one_line(kwargs, fragment):
    with pytest.raises(ValueError) as err:
        EnsembleConfig(**kwargs)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_bad_inputs_raise_one_line():
    ens = RewardEnsemble(EnsembleConfig(n_members=1), (4,), (2,))
    cases = [
        (lambda: ens.reward(np.zeros((3, 5)), np.zeros((3, 2))), "obs shape (3, 5)"),
        (lambda: ens.reward(np.zeros((3, 4)), np.zeros((2, 2))), "acts has 2"),
        (lambda: ens.update_normalization([]), "at least one segment"),
        (lambda: RewardEnsemble(EnsembleConfig(net="cnn"), (84, 84), ()), "net='cnn'"),
        (lambda: RewardEnsemble(EnsembleConfig(), (4,), (2,), n_actions=3), "act_shape=(2,)"),
        (lambda: RewardEnsemble(EnsembleConfig(), (4,), (), n_actions=0), "n_actions=0"),
    ]
    disc = RewardEnsemble(EnsembleConfig(n_members=1), (4,), (), n_actions=3)
    cases.append((lambda: disc.reward(np.zeros((2, 4)), np.array([0, 3])), "out of range"))
    for call, fragment in cases:
        with pytest.raises(ValueError) as err:
            call()
        assert fragment in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("n_actions, act_shape", [(None, (2,)), (3, ())])
def test_fast_rl_reward_matches_the_torch_path_through_training_and_normalisation(n_actions, act_shape):
    from rlhf_control.reward.dataset import PreferenceDataset
    from rlhf_control.reward.training import RewardTrainer, RewardTrainerConfig
    from rlhf_control.types import Label, Segment, SegmentPair

    rng = np.random.default_rng(0)
    ens = RewardEnsemble(EnsembleConfig(n_members=3, target_std=0.5), (5,), act_shape, n_actions=n_actions)

    def acts(n):
        return rng.integers(0, 3, size=n) if n_actions else rng.normal(size=(n, 2)).astype(np.float32)

    obs, a = rng.normal(size=(7, 5)).astype(np.float32), acts(7)

    def slow():
        return ens.member_rewards(obs, a, normalized=True).mean(axis=0)

    np.testing.assert_allclose(ens.reward(obs, a), slow(), rtol=1e-5, atol=1e-6)
    ens.set_input_stats(rng.normal(3.0, 5.0, size=(50, 5)))  # both paths standardise the same way
    np.testing.assert_allclose(ens.reward(obs, a), slow(), rtol=1e-5, atol=1e-6)
    segs = [Segment(rng.normal(size=(4, 5)).astype(np.float32), acts(4), rng.normal(size=4)) for _ in range(20)]
    ens.update_normalization(segs)  # the cached weights must follow the new statistics
    np.testing.assert_allclose(ens.reward(obs, a), slow(), rtol=1e-5, atol=1e-6)
    data = PreferenceDataset()
    for i in range(0, 20, 2):
        data.add(Label(SegmentPair(segs[i], segs[i + 1]), 1))
    before = ens.reward(obs, a)
    RewardTrainer(ens, RewardTrainerConfig(epochs=2)).train(data)  # ... and the trained weights
    after = ens.reward(obs, a)
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, slow(), rtol=1e-5, atol=1e-6)


def test_input_standardisation_makes_the_mlp_blind_to_feature_scale_and_survives_save(tmp_path):
    rng = np.random.default_rng(5)
    obs = rng.normal(size=(40, 3)).astype(np.float32)
    acts = rng.normal(size=(40, 1)).astype(np.float32)
    scales = np.array([100.0, 0.01, 1.0], dtype=np.float32)
    plain = RewardEnsemble(EnsembleConfig(n_members=2), (3,), (1,), seed=1)
    scaled = RewardEnsemble(EnsembleConfig(n_members=2), (3,), (1,), seed=1)
    plain.set_input_stats(obs)
    scaled.set_input_stats(obs * scales)
    # Same weights, features rescaled: after standardisation the inputs and outputs are the same.
    np.testing.assert_allclose(scaled.member_rewards(obs * scales, acts), plain.member_rewards(obs, acts),
                               rtol=1e-4, atol=1e-5)
    unnormed = RewardEnsemble(EnsembleConfig(n_members=2, input_norm=False), (3,), (1,), seed=1)
    unnormed.set_input_stats(obs * scales)  # switched off: no effect
    assert not unnormed.input_stats_set
    path = tmp_path / "ens.pt"
    scaled.save(path)
    back = RewardEnsemble.load(path)
    assert back.input_stats_set
    np.testing.assert_array_equal(back.member_rewards(obs * scales, acts), scaled.member_rewards(obs * scales, acts))
    with pytest.raises(ValueError, match=r"shape \(N >= 2, \*\(3,\)\)"):
        plain.set_input_stats(np.zeros((5, 4)))


@pytest.mark.parametrize("n_actions, act_shape", [(None, (2,)), (3, ())])
def test_fast_path_follows_training_steps_and_loaded_weights(n_actions, act_shape, monkeypatch, tmp_path):
    from rlhf_control.reward.fast_mlp import FastMLP

    builds = []
    build = FastMLP.from_members.__func__
    monkeypatch.setattr(FastMLP, "from_members", classmethod(lambda cls, *a: builds.append(1) or build(cls, *a)))
    rng = np.random.default_rng(4)

    def acts(n):
        return rng.integers(0, 3, size=n) if n_actions else rng.normal(size=(n, 2)).astype(np.float32)

    def make(seed):
        return RewardEnsemble(EnsembleConfig(n_members=3, hidden=(16, 16), target_std=0.5), (5,), act_shape,
                              n_actions=n_actions, seed=seed)

    ens = make(0)
    obs, a = rng.normal(size=(7, 5)).astype(np.float32), acts(7)
    filler_obs, filler_a = rng.normal(size=(60, 5)).astype(np.float32), acts(60)  # 67 rows: the torch branch

    def check(previous):
        """The fast path (7 rows) against torch: through reward()'s large-batch branch and member_rewards."""
        fast = ens.reward(obs, a)
        big = ens.reward(np.concatenate([obs, filler_obs]), np.concatenate([a, filler_a]))[:7]
        np.testing.assert_allclose(fast, big, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(fast, ens.member_rewards(obs, a, normalized=True).mean(axis=0), rtol=1e-5, atol=1e-6)
        assert previous is None or not np.allclose(fast, previous)  # the change reached the reward
        return fast

    segs = [Segment(rng.normal(size=(4, 5)).astype(np.float32), acts(4)) for _ in range(24)]
    ens.set_input_stats(np.concatenate([s.obs for s in segs]))
    ens.update_normalization(segs)
    out = check(None)
    data = PreferenceDataset()
    data.extend(Label(SegmentPair(segs[i], segs[i + 1]), 1 if i % 4 else -1) for i in range(0, 24, 2))
    trainer = RewardTrainer(ens, rng=np.random.default_rng(0))
    for _ in range(3):  # a few optimiser steps between calls: a stale copy would still give `out`
        builds.clear()
        trainer.train(data, epochs=1)
        out = check(out)
        for _ in range(3):
            ens.reward(obs, a)
        assert len(builds) == 1  # rebuilt once after the change, then reused call after call
    ens.update_normalization(segs[:6])
    out = check(out)

    other = make(1)
    RewardTrainer(other, rng=np.random.default_rng(1)).train(data, epochs=2)
    other.update_normalization(segs)
    other.set_input_stats(rng.normal(2.0, 3.0, size=(30, 5)))
    ens.load_blob_weights(other.blob())  # weights, normalisation and input statistics, in place
    out = check(out)
    np.testing.assert_allclose(out, other.reward(obs, a), rtol=1e-5, atol=1e-6)
    other.save(tmp_path / "ens.pt")
    back = RewardEnsemble.load(tmp_path / "ens.pt")
    np.testing.assert_array_equal(back.reward(obs, a), other.reward(obs, a))
    trainer.train(data, epochs=1)  # the trainer's optimisers still hold the loaded parameters
    check(out)


def test_normalisation_can_take_its_mean_from_other_clips():
    """update_normalization(segments, centre=...): std target_std over ``segments``, mean 0 over ``centre``."""
    rng = np.random.default_rng(11)
    ens = RewardEnsemble(EnsembleConfig(n_members=2), (3,), (2,), seed=1)
    segs = [Segment(obs=rng.normal(size=(6, 3)).astype(np.float32), acts=rng.normal(size=(6, 2)).astype(np.float32))
            for _ in range(8)]
    ref = [Segment(obs=(rng.normal(size=(6, 3)) + 2).astype(np.float32), acts=rng.normal(size=(6, 2)).astype(np.float32))
           for _ in range(4)]
    ens.update_normalization(segs, centre=ref)

    def stats(ss):
        out = ens.member_rewards(np.concatenate([s.obs for s in ss]), np.concatenate([s.acts for s in ss]), normalized=True)
        return out.mean(axis=1), out.std(axis=1)

    np.testing.assert_allclose(stats(ref)[0], 0.0, atol=1e-5)
    np.testing.assert_allclose(stats(segs)[1], ens.config.target_std, rtol=1e-4)
    assert np.abs(stats(segs)[0]).max() > 1e-3


def test_mlp_inference_in_cache_sized_pieces_gives_the_one_pass_outputs(monkeypatch):
    import rlhf_control.reward.ensemble as ensemble_module

    rng = np.random.default_rng(5)
    ens = RewardEnsemble(EnsembleConfig(hidden=(64, 64)), (4,), (2,), seed=1)
    ens.set_input_stats(rng.normal(size=(50, 4)))
    x = ens.encode(rng.normal(size=(1000, 4)), rng.normal(size=(1000, 2)))
    with torch.no_grad():
        one_pass = torch.stack([ens.members[k](x) for k in range(3)])
    pieces = []
    forward = ens.members[0].forward
    monkeypatch.setattr(ens.members[0], "forward", lambda v: pieces.append(len(v)) or forward(v))
    monkeypatch.setattr(ensemble_module, "MLP_PIECE_BYTES", 256 * 4 * 64)  # 256 rows of 64 floats
    with torch.no_grad():
        got = ens.raw_member_outputs_t(x)
    assert pieces == [256, 256, 256, 232]  # the rows in order, the last piece short
    assert torch.equal(got, one_pass)  # not merely close: what the L2 controller reads must not move
    segs = mlp_segments(rng, 30, t=40)
    returns = ens.member_segment_returns(segs)
    monkeypatch.setattr(ensemble_module, "MLP_PIECE_BYTES", 2**40)
    np.testing.assert_array_equal(returns, ens.member_segment_returns(segs))
    monkeypatch.setattr(ensemble_module, "MLP_PIECE_BYTES", 256 * 4 * 64)
    pieces.clear()
    ens.members.train()
    ens.raw_member_outputs_t(x).sum().backward()  # with grad (training) one pass, as before
    assert pieces == [1000]
