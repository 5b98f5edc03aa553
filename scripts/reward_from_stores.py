"""How well reward-model variants generalise, learned offline from the labels finished runs asked.

Each run's labels (its ``preferences.sqlite``) are replayed in the order they were answered, in
rounds of ``--round`` labels with ``--epochs`` reward epochs after each, as the loop would train on
them; the ensemble is then scored on the labelled clips of every *other* run given: the Spearman rank
correlation of its predicted clip returns with the true ones, and the share of those runs' decided
labels it orders right (those pairs were chosen for the ensembles' disagreement: hard ones). The
stores must come from one task. It says nothing about the closed loop (which clips a variant would
have asked about); it isolates what the model makes of the same labels.

    python scripts/reward_from_stores.py runs/*/walker-walk-L100-s*/preferences.sqlite --variants base no-l2 crop10
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from rlhf_control.reward.dataset import PreferenceDataset
from rlhf_control.reward.ensemble import EnsembleConfig, RewardEnsemble
from rlhf_control.reward.training import RewardTrainer, RewardTrainerConfig
from rlhf_control.store.store import PreferenceStore
from rlhf_control.types import Label, Segment, segment_steps

# name -> (EnsembleConfig overrides, RewardTrainerConfig overrides)
VARIANTS: dict[str, tuple[dict, dict]] = {
    "base": ({}, {}),
    "no-l2": ({}, {"adaptive_l2": False, "l2_init": 0.0}),
    "wide": ({"hidden": (256, 256, 256)}, {}),
    "no-input-norm": ({"input_norm": False}, {}),
    "no-noise": ({}, {"noise": 0.0}),
    "crop5": ({}, {"crop": 5}),
    "crop10": ({}, {"crop": 10}),
    "no-l2-crop10": ({}, {"adaptive_l2": False, "l2_init": 0.0, "crop": 10}),
}


def clips(labels: list[Label]) -> list[Segment]:
    seen: dict[int, Segment] = {}
    for lb in labels:
        for s in (lb.pair.first, lb.pair.second):
            seen[s.uid] = s
    return list(seen.values())


def learn(labels: list[Label], net: dict, fit: dict, round_size: int, epochs: int, seed: int) -> RewardEnsemble:
    first = labels[0].pair.first
    ens = RewardEnsemble(EnsembleConfig(**net), first.obs_shape, first.act_shape, seed=seed)
    trainer = RewardTrainer(ens, RewardTrainerConfig(seed=seed, **fit), np.random.default_rng(seed + 1))
    window = PreferenceDataset(None)
    for start in range(0, len(labels), round_size):
        for lb in labels[start:start + round_size]:
            window.add(lb)
        if not ens.input_stats_set:  # as the loop does: fixed from the first labelled clips
            ens.set_input_stats(segment_steps(clips(window.labels))[0])
        trainer.train(window, epochs)
    return ens


def score(ens: RewardEnsemble, tests: list[list[Label]]) -> tuple[float, float]:
    segs = clips([lb for labels in tests for lb in labels])
    predicted = ens.member_segment_returns(segs).mean(axis=0)
    rho = float(spearmanr(predicted, [s.true_return for s in segs])[0])
    at = {s.uid: i for i, s in enumerate(segs)}
    right = [(predicted[at[lb.pair.first.uid]] > predicted[at[lb.pair.second.uid]]) == (lb.value > 0)
             for labels in tests for lb in labels if lb.value != 0]
    return rho, float(np.mean(right))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("stores", nargs="+", type=Path, help="preferences.sqlite of two or more runs of one task")
    ap.add_argument("--variants", nargs="+", default=["base", "no-l2"], choices=sorted(VARIANTS))
    ap.add_argument("--round", type=int, default=10, help="labels per round (B-Pref's reward_batch)")
    ap.add_argument("--epochs", type=int, default=50, help="reward epochs after each round")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if len(args.stores) < 2:
        ap.error(f"{len(args.stores)} store given; the variants are scored on the other runs' clips: give two or more")
    if args.round < 1 or args.epochs < 1:
        ap.error(f"--round {args.round} / --epochs {args.epochs}: both must be >= 1")
    torch.set_num_threads(1)
    runs = []
    for path in args.stores:
        store = PreferenceStore.open(path)
        labels = store.labels()
        store.close()
        if not labels or labels[0].pair.first.true_rewards is None:
            raise SystemExit(f"{path}: no labels with true rewards to learn from or score on")
        runs.append(labels)
    print(f"{len(runs)} runs, {sum(map(len, runs))} labels; rounds of {args.round}, {args.epochs} epochs each")
    print("variant | Spearman on the other runs' clips (mean, min) | their labels ordered right | per run")
    for name in args.variants:
        t0 = time.perf_counter()
        net, fit = VARIANTS[name]
        res = np.array([score(learn(labels, net, fit, args.round, args.epochs, args.seed),
                              [other for j, other in enumerate(runs) if j != i]) for i, labels in enumerate(runs)])
        print(f"{name} | {res[:, 0].mean():.3f}, {res[:, 0].min():.2f} | {res[:, 1].mean():.3f} | "
              + " ".join(f"{r:.2f}" for r in res[:, 0]) + f"  ({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
