"""FastMLP: the NumPy copy of reward MLPs gives their eval-mode outputs, and refuses other nets."""

import numpy as np
import pytest
import torch

from rlhf_control.reward.fast_mlp import FastMLP
from rlhf_control.reward.nets import CNNReward, MLPReward


@pytest.mark.parametrize("hidden, slope, dropout", [((8, 4), 0.01, 0.5), ((), 0.01, 0.0), ((6,), 2.0, 0.0)])
def test_matches_the_members_in_eval_mode_with_their_normalisation(hidden, slope, dropout):
    torch.manual_seed(0)
    members = [MLPReward(3, 2, hidden, slope, dropout) for _ in range(3)]
    for m in members:
        m.train()  # the copy is of the eval-mode function, whatever mode the members are in
    mean, std = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64), torch.tensor([2.0, 0.5, 1.0], dtype=torch.float64)
    fast = FastMLP.from_members(members, mean, std, 0.1)
    x = np.random.default_rng(0).normal(size=(9, 5)).astype(np.float32)
    with torch.no_grad():
        raw = torch.stack([m.eval()(torch.as_tensor(x)) for m in members]).double()
    want = ((raw - mean[:, None]) * (0.1 / std)[:, None]).mean(dim=0).numpy()
    got = fast.reward(x)
    assert got.shape == (9,) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        members[0].net[0].weight.add_(1.0)
    np.testing.assert_array_equal(fast.reward(x), got)  # a copy: later updates do not reach it


def test_refuses_what_it_cannot_reproduce():
    mean, std = torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
    with pytest.raises(TypeError, match="CNNReward"):
        FastMLP.from_members([CNNReward((12, 12, 2), 0, 4, (3,), (1,), 8)], mean, std, 1.0)
    with pytest.raises(ValueError, match="one shape"):
        FastMLP.from_members([MLPReward(3, 0, (4,)), MLPReward(3, 0, (4, 4))], torch.zeros(2), torch.ones(2), 1.0)
    with pytest.raises(ValueError, match="does not fit 2 members"):
        FastMLP.from_members([MLPReward(3, 0), MLPReward(3, 0)], mean, std, 1.0)
