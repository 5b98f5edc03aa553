"""The comparison loss of the reward predictors, and the temporal crop of their training clips."""

from __future__ import annotations

import math

import torch


def preference_loss(
    returns_first: torch.Tensor, returns_second: torch.Tensor, targets: torch.Tensor, noise: float = 0.1
) -> torch.Tensor:
    """Per-pair cross-entropy ``(B,)`` of P = (1-noise)·sigmoid(R1-R2) + noise/2 against ``targets``
    (P(first better) in [0, 1]); computed in log space so large return gaps stay finite."""
    if not 0.0 <= noise < 1.0:
        raise ValueError(f"noise={noise!r} is not allowed; use a fraction in [0, 1)")
    d = returns_first - returns_second
    if noise == 0:
        log_p, log_q = torch.nn.functional.logsigmoid(d), torch.nn.functional.logsigmoid(-d)
    else:
        keep, floor = math.log1p(-noise), math.log(noise / 2)
        log_p = torch.logaddexp(torch.nn.functional.logsigmoid(d) + keep, torch.full_like(d, floor))
        log_q = torch.logaddexp(torch.nn.functional.logsigmoid(-d) + keep, torch.full_like(d, floor))
    return -(targets * log_p + (1 - targets) * log_q)


def cropped_sums(steps: torch.Tensor, crop: int) -> torch.Tensor:
    """Temporal cropping (SURF, Park et al. 2022): ``(B, 2, T)`` step rewards -> ``(B, 2)`` sums over
    a random window of each segment. Per pair one length, uniform in ``[T - crop, T]`` (at least 1);
    per segment its own start. Uses torch's global generator (seeded per train() call)."""
    b, _, t = steps.shape
    lengths = t - torch.randint(0, min(int(crop), t - 1) + 1, (b, 1), device=steps.device)
    starts = (torch.rand(b, 2, device=steps.device) * (t - lengths + 1)).long().clamp_max(t - lengths)
    cs = torch.nn.functional.pad(steps.cumsum(dim=2), (1, 0))
    return cs.gather(2, (starts + lengths)[..., None]).squeeze(2) - cs.gather(2, starts[..., None]).squeeze(2)
