"""The preset scripts in scripts/: the grids they build and their one-line refusals."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _dry(args: list[str], out: Path) -> list[list[str]]:
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "results_mujoco.py"), *args, "--out", str(out),
                          "--dry-run"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return [line.split() for line in res.stdout.splitlines() if line.split()[:1] == ["new"]]


@pytest.mark.slow
def test_results_mujoco_experiments_share_their_baselines_and_full_method_runs(tmp_path):
    labels = _dry([], tmp_path)
    ablations = _dry(["--experiment", "ablations"], tmp_path)
    teachers = _dry(["--experiment", "teachers"], tmp_path)
    assert (len(labels), len(ablations), len(teachers)) == (8 * 3 * 4, 2 * 3 * 8, 2 * 3 * 7)
    names = {e: {row[-1] for row in rows} for e, rows in (("l", labels), ("a", ablations), ("t", teachers))}
    shared = names["l"] & names["a"] & names["t"]
    assert shared == {f"{t}/{k}-s{s}" for t in ("HalfCheetah-v5", "Hopper-v5") for s in range(3)
                      for k in ("rl-true-reward", "L700-perfect-variance")}
    steps = {row[2]: int(row[4]) for row in labels}
    mod = _load("results_mujoco")
    assert steps == mod.STEPS


def test_results_mujoco_evaluates_rl_and_rlhf_alike_about_ten_times():
    mod = _load("results_mujoco")
    from rlhf_control.experiments.sweep import expand_grid

    spec = mod.spec_from_dict
    over = mod.overrides(["Hopper-v5", "Reacher-v5"], 0.5, None)
    assert over["Hopper-v5"]["steps"] == round(mod.STEPS["Hopper-v5"] * 0.5)
    assert over["Reacher-v5"]["eval_episodes"] > over["Hopper-v5"]["eval_episodes"]
    points = expand_grid(spec({"sweep": {"tasks": ["Hopper-v5"], "labels": [700]},
                               "overrides": {"Hopper-v5": over["Hopper-v5"]}}))
    assert {(p.kind, p.cfg.eval_every, p.cfg.eval_episodes) for p in points} == \
        {(k, over["Hopper-v5"]["eval_every"], 5) for k in ("baseline", "rlhf")}
    evaluations = over["Hopper-v5"]["steps"] // (mod.ITERATION_STEPS * over["Hopper-v5"]["eval_every"])
    assert 8 <= evaluations <= 12


@pytest.mark.parametrize(("args", "message"), [
    (["--tasks", "Pendulum-v1"], "--tasks Pendulum-v1 not in this suite"),
    (["--scale", "0"], "--scale 0.0 must be positive"),
    (["--experiment", "all"], "invalid choice: 'all'"),
])
def test_results_mujoco_refuses_bad_input_in_one_line(tmp_path, args, message):
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "results_mujoco.py"), *args,
                          "--out", str(tmp_path / "grid"), "--dry-run"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert message in res.stderr.strip().splitlines()[-1]  # argparse prints its usage above the error
    assert not (tmp_path / "grid").exists()
