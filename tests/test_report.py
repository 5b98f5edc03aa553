"""Report: figure files and a table whose numbers are the metrics CSVs' final values."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from rlhf_control.config import RunConfig, write_config_file
from rlhf_control.experiments.report import (
    GYM,
    RL_METHOD,
    find_run_dirs,
    load_runs,
    measure,
    normalised,
    steps_label,
    summarize,
    write_report,
)
from rlhf_control.loop.metrics import COLUMNS


def _run(root: Path, name: str, cfg: RunConfig, returns: list[float | None], baseline: bool = False,
         random_return: float | None = None, point: dict | None = None, done: bool = True,
         extra: dict[str, list[float | None]] | None = None, random_gym_return: float | None = None) -> Path:
    """A run directory whose metrics hold ``returns`` as ``true_return`` and ``extra``'s columns."""
    d = root / name
    d.mkdir(parents=True)
    meta = {"version": "0.1.0"} | ({"baseline": "rl-true-reward"} if baseline else {})
    write_config_file(d / "config.toml", cfg, {"name": cfg.task, "label_budget": 99, "total_steps": 300_000}, meta)
    columns = {"true_return": returns, **(extra or {})}
    with open(d / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(COLUMNS))
        w.writeheader()
        for i in range(len(returns)):
            w.writerow({"step": 100 * (i + 1), "iteration": i + 1}
                       | {c: "" if v[i] is None else v[i] for c, v in columns.items()})
    if baseline:
        (d / "baseline.json").write_text(json.dumps({"random_return": random_return,
                                                     "random_gym_return": random_gym_return}))
    if point:
        (d / "point.json").write_text(json.dumps(point))
    if done:
        (d / "DONE").write_text("{}")
    return d


@pytest.fixture()
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "sweep"
    for seed, (rl, rnd) in enumerate([(100.0, -10.0), (120.0, -14.0)]):
        _run(root, f"Pendulum-v1/rl-true-reward-s{seed}", RunConfig(task="Pendulum-v1", seed=seed),
             [None, 5.0, 50.0, rl], baseline=True, random_return=rnd)
    finals = {(350, 0): 40.0, (350, 1): 60.0, (700, 0): 90.0, (700, 1): 70.0}
    for (labels, seed), final in finals.items():
        _run(root, f"Pendulum-v1/L{labels}-perfect-variance-s{seed}",
             RunConfig(task="Pendulum-v1", seed=seed, labels=labels), [1.0, 2.5, final])
    # A second task with an ablation (from point.json) and no baseline: no normalised score.
    _run(root, "CartPole-v1/L99-perfect-random-no-ensemble-s0",
         RunConfig(task="CartPole-v1", seed=0, selector="random", reward_members=1), [3.0, 7.25],
         point={"kind": "rlhf", "ablation": "no-ensemble"}, done=False)
    return root


