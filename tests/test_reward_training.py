"""RewardTrainer: learns to rank like the true return, loss symmetry, ties, bagging, adaptive L2."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from rlhf_control.reward import (
    EnsembleConfig,
    PreferenceDataset,
    RewardEnsemble,
    RewardTrainer,
    RewardTrainerConfig,
    preference_loss,
)
from rlhf_control.types import Label, Segment, SegmentPair

OBS, ACT, T = 4, 2, 8


class World:
    """Segments scored by a hidden nonlinear true reward of (obs, act)."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.w1 = self.rng.normal(size=(OBS + ACT, 8))
        self.w2 = self.rng.normal(size=8)

    def segment(self) -> Segment:
        obs = (self.rng.normal(size=(T, OBS)) + self.rng.normal(size=OBS)).astype(np.float32)
        acts = self.rng.uniform(-1, 1, size=(T, ACT)).astype(np.float32)
        true = np.tanh(np.concatenate([obs, acts], 1) @ self.w1) @ self.w2
        return Segment(obs, acts, true)

    def dataset(self, n: int, label=None, max_size=None) -> PreferenceDataset:
        ds = PreferenceDataset(max_size)
        for _ in range(n):
            a, b = self.segment(), self.segment()
            value = int(np.sign(a.true_return - b.true_return)) if label is None else label
            ds.add(Label(SegmentPair(a, b), value))
        return ds


def ensemble(seed=0, **kw) -> RewardEnsemble:
    return RewardEnsemble(EnsembleConfig(**kw), (OBS,), (ACT,), seed=seed)


def params(member: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in member.parameters()])


def test_learns_to_rank_held_out_segments_like_true_return():
    world = World(0)
    ds = world.dataset(300)
    ens = ensemble()
    report = RewardTrainer(ens, RewardTrainerConfig(), np.random.default_rng(0)).train(ds, epochs=25)
    test = [world.segment() for _ in range(200)]
    predicted = ens.member_segment_returns(test).mean(axis=0)
    rho = spearmanr(predicted, [s.true_return for s in test])[0]
    assert rho >= 0.9, rho
    assert report.mean_val_accuracy > 0.8 and report.n_labels == 300 and report.epochs == 25
    assert len(report.train_loss) == len(report.val_loss) == len(report.val_accuracy) == len(report.l2) == 3
    # The RL reward (normalised member mean) ranks the same way.
    ens.update_normalization(test)
    rl = np.array([ens.reward(s.obs, s.acts).sum() for s in test])
    assert spearmanr(rl, [s.true_return for s in test])[0] >= 0.9


def test_loss_is_unchanged_when_pair_swapped_and_label_negated():
    world = World(1)
    ds = world.dataset(40)
    ds.add(Label(ds.labels[0].pair, 0))  # a tie as well
    swapped = PreferenceDataset(None)
    swapped.extend(Label(lb.pair.swapped(), -lb.value) for lb in ds.labels)
    trainer = RewardTrainer(ensemble(), rng=np.random.default_rng(0))
    loss, acc = trainer.evaluate(ds)
    loss_s, acc_s = trainer.evaluate(swapped)
    np.testing.assert_allclose(loss, loss_s, rtol=1e-6)
    np.testing.assert_allclose(acc, acc_s)
    assert np.all(loss > 0)
    d = torch.linspace(-30, 30, 13, dtype=torch.float64)
    for y in (0.0, 0.5, 1.0):
        torch.testing.assert_close(preference_loss(d, -d, torch.full_like(d, y)),
                                   preference_loss(-d, d, torch.full_like(d, 1 - y)))


def test_preference_loss_matches_noisy_bradley_terry():
    d = torch.tensor([-3.0, 0.0, 2.0], dtype=torch.float64)
    y = torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64)
    for eps in (0.0, 0.1, 0.3):
        p = (1 - eps) * torch.sigmoid(d) + eps / 2
        want = -(y * p.log() + (1 - y) * (1 - p).log())
        torch.testing.assert_close(preference_loss(d, torch.zeros_like(d), y, eps), want)
    # With noise the loss is bounded (a confidently wrong prediction costs at most -log(eps/2)).
    assert preference_loss(torch.tensor([1e4]), torch.tensor([0.0]), torch.tensor([0.0]), 0.1).item() < -np.log(0.05) + 1e-6


