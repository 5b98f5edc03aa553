"""Query selectors: which pairs of segments to ask the oracle about.

All selectors draw candidate pairs of *distinct*, *compatible* segments (same length, observation
and action shapes) with no pair repeated in either order, and are deterministic given ``rng``.
Scored selectors ask the ensemble once per call for the member returns of the unique segments
among the candidates: ``ensemble.member_segment_returns(segments) -> (K, N)`` on the raw
Bradley-Terry scale, so P_k(first better) = sigmoid(R_k(first) - R_k(second)).

- ``random``: n random pairs.
- ``variance`` (Christiano et al. 2017): ``oversample * n`` candidates, keep the n with the highest
  variance across members of P_k.
- ``entropy`` (B-Pref's ``entropy_sampling``): the n candidates with the highest mean, over members,
  of each member's binary entropy of P_k (pairs every member finds close).
- ``predictive-entropy``: the n candidates with the highest binary entropy of the ensemble-mean P
  (members that disagree raise it too). Until 2026-12-07 this was the one named ``entropy``.
- ``kcenter-variance`` (B-Pref's "k-center + disagreement"): the ``top_factor * n`` highest-variance
  candidates, then greedy k-center on pair features (the two segments' flattened obs + acts,
  images block-averaged) to pick n diverse ones. The first centre is the top-variance pair. Two
  departures from B-Pref's ``kcenter_disagree_sampling``: its features are the observations alone,
  and its distances also count the pairs labelled before (its first pick is the candidate farthest
  from them); here the selector sees only the candidates.

If fewer pairs can be formed than asked for, a selector returns all of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from rlhf_control.errors import UserError
from rlhf_control.registry import Registry
from rlhf_control.types import Segment, SegmentPair, StackedFrames


class ReturnsModel(Protocol):
    """Anything that predicts per-member segment returns, e.g. ``RewardEnsemble``."""

    def member_segment_returns(self, segments: Sequence[Segment]) -> np.ndarray:
        """(K, N) raw returns of N segments under K members."""
        ...


@runtime_checkable
class QuerySelector(Protocol):
    def select(
        self, segments: Sequence[Segment], n: int, ensemble: ReturnsModel | None, rng: np.random.Generator
    ) -> list[SegmentPair]:
        """Up to ``n`` distinct pairs of distinct segments from ``segments``."""
        ...


SELECTORS: Registry[QuerySelector] = Registry("selector")


def make_selector(name: str, **kwargs: Any) -> QuerySelector:
    """Build a registered selector; unknown names or options raise a one-line ValueError."""
    factory = SELECTORS.get(name)
    if is_dataclass(factory):
        allowed = [f.name for f in fields(factory)]
        for key in kwargs:
            if key not in allowed:
                raise UserError(
                    f"selector {name!r} has no option {key!r}; allowed: {', '.join(allowed) or 'none'}"
                )
    return factory(**kwargs)


# --- candidates -----------------------------------------------------------------------------


def _signature(seg: Segment) -> tuple:
    return (seg.length, seg.obs_shape, seg.act_shape)


def candidate_pairs(segments: Sequence[Segment], m: int, rng: np.random.Generator) -> np.ndarray:
    """``(min(m, possible), 2)`` int indices into ``segments``: distinct compatible pairs, uniformly drawn.

    No index is paired with itself and no unordered pair appears twice; the order within a pair
    (which is "first") is random.
    """
    groups: dict[tuple, list[int]] = {}
    for i, seg in enumerate(segments):
        groups.setdefault(_signature(seg), []).append(i)
    members = [np.asarray(g, dtype=np.int64) for g in groups.values() if len(g) >= 2]
    counts = np.array([len(g) * (len(g) - 1) // 2 for g in members], dtype=np.int64)
    total = int(counts.sum())
    if m <= 0 or total == 0:
        return np.empty((0, 2), dtype=np.int64)
    if 2 * m >= total:
        # Dense request: enumerate every pair and take a random subset (rejection would stall).
        every = []
        for g in members:
            a, b = np.triu_indices(len(g), k=1)
            every.append(np.stack([g[a], g[b]], axis=1))
        pairs = np.concatenate(every)[rng.permutation(total)[:m]]
    else:
        sizes = np.array([len(g) for g in members])
        flat = np.concatenate(members)
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        chosen: dict[tuple[int, int], None] = {}  # insertion-ordered set
        while len(chosen) < m:
            k = 2 * (m - len(chosen)) + 8
            gi = rng.choice(len(members), size=k, p=counts / total)
            i = rng.integers(0, sizes[gi])
            j = rng.integers(0, sizes[gi] - 1)
            j = j + (j >= i)  # uniform over the other members of the group
            for a, b in zip(flat[offsets[gi] + i], flat[offsets[gi] + j], strict=True):
                chosen.setdefault((min(a, b), max(a, b)), None)
                if len(chosen) == m:
                    break
        pairs = np.array(list(chosen), dtype=np.int64)
    flip = rng.random(len(pairs)) < 0.5
    pairs[flip] = pairs[flip][:, ::-1]
    return pairs


def _to_pairs(segments: Sequence[Segment], idx: np.ndarray) -> list[SegmentPair]:
    return [SegmentPair(segments[a], segments[b]) for a, b in idx]


def _check_n(n: int) -> int:
    if n < 0:
        raise UserError(f"number of queries n={n} is not allowed; use an integer >= 0")
    return int(n)


def _check_factor(name: str, value: float) -> None:
    if not (value >= 1):
        raise UserError(f"selector option {name}={value} is not allowed; use a number >= 1")


# --- scores ---------------------------------------------------------------------------------


def member_probabilities(
    segments: Sequence[Segment], pairs: np.ndarray, ensemble: ReturnsModel
) -> np.ndarray:
    """(K, M) P_k(first better) for M index pairs, from one ensemble call on the unique segments."""
    if ensemble is None:
        raise UserError("this selector needs an ensemble with member_segment_returns; got None")
    uniq, inverse = np.unique(pairs, return_inverse=True)
    inverse = inverse.reshape(pairs.shape)
    returns = np.asarray(ensemble.member_segment_returns([segments[i] for i in uniq]), dtype=np.float64)
    if returns.ndim != 2 or returns.shape[1] != len(uniq):
        raise UserError(f"member_segment_returns must return shape (K, {len(uniq)}), got {returns.shape}")
    diff = returns[:, inverse[:, 0]] - returns[:, inverse[:, 1]]
    return np.exp(-np.logaddexp(0.0, -diff))  # stable sigmoid


def variance_scores(probs: np.ndarray) -> np.ndarray:
    """(M,) variance across members of (K, M) probabilities."""
    return probs.var(axis=0)


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """Binary entropy (nats) of probabilities ``p``, elementwise."""
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return -(p * np.log(p) + (1 - p) * np.log1p(-p))


def entropy_scores(probs: np.ndarray) -> np.ndarray:
    """(M,) mean over members of each member's binary entropy, of (K, M) probabilities (B-Pref's)."""
    return binary_entropy(probs).mean(axis=0)


def predictive_entropy_scores(probs: np.ndarray) -> np.ndarray:
    """(M,) binary entropy of the member-mean probability of (K, M) probabilities."""
    return binary_entropy(probs.mean(axis=0))


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores, best first; ties keep candidate order (already random)."""
    return np.argsort(-scores, kind="stable")[:k]


