"""Reward networks: shapes, the paper's sizes, training a step, and bad arguments."""

import numpy as np
import pytest
import torch

from rlhf_control.reward.nets import CNNReward, MLPReward, conv_output_hw


def test_mlp_is_paper_shape_and_maps_rows_to_scalars():
    net = MLPReward(17, 6)
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(23, 64), (64, 64), (64, 1)]
    slopes = {m.negative_slope for m in net.modules() if isinstance(m, torch.nn.LeakyReLU)}
    assert slopes == {0.01}
    x = torch.randn(5, 23)
    out = net(x)
    assert out.shape == (5,)
    # Rows are independent: a batch gives the same values as rows one by one.
    torch.testing.assert_close(out, torch.cat([net(x[i : i + 1]) for i in range(5)]))


def test_mlp_custom_hidden_and_dropout_is_random_only_in_train_mode():
    net = MLPReward(3, 0, hidden=(8,), dropout=0.5)
    x = torch.randn(64, 3)
    net.eval()
    torch.testing.assert_close(net(x), net(x))
    net.train()
    assert not torch.equal(net(x), net(x))


def test_cnn_paper_config_on_uint8_frames():
    net = CNNReward()
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.kernel_size[0], c.stride[0], c.out_channels) for c in convs] == [(7, 3, 16), (5, 2, 16), (3, 1, 16), (3, 1, 16)]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) == 4
    assert conv_output_hw((84, 84), (7, 5, 3, 3), (3, 2, 1, 1)) == (7, 7)
    obs = torch.randint(0, 256, (3, 84, 84, 4), dtype=torch.uint8)
    net.eval()
    out = net(obs)
    assert out.shape == (3,) and out.dtype == torch.float32
    # Scaling by 1/255 happens inside: float pixel values in 0..255 give the same output, unmodified.
    as_float = obs.float()
    torch.testing.assert_close(net(as_float), out)
    assert torch.equal(as_float, obs.float())


def test_tiny_cnn_with_actions_trains_a_step():
    torch.manual_seed(0)
    net = CNNReward((12, 12, 2), act_dim=3, filters=4, kernels=(3, 3), strides=(2, 1), fc=8)
    obs = torch.randint(0, 256, (16, 12, 12, 2), dtype=torch.uint8)
    acts = torch.nn.functional.one_hot(torch.arange(16) % 3, 3).float()
    target = torch.linspace(-1, 1, 16)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    net.train()
    before = [p.detach().clone() for p in net.parameters()]
    bn = next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    loss = ((net(obs, acts) - target) ** 2).mean()
    loss.backward()
    opt.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
    assert bn.num_batches_tracked.item() == 1
    # Actions reach the output.
    net.eval()
    assert not torch.allclose(net(obs, acts), net(obs, acts.roll(1, dims=1)))


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda: MLPReward(0, 0), "obs_dim=0"),
        (lambda: MLPReward(3, 1, hidden=(64, 0)), "hidden="),
        (lambda: MLPReward(3, 1, dropout=1.0), "dropout=1.0"),
        (lambda: MLPReward(3, 1, slope=-0.1), "slope=-0.1"),
        (lambda: CNNReward((84, 84)), "obs_shape=(84, 84)"),
        (lambda: CNNReward((8, 8, 4)), "too small"),
        (lambda: CNNReward(kernels=(7, 5), strides=(3,)), "same length"),
        (lambda: CNNReward(filters=0), "filters="),
        (lambda: CNNReward(act_dim=-1), "act_dim=-1"),
    ],
)
def test_bad_arguments_raise_one_line(make, fragment):
    with pytest.raises(ValueError) as err:
        make()
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match=r"expected \(N, 4\)"):
        MLPReward(3, 1)(torch.zeros(2, 5))
    net = CNNReward((12, 12, 2), act_dim=2, filters=2, kernels=(3,), strides=(1,), fc=4)
    obs = torch.from_numpy(np.zeros((2, 12, 12, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match="acts shape None"):
        net(obs)
    with pytest.raises(ValueError, match="obs shape"):
        net(obs[:, :10], torch.zeros(2, 2))
    with pytest.raises(ValueError, match="takes no actions"):
        CNNReward((12, 12, 2), filters=2, kernels=(3,), strides=(1,), fc=4)(obs, torch.zeros(2, 2))
