"""Query selectors: the right pairs under a known ensemble, distinctness, determinism, errors."""

from itertools import combinations

import numpy as np
import pytest

from rlhf_control.queries.selection import (
    SELECTORS,
    KCenterVarianceSelector,
    candidate_pairs,
    greedy_k_center,
    make_selector,
    pair_features,
    segment_features,
)
from rlhf_control.registry import UnknownNameError
from rlhf_control.types import Segment, StackedFrames


class FixedReturns:
    """Ensemble stand-in with known member returns per segment uid; records its calls."""

    def __init__(self, returns_by_uid: np.ndarray):  # (K, n_segments)
        self.returns = np.asarray(returns_by_uid, dtype=np.float64)
        self.calls: list[list[int]] = []

    def member_segment_returns(self, segments):
        uids = [s.uid for s in segments]
        self.calls.append(uids)
        return self.returns[:, uids]


def make_segments(n, t=4, obs_dim=3, rng=None, obs=None):
    rng = rng or np.random.default_rng(0)
    segs = []
    for i in range(n):
        o = rng.normal(size=(t, obs_dim)) if obs is None else obs[i]
        segs.append(Segment(obs=o, acts=np.zeros((t, 1)), true_rewards=np.zeros(t), uid=i))
    return segs


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def all_pair_scores(returns, kind):
    """Independent recomputation over every unordered pair of uids."""
    out = {}
    for a, b in combinations(range(returns.shape[1]), 2):
        p = sigmoid(returns[:, a] - returns[:, b])
        if kind == "variance":
            out[frozenset((a, b))] = p.var()
        elif kind == "entropy":  # B-Pref's get_entropy: each member's entropy, then their mean
            out[frozenset((a, b))] = np.mean(-(p * np.log(p) + (1 - p) * np.log(1 - p)))
        else:
            q = p.mean()
            out[frozenset((a, b))] = -(q * np.log(q) + (1 - q) * np.log(1 - q))
    return out


def uid_pairs(pairs):
    return [frozenset((p.first.uid, p.second.uid)) for p in pairs]


@pytest.mark.parametrize("kind", ["variance", "entropy", "predictive-entropy"])
def test_scored_selector_returns_exact_top_pairs_when_all_pairs_are_candidates(kind):
    rng = np.random.default_rng(1)
    returns = rng.normal(scale=2.0, size=(4, 8))  # 28 pairs; 3 * 10 candidates covers them all
    segs = make_segments(8)
    ens = FixedReturns(returns)
    pairs = make_selector(kind).select(segs, 3, ens, np.random.default_rng(5))
    scores = all_pair_scores(returns, kind)
    expected = sorted(scores, key=scores.get, reverse=True)[:3]
    assert uid_pairs(pairs) == expected  # the right pairs, best first
    # one ensemble call, on unique segments only
    assert len(ens.calls) == 1 and len(set(ens.calls[0])) == len(ens.calls[0])


def test_variance_and_both_entropies_disagree_on_this_ensemble():
    # guards the tests above against checking the same thing twice
    returns = np.random.default_rng(1).normal(scale=2.0, size=(4, 8))
    tops = [tuple(sorted(sc, key=sc.get)[-3:]) for sc in
            (all_pair_scores(returns, k) for k in ("variance", "entropy", "predictive-entropy"))]
    assert len(set(tops)) == 3


def test_variance_picks_high_variance_pairs_from_a_large_pool():
    rng = np.random.default_rng(2)
    returns = rng.normal(scale=2.0, size=(3, 60))
    segs = make_segments(60)
    scores = all_pair_scores(returns, "variance")
    median = np.median(list(scores.values()))
    chosen = uid_pairs(make_selector("variance").select(segs, 10, FixedReturns(returns), rng))
    rand = uid_pairs(make_selector("random").select(segs, 10, None, rng))
    assert len(set(chosen)) == 10
    assert all(scores[p] > median for p in chosen)
    assert np.mean([scores[p] for p in chosen]) > 2 * np.mean([scores[p] for p in rand])


