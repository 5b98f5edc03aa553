"""Fitting the reward ensemble to preference labels (Bradley-Terry on segment sums).

Bagging as in the paper (:mod:`~rlhf_control.reward.bagging`): each member trains on its own
bootstrap sample of the window and is validated on the labels that sample left out (about 1/e),
fixed per label as the FIFO window slides; checkpoints name that rule (``SPLIT_SCHEME``). Adaptive
L2 (:class:`~rlhf_control.reward.l2_control.AdaptiveL2`) keeps each member's val/train loss ratio
inside ``l2_band``.

Speed: the window's inputs are encoded into contiguous tensors once per :meth:`RewardTrainer.train`
call (when they fit in ``prestack_mb``; image windows are expanded batch by batch instead), and each
batch of pairs is one forward pass over all its steps.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rlhf_control.errors import UserError
from rlhf_control.reward.bagging import SPLIT_SCHEME, member_split
from rlhf_control.reward.dataset import PreferenceDataset
from rlhf_control.reward.ensemble import EVAL_CHUNK_BYTES, Encoded, RewardEnsemble
from rlhf_control.reward.l2_control import AdaptiveL2
from rlhf_control.reward.losses import cropped_sums, preference_loss
from rlhf_control.reward.nets import batch_norm_recalibration
from rlhf_control.reward.pixels import encode_segments
from rlhf_control.types import Label

RECALIBRATION_PAIRS = 256  # training pairs per member that re-estimate batch-norm statistics


@dataclass(frozen=True)
class RewardTrainerConfig:
    """Reward training settings.

    ``noise``: probability the labeller answered uniformly at random (P = (1-noise) P_BT + noise/2).
    ``bagging``: each member trains on its bootstrap sample and validates on its out-of-bag labels
    (about 1/e). Without it, each member holds out its own independent ``val_fraction`` of the labels
    (None = 1/e; 0 = none, and adaptive L2 then has nothing to measure) and trains once on the rest.
    ``val_fraction`` must stay None with bagging.
    ``l2_*``: coefficient c of the penalty (c/2)·||W||² on weights (Adam ``weight_decay``), one per
    member, starting at ``l2_init``. At each check (after every epoch of a :meth:`RewardTrainer.train`
    call of fewer than 10 epochs, after every fifth of a longer one) each member's val/train loss
    ratio is folded into a moving average of its log (weight ``l2_smoothing`` on the new reading;
    1 = no smoothing), and c is multiplied by ``l2_step`` while that average is above ``l2_band[1]``,
    divided while below ``l2_band[0]``, within ``[l2_min, l2_max]``. The network answers a change of c
    only over many epochs, so a large step overshoots: 1.5 per check drove members from clamp to
    clamp; 1.1 keeps them near the band (tests/test_reward_training.py). Smoothing is off by default
    because, on the same problems, it only added lag (less time in the band, wider swings).
    ``batch_size``: pairs per gradient step; 64 kept as default because
    128/256 were at most ~10% faster per epoch on a 2-core CPU (the MLP is compute bound) but learn
    less per epoch (3,000 pairs, 1 epoch: Spearman 0.98 at 64, 0.97 at 128, 0.92 at 256).
    ``prestack_mb``: largest window (at 4 bytes per input value) encoded once into one tensor per
    :meth:`RewardTrainer.train` call; larger (image) windows are expanded batch by batch.
    """

    lr: float = 1e-3
    batch_size: int = 64
    epochs: int = 1
    noise: float = 0.1
    val_fraction: float | None = None
    l2_init: float = 1e-3
    l2_band: tuple[float, float] = (1.1, 1.5)
    l2_step: float = 1.1
    l2_smoothing: float = 1.0
    adaptive_l2: bool = True
    bagging: bool = True
    seed: int = 0
    l2_min: float = 1e-6
    l2_max: float = 10.0
    prestack_mb: float = 256.0
    crop: int = 0

    def __post_init__(self) -> None:
        def bad(name: str, allowed: str) -> UserError:
            return UserError(f"{name}={getattr(self, name)!r} is not allowed; use {allowed}")

        if isinstance(self.crop, bool) or int(self.crop) != self.crop or self.crop < 0:
            raise bad("crop", "an int >= 0 (steps a training window may be shorter than its segment; 0 = off)")
        for name in ("batch_size", "epochs"):
            v = getattr(self, name)
            if isinstance(v, bool) or int(v) != v or v < 1:
                raise bad(name, "an int >= 1")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise bad("lr", "a number > 0")
        if not 0.0 <= self.noise < 1.0:
            raise bad("noise", "a fraction in [0, 1) (0 = no noise model)")
        if self.val_fraction is not None:
            if self.bagging:
                raise bad("val_fraction", "None with bagging=True (its validation labels are the out-of-bag ones)")
            if not 0.0 <= self.val_fraction < 1.0:
                raise bad("val_fraction", "a fraction in [0, 1)")
        if not (0 < self.l2_min <= self.l2_max and math.isfinite(self.l2_max)):
            raise bad("l2_min", f"0 < l2_min <= l2_max={self.l2_max!r}")
        if not 0.0 <= self.l2_init <= self.l2_max:
            raise bad("l2_init", f"a number in [0, l2_max={self.l2_max}]")
        band = tuple(self.l2_band)
        if len(band) != 2 or not 0 < band[0] < band[1]:
            raise bad("l2_band", "(low, high) with 0 < low < high")
        object.__setattr__(self, "l2_band", (float(band[0]), float(band[1])))
        if not 1.0 < self.l2_step <= 2.0:
            raise bad("l2_step", "a factor in (1, 2]")
        if not 0.0 < self.l2_smoothing <= 1.0:
            raise bad("l2_smoothing", "a weight in (0, 1] (1 = no smoothing)")
        if not self.prestack_mb >= 0:
            raise bad("prestack_mb", "a number >= 0")
        if self.seed < 0:
            raise bad("seed", "an int >= 0")


@dataclass(frozen=True)
class TrainReport:
    """Per-member figures after the last epoch of one :meth:`RewardTrainer.train` call.

    Losses are mean cross-entropy per pair in eval mode (train: over the member's bootstrap sample;
    val: over its held-out labels; nan when there are none); accuracy ignores ties; ``l2`` after
    adaptation; ``l2_ratio``: the controller's smoothed val/train ratio (nan before its first reading).
    """

    train_loss: tuple[float, ...]
    val_loss: tuple[float, ...]
    val_accuracy: tuple[float, ...]
    l2: tuple[float, ...]
    n_labels: int
    epochs: int
    seconds: float
    l2_ratio: tuple[float, ...] = ()

    @staticmethod
    def _mean(values: tuple[float, ...]) -> float:
        finite = [v for v in values if math.isfinite(v)]
        return float(np.mean(finite)) if finite else math.nan

    @property
    def mean_train_loss(self) -> float:
        return self._mean(self.train_loss)

    @property
    def mean_val_loss(self) -> float:
        return self._mean(self.val_loss)

    @property
    def mean_val_accuracy(self) -> float:
        return self._mean(self.val_accuracy)

    @property
    def mean_l2(self) -> float:
        return self._mean(self.l2)

    @property
    def min_l2(self) -> float:
        return min(self.l2, default=math.nan)

    @property
    def max_l2(self) -> float:
        return max(self.l2, default=math.nan)


class _Window:
    """The labels of one train() call, grouped by segment length, encoded once where it fits."""

    def __init__(self, ensemble: RewardEnsemble, labels: Sequence[Label], prestack_bytes: float) -> None:
        self.ens, self.labels = ensemble, labels
        lengths = np.array([lb.pair.first.length for lb in labels])
        self.groups = [np.flatnonzero(lengths == t) for t in np.unique(lengths)]
        self.lengths = [int(lengths[g[0]]) for g in self.groups]
        self.group_of = np.empty(len(labels), dtype=np.int64)
        self.pos = np.empty(len(labels), dtype=np.int64)
        for gi, g in enumerate(self.groups):
            self.group_of[g], self.pos[g] = gi, np.arange(len(g))
        self.targets = torch.tensor([lb.target for lb in labels], dtype=torch.float32, device=ensemble.device)
        self.values = np.array([lb.value for lb in labels])
        need = 2 * float(lengths.sum()) * ensemble.step_bytes()
        self.stacked = None
        if need <= prestack_bytes:
            self.stacked = [self._encode(g, (len(g), 2, t)) for g, t in zip(self.groups, self.lengths, strict=True)]

    def _encode(self, idx: np.ndarray, lead: tuple[int, ...]) -> Encoded:
        """Inputs of pairs ``idx`` (same length T), steps ordered (pair, first/second, t)."""
        segs = [s for i in idx for s in (self.labels[i].pair.first, self.labels[i].pair.second)]
        x = encode_segments(self.ens, segs)
        if isinstance(x, tuple):
            return tuple(v.reshape(*lead, *v.shape[1:]) for v in x)
        return x.reshape(*lead, *x.shape[1:])

    def batch(self, idx: np.ndarray) -> tuple[Encoded, int]:
        """Flat input ``(B*2*T, ...)`` for label indices ``idx`` (all in one length group), and T."""
        gi = int(self.group_of[idx[0]])
        t = self.lengths[gi]
        if self.stacked is None:
            x = self._encode(idx, (len(idx) * 2 * t,))
            return x, t
        rows = torch.as_tensor(self.pos[idx], device=self.ens.device)
        src = self.stacked[gi]
        if isinstance(src, tuple):
            return tuple(v[rows].flatten(0, 2) for v in src), t
        return src[rows].flatten(0, 2), t

    def batches(self, idx: np.ndarray, size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
        """Shuffled batches of ``idx`` (repeats allowed), each within one length group."""
        idx = idx[rng.permutation(len(idx))]
        out = []
        for gi in range(len(self.groups)):
            sub = idx[self.group_of[idx] == gi]
            out += [sub[a : a + size] for a in range(0, len(sub), size)]
        for j in rng.permutation(len(out)) if len(out) > 1 else range(len(out)):
            yield out[j]


class RewardTrainer:
    """Trains each member of ``ensemble`` on its own bootstrap sample of a :class:`PreferenceDataset`."""

    def __init__(
        self, ensemble: RewardEnsemble, config: RewardTrainerConfig | None = None, rng: np.random.Generator | None = None
    ) -> None:
        self.ensemble = ensemble
        self.config = config = config or RewardTrainerConfig()
        self.rng = rng if rng is not None else np.random.default_rng(config.seed)
        self.l2_control = AdaptiveL2(ensemble.n_members, config.l2_init, config.l2_band, config.l2_step,
                                     config.l2_smoothing, config.l2_min, config.l2_max, config.adaptive_l2)
        self.optimizers = [self._make_optimizer(m, l2) for m, l2 in zip(ensemble.members, self.l2, strict=True)]
        self.epochs_done = 0

    @property
    def l2(self) -> list[float]:
        """Each member's L2 coefficient now."""
        return list(self.l2_control.coefficients)

    def _make_optimizer(self, member: torch.nn.Module, l2: float) -> torch.optim.Adam:
        # L2 on weight matrices/kernels only; biases and batch-norm parameters are not shrunk.
        decay = [p for p in member.parameters() if p.ndim > 1]
        rest = [p for p in member.parameters() if p.ndim <= 1]
        groups = [{"params": decay, "weight_decay": l2}, {"params": rest, "weight_decay": 0.0}]
        return torch.optim.Adam(groups, lr=self.config.lr)

    def member_split(self, seqs: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(val_mask (K, N) bool, counts (K, N) int)`` for labels with these seqs
        (:func:`~rlhf_control.reward.bagging.member_split`). A member whose counts are all 0
        (possible in windows of a few labels) is not trained by that call."""
        c = self.config
        return member_split(seqs, self.ensemble.n_members, c.seed, c.bagging, c.val_fraction)

    def train(self, dataset: PreferenceDataset, epochs: int | None = None) -> TrainReport:
        """Train every member for ``epochs`` (default ``config.epochs``) passes over its sample."""
        epochs = self.config.epochs if epochs is None else epochs
        if isinstance(epochs, bool) or int(epochs) != epochs or epochs < 1:
            raise ValueError(f"epochs={epochs!r} is not allowed; use an int >= 1")
        labels = dataset.labels
        if not labels:
            raise ValueError("cannot train on an empty preference window (0 labels); add labels first")
        start = time.perf_counter()
        window = _Window(self.ensemble, labels, self.config.prestack_mb * 2**20)
        val, counts = self.member_split(dataset.seqs)
        train_idx = [np.repeat(np.arange(len(labels)), counts[m]) for m in range(self.ensemble.n_members)]
        seed = int(self.rng.integers(2**63))
        with _torch_rng(self.ensemble.device, seed):
            # The losses behind adaptive L2 cost a pass over the whole window: measure them after the
            # last epoch and every fifth of a long call (pretraining), not after every epoch.
            every = max(1, int(epochs) // 5)
            for epoch in range(int(epochs)):
                for m, member in enumerate(self.ensemble.members):
                    member.train()
                    for idx in window.batches(train_idx[m], self.config.batch_size, self.rng):
                        self._step(window, m, idx)
                if (epoch + 1) % every and epoch + 1 < int(epochs):
                    self.epochs_done += 1
                    continue
                self._recalibrate(window, train_idx, seed + epoch)
                losses, correct = self._evaluate(window)
                train_loss = _weighted_mean(losses, counts)
                val_loss = _weighted_mean(losses, val)
                self._adapt_l2(train_loss, val_loss)
                self.epochs_done += 1
        decided = val & (window.values != 0)[None, :]
        val_acc = _weighted_mean(correct, decided)
        def floats(values: Any) -> tuple[float, ...]:
            return tuple(float(v) for v in values)

        return TrainReport(
            floats(train_loss), floats(val_loss), floats(val_acc), floats(self.l2), len(labels), int(epochs),
            time.perf_counter() - start, self.l2_control.ratios(),
        )

    def _step(self, window: _Window, m: int, idx: np.ndarray) -> None:
        x, t = window.batch(idx)
        steps = self.ensemble.member_forward_t(m, x).view(len(idx), 2, t)
        sums = cropped_sums(steps, self.config.crop) if self.config.crop else steps.sum(dim=2)
        rows = torch.as_tensor(idx, device=self.ensemble.device)
        loss = preference_loss(sums[:, 0], sums[:, 1], window.targets[rows], self.config.noise).mean()
        opt = self.optimizers[m]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        self.ensemble.weights_changed()

    def _recalibrate(self, window: _Window, train_idx: list[np.ndarray], seed: int) -> None:
        """Each member's batch-norm statistics from up to RECALIBRATION_PAIRS of its training pairs,
        dropout off (:func:`batch_norm_recalibration`): what evaluation, the L2 controller and the
        agent's reward then use."""
        rng = np.random.default_rng(seed)
        for m, member in enumerate(self.ensemble.members):
            with batch_norm_recalibration(member) as has_norm:
                if has_norm and len(train_idx[m]):
                    idx = rng.choice(train_idx[m], min(RECALIBRATION_PAIRS, len(train_idx[m])), replace=False)
                    for b in window.batches(idx, self.config.batch_size, rng):
                        self.ensemble.member_forward_t(m, window.batch(b)[0])
        self.ensemble.weights_changed()

    @torch.no_grad()
    def _evaluate(self, window: _Window) -> tuple[np.ndarray, np.ndarray]:
        """Eval-mode per-member loss and correctness ``(K, N)`` on every label of the window."""
        ens, n = self.ensemble, len(window.labels)
        ens.members.eval()
        losses = np.empty((ens.n_members, n))
        correct = np.empty((ens.n_members, n))
        for group, t in zip(window.groups, window.lengths, strict=True):
            size = max(1, EVAL_CHUNK_BYTES // (2 * t * ens.step_bytes()))
            for a in range(0, len(group), size):
                idx = group[a : a + size]
                x, t = window.batch(idx)
                sums = ens.raw_member_outputs_t(x).view(ens.n_members, len(idx), 2, t).sum(dim=3)
                rows = torch.as_tensor(idx, device=ens.device)
                y = window.targets[rows].expand(ens.n_members, -1)
                losses[:, idx] = preference_loss(sums[..., 0], sums[..., 1], y, self.config.noise).cpu().numpy()
                d = (sums[..., 0] - sums[..., 1]).cpu().numpy() * np.sign(window.values[idx])
                correct[:, idx] = (d > 0) + 0.5 * (d == 0)
        return losses, correct

    def evaluate(self, dataset: PreferenceDataset) -> tuple[np.ndarray, np.ndarray]:
        """Mean eval-mode loss ``(K,)`` and accuracy ``(K,)`` (ties ignored) over all labels of ``dataset``."""
        labels = dataset.labels
        if not labels:
            raise ValueError("cannot evaluate an empty preference window (0 labels)")
        window = _Window(self.ensemble, labels, 0.0)
        losses, correct = self._evaluate(window)
        decided = np.broadcast_to(window.values != 0, losses.shape)
        return losses.mean(axis=1), _weighted_mean(correct, decided)

    def _adapt_l2(self, train_loss: np.ndarray, val_loss: np.ndarray) -> None:
        self.l2_control.update(train_loss, val_loss)
        for opt, l2 in zip(self.optimizers, self.l2, strict=True):
            opt.param_groups[0]["weight_decay"] = l2

    def state_dict(self) -> dict[str, Any]:
        """Split scheme, L2 controller, optimiser states and epoch count, for checkpoints and the
        reward worker (``torch.save``-able)."""
        return {
            "split_scheme": SPLIT_SCHEME,
            **self.l2_control.state_dict(),
            "optimizers": [o.state_dict() for o in self.optimizers],
            "epochs_done": self.epochs_done,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; a state of another :data:`SPLIT_SCHEME` (or none: written
        before scheme 2) raises a one-line :class:`UserError`."""
        scheme = state.get("split_scheme")
        if scheme != SPLIT_SCHEME:
            was = "no split scheme (it predates out-of-bag validation)" if scheme is None else f"split_scheme={scheme!r}"
            raise UserError(f"reward trainer state has {was}; this version needs split_scheme={SPLIT_SCHEME} and "
                            "would validate the old weights on labels they were fitted to: start a new run directory")
        k = self.ensemble.n_members
        if len(state.get("l2", ())) != k or len(state.get("optimizers", ())) != k:
            raise UserError(f"trainer state has {len(state.get('l2', ()))} members; this ensemble has {k}")
        self.l2_control.load_state_dict(state)
        for opt, s, l2 in zip(self.optimizers, state["optimizers"], self.l2, strict=True):
            opt.load_state_dict(s)
            opt.param_groups[0]["weight_decay"] = l2
        self.epochs_done = int(state.get("epochs_done", 0))


def _weighted_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Row-wise weighted mean ``(K,)``; nan for rows with zero total weight."""
    w = np.asarray(weights, dtype=np.float64)
    total = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (values * w).sum(axis=1) / np.where(total > 0, total, 1), np.nan)


@contextlib.contextmanager
def _torch_rng(device: torch.device, seed: int) -> Iterator[None]:
    """Seed dropout for this call on a forked generator, leaving torch's global RNG as it was."""
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.random.default_generator.manual_seed(seed)
        if cuda:
            torch.cuda.manual_seed(seed)
        yield
