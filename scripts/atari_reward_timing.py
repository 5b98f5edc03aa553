"""Read a reward model of ``atari_evidence.py`` (b) by where the points fall in its held-out clips.

A game with sparse rewards (Pong: -1 when the agent concedes a point, +1 when it scores) gives most
25-step clips a true return of 0. This prints the ensemble's mean learned clip return (normalised)
on the held-out clips of (b), grouped

- for clips with a point, by the step of the clip at which it falls;
- for clips without one, by how many steps before the clip the last point fell, and how many steps
  after it the next one falls (and its sign), read from the neighbouring clips of the same episode;

and each member's Spearman on the held-out clips. A model that learnt what the true reward pays for
ranks a clip by its points wherever they fall in it; one that learnt something that only travels
with a point (what the screen shows in the steps after one) shows up here as a trend with timing.

    python scripts/atari_reward_timing.py runs/atari-evidence/Pong/reward-N1000-s0.pt \\
        --clips runs/atari-evidence/Pong/clips
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import atari_evidence as ae  # noqa: E402

#: (low, high) step ranges, inclusive, of the groups printed.
IN_CLIP = ((0, 2), (3, 6), (7, 12), (13, 18), (19, 24))
AROUND = ((1, 5), (6, 12), (13, 25), (26, None))


def point_timing(held: Sequence, episode: Sequence) -> list[dict]:
    """For each clip of ``held``: ``ret`` (true return), ``at`` (step of its first point, None if none),
    ``since`` (steps from the last point before the clip to the clip's start: 1 = the step just
    before it; None where the previous clip of its episode is not in ``episode``, a large number where
    that clip holds no point), ``until`` and ``next_sign`` (steps from the clip's end to the next point,
    1 = the step just after, and that point's sign; from the next clip in ``episode``)."""
    by = {(s.episode_id, s.start_step): s for s in episode}
    out = []
    for s in held:
        r, t = np.asarray(s.true_rewards), s.length
        nz = np.flatnonzero(r)
        row = {"ret": float(r.sum()), "at": int(nz[0]) if nz.size else None, "since": None, "until": None,
               "next_sign": None}
        prev, nxt = by.get((s.episode_id, s.start_step - t)), by.get((s.episode_id, s.start_step + t))
        if prev is not None:
            p = np.flatnonzero(prev.true_rewards)
            row["since"] = t - int(p[-1]) if p.size else 10**6
        if nxt is not None:
            n = np.flatnonzero(nxt.true_rewards)
            row["until"], row["next_sign"] = (int(n[0]) + 1, float(np.sign(nxt.true_rewards[n[0]]))) if n.size else (10**6, 0.0)
        out.append(row)
    return out


def grouped(rows: list[dict], pred: np.ndarray, key: str, ranges: Sequence, where=lambda r: True) -> list[tuple]:
    """``(low, high, n, mean, sd)`` of ``pred`` over rows with ``where(row)`` and ``row[key]`` in each range."""
    res = []
    for lo, hi in ranges:
        sel = [i for i, r in enumerate(rows) if where(r) and r[key] is not None and lo <= r[key] <= (hi or 10**9)]
        v = pred[sel]
        res.append((lo, hi, len(sel), float(v.mean()) if sel else float("nan"), float(v.std()) if sel else float("nan")))
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=Path, help="a reward-N*-s*.pt that (b) saved")
    p.add_argument("--clips", type=Path, required=True, help="(b)'s clips folder (clips-<policy>-<n>-s<seed>.npz)")
    p.add_argument("--n-clips", type=int, default=2000, help="clips per policy of those files (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="(b)'s --seed: the clips and their split (default 0)")
    args = p.parse_args(argv)
    import torch
    from scipy.stats import spearmanr

    from rlhf_control.reward.ensemble import RewardEnsemble

    torch.set_num_threads(1)
    ens = RewardEnsemble.load(args.model)
    clips = {}
    for policy in ae.POLICIES:
        path = ae.clip_file(args.clips, policy, args.n_clips, args.seed)
        if not path.is_file():
            p.error(f"no clip file {str(path)!r}; give (b)'s clips folder and --n-clips")
        clips[policy] = ae.brq.load_clips(path)
    rows, preds, members = [], [], []
    for policy, (_pool, held) in ae.split_clips(clips, args.seed).items():  # (b)'s held-out clips
        m = ens.member_segment_returns(held, normalized=True)
        members.append(m)
        preds.append(m.mean(axis=0))
        rows += point_timing(held, clips[policy])
    pred, m = np.concatenate(preds), np.concatenate(members, axis=1)
    true = np.array([r["ret"] for r in rows])
    print(f"{args.model}: {len(rows)} held-out clips; Spearman ensemble {spearmanr(pred, true).statistic:.3f}, "
          "members " + ", ".join(f"{spearmanr(x, true).statistic:.3f}" for x in m))

    def show(title: str, groups: list[tuple], unit: str) -> None:
        print(title)
        for lo, hi, n, mean, sd in groups:
            span = f"{lo}+" if hi is None else f"{lo}-{hi}"
            print(f"  {unit} {span:>6}: n {n:4d}, mean learned return {mean:+.3f} (sd {sd:.3f})")

    for v in sorted(set(true)):
        sel = true == v
        print(f"true return {v:+g}: n {sel.sum()}, mean learned return {pred[sel].mean():+.3f} (sd {pred[sel].std():.3f})")
    for sign in (-1, 1):
        show(f"clips with a point of sign {sign:+d}, by the step it falls at:",
             grouped(rows, pred, "at", IN_CLIP, lambda r, s=sign: np.sign(r["ret"]) == s), "step")
    zero = lambda r: r["ret"] == 0 and r["at"] is None  # noqa: E731
    show("clips without a point, by steps since the last point before them:",
         grouped(rows, pred, "since", AROUND, zero), "steps")
    for sign in (-1, 1):
        show(f"clips without a point, by steps until the next point (sign {sign:+d}) after them:",
             grouped(rows, pred, "until", AROUND[:3], lambda r, s=sign: zero(r) and r["next_sign"] == s), "steps")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
