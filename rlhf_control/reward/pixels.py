"""The CNN's input for whole segments, with the frame stacks built where the network runs.

A segment of ``T`` steps of ``k``-frame stacks holds ``T + k - 1`` frames (:class:`StackedFrames`).
Expanding them into ``T`` stacks of ``(H, W, k)`` on the host (:func:`segment_steps`) is a strided
copy of ``k`` times the bytes, made for every batch of every member. On an H200 reward training
ran at 0.0134 s per labelled pair and epoch (244 GFLOP/s, a CPU-bound rate); on the 2-core machine
here this copy alone costs 0.005 s per pair-epoch of the 3-member ensemble, gathering the frames
0.0001 s (``scripts/bench_reward.py``, "host work"). :func:`encode_segments` sends the frames
themselves (28 per 25-step clip instead of 100) and expands them on the device. On a CPU device the
host copy is kept: there a torch copy costs about the same, and the convolutions dominate.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from rlhf_control.types import Segment, StackedFrames, segment_steps


def segment_frames(segments: Sequence[Segment]) -> tuple[np.ndarray, int] | None:
    """``(frames (n, T + k - 1, H, W), k)`` of ``segments`` when all hold :class:`StackedFrames` of one
    ``k`` and one length; None otherwise."""
    first = segments[0].obs if segments else None
    if not isinstance(first, StackedFrames):
        return None
    shape, k = first.frames.shape, first.k
    if any(not isinstance(s.obs, StackedFrames) or s.obs.k != k or s.obs.frames.shape != shape for s in segments):
        return None
    return np.stack([np.asarray(s.obs.frames) for s in segments]), k


def expand_stacks(frames: torch.Tensor, k: int) -> torch.Tensor:
    """``(n, T + k - 1, H, W)`` frames -> ``(n * T, H, W, k)`` stacks (stack ``t`` holds frames ``t..t+k-1``
    in its last axis, as :meth:`StackedFrames.to_array`), copied on ``frames``' device."""
    n, length, h, w = frames.shape
    return frames.unfold(1, k, 1).reshape(n * (length - k + 1), h, w, k)


def encode_segments(ensemble, segments: Sequence[Segment], on_device: bool | None = None):
    """``ensemble.encode(*segment_steps(segments))``, the same tensor; for a CNN without action input
    on stacked frames, the stacks are built on the ensemble's device (``on_device`` None: when that
    device is not the CPU)."""
    on_device = ensemble.device.type != "cpu" if on_device is None else on_device
    if on_device and ensemble.config.net == "cnn" and not ensemble.act_dim:
        found = segment_frames(segments)
        if found is not None and (*found[0].shape[2:], found[1]) == tuple(ensemble.obs_shape):
            x = expand_stacks(torch.as_tensor(found[0]).to(ensemble.device), found[1])
            return x if x.dtype == torch.uint8 else x.to(torch.float32)
    return ensemble.encode(*segment_steps(segments))
