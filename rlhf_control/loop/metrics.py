"""Run metrics: one CSV row per iteration (flushed at once) and TensorBoard scalars.

CSV columns are fixed (``COLUMNS``); a value that does not exist for the run (a true return on a
task with no true reward) is written as an empty cell, never invented.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rlhf_control.rundir import METRICS_FILE, TB_DIR, atomic_path

COLUMNS = (
    "step",
    "iteration",
    "labels",
    "pending",
    "true_return",
    "learned_return",
    "eval_true_return",
    "gym_return",
    "eval_gym_return",
    "reward_val_accuracy",
    "reward_return_corr",
    "reward_rank_corr_latest",
    "reward_train_loss",
    "reward_val_loss",
    "reward_l2",
    "reward_l2_min",
    "reward_l2_max",
    "steps_per_second",
    "wall_seconds",
)

# TensorBoard tag groups, CleanRL style.
_TB_GROUP = {
    "true_return": "charts",
    "learned_return": "charts",
    "eval_true_return": "charts",
    "gym_return": "charts",
    "eval_gym_return": "charts",
    "reward_rank_corr_latest": "reward",
    "reward_l2_min": "reward",
    "reward_l2_max": "reward",
    "labels": "charts",
    "pending": "charts",
    "reward_val_accuracy": "reward",
    "reward_return_corr": "reward",
    "reward_train_loss": "losses",
    "reward_val_loss": "losses",
    "reward_l2": "reward",
    "steps_per_second": "charts",
}


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


class MetricsLogger:
    """Appends rows to ``run_dir/metrics.csv`` and writes TensorBoard events to ``run_dir/tb``.

    ``purge_step``: a resumed run logs again from this step, so TensorBoard drops the events it has
    at or after it (the CSV is cut back by :func:`truncate_metrics`)."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, purge_step: int | None = None) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        if not self.path.exists() or self.path.stat().st_size == 0:
            # The header lands in one rename: a reader never sees an empty or header-less file.
            with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as f:
                csv.writer(f).writerow(COLUMNS)
        else:
            _upgrade_header(self.path)
        self._file = open(self.path, "a", newline="")
        self._writer = csv.writer(self._file)
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(Path(run_dir) / TB_DIR), purge_step=purge_step)

    def log(self, row: dict[str, Any]) -> None:
        """Write one row (keys from ``COLUMNS``; missing ones are empty)."""
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown metric columns {sorted(unknown)}; allowed: {', '.join(COLUMNS)}")
        self._writer.writerow([_cell(row.get(c)) for c in COLUMNS])
        self._file.flush()
        if self._tb is not None:
            step = int(row["step"])
            for key, group in _TB_GROUP.items():
                value = row.get(key)
                if value is not None and not (isinstance(value, float) and math.isnan(value)):
                    self._tb.add_scalar(f"{group}/{key}", float(value), step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: Path) -> list[dict[str, str]]:
    """Rows of a metrics CSV as dicts of strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def iteration_row(step: int, iteration: int, labels: int, pending: int, learned: Sequence[float],
                  true: Sequence[float], gym: Sequence[float], ev: Any, rep: Any, corr: float | None,
                  rank_corr: float | None, steps_per_second: float, wall_seconds: float) -> dict[str, Any]:
    """One row of ``COLUMNS``: recent training returns (learned, true, Gymnasium; empty lists give empty
    cells), an evaluation ``ev`` (``mean``, ``gym_mean``) or None, the last reward fit's report ``rep``
    or None, the reward's correlations with the true return, and the run's speed."""
    def mean(xs: Sequence[float]) -> float | None:
        return float(np.mean(xs)) if len(xs) else None

    def of(obj: Any, name: str) -> Any:
        return getattr(obj, name) if obj is not None else None

    return {
        "step": step, "iteration": iteration, "labels": labels, "pending": pending,
        "learned_return": mean(learned), "true_return": mean(true), "gym_return": mean(gym),
        "eval_true_return": of(ev, "mean"), "eval_gym_return": of(ev, "gym_mean"),
        "reward_val_accuracy": of(rep, "mean_val_accuracy"), "reward_train_loss": of(rep, "mean_train_loss"),
        "reward_val_loss": of(rep, "mean_val_loss"), "reward_l2": of(rep, "mean_l2"),
        "reward_l2_min": of(rep, "min_l2"), "reward_l2_max": of(rep, "max_l2"),
        "reward_return_corr": corr, "reward_rank_corr_latest": rank_corr,
        "steps_per_second": steps_per_second, "wall_seconds": wall_seconds,
    }


def progress_postfix(row: dict[str, Any]) -> dict[str, Any]:
    """What the progress bar shows of a row: labels, and the returns there are."""
    post: dict[str, Any] = {"labels": row["labels"]}
    for key, name in (("eval_true_return", "eval"), ("true_return", "true"), ("learned_return", "learned")):
        if row[key] is not None:
            post[name] = f"{row[key]:.1f}"
    return post


def truncate_metrics(path: Path, max_step: int) -> None:
    """Drop rows past ``max_step`` (a resumed run re-runs those steps); atomic rewrite."""
    if not path.exists():
        return
    rows = read_metrics(path)
    kept = [r for r in rows if r.get("step") and int(float(r["step"])) <= max_step]
    if len(kept) == len(rows):
        return
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(COLUMNS))
        w.writeheader()
        for r in kept:
            w.writerow({c: r.get(c, "") for c in COLUMNS})


def _upgrade_header(path: Path) -> None:
    """A metrics file written with other columns (an older version's run, resumed) is rewritten under
    ``COLUMNS``, each old value kept under its name, so appended rows line up with the header."""
    with open(path, newline="") as f:
        header = next(csv.reader(f), [])
    if tuple(header) == COLUMNS:
        return
    rows = read_metrics(path)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(COLUMNS), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in COLUMNS})


def reward_correlations(ensemble: Any, recent: Sequence[Any], latest: Sequence[Any]) -> tuple[float | None, float | None]:
    """How the learned reward ranks clips against their true returns: Pearson correlation over the
    ``recent`` clips (many behaviours: the contrast between them dominates) and Spearman rank
    correlation over the ``latest`` rollout's clips alone (does the reward still rank the agent's
    current behaviour). None where there are fewer than 8 clips or no spread to correlate."""

    # The two sets overlap (both end with the newest clips): predict each clip once.
    clips = {s.uid: s for s in (*recent, *latest)}
    predicted: dict[int, float] = {}
    if len(recent) >= 8 or len(latest) >= 8:
        values = ensemble.member_segment_returns(list(clips.values()), normalized=True).mean(axis=0)
        predicted = dict(zip(clips, values, strict=True))

    def corr(segs: Sequence[Any], rank: bool) -> float | None:
        if len(segs) < 8:
            return None
        true = np.array([s.true_return for s in segs])
        pred = np.array([predicted[s.uid] for s in segs])
        if np.std(true) == 0 or np.std(pred) == 0:
            return None
        if rank:
            # imported here, not at the top: scipy.stats costs over a second of a run's start-up
            from scipy.stats import rankdata

            true, pred = rankdata(true), rankdata(pred)
        return float(np.corrcoef(pred, true)[0, 1])

    return corr(recent, rank=False), corr(latest, rank=True)