def test_ties_train_toward_equal_sums():
    world = World(2)
    ds = world.dataset(64, label=0)
    ens = ensemble()
    segs = [s for lb in ds.labels for s in (lb.pair.first, lb.pair.second)]

    def gap() -> float:
        r = ens.member_segment_returns(segs)
        return float(np.abs(r[:, 0::2] - r[:, 1::2]).mean())

    before = gap()
    trainer = RewardTrainer(ens, RewardTrainerConfig(lr=3e-3, adaptive_l2=False, l2_init=0.0), np.random.default_rng(0))
    trainer.train(ds, epochs=40)
    assert gap() < 0.2 * before


def test_adaptive_l2_moves_coefficient_in_the_right_direction():
    world = World(3)
    base = RewardTrainerConfig(l2_init=1e-2, l2_factor=2.0)
    # Ratio ~1 (< 1.1): an untrained net predicts ~equal sums for train and val labels -> l2 goes down.
    random_labels = world.dataset(60)
    still = RewardTrainer(ensemble(), replace(base, lr=1e-9), np.random.default_rng(0))
    report = still.train(random_labels)
    ratios = np.array(report.val_loss) / np.array(report.train_loss)
    assert np.all(ratios < 1.1)
    assert report.l2 == (5e-3,) * 3
    assert all(o.param_groups[0]["weight_decay"] == 5e-3 for o in still.optimizers)
    # Ratio > 1.5: memorise random labels first (no adaptation), then one near-frozen adaptive epoch.
    ens = ensemble()
    flipped = world.dataset(60)
    flipped.extend(Label(lb.pair, -lb.value if i % 2 else lb.value) for i, lb in enumerate(flipped.labels))
    RewardTrainer(ens, replace(base, adaptive_l2=False, l2_init=0.0, lr=1e-2), np.random.default_rng(0)).train(
        flipped, epochs=60)
    report = RewardTrainer(ens, replace(base, lr=1e-9), np.random.default_rng(0)).train(flipped)
    assert np.all(np.array(report.val_loss) > 1.5 * np.array(report.train_loss))
    assert report.l2 == (2e-2,) * 3
    # No adaptation when turned off.
    frozen = RewardTrainer(ens, replace(base, lr=1e-9, adaptive_l2=False), np.random.default_rng(0))
    assert frozen.train(flipped).l2 == (1e-2,) * 3


def test_members_get_own_bootstrap_and_stable_validation_split():
    trainer = RewardTrainer(ensemble(), rng=np.random.default_rng(0))
    seqs = np.arange(3000)
    val, counts = trainer.member_split(seqs)
    assert val.shape == counts.shape == (3, 3000)
    assert np.all(counts[val] == 0)  # validation labels never train
    np.testing.assert_allclose(val.mean(axis=1), 1 / np.e, atol=0.03)
    train_counts = counts[~val]
    assert abs(train_counts.mean() - 1.0) < 0.05 and train_counts.max() >= 3 and (train_counts == 0).any()
    assert not np.array_equal(counts[0], counts[1]) and not np.array_equal(val[0], val[2])
    # Same split on every call and as the window slides (it depends on each label's seq only).
    val2, counts2 = trainer.member_split(seqs[1000:])
    np.testing.assert_array_equal(val2, val[:, 1000:])
    np.testing.assert_array_equal(counts2, counts[:, 1000:])
    other = RewardTrainer(ensemble(), RewardTrainerConfig(seed=1), np.random.default_rng(0))
    assert not np.array_equal(other.member_split(seqs)[0], val)
    no_bag = RewardTrainer(ensemble(), RewardTrainerConfig(bagging=False), np.random.default_rng(0))
    v, c = no_bag.member_split(seqs)
    np.testing.assert_array_equal(c, (~v).astype(int))