# --- pair features for k-center --------------------------------------------------------------


def _block_mean(x: np.ndarray, axis: int, bins: int) -> np.ndarray:
    size = x.shape[axis]
    if size <= bins:
        return x
    edges = np.linspace(0, size, bins + 1).astype(np.int64)
    widths = np.diff(edges).astype(np.float32)
    shape = [1] * x.ndim
    shape[axis] = bins
    return np.add.reduceat(x, edges[:-1], axis=axis) / widths.reshape(shape)


def segment_features(seg: Segment, max_dim: int = 2048, image_side: int = 8) -> np.ndarray:
    """(D,) float32 feature of a segment, D <= max_dim: flattened obs then acts.

    Image observations (ndim >= 3 per step, i.e. ``(T, H, W[, C])``) are block-averaged to at
    most ``image_side`` x ``image_side``; stacked frames use each frame once. A vector longer
    than ``max_dim`` is averaged over ``max_dim`` contiguous bins.
    """
    obs = np.asarray(seg.obs.frames) if isinstance(seg.obs, StackedFrames) else seg.obs_array()
    obs = obs.astype(np.float32, copy=False)
    if obs.ndim >= 3:
        obs = _block_mean(_block_mean(obs, 1, image_side), 2, image_side)
    vec = np.concatenate([obs.reshape(-1), np.asarray(seg.acts, dtype=np.float32).reshape(-1)])
    return _block_mean(vec, 0, max_dim)


