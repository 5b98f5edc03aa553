"""Figures and tables from run directories, in the paper's style.

``rlhf-control report RUN_DIR_OR_SWEEP... [--out DIR]`` writes

- ``returns.png`` / ``returns.svg``: one panel per task, true return against agent steps, the mean
  over seeds as a line and mean ± one standard deviation shaded, RL on the true reward dashed
  (black), the random policy dotted (grey);
- ``results.md`` / ``results.csv``: per task and method and label budget, each seed's final return,
  their mean ± std and the normalised score ``(method - random) / (RL - random)``, and the same score
  on the last third of each run: first on the true return, then, in a second table, on the Gymnasium
  return.

Definitions. The *true return* sums the task's reward, the paper's (what the synthetic oracle
compares and RL on the true reward trains on; for MuJoCo, Gymnasium's reward without the control
cost, termination a penalty: ``tasks/wrappers.py``); the *Gymnasium return* sums the unmodified
Gymnasium reward over the same episodes. A run's *final return* is the last value in its
``metrics.csv`` of the column :func:`measure` picks for the task: the periodic evaluation
(``eval_true_return`` / ``eval_gym_return``: deterministic episodes on a separate, seeded env) when
every run of the task has one, else the training episodes' (``true_return`` / ``gym_return``: the mean
of the last 100), so that all runs of a task are measured alike. *RL* is the mean final return of the
task's baseline runs. *random* is the mean over the task's baseline runs of the return of a uniformly
random policy, which each baseline measures before it trains (``baseline.json``: ``random_return``,
``random_gym_return``; 10 episodes, or as many as end in 25,000 steps); a task without a baseline run,
or whose RL is not above random, has no normalised score. A run's *last third* is the mean of its
values logged at or after two thirds of its last logged step (with evaluations about ten times a run,
three or four of them), scored against RL's last thirds. Runs are grouped by the ``point.json`` a
sweep writes, or else by their ``config.toml`` (oracle, selector, label budget); a task's runs must
share one step count, and a seed may not count twice.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rlhf_control import rundir
from rlhf_control.errors import UserError
from rlhf_control.experiments.backends import POINT_FILE
from rlhf_control.loop.metrics import read_metrics

RL_METHOD = "RL (true reward)"
RANDOM_METHOD = "random policy"
TRUE, GYM = "true", "gym"
# Metrics columns of each reward: the training episodes' returns, then the periodic evaluation's.
COLUMNS = {TRUE: ("true_return", "eval_true_return"), GYM: ("gym_return", "eval_gym_return")}
_RANDOM_KEY = {TRUE: "random_return", GYM: "random_gym_return"}


@dataclass(frozen=True)
class RunData:
    """One run's return curves: ``curves[column] = (steps: (n,), values: (n,))`` for each metrics column
    of :data:`COLUMNS` the run logged values in; ``random`` the random policy's returns by reward
    (baselines only)."""

    path: Path
    task: str
    kind: str  # "rlhf" or "baseline"
    method: str
    labels: int | None
    seed: int
    curves: dict[str, tuple[np.ndarray, np.ndarray]]
    done: bool
    random: dict[str, float | None] = field(default_factory=dict)
    steps: int | None = None  # the run's configured agent steps

    def final(self, column: str = "true_return") -> float:
        return float(self.curves[column][1][-1])

    def last_third(self, column: str = "true_return") -> float:
        """The mean of the values logged at or after two thirds of the last logged step."""
        steps, values = self.curves[column]
        return float(values[steps >= steps[-1] * 2.0 / 3.0].mean())


@dataclass(frozen=True)
class Row:
    """One line of a results table (``std`` over seeds, ``score`` normalised; None where undefined);
    ``measure`` is the metrics column the numbers come from; ``finals`` each seed's final value (in the
    order of ``seed_ids``), ``late`` / ``late_score`` the mean over seeds of their last thirds and its score."""

    task: str
    method: str
    labels: int | None
    seeds: int
    mean: float
    std: float
    score: float | None
    reward: str = TRUE
    measure: str = "true_return"
    finals: tuple[float, ...] = ()
    seed_ids: tuple[int, ...] = ()
    late: float = math.nan
    late_score: float | None = None


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


def _curves(rows: list[dict[str, str]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for column in (c for pair in COLUMNS.values() for c in pair):
        pts = [(float(r["step"]), float(r[column])) for r in rows if r.get("step") and r.get(column)]
        if pts:
            out[column] = tuple(np.array(x, dtype=np.float64) for x in zip(*pts, strict=True))
    return out


def load_run(path: Path) -> RunData | None:
    """Read a run directory; None (with a warning) if it has no true-return rows yet."""
    doc = rundir.read_config_doc(path := Path(path))
    run, task, meta = doc.get("run", {}), doc.get("task", {}), doc.get("meta", {})
    point: dict[str, Any] = {}
    if (path / POINT_FILE).is_file():
        point = json.loads((path / POINT_FILE).read_text())
    baseline = meta.get("baseline") is not None or point.get("kind") == "baseline"
    metrics = path / rundir.METRICS_FILE
    curves = _curves(read_metrics(metrics) if metrics.is_file() else [])
    if not any(c in curves for c in COLUMNS[TRUE]):
        print(f"report: skipping {path}: no true returns logged yet", file=sys.stderr)
        return None
    random: dict[str, float | None] = {}
    if baseline and (path / rundir.BASELINE_FILE).is_file():
        info = json.loads((path / rundir.BASELINE_FILE).read_text())
        random = {reward: info.get(key) for reward, key in _RANDOM_KEY.items()}
    labels = None if baseline else (run.get("labels") or task.get("label_budget"))
    method = RL_METHOD if baseline else method_name(run.get("oracle"), run.get("selector"), point.get("ablation"))
    return RunData(path=path, task=str(run.get("task", task.get("name", "?"))), kind="baseline" if baseline else "rlhf",
                   method=method, labels=labels, seed=int(run.get("seed", 0)), curves=curves,
                   done=rundir.is_done(path), random=random,
                   steps=int(run.get("steps") or task.get("total_steps") or 0) or None)


def load_runs(paths: list[Path]) -> list[RunData]:
    runs = [r for r in (load_run(p) for p in find_run_dirs(paths)) if r is not None]
    if not runs:
        raise UserError("no run under " + ", ".join(map(str, paths)) + " has logged a true return yet")
    _check_comparable(runs)
    unfinished = [r for r in runs if not r.done]
    if unfinished:
        print(f"report: {len(unfinished)} run(s) not finished; their last logged values are used: "
              + ", ".join(str(r.path) for r in unfinished[:5]) + (" ..." if len(unfinished) > 5 else ""),
              file=sys.stderr)
    return runs


def _check_comparable(runs: list[RunData]) -> None:
    """One line, nothing written, for a task's runs of different step counts or a seed given twice."""
    steps: dict[str, dict[int, Path]] = {}
    seen: dict[tuple[str, str, int | None, int], Path] = {}
    for r in runs:
        if r.steps is not None:
            steps.setdefault(r.task, {}).setdefault(r.steps, r.path)
        key = (r.task, r.method, r.labels, r.seed)
        if key in seen:
            raise UserError(f"{seen[key]} and {r.path} are both {r.task}, {r.method}"
                            f"{'' if r.labels is None else f', {r.labels} labels'}, seed {r.seed}; give one of them")
        seen[key] = r.path
    for task, by_steps in ((t, b) for t, b in steps.items() if len(b) > 1):
        found = ", ".join(f"{n:,} ({path})" for n, path in sorted(by_steps.items()))
        raise UserError(f"{task} runs of different step counts: {found}; report each step count separately")


