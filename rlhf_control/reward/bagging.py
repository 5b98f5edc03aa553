"""Which labels of the window each ensemble member trains on, and which it is validated on.

The paper's bagging: each member trains on |D| labels drawn with replacement from the window D and
holds out 1/e of the labels, which is the out-of-bag share of such a sample. Here the sample is drawn
label by label: member k uses label i Poisson(1) times per epoch (the limit of i's count in |D|
draws from |D|), and its validation labels are exactly those with count 0. Counts come from hashing
``(seed, k, label seq)``, so a label keeps its count, and its side of the split, for as long as it
stays in the FIFO window, on every call and in the reward worker alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

SPLIT_SCHEME = 2
"""The rule :func:`member_split` follows, saved with the trainer's state: 1 (no version in the
state) held out an independent 1/e per member and bagged the rest; 2 validates on the out-of-bag
labels of a full bootstrap sample. Weights fitted under one scheme must not be trained on under
another: their old training labels would count as held out."""

_POISSON1_CDF = np.cumsum([math.exp(-1) / math.factorial(k) for k in range(20)])


def hash_uniform(seed: int, member: int, stream: int, seqs: np.ndarray) -> np.ndarray:
    """Deterministic uniforms in [0, 1) per seq (splitmix64 mixing), independent across streams."""

    def mix(x: np.ndarray) -> np.ndarray:
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))

    with np.errstate(over="ignore"):
        key = mix(mix(mix(np.array([seed], dtype=np.uint64)) ^ np.uint64(member)) ^ np.uint64(stream))
        h = mix(np.asarray(seqs, dtype=np.int64).astype(np.uint64) ^ key)
    return (h >> np.uint64(11)).astype(np.float64) * 2.0**-53


def member_split(seqs: Sequence[int] | np.ndarray, n_members: int, seed: int, bagging: bool = True,
                 val_fraction: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(val_mask (K, N) bool, counts (K, N) int)`` for the labels with these seqs: member k trains
    on label i ``counts[k, i]`` times per epoch and is validated on the labels of ``val_mask[k]``.

    With ``bagging``, counts are Poisson(1) (their sum is about N, and about 63% of the labels are
    drawn at least once) and validation is exactly the labels with count 0 (about 1/e); ``val_fraction``
    must then be None. Without, each member holds out its own independent ``val_fraction`` share
    (1/e when None; 0 holds out nothing) and trains once on every other label.
    """
    seqs = np.asarray(seqs, dtype=np.int64)
    counts = np.ones((n_members, len(seqs)), dtype=np.int64)
    val = np.zeros((n_members, len(seqs)), dtype=bool)
    if bagging and val_fraction is not None:
        raise ValueError(f"val_fraction={val_fraction!r} is not allowed with bagging; use None")
    for m in range(n_members):
        if bagging:
            counts[m] = np.searchsorted(_POISSON1_CDF, hash_uniform(seed, m, 1, seqs), side="right")
            val[m] = counts[m] == 0
        else:
            held_out = 1 / math.e if val_fraction is None else val_fraction
            val[m] = hash_uniform(seed, m, 0, seqs) < held_out
            counts[m][val[m]] = 0
    return val, counts