def pair_features(segments: Sequence[Segment], pairs: np.ndarray, max_dim: int = 2048) -> np.ndarray:
    """(M, D) features of index pairs: the two segments' features concatenated (zero-padded to a common D)."""
    cache = {int(i): segment_features(segments[i], max_dim) for i in np.unique(pairs)}
    rows = [np.concatenate([cache[int(a)], cache[int(b)]]) for a, b in pairs]
    width = max((len(r) for r in rows), default=0)
    out = np.zeros((len(rows), width), dtype=np.float32)
    for k, r in enumerate(rows):
        out[k, : len(r)] = r
    return out


def greedy_k_center(features: np.ndarray, k: int, first: int = 0) -> list[int]:
    """Greedy k-center on rows of ``features: (M, D)``: start at ``first``, then add the row farthest
    (Euclidean) from all chosen ones. Returns min(k, M) row indices in pick order."""
    m = len(features)
    if m == 0 or k <= 0:
        return []
    x = features.astype(np.float64, copy=False)
    chosen = [first]
    min_dist = np.linalg.norm(x - x[first], axis=1)
    min_dist[first] = -np.inf
    while len(chosen) < min(k, m):
        nxt = int(np.argmax(min_dist))
        chosen.append(nxt)
        min_dist = np.minimum(min_dist, np.linalg.norm(x - x[nxt], axis=1))
        min_dist[chosen] = -np.inf
    return chosen


# --- selectors ------------------------------------------------------------------------------


@SELECTORS.register("random")
@dataclass(frozen=True)
class RandomSelector:
    """Uniformly random distinct pairs; needs no ensemble (None is fine)."""

    def select(
        self, segments: Sequence[Segment], n: int, ensemble: ReturnsModel | None, rng: np.random.Generator
    ) -> list[SegmentPair]:
        return _to_pairs(segments, candidate_pairs(segments, _check_n(n), rng))


@SELECTORS.register("variance")
@dataclass(frozen=True)
class VarianceSelector:
    """The paper's: of ``oversample * n`` random candidates keep the n with highest member variance of P."""

    oversample: float = 10.0

    def __post_init__(self) -> None:
        _check_factor("oversample", self.oversample)

    def _score(self, probs: np.ndarray) -> np.ndarray:
        return variance_scores(probs)

    def select(
        self, segments: Sequence[Segment], n: int, ensemble: ReturnsModel | None, rng: np.random.Generator
    ) -> list[SegmentPair]:
        n = _check_n(n)
        cands = candidate_pairs(segments, math.ceil(self.oversample * n), rng)
        if len(cands) == 0:
            return []
        scores = self._score(member_probabilities(segments, cands, ensemble))
        return _to_pairs(segments, cands[_top(scores, n)])


@SELECTORS.register("entropy")
@dataclass(frozen=True)
class EntropySelector(VarianceSelector):
    """B-Pref's entropy sampling: the n candidates with the highest mean member entropy."""

    def _score(self, probs: np.ndarray) -> np.ndarray:
        return entropy_scores(probs)


@SELECTORS.register("predictive-entropy")
@dataclass(frozen=True)
class PredictiveEntropySelector(VarianceSelector):
    """The n candidates whose ensemble-mean P is closest to 1/2."""

    def _score(self, probs: np.ndarray) -> np.ndarray:
        return predictive_entropy_scores(probs)


@SELECTORS.register("kcenter-variance")
@dataclass(frozen=True)
class KCenterVarianceSelector:
    """B-Pref's k-center + disagreement: diverse pairs among the ``top_factor * n`` highest-variance.

    Default ``top_factor=5`` with ``oversample=10`` keeps B-Pref's top half of the candidates.
    ``max_feature_dim`` bounds each segment's feature length (cost is O(n * top_factor * n * D)).
    """

    oversample: float = 10.0
    top_factor: float = 5.0
    max_feature_dim: int = 2048

    def __post_init__(self) -> None:
        _check_factor("oversample", self.oversample)
        _check_factor("top_factor", self.top_factor)
        if self.max_feature_dim < 1:
            raise UserError(
                f"selector option max_feature_dim={self.max_feature_dim} is not allowed; use >= 1"
            )

    def select(
        self, segments: Sequence[Segment], n: int, ensemble: ReturnsModel | None, rng: np.random.Generator
    ) -> list[SegmentPair]:
        n = _check_n(n)
        cands = candidate_pairs(segments, math.ceil(self.oversample * n), rng)
        if len(cands) == 0 or n == 0:
            return []
        scores = variance_scores(member_probabilities(segments, cands, ensemble))
        pool = cands[_top(scores, max(n, math.ceil(self.top_factor * n)))]  # best first
        picked = greedy_k_center(pair_features(segments, pool, self.max_feature_dim), n, first=0)
        return _to_pairs(segments, pool[picked])