def test_kcenter_spreads_pairs_that_plain_variance_bunches():
    # Segments 0-5 are near-identical and the members disagree most about them; 6-11 are diverse
    # with somewhat less disagreement. Plain variance picks pairs among 0-5 (near-duplicate
    # features); k-center must pick more spread-out pairs from the same top-variance pool.
    rng = np.random.default_rng(3)
    obs = [np.full((4, 3), 0.0) + 1e-3 * rng.normal(size=(4, 3)) for _ in range(6)]
    obs += [rng.normal(scale=10.0, size=(4, 3)) for _ in range(6)]
    segs = make_segments(12, obs=obs)
    # members agree that 6-11 beat 0-5 by far (cross pairs: no disagreement) and disagree within
    # each group, more strongly within 0-5 (steps of 3) than within 6-11 (steps of 0.5).
    a, b = np.arange(6) * 3.0, np.arange(6) * 0.5
    returns = np.array([np.r_[0 * a, 100 + 0 * b], np.r_[a, 100 + b], np.r_[-a, 100 - b]])
    n = 3
    kw = {"oversample": 30, "top_factor": 8}  # all 66 pairs are candidates; pool = top 24
    ens = FixedReturns(returns)
    var_pairs = make_selector("variance", oversample=30).select(segs, n, ens, np.random.default_rng(0))
    kc_pairs = make_selector("kcenter-variance", **kw).select(segs, n, ens, np.random.default_rng(0))

    def min_dist(pairs):
        idx = np.array([[p.first.uid, p.second.uid] for p in pairs])
        f = pair_features(segs, idx)
        return min(np.linalg.norm(f[i] - f[j]) for i, j in combinations(range(len(f)), 2))

    assert all(p.first.uid < 6 and p.second.uid < 6 for p in var_pairs)
    assert min_dist(kc_pairs) > 10 * min_dist(var_pairs)
    scores = all_pair_scores(returns, "variance")
    pool = sorted(scores, key=scores.get, reverse=True)[:24]
    assert set(uid_pairs(kc_pairs)) <= set(pool)
    assert uid_pairs(kc_pairs)[0] == uid_pairs(var_pairs)[0]  # first centre = top-variance pair


def test_greedy_k_center_takes_the_farthest_point():
    x = np.array([[0.0], [1.0], [10.0], [4.0]])
    assert greedy_k_center(x, 3, first=0) == [0, 2, 3]
    assert greedy_k_center(x, 10) == [0, 2, 3, 1]


@pytest.mark.parametrize("name", sorted(SELECTORS.names()))
def test_pairs_are_distinct_and_deterministic(name):
    segs = make_segments(20)
    ens = FixedReturns(np.random.default_rng(0).normal(size=(3, 20)))
    sel = make_selector(name)
    a = sel.select(segs, 15, ens, np.random.default_rng(7))
    b = sel.select(segs, 15, ens, np.random.default_rng(7))
    c = sel.select(segs, 15, ens, np.random.default_rng(8))
    assert len(a) == 15
    assert all(p.first is not p.second for p in a)
    assert len(set(uid_pairs(a))) == 15
    assert [(p.first.uid, p.second.uid) for p in a] == [(p.first.uid, p.second.uid) for p in b]
    assert uid_pairs(a) != uid_pairs(c)


@pytest.mark.parametrize("name", sorted(SELECTORS.names()))
def test_fewer_segments_than_needed(name):
    ens = FixedReturns(np.random.default_rng(0).normal(size=(3, 3)))
    pairs = make_selector(name).select(make_segments(3), 10, ens, np.random.default_rng(0))
    assert sorted(map(sorted, uid_pairs(pairs))) == [[0, 1], [0, 2], [1, 2]]
    assert make_selector(name).select(make_segments(1), 5, ens, np.random.default_rng(0)) == []
    assert make_selector(name).select([], 5, ens, np.random.default_rng(0)) == []
    assert make_selector(name).select(make_segments(3), 0, ens, np.random.default_rng(0)) == []


def test_incompatible_segments_are_never_paired():
    segs = make_segments(5, t=4) + [
        Segment(obs=np.zeros((6, 3)), acts=np.zeros((6, 1)), uid=5 + i) for i in range(5)
    ]
    idx = candidate_pairs(segs, 100, np.random.default_rng(0))
    assert len(idx) == 20  # 10 + 10 possible pairs
    assert all((a < 5) == (b < 5) for a, b in idx)
    sparse = candidate_pairs(segs, 4, np.random.default_rng(0))  # rejection-sampling path
    assert len(sparse) == 4 and all((a < 5) == (b < 5) and a != b for a, b in sparse)


def test_candidate_orientation_is_random():
    idx = candidate_pairs(make_segments(40), 200, np.random.default_rng(0))
    assert 0.3 < np.mean(idx[:, 0] < idx[:, 1]) < 0.7


def test_image_features_are_downscaled():
    frames = np.random.default_rng(0).integers(0, 255, size=(28, 84, 84), dtype=np.uint8)
    seg = Segment(obs=StackedFrames(frames, 4), acts=np.zeros(25, dtype=np.int64))
    f = segment_features(seg, max_dim=2048)
    assert f.ndim == 1 and len(f) <= 2048
    assert abs(f.mean() - frames.mean()) < 5  # averages, not arbitrary samples


def test_unknown_names_and_options():
    with pytest.raises(UnknownNameError, match="kcenter-variance") as err:
        make_selector("varience")
    assert "variance" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="oversample"):
        make_selector("variance", oversampel=3)
    with pytest.raises(ValueError, match="top_factor=0.5"):
        KCenterVarianceSelector(top_factor=0.5)
    with pytest.raises(ValueError, match="n=-1"):
        make_selector("random").select(make_segments(3), -1, None, np.random.default_rng(0))
    with pytest.raises(ValueError, match="ensemble"):
        make_selector("variance").select(make_segments(3), 1, None, np.random.default_rng(0))