def _groups(runs: list[RunData]) -> dict[tuple[str, str, int | None], list[RunData]]:
    groups: dict[tuple[str, str, int | None], list[RunData]] = {}
    for r in sorted(runs, key=lambda r: (r.task, r.kind != "baseline", r.method, r.labels or 0, r.seed)):
        groups.setdefault((r.task, r.method, r.labels), []).append(r)
    return groups


def measure(runs: list[RunData], task: str, reward: str = TRUE) -> str | None:
    """The metrics column a task's numbers of ``reward`` come from, the same for all its runs: the
    periodic evaluation when every run of the task has one, else the training episodes' returns when
    every run has them, else None (the task is left out of that table)."""
    group = [r for r in runs if r.task == task]
    train, evaluation = COLUMNS[reward]
    for column in (evaluation, train):
        if all(column in r.curves for r in group):
            return column
    return None


def task_reference(runs: list[RunData], task: str, column: str = "true_return",
                   reward: str = TRUE, late: bool = False) -> tuple[float | None, float | None]:
    """(RL, random) returns of ``task``: means over its baseline runs (RL's final returns, or their
    last thirds with ``late``); None where there is none."""
    base = [r for r in runs if r.task == task and r.kind == "baseline" and column in r.curves]
    rl = float(np.mean([r.last_third(column) if late else r.final(column) for r in base])) if base else None
    rnd = [r.random[reward] for r in base if r.random.get(reward) is not None]
    return rl, (float(np.mean(rnd)) if rnd else None)


