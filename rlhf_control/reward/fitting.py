"""How the reward ensemble is fitted to the label window: one pluggable piece for every path.

A *fitter* (:class:`RewardFitter`) trains an ensemble on a :class:`PreferenceDataset`. Fitters are
registered by name in ``FITTERS`` and built by :func:`make_fitter` from the ensemble, the
:class:`RewardTrainerConfig` and a generator, in the main process and in the reward worker alike;
:func:`retrain` is the one place that trains and then re-normalises the ensemble's output on recent
clips. Two fitters ship:

- ``comparisons``: the paper's Bradley-Terry fit of segment sums to the comparisons
  (:class:`~rlhf_control.reward.training.RewardTrainer`).
- ``true-return-regression``: the paper's "target" ablation (Section 3.3), which replaces the
  comparisons by the true total reward of each segment and fits r̂ by mean squared error. The loop
  is unchanged (same queries, schedule and label count); each labelled pair contributes its two
  segments with their true returns (the synthetic oracle's reward), and each member's segment sum of
  raw outputs is regressed onto the standardised returns (r̂ is normalised afterwards as usual, so
  the affine change of scale does not matter). The newest 1/e of the labelled pairs are held out for
  validation and each member trains on a fresh bootstrap resample of the rest every epoch; L2 is a
  fixed weight decay (the adaptive scheme is calibrated on the comparison loss).
  ``val_accuracy`` is how often the fitted returns order held-out labelled pairs like their labels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from rlhf_control.registry import Registry
from rlhf_control.reward.dataset import PreferenceDataset
from rlhf_control.reward.ensemble import RewardEnsemble
from rlhf_control.reward.pixels import encode_segments
from rlhf_control.reward.training import RewardTrainer, RewardTrainerConfig
from rlhf_control.types import Segment

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

    @property
    def min_l2(self) -> float:
        return self.mean_l2  # one fixed weight decay for every member

    @property
    def max_l2(self) -> float:
        return self.mean_l2


def _batch_returns(ensemble, segs: list[Segment]) -> torch.Tensor:
    """Per-member segment sums of raw outputs, ``(K, B)``, with gradients."""
    out = ensemble.raw_member_outputs_t(encode_segments(ensemble, segs))  # (K, B*T)
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
            ensemble.weights_changed()
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


class FitReport(Protocol):
    """What the loop logs of one fit (means over members)."""

    @property
    def mean_train_loss(self) -> float: ...

    @property
    def mean_val_loss(self) -> float | None: ...

    @property
    def mean_val_accuracy(self) -> float | None: ...

    @property
    def mean_l2(self) -> float: ...

    @property
    def min_l2(self) -> float: ...

    @property
    def max_l2(self) -> float: ...


class RewardFitter(Protocol):
    """Fits ``ensemble`` to a label window. ``state_dict``/``load_state_dict`` carry everything a
    later fit depends on besides the weights and ``rng`` (optimiser states, L2 coefficients), so a
    fit in the reward worker equals one in the main process and a checkpoint resumes it."""

    ensemble: RewardEnsemble
    rng: np.random.Generator

    def train(self, dataset: PreferenceDataset, epochs: int | None = None) -> FitReport: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


FitterFactory = Callable[[RewardEnsemble, RewardTrainerConfig, np.random.Generator], RewardFitter]
FITTERS: Registry[RewardFitter] = Registry("reward fitter")
FITTERS.register("comparisons")(RewardTrainer)


def make_fitter(name: str, ensemble: RewardEnsemble, config: RewardTrainerConfig,
                rng: np.random.Generator) -> RewardFitter:
    """The fitter registered as ``name`` (one-line error naming the known ones otherwise)."""
    return FITTERS.get(name)(ensemble, config, rng)


def retrain(fitter: RewardFitter, dataset: PreferenceDataset, epochs: int,
            norm_segments: Sequence[Any], keep_going: Callable[[], bool] | None = None,
            centre: Sequence[Any] | None = None) -> FitReport:
    """Fit for ``epochs`` passes over ``dataset``, then set the output normalisation: the scale on
    ``norm_segments`` (the recent clips), the mean on ``centre`` (the reference clips) or, without it,
    on ``norm_segments`` too, as every retraining of the loop does. With ``keep_going``, more single
    passes follow for as long as it returns True (the worker's continuous training)."""
    report = fitter.train(dataset, epochs=epochs)
    done = epochs
    while keep_going is not None and keep_going():
        report = fitter.train(dataset, epochs=1)
        done += 1
    if done != epochs and dataclasses.is_dataclass(report) and hasattr(report, "epochs"):
        report = dataclasses.replace(report, epochs=done)
    if norm_segments:
        fitter.ensemble.update_normalization(norm_segments, centre=centre)
    return report


@FITTERS.register("true-return-regression")
class ReturnRegression:
    """The regression ablation as a fitter: Adam with a fixed weight decay, one optimiser for all members."""

    def __init__(self, ensemble: RewardEnsemble, config: RewardTrainerConfig, rng: np.random.Generator) -> None:
        self.ensemble = ensemble
        self.config = config
        self.rng = rng
        self.optimizer = torch.optim.Adam(ensemble.members.parameters(), lr=config.lr, weight_decay=WEIGHT_DECAY)

    def train(self, dataset: PreferenceDataset, epochs: int | None = None) -> RegressionReport:
        labels = list(dataset.labels)
        if not labels:
            raise ValueError("cannot train on an empty preference window (0 labels); add labels first")
        if any(lab.pair.first.true_rewards is None or lab.pair.second.true_rewards is None for lab in labels):
            raise ValueError("the true-return-regression ablation needs segments with true rewards")
        pairs = [(lab.pair.first, lab.pair.second, lab.value) for lab in labels]
        return fit_returns(self.ensemble, self.optimizer, pairs, epochs or self.config.epochs,
                           np.random.default_rng(self.config.seed + len(pairs)))

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
