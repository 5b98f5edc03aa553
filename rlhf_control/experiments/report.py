"""Figures and tables from run directories, in the paper's style.

``rlhf-control report RUN_DIR_OR_SWEEP... [--out DIR]`` writes

- ``returns.png`` / ``returns.svg``: one panel per task, true return against agent steps, the mean
  over seeds as a line and mean ± one standard deviation shaded, RL on the true reward dashed
  (black), the random policy dotted (grey);
- ``results.md`` / ``results.csv``: per task and method and label budget, the final return (mean ±
  std over seeds) and the normalised score ``(method - random) / (RL - random)``.

Definitions. A run's *final return* is the last ``true_return`` in its ``metrics.csv``: the mean
undiscounted true return of the last 100 finished training episodes, logged the same way for RLHF
runs and baselines. *RL* is the mean final return of the task's baseline runs. *random* is the
mean over the task's baseline runs of the return of a uniformly random policy, which each baseline
measures before it trains (``baseline.json``: 10 episodes, or as many as end in 25,000 steps); a
task without a baseline run has no normalised score. Runs are grouped by the ``point.json`` a sweep
writes, or else by their ``config.toml`` (oracle, selector, label budget).
"""

from __future__ import annotations

import csv
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rlhf_control import rundir
from rlhf_control.errors import UserError
from rlhf_control.experiments.backends import POINT_FILE
from rlhf_control.loop.metrics import read_metrics

RL_METHOD = "RL (true reward)"
RANDOM_METHOD = "random policy"


@dataclass(frozen=True)
class RunData:
    """One run's true-return curve: ``steps: (n,)`` agent steps, ``returns: (n,)`` true returns."""

    path: Path
    task: str
    kind: str  # "rlhf" or "baseline"
    method: str
    labels: int | None
    seed: int
    steps: np.ndarray
    returns: np.ndarray
    done: bool
    random_return: float | None = None

    @property
    def final(self) -> float:
        return float(self.returns[-1])


@dataclass(frozen=True)
class Row:
    """One line of the results table (``std`` over seeds, ``score`` normalised; None where undefined)."""

    task: str
    method: str
    labels: int | None
    seeds: int
    mean: float
    std: float
    score: float | None


def find_run_dirs(paths: list[Path]) -> list[Path]:
    """Each path is a run directory or holds run directories (any depth); a one-line error otherwise."""
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.exists():
            raise UserError(f"{str(path)!r} does not exist; give run directories or sweep output directories")
        if rundir.is_run_dir(path):
            found.append(path)
            continue
        runs = sorted(p.parent for p in path.rglob(rundir.CONFIG_FILE) if rundir.CHECKPOINTS_DIR not in p.parts)
        if not runs:
            raise UserError(f"{str(path)!r} is not a run directory and holds none (no {rundir.CONFIG_FILE} found)")
        found.extend(runs)
    return list(dict.fromkeys(found))


def method_name(oracle: str | None, selector: str | None, ablation: str | None) -> str:
    parts = [oracle or "perfect", selector or "variance"]
    if ablation and ablation != "full":
        parts.append(ablation)
    return ", ".join(parts)


def load_run(path: Path) -> RunData | None:
    """Read a run directory; None (with a warning) if it has no true-return rows yet."""
    path = Path(path)
    doc = rundir.read_config_doc(path)
    run, task, meta = doc.get("run", {}), doc.get("task", {}), doc.get("meta", {})
    point: dict[str, Any] = {}
    if (path / POINT_FILE).is_file():
        point = json.loads((path / POINT_FILE).read_text())
    baseline = meta.get("baseline") is not None or point.get("kind") == "baseline"
    metrics = path / rundir.METRICS_FILE
    rows = read_metrics(metrics) if metrics.is_file() else []
    pts = [(float(r["step"]), float(r["true_return"])) for r in rows if r.get("step") and r.get("true_return")]
    if not pts:
        print(f"report: skipping {path}: no true returns logged yet", file=sys.stderr)
        return None
    steps, returns = (np.array(x, dtype=np.float64) for x in zip(*pts, strict=True))
    random_return = None
    if baseline and (path / rundir.BASELINE_FILE).is_file():
        random_return = json.loads((path / rundir.BASELINE_FILE).read_text()).get("random_return")
    labels = None if baseline else (run.get("labels") or task.get("label_budget"))
    method = RL_METHOD if baseline else method_name(run.get("oracle"), run.get("selector"), point.get("ablation"))
    return RunData(path=path, task=str(run.get("task", task.get("name", "?"))), kind="baseline" if baseline else "rlhf",
                   method=method, labels=labels, seed=int(run.get("seed", 0)), steps=steps, returns=returns,
                   done=rundir.is_done(path), random_return=random_return)


def load_runs(paths: list[Path]) -> list[RunData]:
    runs = [r for r in (load_run(p) for p in find_run_dirs(paths)) if r is not None]
    if not runs:
        raise UserError("no run under " + ", ".join(map(str, paths)) + " has logged a true return yet")
    unfinished = [r for r in runs if not r.done]
    if unfinished:
        print(f"report: {len(unfinished)} run(s) not finished; their last logged values are used: "
              + ", ".join(str(r.path) for r in unfinished[:5]) + (" ..." if len(unfinished) > 5 else ""),
              file=sys.stderr)
    return runs


def _groups(runs: list[RunData]) -> dict[tuple[str, str, int | None], list[RunData]]:
    groups: dict[tuple[str, str, int | None], list[RunData]] = {}
    for r in sorted(runs, key=lambda r: (r.task, r.kind != "baseline", r.method, r.labels or 0, r.seed)):
        groups.setdefault((r.task, r.method, r.labels), []).append(r)
    return groups


