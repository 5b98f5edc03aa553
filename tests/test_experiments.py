"""Sweeps: spec checks, deterministic grids, local and Ray backends with equal results, resuming."""

from __future__ import annotations

import socket
import tomllib
from pathlib import Path

import pytest

from rlhf_control import __version__
from rlhf_control.experiments.sweep import (
    ABLATIONS,
    expand_grid,
    load_spec,
    plan_sweep,
    point_name,
    run_sweep,
    spec_from_dict,
)
from rlhf_control.loop.metrics import read_metrics

# One evaluation episode: the default ten take half of such a run's time. The reward trains in the run's
# process: these tests are about sweeps, and a reward worker's start (importing torch) took 8 of such a
# run's 10 s (tests/test_trainer.py and tests/test_clean_stop.py cover the worker).
TINY_RUN = {"steps": 256, "n_envs": 1, "pretrain_labels": 2, "pretrain_epochs": 1, "reward_epochs": 1,
            "checkpoint_every": 2, "eval_episodes": 1, "reward_async": False,
            "agent": {"n_steps": 64, "batch_size": 32, "n_epochs": 1}}


def _tiny(**sweep) -> dict:
    base = {"tasks": ["Pendulum-v1"], "seeds": [0, 1], "labels": [6, 10], "baseline": False}
    return {"sweep": base | sweep, "run": dict(TINY_RUN)}


# ----------------------------------------------------------------------------- spec parsing (no runs)
@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"sweep": {"tasks": ["Pendulum-v1"], "seed": [0]}}, "unknown key(s) seed in [sweep]"),
        ({"sweep": {"tasks": ["Pendulum-v1"]}, "run": {"reward_epoch": 2}}, "unknown key(s) reward_epoch in [run]"),
        ({"sweep": {"tasks": ["Pendulum-v1"]}, "runs": {}}, "unknown section(s) runs"),
        ({"sweep": {"tasks": ["Pendulum-v1"]}, "run": {"seed": 3}}, "seed in [run] of spec is a grid axis"),
        ({"sweep": {"tasks": []}}, "empty grid: tasks"),
        ({"sweep": {"tasks": ["Pendulum-v1"], "seeds": []}}, "empty grid: seeds"),
        ({"sweep": {"tasks": ["Pendulum-v1"], "baseline": False, "rlhf": False}}, "empty grid"),
        ({"sweep": {"tasks": ["Pendulum-v1"], "ablations": ["no-l3"]}}, "unknown ablation(s) 'no-l3'"),
        ({"sweep": {"tasks": ["Pendulum-v1"], "labels": [0]}}, "must be positive integers"),
        ({"sweep": {"tasks": ["Pendulum-v1"], "seeds": ["a"]}}, "must be a list of ints"),
        ({"sweep": {"tasks": ["Pendulum-v1"]}, "overrides": {"Hopper-v5": {"steps": 5}}}, "not in tasks"),
        ({"run": {}}, "has no [sweep] table"),
    ],
)
def test_bad_specs_are_one_line_errors(doc: dict, message: str) -> None:
    with pytest.raises(ValueError) as err:
        spec_from_dict(doc, where="spec")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_spec_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('[sweep]\ntasks = ["Pendulum-v1"]\nseeds = [0, 2]\nablations = ["full", "no-segments"]\n'
                    '[run]\nreward_epochs = 2\n[overrides."Pendulum-v1"]\nsteps = 500\n')
    spec = load_spec(path)
    assert spec.seeds == (0, 2) and spec.ablations == ("full", "no-segments") and spec.run == {"reward_epochs": 2}
    assert spec_from_dict(spec.to_toml_dict()) == spec
    path.write_text("[sweep\n")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_spec(path)
    with pytest.raises(ValueError, match="does not exist"):
        load_spec(tmp_path / "missing.toml")


def test_point_names_are_deterministic_and_distinct() -> None:
    from rlhf_control.config import RunConfig

    cfg = RunConfig(task="Pendulum-v1", seed=3, labels=700, oracle="stochastic:beta=2+mistake", selector="variance")
    assert point_name(cfg, "rlhf") == "Pendulum-v1/L700-stochastic_beta=2+mistake-variance-s3"
    assert point_name(cfg, "rlhf", "no-l2") == "Pendulum-v1/L700-stochastic_beta=2+mistake-variance-no-l2-s3"
    assert point_name(cfg, "baseline") == "Pendulum-v1/rl-true-reward-s3"


