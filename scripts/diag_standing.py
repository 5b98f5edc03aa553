"""What Walker2d's labels taught about standing: reads the stores of Walker2d-v5 runs and prints

1. per slice of each run's labels (the pretraining ones, then the online ones in equal slices, in the
   order they were answered): the share of the clips' steps on which the walker is upright (height in
   (0.8, 2) and torso angle in (-1, 1), Gymnasium's healthy range), and the shares of pairs that
   compare two walkers upright on 90% of their steps or more, and two on the ground on 90% or more;
2. with two runs or more, for each run: its labels replayed offline in the order they were answered
   (rounds of ``--round`` labels, ``--epochs`` reward epochs after each, the project's reward model and
   trainer), and at the end of the pretraining labels and of each online slice, a least-squares fit
   of the learned reward per step over the *other* runs' labelled clips, r_hat = a*upright + b*vx + c.
   The true reward (vx + 2*upright - 1 in the catalogue's Walker2d-v5) has a/b = 2; a reward with a
   smaller a/b pays less for staying up than for speed, which ``scripts/rl_on_reward.py standing``
   turns into what it costs TRPO.

``--relabel height`` first answers every pair again by rl-teacher's walker reward (vx + z - 1, the
``walker2d-height`` catalogue variant; a perfect oracle: the sign of the clips' difference in return)
and compares the learned a/b with that reward's own fit on the same clips (``binary`` does the same
with the catalogue's reward recomputed from the observations). The printed share is (a/b learned) /
(a/b of the reward that answered): what part of its standing premium the labels taught.
``--ensemble-seeds N`` averages a/b over N ensemble seeds (one label flip moves a single seed's a/b
by up to 0.3 on 175 labels).

    python scripts/diag_standing.py runs/mujoco-700/Walker2d-v5/L700-perfect-variance-s*
    python scripts/diag_standing.py runs/mujoco-700/Walker2d-v5/L700-perfect-variance-s* \
        --relabel height --ensemble-seeds 3 --slices 1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # rl_on_reward, reward_from_stores: sibling scripts

from reward_from_stores import clips as _clips  # noqa: E402
from rl_on_reward import standing_reward  # noqa: E402
from rl_on_reward import walker_upright as upright  # noqa: E402

from rlhf_control.errors import UserError  # noqa: E402
from rlhf_control.reward.dataset import PreferenceDataset  # noqa: E402
from rlhf_control.reward.ensemble import EnsembleConfig, RewardEnsemble  # noqa: E402
from rlhf_control.reward.training import RewardTrainer, RewardTrainerConfig  # noqa: E402
from rlhf_control.rundir import STORE_FILE  # noqa: E402
from rlhf_control.store.store import PreferenceStore  # noqa: E402
from rlhf_control.types import Label, Segment, segment_steps  # noqa: E402

OBS_DIM = 17  # Walker2d-v5 without the x position: obs[0] height, obs[1] torso angle, obs[8] x speed


def binary_reward(obs: np.ndarray) -> np.ndarray:
    """The catalogue's Walker2d-v5 reward per step, from the observations: vx + 2*upright - 1."""
    return standing_reward(2.0)(obs, None)  # the true reward's premium; it reads no actions


def height_reward(obs: np.ndarray) -> np.ndarray:
    """rl-teacher's walker reward per step (the ``walker2d-height`` variant): vx + z - 1."""
    return obs[:, 8] + obs[:, 0] - 1.0


RELABEL = {"binary": binary_reward, "height": height_reward}


def relabel(labels: list[Label], reward) -> list[Label]:
    """The same pairs answered by a perfect oracle on ``reward`` (per step of a clip's observations)."""
    def ret(s: Segment) -> float:
        return float(reward(np.asarray(s.obs)).sum())
    return [Label(lb.pair, int(np.sign(ret(lb.pair.first) - ret(lb.pair.second)))) for lb in labels]


def load_labels(path: Path) -> list[Label]:
    store_file = path / STORE_FILE if path.is_dir() else path
    if not store_file.is_file():
        raise UserError(f"{str(path)!r} is neither a run directory with {STORE_FILE} nor a store file")
    with PreferenceStore.open(store_file) as store:
        labels = store.labels()
    if not labels:
        raise UserError(f"{str(path)!r} has no labels")
    first = labels[0].pair.first
    if first.obs_shape != (OBS_DIM,) or first.true_rewards is None:
        raise UserError(f"{str(path)!r} holds clips of observation shape {first.obs_shape}; this reads "
                        f"Walker2d-v5's ({OBS_DIM},) with true rewards")
    return labels


def slices(labels: list[Label], online_slices: int) -> list[tuple[str, int, int]]:
    """``(name, start, end)`` label ranges: the pretraining labels (both clips from before RL), then the
    online labels cut into ``online_slices`` equal parts."""
    pre = sum(1 for lb in labels if lb.pair.first.agent_step < 0 and lb.pair.second.agent_step < 0)
    out = [("pretraining", 0, pre)] if pre else []
    edges = np.linspace(pre, len(labels), online_slices + 1).round().astype(int)
    out += [(f"online {i + 1}/{online_slices}", int(a), int(b)) for i, (a, b) in enumerate(zip(edges[:-1], edges[1:], strict=True))
            if b > a]
    return out