def task_reference(runs: list[RunData], task: str) -> tuple[float | None, float | None]:
    """(RL, random) returns of ``task``: means over its baseline runs; None where there is none."""
    base = [r for r in runs if r.task == task and r.kind == "baseline"]
    rl = float(np.mean([r.final for r in base])) if base else None
    rnd = [r.random_return for r in base if r.random_return is not None]
    return rl, (float(np.mean(rnd)) if rnd else None)


def normalised(value: float, rl: float | None, rnd: float | None) -> float | None:
    if rl is None or rnd is None or math.isclose(rl, rnd, rel_tol=1e-9, abs_tol=1e-12):
        return None
    return (value - rnd) / (rl - rnd)


def summarize(runs: list[RunData]) -> list[Row]:
    """Table rows per task: RL, the random policy, then each method and budget."""
    rows: list[Row] = []
    refs = {t: task_reference(runs, t) for t in sorted({r.task for r in runs})}
    for (task, method, labels), group in _groups(runs).items():
        rl, rnd = refs[task]
        finals = np.array([r.final for r in group])
        if method == RL_METHOD and rnd is not None:
            rows.append(Row(task, RANDOM_METHOD, None, len(group), rnd, 0.0, 0.0))
        rows.append(Row(task, method, labels, len(group), float(finals.mean()), float(finals.std()),
                        normalised(float(finals.mean()), rl, rnd)))
    return rows


def markdown_table(rows: list[Row]) -> str:
    lines = ["| task | method | labels | seeds | final return (mean ± std) | normalised score |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        ret = f"{r.mean:.1f}" if r.method == RANDOM_METHOD else f"{r.mean:.1f} ± {r.std:.1f}"
        score = "–" if r.score is None else f"{r.score:.2f}"
        lines.append(f"| {r.task} | {r.method} | {r.labels or '–'} | {r.seeds if r.method != RANDOM_METHOD else '–'} "
                     f"| {ret} | {score} |")
    return "\n".join(lines)


def _mean_curve(group: list[RunData]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeds interpolated on the steps all of them reached: (steps, mean, std)."""
    if len(group) == 1:
        r = group[0]
        return r.steps, r.returns, np.zeros_like(r.returns)
    lo, hi = max(r.steps[0] for r in group), min(r.steps[-1] for r in group)
    if hi <= lo:
        grid = np.array([hi])
    else:
        grid = np.linspace(lo, hi, 200)
    ys = np.stack([np.interp(grid, r.steps, r.returns) for r in group])
    return grid, ys.mean(axis=0), ys.std(axis=0)


def plot(runs: list[RunData], out: Path) -> list[Path]:
    """Write ``returns.png`` and ``returns.svg`` into ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r.task for r in runs})
    groups = _groups(runs)
    methods = sorted({m for (_, m, _) in groups if m != RL_METHOD})
    keys = sorted({(m, lab) for (_, m, lab) in groups if m != RL_METHOD}, key=lambda k: (k[0], k[1] or 0))
    colors = {k: plt.get_cmap("tab10")(i % 10) for i, k in enumerate(keys)}
    ncols = min(3, len(tasks))
    nrows = math.ceil(len(tasks) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 3.3 * nrows), squeeze=False)
    handles: dict[str, Any] = {}
    for ax, task in zip(axes.flat, tasks, strict=False):
        for (t, method, labels), group in groups.items():
            if t != task:
                continue
            x, mean, std = _mean_curve(group)
            if method == RL_METHOD:
                name, style = RL_METHOD, {"color": "black", "linestyle": "--"}
            else:
                what = f"{labels} labels" if labels else "task's labels"
                name = what if len(methods) == 1 else f"{method}, {what}"
                style = {"color": colors[(method, labels)]}
            (line,) = ax.plot(x, mean, linewidth=1.5, **style)
            ax.fill_between(x, mean - std, mean + std, alpha=0.15, color=style["color"], linewidth=0)
            handles.setdefault(name, line)
        _, rnd = task_reference(runs, task)
        if rnd is not None:
            handles.setdefault(RANDOM_METHOD, ax.axhline(rnd, color="grey", linestyle=":", linewidth=1))
        ax.set_title(task)
        ax.set_xlabel("agent steps")
        ax.set_ylabel("true return")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(tasks):]:
        ax.set_visible(False)
    fig.tight_layout()
    # Below the panels; bbox_inches="tight" grows the canvas to hold it.
    fig.legend(list(handles.values()), list(handles), loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=max(1, min(len(handles), 2 * ncols)), frameon=False)
    paths = [out / "returns.png", out / "returns.svg"]
    for p in paths:
        fig.savefig(p, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return paths


def write_report(paths: list[Path], out: Path) -> list[Path]:
    """Read the runs under ``paths``; write the figure, ``results.md`` and ``results.csv`` into ``out``."""
    runs = load_runs(paths)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = summarize(runs)
    written = plot(runs, out)
    md = out / "results.md"
    md.write_text(
        "# Results\n\n![true return against agent steps](returns.png)\n\n" + markdown_table(rows) + "\n\n"
        "Final return: the last logged true return (mean of the last 100 training episodes), mean ± std over "
        "seeds. Normalised score: (method − random) / (RL − random), with RL the baselines' final return and "
        "random the return of a uniformly random policy measured by each baseline run.\n")
    csv_path = out / "results.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["task", "method", "labels", "seeds", "final_return_mean", "final_return_std", "normalised_score"])
        for r in rows:
            w.writerow([r.task, r.method, r.labels or "", r.seeds, repr(r.mean), repr(r.std),
                        "" if r.score is None else repr(r.score)])
    return [*written, md, csv_path]