def normalised(value: float, rl: float | None, rnd: float | None) -> float | None:
    """(value - random) / (RL - random); None where RL is not above random (no scale to measure on)."""
    if rl is None or rnd is None or rl <= rnd or math.isclose(rl, rnd, rel_tol=1e-9, abs_tol=1e-12):
        return None
    return (value - rnd) / (rl - rnd)


def summarize(runs: list[RunData], reward: str = TRUE) -> list[Row]:
    """Table rows of ``reward`` per task: RL, the random policy, then each method and budget."""
    rows: list[Row] = []
    tasks = sorted({r.task for r in runs})
    columns = {t: measure(runs, t, reward) for t in tasks}
    refs = {t: task_reference(runs, t, c, reward) for t, c in columns.items() if c is not None}
    late_rl = {t: task_reference(runs, t, c, reward, late=True)[0] for t, c in columns.items() if c is not None}
    for (task, method, labels), group in _groups(runs).items():
        column = columns[task]
        if column is None:
            continue
        rl, rnd = refs[task]
        finals = np.array([r.final(column) for r in group])
        late = float(np.mean([r.last_third(column) for r in group]))
        if method == RL_METHOD and rnd is not None:
            rows.append(Row(task, RANDOM_METHOD, None, len(group), rnd, 0.0, 0.0, reward, column,
                            late=rnd, late_score=0.0))
        rows.append(Row(task, method, labels, len(group), float(finals.mean()), float(finals.std()),
                        normalised(float(finals.mean()), rl, rnd), reward, column,
                        finals=tuple(float(v) for v in finals), seed_ids=tuple(r.seed for r in group),
                        late=late, late_score=normalised(late, late_rl[task], rnd)))
    return rows


def _score(score: float | None) -> str:
    return "–" if score is None else f"{score:.2f}"


