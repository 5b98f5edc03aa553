"""The paper's "target" ablation: fit the reward to true segment returns by regression, no comparisons.

Christiano et al. (Section 3.3) replace the comparisons by an oracle that gives the true total
reward of a segment and fit r̂ by mean squared error. Here the loop is unchanged (same queries,
same schedule, same label count); only the reward fitting differs: each labelled pair contributes
its two segments with their true returns (the synthetic oracle's reward), and each member's
segment sum of raw outputs is regressed onto the standardised returns (r̂ is normalised
afterwards as usual, so the affine change of scale does not matter). Members are bagged like the
comparison trainer's; L2 is a fixed weight decay (the adaptive scheme is calibrated on the
comparison loss). ``val_accuracy`` is how often the fitted returns order held-out labelled pairs
like their labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from rlhf_control.loop.trainer import RLHFTrainer
from rlhf_control.types import Segment, segment_steps

WEIGHT_DECAY = 1e-4
BATCH_SEGMENTS = 64


@dataclass(frozen=True)
class RegressionReport:
    """Means over members, under the names of ``TrainReport`` that the trainer logs (losses are MSE
    on standardised returns)."""

    mean_train_loss: float
    mean_val_loss: float | None
    mean_val_accuracy: float | None
    mean_l2: float


def _batch_returns(ensemble, segs: list[Segment]) -> torch.Tensor:
    """Per-member segment sums of raw outputs, ``(K, B)``, with gradients."""
    obs, acts = segment_steps(segs)
    out = ensemble.raw_member_outputs_t(ensemble.encode(obs, acts))  # (K, B*T)
    return out.reshape(out.shape[0], len(segs), -1).sum(dim=-1)


def fit_returns(ensemble, optimizer: torch.optim.Optimizer, pairs: list[tuple[Segment, Segment, int]],
                epochs: int, rng: np.random.Generator) -> RegressionReport:
    """Regress each member's segment returns onto the true returns of ``pairs`` (first, second, label).

    The last 1/e of the pairs (newest) are held out for validation; each member trains on a
    bootstrap resample of the rest every epoch.
    """
    n_val = int(len(pairs) / np.e) if len(pairs) >= 4 else 0
    train, val = pairs[: len(pairs) - n_val], pairs[len(pairs) - n_val:]
    segs = [s for a, b, _ in train for s in (a, b)]
    target = np.array([s.true_return for s in segs], dtype=np.float64)
    mean, std = float(target.mean()), float(target.std()) or 1.0
    z = torch.as_tensor((target - mean) / std, dtype=torch.float32, device=ensemble.device)
    k = ensemble.n_members
    ensemble.members.train()
    losses = []
    for _ in range(max(1, epochs)):
        boot = rng.integers(0, len(segs), size=(k, len(segs)))  # bagging: one resample per member
        for start in range(0, len(segs), BATCH_SEGMENTS):
            idx = boot[:, start:start + BATCH_SEGMENTS]  # (K, b)
            flat = np.unique(idx)
            pred = _batch_returns(ensemble, [segs[i] for i in flat])  # (K, len(flat))
            pos = torch.as_tensor(np.searchsorted(flat, idx), device=ensemble.device)
            picked = torch.gather(pred, 1, pos)  # (K, b): member k's prediction for its own resample
            loss = ((picked - z[torch.as_tensor(idx, device=ensemble.device)]) ** 2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    ensemble.members.eval()
    val_loss = val_acc = None
    if val:
        with torch.no_grad():
            vsegs = [s for a, b, _ in val for s in (a, b)]
            pred = _batch_returns(ensemble, vsegs).cpu().numpy()  # (K, 2V)
        vt = (np.array([s.true_return for s in vsegs]) - mean) / std
        val_loss = float(((pred - vt) ** 2).mean())
        diff = pred.mean(axis=0).reshape(-1, 2) @ np.array([1.0, -1.0])  # predicted R1 - R2
        labels = np.array([lab for _, _, lab in val])
        decided = labels != 0
        if decided.any():
            val_acc = float(np.mean(np.sign(diff[decided]) == labels[decided]))
    return RegressionReport(mean_train_loss=float(np.mean(losses)), mean_val_loss=val_loss,
                            mean_val_accuracy=val_acc, mean_l2=WEIGHT_DECAY)


class ReturnRegressionTrainer(RLHFTrainer):
    """``RLHFTrainer`` whose reward is fitted to true segment returns instead of comparisons."""

    _optimizer: torch.optim.Optimizer | None = None
    _optimized: object | None = None

    def _train_reward(self, epochs: int) -> None:
        labels = list(self.dataset.labels)
        if not labels:
            return
        if any(lab.pair.first.true_rewards is None for lab in labels):
            raise ValueError("the true-return-regression ablation needs segments with true rewards")
        if self._optimized is not self.ensemble:  # a resumed run replaces the ensemble
            self._optimizer = torch.optim.Adam(self.ensemble.members.parameters(), lr=self.cfg.reward_lr,
                                               weight_decay=WEIGHT_DECAY)
            self._optimized = self.ensemble
        pairs = [(lab.pair.first, lab.pair.second, lab.value) for lab in labels]
        self.last_report = fit_returns(self.ensemble, self._optimizer, pairs, epochs,
                                       np.random.default_rng(self.cfg.seed + len(pairs)))
        recent = self.pool.recent(min(len(self.pool), 512))
        if recent:
            self.ensemble.update_normalization(recent)
