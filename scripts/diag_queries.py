"""What did a run's queries show the oracle? Reads a run's store (``preferences.sqlite``) and prints,
for each slice of its labels in the order they were asked: the agent steps at which their queries
were made, the median age of their clips (agent steps between a clip's start and its query), the
share of pretraining clips, the clips' true returns (mean, 10th and 90th percentile), the share of
"down" steps (true reward at or below ``--down``: on the MuJoCo tasks with a fall penalty of -1, steps
the body spends fallen), the share of pairs in which both clips are mostly down, the share of ties,
and the median gap between the two clips' true returns. A run whose queries compare two fallen
bodies, or clips from long ago, shows it here; the selector's habit of picking near-ties shows in
the last column against the pretraining rows (random pairs).

    python scripts/diag_queries.py runs/results-mujoco/Hopper-v5/L1400-perfect-variance-s1
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path

import numpy as np

from rlhf_control.errors import UserError
from rlhf_control.rundir import STORE_FILE
from rlhf_control.store.store import PreferenceStore


def _store_path(path: Path) -> Path:
    store = path / STORE_FILE if path.is_dir() else path
    if not store.is_file():
        raise UserError(f"{str(path)!r} is neither a run directory with {STORE_FILE} nor a store file")
    return store


def query_slices(path: Path, slices: int = 10, down: float = -0.5) -> list[dict[str, float]]:
    """One dict per slice of the run's labels (answered, not skipped or undone), oldest first."""
    if slices < 1:
        raise UserError(f"--slices {slices} is not allowed; use an integer >= 1")
    store_file = _store_path(path)
    conn = sqlite3.connect(f"file:{store_file}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT a.label, q.first_id, q.second_id, q.created_step FROM answers a JOIN queries q"
                            " ON q.id = a.query_id WHERE a.skipped = 0 AND a.undone_at IS NULL ORDER BY a.id").fetchall()
    finally:
        conn.close()
    if not rows:
        raise UserError(f"{str(store_file)!r} holds no labels")
    store = PreferenceStore.open(store_file)
    try:
        ids = sorted({i for r in rows for i in r[1:3]})
        segs = dict(zip(ids, store.get_segments(ids), strict=True))
    finally:
        store.close()
    if any(s.true_rewards is None for s in segs.values()):
        raise UserError(f"{str(store_file)!r}: its clips carry no true rewards (a task without one)")
    out = []
    for part in np.array_split(np.arange(len(rows)), min(slices, len(rows))):
        sub = [rows[i] for i in part]
        n = len(sub)
        steps = np.array([r[3] for r in sub])
        clips = [segs[r[1]] for r in sub] + [segs[r[2]] for r in sub]
        asked = np.concatenate([steps, steps])
        ages = np.array([a - c.agent_step for a, c in zip(asked, clips, strict=True) if c.agent_step >= 0])
        rets = np.array([float(np.sum(c.true_rewards)) for c in clips])
        down_share = np.array([float(np.mean(c.true_rewards <= down)) for c in clips])
        out.append({
            "labels": n, "step_min": int(steps.min()), "step_max": int(steps.max()),
            "age_median": float(np.median(ages)) if len(ages) else float("nan"),
            "pretrain": float(np.mean([c.agent_step < 0 for c in clips])),
            "return_mean": float(rets.mean()), "return_p10": float(np.percentile(rets, 10)),
            "return_p90": float(np.percentile(rets, 90)), "down": float(down_share.mean()),
            "both_down": float(np.mean((down_share[:n] > 0.5) & (down_share[n:] > 0.5))),
            "ties": float(np.mean([r[0] == 0 for r in sub])),
            "gap_median": float(np.median(np.abs(rets[:n] - rets[n:]))),
        })
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help=f"a run directory, or its {STORE_FILE}")
    parser.add_argument("--slices", type=int, default=10, help="slices of the labels, in the order asked (default 10)")
    parser.add_argument("--down", type=float, default=-0.5,
                        help="a step whose true reward is at or below this is 'down' (default -0.5)")
    args = parser.parse_args(argv)
    try:
        rows = query_slices(args.run, args.slices, args.down)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{sum(r['labels'] for r in rows)} labels in {len(rows)} slices; 'down' = true reward <= {args.down}")
    print("labels | asked at steps | clip age (median) | pretraining clips | clip return mean (p10, p90) | "
          "down steps | both clips mostly down | ties | |R1 - R2| (median)")
    for r in rows:
        print(f"{r['labels']} | {r['step_min']}-{r['step_max']} | {r['age_median']:.0f} | {r['pretrain']:.2f} | "
              f"{r['return_mean']:.1f} ({r['return_p10']:.1f}, {r['return_p90']:.1f}) | {r['down']:.2f} | "
              f"{r['both_down']:.2f} | {r['ties']:.2f} | {r['gap_median']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