def composition(labels: list[Label]) -> dict[str, float]:
    """Upright share of the clips' steps, and the shares of pairs both up / both down (>= 90% of steps)."""
    up = np.array([[upright(np.asarray(s.obs)).mean() for s in (lb.pair.first, lb.pair.second)] for lb in labels])
    return {"upright": float(up.mean()), "both_up": float(np.mean((up >= 0.9).all(axis=1))),
            "both_down": float(np.mean((up <= 0.1).all(axis=1)))}


def premium_fit(r_hat: np.ndarray, obs: np.ndarray, up: np.ndarray) -> tuple[float, float]:
    """``(a, b)`` of the least-squares fit r_hat = a*upright + b*vx + c per step."""
    x = np.stack([up.astype(float), obs[:, 8], np.ones(len(obs))], axis=1)
    coef, *_ = np.linalg.lstsq(x, r_hat, rcond=None)
    return float(coef[0]), float(coef[1])


def replay(labels: list[Label], ends: list[int], round_size: int, epochs: int, seed: int, test: list[Segment]
           ) -> list[tuple[int, float, float, float]]:
    """Learn from ``labels`` in rounds; at each label count in ``ends``: (count, a, b, per-step corr)."""
    obs = np.concatenate([np.asarray(s.obs) for s in test])
    acts = np.concatenate([np.asarray(s.acts) for s in test])
    true = np.concatenate([s.true_rewards for s in test])
    up = upright(obs)
    first = labels[0].pair.first
    ens = RewardEnsemble(EnsembleConfig(), first.obs_shape, first.act_shape, seed=seed)
    trainer = RewardTrainer(ens, RewardTrainerConfig(seed=seed), np.random.default_rng(seed + 1))
    window, out, done = PreferenceDataset(None), [], 0
    for end in ends:
        while done < end:
            nxt = min(end, done + round_size)
            for lb in labels[done:nxt]:
                window.add(lb)
            if not ens.input_stats_set:  # as the loop: fixed from the first labelled clips
                ens.set_input_stats(segment_steps(_clips(window.labels))[0])
            trainer.train(window, epochs)
            done = nxt
        r_hat = ens.reward(obs, acts)
        a, b = premium_fit(r_hat, obs, up)
        out.append((end, a, b, float(np.corrcoef(r_hat, true)[0, 1])))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="Walker2d-v5 run directories (or their preferences.sqlite)")
    ap.add_argument("--slices", type=int, default=3, help="equal slices of the online labels (default 3)")
    ap.add_argument("--round", type=int, default=35, help="replay: labels per round (default 35)")
    ap.add_argument("--epochs", type=int, default=6, help="replay: reward epochs after each round (default 6)")
    ap.add_argument("--no-replay", action="store_true", help="print the labels' composition only")
    ap.add_argument("--relabel", choices=sorted(RELABEL), help="answer every pair again by this reward first")
    ap.add_argument("--ensemble-seeds", type=int, default=1, help="replay: a/b averaged over this many "
                    "ensemble seeds (default 1)")
    args = ap.parse_args(argv)
    try:
        for name in ("slices", "round", "epochs", "ensemble_seeds"):
            if getattr(args, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} {getattr(args, name)} is not allowed; use an integer >= 1")
        runs = [load_labels(p) for p in args.runs]
        if args.relabel:
            runs = [relabel(labels, RELABEL[args.relabel]) for labels in runs]
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    print("run | labels | slice | upright share of the clips' steps | pairs both upright | pairs both down")
    for path, labels in zip(args.runs, runs, strict=True):
        for name, a, b in slices(labels, args.slices):
            c = composition(labels[a:b])
            print(f"{path} | {a + 1}-{b} | {name} | {c['upright']:.2f} | {c['both_up']:.2f} | {c['both_down']:.2f}")
    if args.no_replay or len(runs) < 2:
        return 0
    reward = RELABEL.get(args.relabel)
    print(f"\nreplayed offline{f', every pair answered by the {args.relabel} reward' if reward else ''}; fit over "
          f"the other runs' labelled clips: r_hat = a*upright + b*vx + c (mean a/b over {args.ensemble_seeds} "
          f"ensemble seed(s)); the answering reward's own a/b on those clips, and the share taught")
    print("run | labels learnt from | a/b | per seed | true a/b | share | per-step correlation with the stored true reward")
    for i, (path, labels) in enumerate(zip(args.runs, runs, strict=True)):
        test = _clips([lb for j, other in enumerate(runs) if j != i for lb in other])
        obs = np.concatenate([np.asarray(s.obs) for s in test])
        a_t, b_t = premium_fit(reward(obs) if reward else np.concatenate([s.true_rewards for s in test]),
                               obs, upright(obs))
        ends = [b for _, _, b in slices(labels, args.slices)]
        per_seed = [replay(labels, ends, args.round, args.epochs, seed, test) for seed in range(args.ensemble_seeds)]
        for k, end in enumerate(ends):
            ratios = [r[k][1] / r[k][2] for r in per_seed]
            ab = float(np.mean(ratios))
            corr = float(np.mean([r[k][3] for r in per_seed]))
            print(f"{path} | {end} | {ab:.2f} | {' '.join(f'{v:.2f}' for v in ratios)} | {a_t / b_t:.2f} | "
                  f"{ab / (a_t / b_t):.2f} | {corr:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
