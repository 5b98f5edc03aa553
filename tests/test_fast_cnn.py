"""The CNN's faster path computes what its plain forward computes: same losses, gradients, statistics.

Tolerances: both paths run in float32 and differ only in the order of operations (the 1/255 scale
applied to the weights instead of the pixels, so every product of the first convolution is rounded
differently). One rounding is 6e-8 relative; batch norm divides by a standard deviation computed
from sums over thousands of values, and backward accumulates over the batch, so differences of
1e-6 relative to the largest value are expected (observed: under 2e-6). The bounds below are 5e-5
relative to the largest magnitude: a real mistake (a missing scale, a wrong mask layout, a skipped
layer) moves values by 1e-2 or more.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from rlhf_control.reward import (
    EnsembleConfig,
    PreferenceDataset,
    RewardEnsemble,
    RewardTrainer,
    RewardTrainerConfig,
    fast_cnn,
)
from rlhf_control.reward.fast_cnn import bit_dropout_mask, ensemble_forward, fast_dropout, member_forward
from rlhf_control.reward.nets import CNNReward
from rlhf_control.reward.training import preference_loss
from rlhf_control.types import Label, Segment, SegmentPair, StackedFrames

PAIRS, T = 4, 5


def close(a: torch.Tensor, b: torch.Tensor, rel: float = 5e-5, scale: float | None = None) -> None:
    a, b = a.detach(), b.detach()
    scale = scale or max(float(a.abs().max()), float(b.abs().max()), 1e-12)
    assert float((a - b).abs().max()) <= rel * scale, f"max diff {float((a - b).abs().max()):.3g} at scale {scale:.3g}"


def batch(seed: int = 0) -> torch.Tensor:
    """A fixed batch: ``PAIRS`` pairs of two ``T``-step clips of 84x84x4 uint8 stacks, steps ordered (pair, side, t)."""
    rng = np.random.default_rng(seed)
    return torch.as_tensor(rng.integers(0, 256, size=(PAIRS * 2 * T, 84, 84, 4), dtype=np.uint8))


def pair_losses(out: torch.Tensor) -> torch.Tensor:
    sums = out.view(PAIRS, 2, T).sum(dim=2)
    targets = torch.tensor([1.0, 0.0, 0.5, 1.0])
    return preference_loss(sums[:, 0], sums[:, 1], targets, noise=0.1)


def grads(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in net.named_parameters()}


def test_train_step_same_losses_gradients_and_batchnorm_statistics_given_the_same_dropout_masks():
    torch.manual_seed(0)
    plain = CNNReward(act_dim=0, dropout=0.5, batch_norm=True)
    fast = copy.deepcopy(plain)
    plain.train()
    fast.train()
    obs = batch()
    masks: list[torch.Tensor] = []

    def recording(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
        out = fast_dropout(x, p, training)
        masks.append((out / x).nan_to_num(2.0).detach() if training and p else torch.ones_like(x))
        return out

    # The head's dropout is nn.Dropout on both paths: both get one fixed mask (a forward hook
    # replaces the module's output), as the plain conv layers get the masks the fast path drew.
    head_mask = (torch.rand(PAIRS * 2 * T, 64) < 0.5).float() * 2
    for net in (fast, plain):
        net.head[2].register_forward_hook(lambda mod, inp, out: inp[0] * head_mask)
    loss_fast = pair_losses(member_forward(fast, obs, dropout=recording))
    drops = [m for m in plain.conv if isinstance(m, torch.nn.Dropout)]
    assert len(drops) == len(masks) == 4
    for layer, mask in zip(drops, masks, strict=True):
        layer.register_forward_hook(lambda mod, inp, out, mask=mask: inp[0] * mask)
    loss_plain = pair_losses(plain(obs))
    close(loss_fast, loss_plain)
    loss_fast.mean().backward()
    loss_plain.mean().backward()
    g_fast, g_plain = grads(fast), grads(plain)
    assert g_fast.keys() == g_plain.keys() and len(g_fast) == 20
    for name in g_fast:
        if name.endswith(".bias"):
            # Some bias gradients are 0 but for rounding on both paths (batch norm subtracts the
            # batch mean after each conv; a constant added to every step cancels in R1 - R2): a
            # bias is measured against its layer's larger weight gradient.
            weight = float(g_plain[name.replace("bias", "weight")].abs().max())
            close(g_fast[name], g_plain[name], scale=max(weight, float(g_plain[name].abs().max())))
        else:
            close(g_fast[name], g_plain[name])
    for (_name, a), (_, b) in zip(fast.named_buffers(), plain.named_buffers(), strict=True):
        close(a.float(), b.float())  # batch norm's running mean/var and its batch counter


class _BitDrop(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * bit_dropout_mask(x)


@pytest.mark.parametrize(("chunk", "norm_bytes"), [(fast_cnn.PIXEL_CHUNK, fast_cnn.NORM_CHUNK_BYTES), (16, 1),
                                                    (16, 9 * 16 * 26 * 26 * 4)])
def test_the_default_path_fusing_leaky_relu_and_dropout_matches_the_plain_network_with_the_same_bits(
        chunk, norm_bytes, monkeypatch):
    # The default training path fuses batch norm, leaky ReLU and dropout and keeps uint8 pixels, batch
    # norm's input and the random bytes for backward. The plain network gets the same random bytes:
    # its nn.Dropout layers become x * bit_dropout_mask(x), and both draw them in the same order from
    # the same seed (the head's nn.Dropout draws last on both). With chunk 16 the first conv's
    # forward and weight gradient take the 40 stacks in three pieces; with a small norm_bytes the
    # fused batch norm's passes take them 8 samples at a time (its least), or in pieces of 8 and 16.
    monkeypatch.setattr(fast_cnn, "PIXEL_CHUNK", chunk)
    monkeypatch.setattr(fast_cnn, "NORM_CHUNK_BYTES", norm_bytes)
    torch.manual_seed(2)
    plain = CNNReward(act_dim=0, dropout=0.5, batch_norm=True).train()
    fast = copy.deepcopy(plain)
    for i, layer in enumerate(plain.conv):
        if isinstance(layer, torch.nn.Dropout):
            plain.conv[i] = _BitDrop()
    obs = batch(3)
    torch.manual_seed(11)
    loss_fast = pair_losses(member_forward(fast, obs))
    torch.manual_seed(11)
    loss_plain = pair_losses(plain(obs))
    close(loss_fast, loss_plain)
    loss_fast.mean().backward()
    loss_plain.mean().backward()
    g_fast, g_plain = grads(fast), grads(plain)
    assert g_fast.keys() == g_plain.keys() and len(g_fast) == 20
    for name in g_fast:
        weight = float(g_plain[name.replace("bias", "weight")].abs().max())
        close(g_fast[name], g_plain[name], scale=max(weight, float(g_plain[name].abs().max())))
    assert float(g_fast["conv.0.weight"].abs().max()) > 0
    # Batch norm's running mean and variance are updated once, as nn.BatchNorm2d does, and its counter.
    buffers = dict(plain.named_buffers())
    for name, value in fast.named_buffers():
        assert torch.equal(value, buffers[name]) if name.endswith("num_batches_tracked") else True
        close(value.float(), buffers[name].float())
    assert int(buffers["conv.1.num_batches_tracked"]) == 1
    # And a gradient step moves the weights to the same place (plain SGD: Adam's first step is
    # lr * sign(gradient), which turns the rounding noise of gradients that are 0 into full steps).
    for net in (fast, plain):
        torch.optim.SGD(net.parameters(), lr=0.5).step()
    for (_name, a), (_, b) in zip(fast.named_parameters(), plain.named_parameters(), strict=True):
        close(a, b, scale=float(b.detach().abs().max()))


def test_the_default_path_keeps_less_for_backward():
    def saved_mb(fn) -> float:
        kept: dict[int, int] = {}  # storage -> bytes: a tensor kept by two layers counts once

        def pack(t: torch.Tensor) -> torch.Tensor:
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn()
        return sum(kept.values()) / 2**20

    net = CNNReward(act_dim=0, dropout=0.5, batch_norm=True).train()
    obs = batch(4)
    plain, fast = saved_mb(lambda: net(obs)), saved_mb(lambda: member_forward(net, obs))
    assert fast < 0.5 * plain, (fast, plain)


def test_a_missing_pixel_scale_would_fail_the_comparison():
    # The tolerance is tight enough to catch a real mistake: weights scaled twice differ far beyond it.
    torch.manual_seed(1)
    net = CNNReward(act_dim=0, dropout=0.0, batch_norm=False).eval()
    obs = batch(1)
    with torch.no_grad():
        good = member_forward(net, obs)
        net.conv[0].weight.mul_(1.0 / 255.0)
        bad = member_forward(net, obs)
    with pytest.raises(AssertionError):
        close(good, bad)


def test_evaluation_converts_once_and_matches_each_members_plain_forward():
    ens = RewardEnsemble(EnsembleConfig.atari(n_members=3, use_actions=True), (84, 84, 4), (), n_actions=6, seed=3)
    obs = batch(2)
    acts = torch.nn.functional.one_hot(torch.arange(len(obs)) % 6, 6).float()
    ens.members.eval()
    with torch.no_grad():
        fast = ensemble_forward(ens.members, obs, acts)
        plain = torch.stack([net(obs, acts) for net in ens.members])
        ens.fast_cnn = False
        through_ensemble_plain = ens.raw_member_outputs_t((obs, acts))
        ens.fast_cnn = True
        through_ensemble_fast = ens.raw_member_outputs_t((obs, acts))
    assert fast.shape == (3, len(obs))
    close(fast, plain)
    close(through_ensemble_fast, through_ensemble_plain)


def test_bit_dropout_mask_is_bernoulli_half_times_two_laid_out_like_its_input_and_seeded():
    x = torch.empty(64, 16, 26, 26).to(memory_format=torch.channels_last)
    torch.manual_seed(5)
    m = bit_dropout_mask(x)
    assert m.shape == x.shape and m.stride() == x.stride()
    assert set(torch.unique(m).tolist()) == {0.0, 2.0}
    keep = (m > 0).float()
    # 692,224 independent fair bits: the mean is 0.5 within 6 standard deviations (6 * 0.0006).
    assert abs(float(keep.mean()) - 0.5) < 0.0036
    # Neighbours in memory (bits of one random byte) and across channels are uncorrelated.
    flat = keep.permute(0, 2, 3, 1).reshape(-1)
    corr = np.corrcoef(flat[:-1].numpy(), flat[1:].numpy())[0, 1]
    assert abs(corr) < 0.01
    torch.manual_seed(5)
    assert torch.equal(bit_dropout_mask(x), m)  # from torch's generator: training stays seeded
    assert not torch.equal(bit_dropout_mask(x), m)
    # Other rates fall back to F.dropout; eval mode and p = 0 leave the input alone.
    y = torch.ones(1000)
    assert torch.equal(fast_dropout(y, 0.5, False), y) and torch.equal(fast_dropout(y, 0.0, True), y)
    kept = fast_dropout(y, 0.25, True)
    assert set(torch.unique(kept).tolist()) <= {0.0, float(torch.tensor(4.0 / 3.0))}


def _atari_dataset(n: int, rng: np.random.Generator) -> PreferenceDataset:
    def seg() -> Segment:
        return Segment(StackedFrames(rng.integers(0, 256, size=(T + 3, 84, 84), dtype=np.uint8), 4),
                       rng.integers(0, 6, size=T))

    ds = PreferenceDataset(max_size=None)
    for i in range(n):
        ds.add(Label(SegmentPair(seg(), seg()), [-1, 0, 1][i % 3]))
    return ds


def test_the_trainer_learns_the_same_through_either_path():
    # Without dropout a fit is deterministic, so two trainers from the same weights, labels and seeds
    # must report the same losses whichever path they take. Looser than one step (1e-3): Adam's
    # first steps move each parameter by about lr * sign(gradient), so the rounding noise of
    # gradients that are 0 in exact arithmetic (see above) moves those parameters by a full lr.
    ds = _atari_dataset(12, np.random.default_rng(0))
    reports, weights = [], []
    for fast in (False, True):
        ens = RewardEnsemble(EnsembleConfig.atari(n_members=2, dropout=0.0), (84, 84, 4), (), n_actions=6, seed=0)
        start = torch.cat([p.detach().flatten() for p in ens.members.parameters()])
        ens.fast_cnn = fast
        trainer = RewardTrainer(ens, RewardTrainerConfig(batch_size=4), np.random.default_rng(0))
        reports.append(trainer.train(ds, epochs=2))
        weights.append(torch.cat([p.detach().flatten() for p in ens.members.parameters()]))
    plain, fast = reports
    close(torch.tensor(fast.train_loss + fast.val_loss), torch.tensor(plain.train_loss + plain.val_loss), rel=1e-3)
    assert float((weights[0] - start).abs().max()) > 1e-3  # the weights did move