def markdown_table(rows: list[Row]) -> str:
    lines = ["| task | method | labels | seeds | final return by seed | final return (mean ± std) | normalised score "
             "| last third (mean) | score, last third |",
             "|---|---|---:|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        random = r.method == RANDOM_METHOD
        ret = f"{r.mean:.1f}" if random else f"{r.mean:.1f} ± {r.std:.1f}"
        by_seed = " / ".join(f"{v:.1f}" for v in r.finals) or "–"
        late = "–" if random else f"{r.late:.1f}"
        lines.append(f"| {r.task} | {r.method} | {r.labels or '–'} | {'–' if random else r.seeds} | {by_seed} "
                     f"| {ret} | {_score(r.score)} | {late} | {'–' if random else _score(r.late_score)} |")
    return "\n".join(lines)


def _mean_curve(group: list[RunData], column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeds interpolated on the steps all of them reached: (steps, mean, std)."""
    curves = [r.curves[column] for r in group]
    if len(curves) == 1:
        steps, values = curves[0]
        return steps, values, np.zeros_like(values)
    lo, hi = max(c[0][0] for c in curves), min(c[0][-1] for c in curves)
    if hi <= lo:
        grid = np.array([hi])
    else:
        grid = np.linspace(lo, hi, 200)
    ys = np.stack([np.interp(grid, steps, values) for steps, values in curves])
    return grid, ys.mean(axis=0), ys.std(axis=0)


def steps_label(x: float, _pos: Any = None) -> str:
    """An axis tick in agent steps, short enough that neighbours never run together: 300k, 1.5M."""
    if abs(x) >= 1e6:
        return f"{x / 1e6:.3g}M"
    if abs(x) >= 1e3:
        return f"{x / 1e3:.3g}k"
    return f"{x:.0f}"


def plot(runs: list[RunData], out: Path) -> list[Path]:
    """Write ``returns.png`` and ``returns.svg`` into ``out``: the true return of each task, from the
    column :func:`measure` picks for it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

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
        column = measure(runs, task) or COLUMNS[TRUE][0]
        for (t, method, labels), group in groups.items():
            if t != task or any(column not in r.curves for r in group):
                continue
            x, mean, std = _mean_curve(group, column)
            if method == RL_METHOD:
                name, style = RL_METHOD, {"color": "black", "linestyle": "--"}
            else:
                what = f"{labels} labels" if labels else "task's labels"
                name = what if len(methods) == 1 else f"{method}, {what}"
                style = {"color": colors[(method, labels)]}
            (line,) = ax.plot(x, mean, linewidth=1.5, **style)
            ax.fill_between(x, mean - std, mean + std, alpha=0.15, color=style["color"], linewidth=0)
            handles.setdefault(name, line)
        _, rnd = task_reference(runs, task, column)
        if rnd is not None:
            handles.setdefault(RANDOM_METHOD, ax.axhline(rnd, color="grey", linestyle=":", linewidth=1))
        ax.set_title(task)
        ax.set_xlabel("agent steps")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(steps_label))
        ax.set_ylabel("true return" + (" (evaluation)" if column == COLUMNS[TRUE][1] else ""))
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


_SOURCE = {"true_return": "training episodes", "eval_true_return": "evaluation",
           "gym_return": "training episodes", "eval_gym_return": "evaluation"}


def _sources(rows: list[Row]) -> str:
    """Which column each task's numbers come from, in one line."""
    by_task = {r.task: r.measure for r in rows}
    return "; ".join(f"{t}: {_SOURCE[c]} (`{c}`)" for t, c in by_task.items())


def _markdown(rows: list[Row], gym_rows: list[Row]) -> str:
    text = ("# Results\n\n![true return against agent steps](returns.png)\n\n"
            "## True return (the task's reward, the paper's)\n\n" + markdown_table(rows) + "\n\n"
            "True return: the task's reward as the paper defines it, which the synthetic oracle compares and RL "
            "on the true reward trains on (MuJoCo: Gymnasium's reward without the control cost, termination a "
            "penalty). Final return, mean ± std over seeds: per task, the last periodic evaluation (deterministic "
            "episodes on a separate, seeded env) when every run of the task has one, else the mean of the last "
            "100 training episodes. Normalised score: (method − random) / (RL − random), with RL the baselines' "
            "final return and random the return of a uniformly random policy measured by each baseline run; "
            "none (–) where RL's return is not above random's. By seed: each run's final return, in the order of their seeds. Last third: the mean, over seeds, of "
            "each run's values logged at or after two thirds of its last step; its score is taken against RL's "
            "last thirds. From: " + _sources(rows) + ".\n\n## Gymnasium return (standard reward)\n\n")
    if not gym_rows:
        return text + "No run logged a Gymnasium return (runs written before it was logged, or no true reward).\n"
    return text + (markdown_table(gym_rows) + "\n\n"
                   "Gymnasium return: the unmodified Gymnasium reward (control costs included, no termination "
                   "penalty) of the same episodes, beside the true return; nothing is trained or judged on it. On a "
                   "task whose episodes end early in Gymnasium (a fall), it is summed over the fixed-length episode "
                   "this project runs, so it is not a published episode return. Final return and normalised score as above, with the random "
                   "policy's Gymnasium return. From: " + _sources(gym_rows) + ".\n")


def write_report(paths: list[Path], out: Path) -> list[Path]:
    """Read the runs under ``paths``; write the figure, ``results.md`` (a table of the true return, then
    one of the Gymnasium return) and ``results.csv`` (both tables' rows; ``reward`` says which) into
    ``out``."""
    runs = load_runs(paths)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows, gym_rows = summarize(runs, TRUE), summarize(runs, GYM)
    written = plot(runs, out)
    md = out / "results.md"
    md.write_text(_markdown(rows, gym_rows))
    csv_path = out / "results.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["task", "method", "labels", "seeds", "final_return_mean", "final_return_std", "normalised_score",
                    "reward", "measure", "seed_ids", "final_returns", "last_third_mean", "last_third_score"])
        for r in [*rows, *gym_rows]:
            w.writerow([r.task, r.method, r.labels or "", r.seeds, repr(r.mean), repr(r.std),
                        "" if r.score is None else repr(r.score), r.reward, r.measure,
                        " ".join(map(str, r.seed_ids)), " ".join(map(repr, r.finals)),
                        "" if math.isnan(r.late) else repr(r.late),
                        "" if r.late_score is None else repr(r.late_score)])
    return [*written, md, csv_path]