# ----------------------------------------------------------------------------- grids and bad names
def test_grid_expands_axes_ablations_and_baselines() -> None:
    spec = spec_from_dict({"sweep": {"tasks": ["Pendulum-v1"], "seeds": [0, 1], "labels": [20, 40],
                                     "ablations": list(ABLATIONS)},
                           "run": {"steps": 1000, "eval_every": 7, "eval_episodes": 3, "reward_epochs": 2,
                                   "iteration_steps": 200}})
    points = expand_grid(spec)
    names = [p.name for p in points]
    assert len(names) == len(set(names)) == 2 * (1 + 2 * len(ABLATIONS))
    by = {p.name: p for p in points}
    ne = by["Pendulum-v1/L20-perfect-random-no-ensemble-s1"].cfg
    assert ne.reward_members == 1 and ne.selector == "random" and ne.steps == 1000 and ne.labels == 20
    assert by["Pendulum-v1/L40-perfect-variance-no-segments-s0"].cfg.clip_length == 1
    assert by["Pendulum-v1/L40-perfect-variance-no-online-queries-s0"].cfg.schedule == "offline"
    assert by["Pendulum-v1/L40-perfect-variance-no-regularization-s0"].cfg.reward_l2 is False
    assert by["Pendulum-v1/L40-perfect-variance-true-return-regression-s0"].cfg.reward_fitter == \
        "true-return-regression"
    assert by["Pendulum-v1/L40-perfect-variance-s0"].cfg.reward_fitter == "comparisons"
    rl = by["Pendulum-v1/rl-true-reward-s1"]
    assert rl.kind == "baseline"
    # measured like the RLHF runs; the reward model's settings do not reach it
    assert (rl.cfg.eval_every, rl.cfg.eval_episodes, rl.cfg.steps, rl.cfg.iteration_steps) == (7, 3, 1000, 200)
    assert rl.cfg.reward_epochs is None and ne.reward_epochs == 2
    assert [p.name for p in expand_grid(spec)] == names  # same spec, same names, same order
    scaled = expand_grid(spec_from_dict({"sweep": {"tasks": ["Pendulum-v1"], "scale": 0.01}}))
    from rlhf_control.tasks.catalogue import get_task

    assert scaled[0].cfg.steps == round(get_task("Pendulum-v1").total_steps * 0.01)


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        ({"tasks": ["NoSuchTask-v0"]}, "NoSuchTask-v0"),
        ({"tasks": ["Pendulum-v1"], "oracles": ["perfekt"]}, "unknown oracle 'perfekt'"),
        ({"tasks": ["Pendulum-v1"], "oracles": ["human"]}, "cannot be swept"),
        ({"tasks": ["Pendulum-v1"], "selectors": ["varience"]}, "varience"),
    ],
)
def test_unknown_names_fail_before_any_run(tmp_path: Path, sweep: dict, message: str) -> None:
    with pytest.raises(ValueError) as err:
        run_sweep(spec_from_dict({"sweep": sweep}), tmp_path / "out", log=lambda _: None)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_bad_backend_inputs_fail_before_any_run(tmp_path: Path) -> None:
    spec = spec_from_dict(_tiny())
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ValueError, match="is unreachable"):
        run_sweep(spec, tmp_path / "out", backend="ray", address=f"127.0.0.1:{port}", log=lambda _: None)
    with pytest.raises(ValueError, match="not host:port"):
        run_sweep(spec, tmp_path / "out", backend="ray", address="nowhere", log=lambda _: None)
    with pytest.raises(ValueError, match="backend 'dask' is not allowed"):
        run_sweep(spec, tmp_path / "out", backend="dask", log=lambda _: None)
    assert not (tmp_path / "out").exists()


def test_run_dir_of_another_version_or_other_settings_fails_before_any_run(tmp_path: Path) -> None:
    from rlhf_control.config import write_config_file

    spec = spec_from_dict(_tiny())
    points = expand_grid(spec)
    old = tmp_path / points[-1].name
    old.mkdir(parents=True)
    write_config_file(old / "config.toml", points[-1].cfg, {}, {"version": "0.0.1"})
    with pytest.raises(ValueError, match=rf"written by rlhf-control 0.0.1, this is {__version__}"):
        run_sweep(spec, tmp_path, log=lambda _: None)
    write_config_file(old / "config.toml", points[-1].cfg.replace(reward_epochs=5), {}, {"version": __version__})
    with pytest.raises(ValueError, match="other settings .reward_epochs: 5 there, 1 here"):
        run_sweep(spec, tmp_path, log=lambda _: None)
    assert [p.name for p in tmp_path.glob("Pendulum-v1/*")] == [old.name]  # nothing else started


# ----------------------------------------------------------------------------- end to end
def _curve(run_dir: Path) -> list[tuple[str, str, str]]:
    return [(r["step"], r["labels"], r["true_return"]) for r in read_metrics(run_dir / "metrics.csv")]


