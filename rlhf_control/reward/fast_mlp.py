"""NumPy inference for an ensemble of reward MLPs, for the agent's one vector step at a time.

On the few rows of one vector step, torch's per-call overhead costs more than the arithmetic; the
same eval-mode forward pass as stacked NumPy matrices takes tens of microseconds. A
:class:`FastMLP` is a copy of the weights at the time it was built and does not follow later
changes: its owner builds a new one after every change (``RewardEnsemble`` drops its copy in each
method that changes weights or normalisation, and in ``weights_changed``, which trainers call
after their optimiser steps).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from rlhf_control.reward.nets import MLPReward

# The modules of an MLPReward whose eval-mode forward pass FastMLP reproduces (dropout is the
# identity in eval mode). Anything else in a member would be silently ignored, so it is refused.
_KNOWN_MODULES = (MLPReward, nn.Sequential, nn.Linear, nn.LeakyReLU, nn.Dropout)


@dataclass(frozen=True, eq=False)
class FastMLP:
    """K reward MLPs as stacked float32 matrices, with each member's output normalisation.

    ``weights[i]: (K, in_i, out_i)`` and ``biases[i]: (K, 1, out_i)`` for layer i, a leaky ReLU
    of ``slope`` between layers; member k's normalised output is ``(raw_k - offset[k]) * scale[k]``
    (``offset, scale: (K, 1)``). Build it with :meth:`from_members`.
    """

    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]
    slope: float
    offset: np.ndarray
    scale: np.ndarray

    @classmethod
    def from_members(
        cls, members: Sequence[nn.Module], norm_mean: torch.Tensor, norm_std: torch.Tensor, target_std: float
    ) -> FastMLP:
        """Copy the weights of ``members`` (:class:`MLPReward` of one shape, on the CPU) and the
        normalisation ``(raw - norm_mean) * target_std / norm_std`` (``norm_mean, norm_std: (K,)``)."""
        if len(members) == 0:
            raise ValueError("FastMLP needs at least one member, got 0")
        linears, slopes = [], set()
        for member in members:
            modules = list(member.modules())
            odd = {type(m).__name__ for m in modules if not isinstance(m, _KNOWN_MODULES)}
            if not isinstance(member, MLPReward) or odd:
                raise TypeError(f"FastMLP reproduces MLPReward members only, got {type(member).__name__} {sorted(odd)}")
            linears.append([m for m in modules if isinstance(m, nn.Linear)])
            slopes |= {float(m.negative_slope) for m in modules if isinstance(m, nn.LeakyReLU)}
        if len({len(ls) for ls in linears}) != 1 or len(slopes) > 1:
            raise ValueError("FastMLP needs members of one shape and one leaky ReLU slope")
        def stack(arrays: list[torch.Tensor]) -> np.ndarray:  # a copy: later updates do not reach it
            return np.stack([a.detach().numpy() for a in arrays]).astype(np.float32, copy=False)

        layers = list(zip(*linears, strict=True))  # per layer, that layer of every member
        weights = tuple(stack([lin.weight.T for lin in layer]) for layer in layers)  # (K, in, out)
        biases = tuple(stack([lin.bias for lin in layer])[:, None, :] for layer in layers)  # (K, 1, out)
        offset = norm_mean.detach().numpy().astype(np.float32)[:, None]
        scale = (target_std / norm_std.detach().numpy()).astype(np.float32)[:, None]
        if offset.shape != (len(members), 1) or scale.shape != (len(members), 1):
            raise ValueError(f"normalisation of shape {tuple(norm_mean.shape)} does not fit {len(members)} members")
        return cls(weights, biases, slopes.pop() if slopes else 0.0, offset, scale)

    def reward(self, x: np.ndarray) -> np.ndarray:
        """``x: (N, in_dim)`` float32 network input -> ``(N,)`` float32: the mean over members of
        their normalised outputs (what the torch members give in eval mode)."""
        h = x[None]  # (1, N, in), broadcast over members
        last = len(self.weights) - 1
        slope = self.slope
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = h @ w + b  # (K, N, out)
            if i < last:
                h = np.maximum(h, slope * h) if slope <= 1 else np.where(h > 0, h, slope * h)
        return ((h[..., 0] - self.offset) * self.scale).mean(axis=0).astype(np.float32)
