"""Reward networks of the paper: an MLP on (obs, act) for MuJoCo and a CNN on stacked Atari frames.

Both map a batch of steps to one scalar reward per step, on the raw (unnormalised) Bradley-Terry
scale; normalisation lives in :class:`~rlhf_control.reward.ensemble.RewardEnsemble`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from rlhf_control.errors import UserError


def _check_dropout(dropout: float) -> float:
    if not 0.0 <= float(dropout) < 1.0:
        raise UserError(f"dropout={dropout!r} is not allowed; use a probability in [0, 1)")
    return float(dropout)


def _check_slope(slope: float) -> float:
    if not float(slope) >= 0.0:
        raise UserError(f"leaky ReLU slope={slope!r} is not allowed; use a number >= 0")
    return float(slope)


def _check_sizes(name: str, sizes: Sequence[int], allow_empty: bool = True) -> tuple[int, ...]:
    sizes = tuple(sizes)
    if (not sizes and not allow_empty) or any(isinstance(s, bool) or int(s) != s or s < 1 for s in sizes):
        raise UserError(f"{name}={sizes!r} is not allowed; use a tuple of positive ints")
    return tuple(int(s) for s in sizes)


class MLPReward(nn.Module):
    """Paper's MuJoCo predictor: ``x = concat(obs, act)`` -> hidden layers (leaky ReLU) -> scalar.

    ``forward(x: (N, obs_dim + act_dim) float) -> (N,)`` reward per step.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int] = (64, 64),
        slope: float = 0.01,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if obs_dim < 0 or act_dim < 0 or obs_dim + act_dim < 1:
            raise UserError(f"obs_dim={obs_dim}, act_dim={act_dim} not allowed; both >= 0 and their sum >= 1")
        hidden = _check_sizes("hidden", hidden)
        slope, dropout = _check_slope(slope), _check_dropout(dropout)
        self.in_dim = int(obs_dim + act_dim)
        layers: list[nn.Module] = []
        width = self.in_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.LeakyReLU(slope)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: (N, in_dim)`` -> ``(N,)``."""
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise UserError(f"MLPReward input shape {tuple(x.shape)} not allowed; expected (N, {self.in_dim})")
        return self.net(x).squeeze(-1)


def conv_output_hw(hw: tuple[int, int], kernels: Sequence[int], strides: Sequence[int]) -> tuple[int, int]:
    """Spatial size after 'valid' convolutions with these kernels/strides."""
    h, w = hw
    for k, s in zip(kernels, strides, strict=True):
        h, w = (h - k) // s + 1, (w - k) // s + 1
    return h, w


class CNNReward(nn.Module):
    """Paper's Atari predictor on stacked frames (observation only unless ``act_dim > 0``).

    ``forward(obs: (N, H, W, C) uint8 in 0..255, acts: (N, act_dim) float | None) -> (N,)``.
    Pixels are scaled by 1/255 inside; convolutions are 'valid'; each conv layer is followed by
    batch norm (optional), leaky ReLU and dropout; actions are concatenated at the FC layer.
    """

    def __init__(
        self,
        obs_shape: Sequence[int] = (84, 84, 4),
        act_dim: int = 0,
        filters: int = 16,
        kernels: Sequence[int] = (7, 5, 3, 3),
        strides: Sequence[int] = (3, 2, 1, 1),
        fc: int = 64,
        dropout: float = 0.5,
        batch_norm: bool = True,
        slope: float = 0.01,
    ) -> None:
        super().__init__()
        obs_shape = tuple(int(s) for s in obs_shape)
        if len(obs_shape) != 3 or min(obs_shape) < 1:
            raise UserError(f"CNN obs_shape={obs_shape} not allowed; use (H, W, C) with positive sizes")
        kernels = _check_sizes("kernels", kernels, allow_empty=False)
        strides = _check_sizes("strides", strides, allow_empty=False)
        if len(kernels) != len(strides):
            raise UserError(f"kernels {kernels} and strides {strides} must have the same length")
        filters = _check_sizes("filters", (filters,))[0]
        fc = _check_sizes("fc", (fc,))[0]
        if act_dim < 0:
            raise UserError(f"act_dim={act_dim} not allowed; use an int >= 0")
        slope, dropout = _check_slope(slope), _check_dropout(dropout)
        h, w = conv_output_hw(obs_shape[:2], kernels, strides)
        if h < 1 or w < 1:
            raise UserError(f"obs_shape={obs_shape} is too small for kernels {kernels} / strides {strides}")
        self.obs_shape, self.act_dim = obs_shape, int(act_dim)
        layers: list[nn.Module] = []
        channels = obs_shape[2]
        for k, s in zip(kernels, strides, strict=True):
            layers.append(nn.Conv2d(channels, filters, k, stride=s))
            if batch_norm:
                layers.append(nn.BatchNorm2d(filters))
            # In place saves a full copy of the activations; autograd needs slope > 0 for that.
            layers.append(nn.LeakyReLU(slope, inplace=slope > 0))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            channels = filters
        self.conv = nn.Sequential(*layers)
        head: list[nn.Module] = [nn.Linear(filters * h * w + self.act_dim, fc), nn.LeakyReLU(slope)]
        if dropout > 0:
            head.append(nn.Dropout(dropout))
        head.append(nn.Linear(fc, 1))
        self.head = nn.Sequential(*head)

    def forward(self, obs: torch.Tensor, acts: torch.Tensor | None = None) -> torch.Tensor:
        """``obs: (N, H, W, C)``, ``acts: (N, act_dim)`` or None -> ``(N,)``."""
        if obs.ndim != 4 or tuple(obs.shape[1:]) != self.obs_shape:
            raise UserError(f"CNNReward obs shape {tuple(obs.shape)} not allowed; expected (N, *{self.obs_shape})")
        x = obs.permute(0, 3, 1, 2).float()
        # In place only when .float() made a copy, so a float input is never modified.
        x = x * (1.0 / 255.0) if obs.is_floating_point() else x.mul_(1.0 / 255.0)
        x = self.conv(x).flatten(1)
        if self.act_dim:
            if acts is None or acts.shape != (obs.shape[0], self.act_dim):
                got = None if acts is None else tuple(acts.shape)
                raise UserError(f"CNNReward acts shape {got} not allowed; expected ({obs.shape[0]}, {self.act_dim})")
            x = torch.cat([x, acts.to(x.dtype)], dim=1)
        elif acts is not None:
            raise UserError("CNNReward built with act_dim=0 takes no actions; pass acts=None")
        return self.head(x).squeeze(-1)


@contextlib.contextmanager
def batch_norm_recalibration(net: nn.Module) -> Iterator[bool]:
    """Within this block, forward passes of ``net`` re-estimate its batch-norm statistics as they are
    at evaluation: dropout off, each batch norm layer's running mean and variance reset and averaged
    over the batches with equal weight. Training sets them with dropout on, which inflates the variance
    of every layer that follows a dropout (the CNN's layers 2-4) and so shrinks their evaluation-time
    outputs. Yields whether ``net`` has batch norm (without, the block changes nothing); ``net`` is
    left in eval mode."""
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    net.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average
        m.train()
    try:
        with torch.no_grad():
            yield bool(norms)
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        net.eval()