def test_table_numbers_equal_csv_final_values(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "rep"
    files = write_report([sweep], out)
    assert {f.name for f in files} == {"returns.png", "returns.svg", "results.md", "results.csv"}
    assert (out / "returns.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in (out / "returns.svg").read_bytes()[:2000]
    with open(out / "results.csv", newline="") as f:
        rows = {(r["task"], r["method"], r["labels"]): r for r in csv.DictReader(f) if r["reward"] == "true"}
    rl, rnd = np.mean([100.0, 120.0]), np.mean([-10.0, -14.0])
    assert float(rows[("Pendulum-v1", RL_METHOD, "")]["final_return_mean"]) == rl
    assert float(rows[("Pendulum-v1", "random policy", "")]["final_return_mean"]) == rnd
    for labels, finals in ((350, [40.0, 60.0]), (700, [90.0, 70.0])):
        r = rows[("Pendulum-v1", "perfect, variance", str(labels))]
        assert float(r["final_return_mean"]) == np.mean(finals)
        assert float(r["final_return_std"]) == pytest.approx(np.std(finals))
        assert float(r["normalised_score"]) == pytest.approx((np.mean(finals) - rnd) / (rl - rnd))
        assert r["seeds"] == "2"
    abl = rows[("CartPole-v1", "perfect, random, no-ensemble", "99")]
    assert float(abl["final_return_mean"]) == 7.25 and abl["normalised_score"] == ""
    md = (out / "results.md").read_text()
    assert "| Pendulum-v1 | perfect, variance | 700 | 2 | 90.0 / 70.0 | 80.0 ± 10.0 | 0.75 | 41.2 | 0.58 |" in md
    assert "| Pendulum-v1 | RL (true reward) | – | 2 | 100.0 / 120.0 | 110.0 ± 10.0 | 1.00 | 80.0 | 1.00 |" in md
    assert "| CartPole-v1 | perfect, random, no-ensemble | 99 | 1 | 7.2 | 7.2 ± 0.0 | – | 7.2 | – |" in md


def test_last_third_is_the_mean_of_the_late_values_scored_against_rl_late(sweep: Path, tmp_path: Path) -> None:
    """Each run's last third averages its values at or after 2/3 of its last step (the RL runs log at
    200-400, so 300 and 400; the RLHF runs at 100-300, so 200 and 300); the score uses RL's last thirds."""
    write_report([sweep], tmp_path / "rep")
    with open(tmp_path / "rep" / "results.csv", newline="") as f:
        rows = {(r["method"], r["labels"]): r for r in csv.DictReader(f) if r["task"] == "Pendulum-v1"}
    rl_late = np.mean([(50.0 + 100.0) / 2, (50.0 + 120.0) / 2])
    rnd = np.mean([-10.0, -14.0])
    assert float(rows[(RL_METHOD, "")]["last_third_mean"]) == rl_late
    r = rows[("perfect, variance", "700")]
    late = np.mean([(2.5 + 90.0) / 2, (2.5 + 70.0) / 2])
    assert float(r["last_third_mean"]) == pytest.approx(late)
    assert float(r["last_third_score"]) == pytest.approx((late - rnd) / (rl_late - rnd))
    assert r["seed_ids"] == "0 1" and [float(v) for v in r["final_returns"].split()] == [90.0, 70.0]
    runs = {(x.method, x.labels, x.seed): x for x in load_runs([sweep])}
    assert runs[("perfect, variance", 350, 1)].last_third() == (2.5 + 60.0) / 2


def test_single_run_dirs_and_skipping_runs_without_returns(sweep: Path, tmp_path: Path) -> None:
    empty = _run(tmp_path, "empty", RunConfig(task="Pendulum-v1"), [None, None])
    one = sweep / "Pendulum-v1/L350-perfect-variance-s1"
    runs = load_runs([one, empty])
    assert len(runs) == 1 and runs[0].final() == 60.0 and runs[0].labels == 350
    assert [r.method for r in summarize(runs)] == ["perfect, variance"]
    assert summarize(runs)[0].score is None  # no baseline, no normalised score
    assert len(find_run_dirs([sweep])) == 7


def test_normalised_score() -> None:
    assert normalised(50.0, 100.0, 0.0) == 0.5
    assert normalised(-5.0, 100.0, -10.0) == pytest.approx(5 / 110)
    assert normalised(50.0, 1.0, 1.0) is None and normalised(1.0, None, 0.0) is None
    # RL below random (Reacher's Gymnasium return, control cost included, at 300k steps): no scale to
    # score on; dividing anyway ranked a run that beat both as worse than random (-0.45)
    assert normalised(-22.9, -85.8, -42.6) is None


def test_runs_that_cannot_share_a_table_are_refused_in_one_line(sweep: Path, tmp_path: Path) -> None:
    longer = _run(tmp_path, "long", RunConfig(task="Pendulum-v1", seed=5, labels=700, steps=400_000), [1.0, 2.0])
    with pytest.raises(ValueError, match=r"Pendulum-v1 runs of different step counts: 300,000 .*400,000"):
        load_runs([sweep, longer])
    again = _run(tmp_path, "again", RunConfig(task="Pendulum-v1", seed=1, labels=350), [1.0, 2.0])
    with pytest.raises(ValueError, match=r"are both Pendulum-v1, perfect, variance, 350 labels, seed 1; give one"):
        write_report([sweep, again], tmp_path / "rep")
    assert not (tmp_path / "rep").exists()  # nothing written


def test_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        find_run_dirs([tmp_path / "nope"])
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match="not a run directory"):
        find_run_dirs([tmp_path / "plain"])
    _run(tmp_path, "norets", RunConfig(), [None])
    with pytest.raises(ValueError, match="has logged a true return"):
        load_runs([tmp_path / "norets"])


def test_evaluation_and_gymnasium_returns_get_their_own_table(tmp_path: Path) -> None:
    """A task whose runs all have periodic evaluations is reported on them (true and Gymnasium return
    alike); a task where one run lacks them falls back to the training episodes for every run."""
    root = tmp_path / "s"
    cfg = RunConfig(task="Reacher-v5", seed=0)
    _run(root, "Reacher-v5/rl-true-reward-s0", cfg, [-9.0, -6.0], baseline=True, random_return=-40.0,
         random_gym_return=-80.0, extra={"gym_return": [-20.0, -16.0], "eval_true_return": [None, -4.0],
                                         "eval_gym_return": [None, -14.0]})
    _run(root, "Reacher-v5/L700-perfect-variance-s0", cfg.replace(labels=700), [-30.0, -20.0],
         extra={"gym_return": [-60.0, -50.0], "eval_true_return": [-12.0, -13.0], "eval_gym_return": [-44.0, -48.0]})
    # Pendulum: the RLHF run has no evaluation (an older run), so both are measured on training episodes.
    pcfg = RunConfig(task="Pendulum-v1", seed=0)
    _run(root, "Pendulum-v1/rl-true-reward-s0", pcfg, [-300.0, -200.0], baseline=True, random_return=-1200.0,
         extra={"eval_true_return": [None, -150.0]})
    _run(root, "Pendulum-v1/L300-perfect-variance-s0", pcfg.replace(labels=300), [-700.0, -400.0])
    runs = load_runs([root])
    assert measure(runs, "Reacher-v5") == "eval_true_return" and measure(runs, "Reacher-v5", GYM) == "eval_gym_return"
    assert measure(runs, "Pendulum-v1") == "true_return" and measure(runs, "Pendulum-v1", GYM) is None
    true_rows = {(r.task, r.method): r for r in summarize(runs)}
    assert true_rows[("Reacher-v5", RL_METHOD)].mean == -4.0
    assert true_rows[("Reacher-v5", "perfect, variance")].score == pytest.approx((-13.0 + 40.0) / (-4.0 + 40.0))
    assert true_rows[("Pendulum-v1", RL_METHOD)].mean == -200.0  # not its -150 evaluation
    assert true_rows[("Pendulum-v1", "perfect, variance")].score == pytest.approx((-400 + 1200) / (-200 + 1200))
    gym_rows = {(r.task, r.method): r for r in summarize(runs, GYM)}
    assert set(gym_rows) == {("Reacher-v5", RL_METHOD), ("Reacher-v5", "random policy"),
                             ("Reacher-v5", "perfect, variance")}
    assert gym_rows[("Reacher-v5", "random policy")].mean == -80.0
    assert gym_rows[("Reacher-v5", "perfect, variance")].score == pytest.approx((-48.0 + 80.0) / (-14.0 + 80.0))
    write_report([root], tmp_path / "rep")
    md = (tmp_path / "rep" / "results.md").read_text()
    true_part, gym_part = md.split("## Gymnasium return")
    assert "| Reacher-v5 | perfect, variance | 700 | 1 | -13.0 | -13.0 ± 0.0 | 0.75 | -13.0 | 0.75 |" in true_part
    assert "| Reacher-v5 | perfect, variance | 700 | 1 | -48.0 | -48.0 ± 0.0 | 0.48 | -48.0 | 0.48 |" in gym_part
    assert "Pendulum-v1" not in gym_part.split("From:")[0]
    assert "Reacher-v5: evaluation (`eval_true_return`)" in true_part and "Pendulum-v1: training" in true_part
    with open(tmp_path / "rep" / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {(r["task"], r["reward"], r["measure"]) for r in rows} == {
        ("Reacher-v5", "true", "eval_true_return"), ("Pendulum-v1", "true", "true_return"),
        ("Reacher-v5", "gym", "eval_gym_return")}


def test_step_ticks_are_short():
    # Six-digit step counts side by side ran together on a narrow panel ("1000001500002000").
    assert [steps_label(x) for x in (0, 500, 50_000, 150_000, 1_000_000, 2_500_000)] == \
        ["0", "500", "50k", "150k", "1M", "2.5M"]