@pytest.mark.slow
def test_local_and_ray_sweeps_agree_and_resume_runs_only_what_is_missing(tmp_path: Path) -> None:
    spec = spec_from_dict(_tiny(seeds=[0, 1, 2], labels=[6]))  # three runs: one resumed, one new, one done
    local = run_sweep(spec, tmp_path / "local", workers=2, log=lambda _: None)
    assert not local.failed and len(local.ran) == 3 and not local.skipped
    names = sorted(local.ran)
    for name in names:
        d = tmp_path / "local" / name
        assert (d / "DONE").is_file() and (d / "checkpoints" / "LATEST").is_file()
        rows = read_metrics(d / "metrics.csv")
        assert int(rows[-1]["step"]) >= 256 and int(rows[-1]["labels"]) == int(name.split("/L")[1].split("-")[0])
        meta = tomllib.loads((d / "config.toml").read_text())["meta"]
        assert meta["version"] == __version__
    # The two seeds differ, so equal curves below are not a coincidence of identical runs.
    assert _curve(tmp_path / "local" / names[0]) != _curve(tmp_path / "local" / names[1])

    import ray

    # Ray runs two of the three, at once, and they come out as the local ones did.
    first = {name: _curve(tmp_path / "local" / name) for name in names[:2]}
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = run_sweep(spec_from_dict(_tiny(seeds=[0, 1], labels=[6])), tmp_path / "ray", backend="ray",
                           log=lambda _: None)
    finally:
        ray.shutdown()
    assert not remote.failed and sorted(remote.ran) == names[:2]
    for name in names[:2]:
        assert _curve(tmp_path / "ray" / name) == first[name]

    # Interrupted sweep: one run lost its DONE (killed after its last checkpoint), one never started.
    (tmp_path / "local" / names[0] / "DONE").unlink()
    import shutil

    shutil.rmtree(tmp_path / "local" / names[1])
    untouched = {n: (tmp_path / "local" / n / "DONE").stat().st_mtime_ns for n in names[2:]}
    plan = {p.name: s for p, s in plan_sweep(spec, tmp_path / "local")}
    assert plan == {names[0]: "resume", names[1]: "new", names[2]: "done"}
    again = run_sweep(spec, tmp_path / "local", workers=2, log=lambda _: None)
    assert sorted(again.ran) == names[:2] and sorted(again.skipped) == names[2:] and not again.failed
    assert {n: (tmp_path / "local" / n / "DONE").stat().st_mtime_ns for n in names[2:]} == untouched
    assert _curve(tmp_path / "local" / names[1]) == first[names[1]]  # rerun from scratch
    resumed = read_metrics(tmp_path / "local" / names[0] / "metrics.csv")
    assert resumed[-1]["labels"] == first[names[0]][-1][1]


def test_cli_handlers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rlhf_control.cli import build_parser

    parser = build_parser()
    spec = tmp_path / "tiny.toml"
    import tomli_w

    spec.write_text(tomli_w.dumps(_tiny()))
    args = parser.parse_args(["sweep", str(spec), "--out", str(tmp_path / "out"), "--dry-run"])
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    assert "Pendulum-v1/L10-perfect-variance-s1" in out and "4 runs (0 done, 4 to run" in out
    args = parser.parse_args(["report", str(tmp_path / "out")])
    with pytest.raises(ValueError, match="does not exist"):
        args.handler(args)


# ----------------------------------------------------------------------------- the regression ablation
def test_true_return_regression_fits_segment_returns() -> None:
    import numpy as np
    import torch

    from rlhf_control.reward.ensemble import EnsembleConfig, RewardEnsemble
    from rlhf_control.reward.fitting import WEIGHT_DECAY, fit_returns
    from rlhf_control.types import Segment

    rng = np.random.default_rng(0)

    def seg() -> Segment:
        obs = rng.normal(size=(10, 3)).astype(np.float32)
        acts = rng.uniform(-1, 1, size=(10, 1)).astype(np.float32)
        return Segment(obs, acts, true_rewards=2.0 * obs[:, 0] - acts[:, 0] ** 2)

    pairs = []
    for _ in range(120):
        a, b = seg(), seg()
        pairs.append((a, b, int(np.sign(a.true_return - b.true_return))))
    ens = RewardEnsemble(EnsembleConfig(n_members=3), (3,), (1,), seed=0)
    opt = torch.optim.Adam(ens.members.parameters(), lr=3e-3, weight_decay=WEIGHT_DECAY)
    before = fit_returns(ens, opt, pairs, epochs=1, rng=rng)
    after = fit_returns(ens, opt, pairs, epochs=30, rng=rng)
    assert after.mean_train_loss < 0.2 < before.mean_train_loss and after.mean_val_accuracy > 0.85
    test = [seg() for _ in range(50)]
    pred = ens.member_segment_returns(test)  # (K, 50): every member fits, not just the mean
    true = np.array([s.true_return for s in test])
    assert all(np.corrcoef(p, true)[0, 1] > 0.9 for p in pred)