def test_validation_labels_do_not_leak_into_training():
    world = World(4)
    ds = world.dataset(60)
    trainer = RewardTrainer(ensemble(), rng=np.random.default_rng(0))
    val, _ = trainer.member_split(ds.seqs)
    altered = PreferenceDataset(None)
    altered.extend(Label(lb.pair, -lb.value if val[0, i] else lb.value) for i, lb in enumerate(ds.labels))
    results = []
    for data in (ds, altered):
        ens = ensemble()
        RewardTrainer(ens, RewardTrainerConfig(adaptive_l2=False), np.random.default_rng(0)).train(data, epochs=2)
        results.append([params(m) for m in ens.members])
    assert torch.equal(results[0][0], results[1][0])  # member 0 never saw its validation labels
    assert not torch.equal(results[0][1], results[1][1])  # member 1 trains on some of them


def test_state_dict_round_trip():
    world = World(5)
    ds = world.dataset(30)
    trainer = RewardTrainer(ensemble(), rng=np.random.default_rng(0))
    trainer.train(ds, epochs=2)
    clone = RewardTrainer(ensemble(), rng=np.random.default_rng(0))
    clone.load_state_dict(trainer.state_dict())
    assert clone.l2 == trainer.l2 and clone.epochs_done == 2
    s0 = trainer.optimizers[1].state_dict()["state"][0]["exp_avg"]
    assert torch.equal(clone.optimizers[1].state_dict()["state"][0]["exp_avg"], s0)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"noise": -0.1}, "noise=-0.1"),
        ({"noise": 1.0}, "noise=1.0"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"epochs": 0}, "epochs=0"),
        ({"lr": 0.0}, "lr=0.0"),
        ({"val_fraction": 1.0}, "val_fraction=1.0"),
        ({"l2_band": (1.5, 1.1)}, "l2_band=(1.5, 1.1)"),
        ({"l2_factor": 1.0}, "l2_factor=1.0"),
        ({"l2_init": -1.0}, "l2_init=-1.0"),
    ],
)
def test_bad_config_raises_one_line(kwargs, fragment):
    with pytest.raises(ValueError) as err:
        RewardTrainerConfig(**kwargs)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_bad_training_inputs_raise_one_line():
    world = World(6)
    trainer = RewardTrainer(ensemble(), rng=np.random.default_rng(0))
    wrong = PreferenceDataset()
    obs = np.zeros((T, OBS + 1), np.float32)
    wrong.add(Label(SegmentPair(Segment(obs, np.zeros((T, ACT))), Segment(obs, np.zeros((T, ACT)))), 1))
    cases = [
        (lambda: trainer.train(PreferenceDataset()), "empty preference window"),
        (lambda: trainer.train(world.dataset(2), epochs=0), "epochs=0"),
        (lambda: trainer.train(wrong), "obs shape"),
        (lambda: preference_loss(torch.zeros(1), torch.zeros(1), torch.zeros(1), noise=-0.5), "noise=-0.5"),
        (lambda: trainer.load_state_dict({"l2": [1.0], "optimizers": [{}]}), "1 members"),
    ]
    for call, fragment in cases:
        with pytest.raises(ValueError) as err:
            call()
        assert fragment in str(err.value) and "\n" not in str(err.value)


def test_tiny_window_and_mixed_lengths_train():
    world = World(7)
    ds = world.dataset(2)
    short = [Segment(s.obs[:3], s.acts[:3], s.true_rewards[:3]) for s in (world.segment(), world.segment())]
    ds.add(Label(SegmentPair(*short), -1))
    ens = ensemble()
    trainer = RewardTrainer(ens, rng=np.random.default_rng(0))
    _, counts = trainer.member_split(ds.seqs)
    before = [params(m) for m in ens.members]
    report = trainer.train(ds, epochs=3)
    for m, member in enumerate(ens.members):
        # A member trains iff its bootstrap sample of this tiny window is non-empty.
        assert torch.equal(before[m], params(member)) == (counts[m].sum() == 0)
        assert np.isfinite(report.train_loss[m]) == (counts[m].sum() > 0)
    trained = counts.sum(axis=1) > 0
    assert trained.any() and not trained.all()  # (this seed) both cases occur
    assert (counts[:, 2] > 0).any()  # the 3-step pair is trained on
