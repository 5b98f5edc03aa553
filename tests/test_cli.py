"""End-to-end runs of the `rlhf-control` command on tiny budgets, and its bad-input errors."""

import csv
import json
import os
import sqlite3
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from rlhf_control.cli import main
from rlhf_control.loop.metrics import COLUMNS

TINY = ["--steps", "2048", "--labels", "20", "--n-envs", "2", "--no-progress", "--seed", "1"]


def _rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _answers(run_dir: Path) -> list[tuple]:
    con = sqlite3.connect(run_dir / "preferences.sqlite")
    try:
        return con.execute("SELECT query_id, label, skipped FROM answers ORDER BY id").fetchall()
    finally:
        con.close()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    assert main(["train", "--run-dir", str(run_dir), *TINY]) == 0
    return run_dir


def test_train_writes_every_artefact(tiny_run):
    run = tiny_run
    for name in ("config.toml", "metrics.csv", "preferences.sqlite", "DONE", "checkpoints/LATEST"):
        assert (run / name).exists(), name
    assert list((run / "tb").glob("events.out.tfevents.*"))
    ckpt = run / "checkpoints" / (run / "checkpoints" / "LATEST").read_text().strip()
    for name in ("agent.zip", "ensemble.pt", "reward_trainer.pt", "state.json"):
        assert (ckpt / name).is_file(), name
    rows = _rows(run)
    assert tuple(rows[0].keys()) == COLUMNS
    for col in ("step", "labels", "true_return", "learned_return", "reward_val_accuracy",
                "reward_return_corr", "steps_per_second"):
        assert rows[-1][col] != "", col
    assert int(rows[-1]["step"]) >= 2048
    assert int(rows[-1]["labels"]) == 20
    steps = [int(r["step"]) for r in rows]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)
    answers = _answers(run)
    assert len(answers) == 20 and len({a[0] for a in answers}) == 20
    assert {a[1] for a in answers} <= {-1, 0, 1}
    cfg = tomllib.loads((run / "config.toml").read_text())
    assert cfg["run"]["labels"] == 20 and cfg["task"]["env_id"] == "Pendulum-v1"


def test_config_file_reruns_the_same_run(tiny_run, tmp_path):
    again = tmp_path / "again"
    assert main(["train", "--config", str(tiny_run / "config.toml"), "--run-dir", str(again), "--no-progress"]) == 0
    a, b = _rows(tiny_run), _rows(again)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    assert [r["labels"] for r in a] == [r["labels"] for r in b]
    assert _answers(tiny_run) == _answers(again)  # same seed, same queries and answers


def test_eval_and_video(tiny_run, tmp_path, capsys):
    video = tmp_path / "policy.mp4"
    assert main(["eval", str(tiny_run), "--episodes", "2", "--video", str(video)]) == 0
    out = capsys.readouterr().out
    assert "true return over 2 episodes" in out
    import imageio.v2 as imageio

    reader = imageio.get_reader(str(video))
    assert reader.count_frames() >= 200  # a whole 200-step Pendulum episode
    reader.close()


def _summary_mean(out: str) -> float:
    """The mean true return of `rlhf-control eval`'s summary line."""
    return float(out.split("mean ", 1)[1].split(",", 1)[0])


def _eval_mean(capsys, *args: str) -> float:
    assert main(["eval", *args]) == 0
    return _summary_mean(capsys.readouterr().out)


def test_eval_of_a_finished_run_repeats_its_last_evaluation_and_takes_its_seed(tiny_run, capsys):
    """The final eval_true_return is of the policy the last checkpoint holds (evaluated after the agent's
    last update, as the RL baseline's is), and `rlhf-control eval` runs it on the run's evaluation seed:
    a reader who evaluates a finished run gets the run's own figure. Another --seed gives other episodes."""
    last = _rows(tiny_run)[-1]
    cfg = tomllib.loads((tiny_run / "config.toml").read_text())
    episodes = cfg["run"].get("eval_episodes", cfg["task"]["eval_episodes"])  # the run's, else its task's
    assert last["eval_true_return"] != ""
    mean = _eval_mean(capsys, str(tiny_run), "--episodes", str(episodes))
    assert mean == pytest.approx(float(last["eval_true_return"]), abs=0.006)
    # SB3 reseeds an env attached at load with the training seed; the seed given must be the one used.
    assert _eval_mean(capsys, str(tiny_run), "--episodes", str(episodes), "--seed", "3") != pytest.approx(mean, abs=0.01)


def test_eval_per_episode_lists_the_episodes_the_summary_averages(tiny_run, capsys):
    assert main(["eval", str(tiny_run), "--episodes", "3", "--per-episode"]) == 0
    lines = capsys.readouterr().out.splitlines()
    mean = _summary_mean(lines[0])
    episodes = [float(line.split("true return ", 1)[1].split(",", 1)[0]) for line in lines[1:]]
    assert [line.split(":", 1)[0] for line in lines[1:]] == ["episode 0", "episode 1", "episode 2"]
    assert sum(episodes) / 3 == pytest.approx(mean, abs=0.01)
    assert len(set(episodes)) == 3  # three different starts, not one episode printed three times


def test_labels_export(tiny_run, tmp_path, capsys):
    assert main(["labels", str(tiny_run), "--export", str(tmp_path / "a.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert len(rows) == 20 and {r["label"] for r in rows} <= {-1, 0, 1}
    assert main(["labels", str(tiny_run), "--export", str(tmp_path / "a.csv")]) == 0
    with open(tmp_path / "a.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 20
    assert main(["labels", str(tiny_run), "--export", str(tmp_path / "a.txt")]) == 2
    assert ".jsonl or .csv" in capsys.readouterr().err


def test_tasks_lists_the_catalogue(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    for name in ("Pendulum-v1", "HalfCheetah-v5", "Pong", "hopper-backflip"):
        assert name in out


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlhf_control.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}, timeout=120)


def _snapshot(d: Path) -> dict:
    return {p.relative_to(d): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "args, needle",
    [
        (["train", "--task", "HalfCheeta"], "HalfCheetah-v5"),  # suggests the nearest names
        (["train", "--env", "NoSuchEnv-v0"], "NoSuchEnv-v0"),
        (["train", "--oracle", "perfekt"], "perfect"),
        (["train", "--selector", "variancee"], "variance"),
        (["train", "--labels", "0"], "positive"),
        (["train", "--steps", "-5"], "positive"),
        (["train", "--oracle", "mistake:epsilon=2"], "epsilon"),
        (["train", "--reward-obs", "later"], "invalid choice: 'later'"),
        (["train", "--task", "ALE/Pong-v5", "--reward-obs", "after"], "reward-obs after is not supported for frame"),
        (["train", "--stale-after", "-5"], "stale-after -5 must be an integer >= 1"),
        (["train", "--seed", "4294967296"], "seed 4294967296 must be an integer in [0, 2**32 - 1]"),
        (["train", "--reward-crop", "1000"], "reward-crop 1000 must not exceed the clip length 25"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, needle, capsys, monkeypatch):
    # In this process (a child process per case cost 3-4 s of torch imports each); the command's own
    # process is covered by the _cli tests below. An exception other than the one-line error would
    # escape main() and fail the test, as a traceback would in a child's stderr.
    monkeypatch.chdir(tmp_path)
    try:
        code = main([*args, "--run-dir", str(tmp_path / "run")])
    except SystemExit as exc:  # argparse's errors
        code = exc.code
    assert code != 0
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert needle in lines[0]
    assert not (tmp_path / "run").exists()


def test_resume_of_a_non_run_and_unknown_config_keys(tmp_path):
    res = _cli("train", "--resume", str(tmp_path), cwd=tmp_path)
    assert res.returncode == 2 and "not a run directory" in res.stderr and "Traceback" not in res.stderr
    cfg = tmp_path / "c.toml"
    cfg.write_text('[run]\ntask = "Pendulum-v1"\nlabelz = 3\n')
    res = _cli("train", "--config", str(cfg), "--run-dir", str(tmp_path / "r"), cwd=tmp_path)
    assert res.returncode == 2 and "labelz" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "r").exists()


def test_resume_takes_no_other_run_dir_and_a_run_dir_that_is_a_file_is_refused(tiny_run, tmp_path):
    before = _snapshot(tiny_run)
    res = _cli("train", "--resume", str(tiny_run), "--run-dir", str(tmp_path / "elsewhere"), cwd=tmp_path)
    assert res.returncode == 2 and "drop --run-dir" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert _snapshot(tiny_run) == before and not (tmp_path / "elsewhere").exists()
    (tmp_path / "afile").write_text("x")
    res = _cli("train", "--run-dir", str(tmp_path / "afile"), *TINY, cwd=tmp_path)
    assert res.returncode == 2 and "is a file" in res.stderr and "Traceback" not in res.stderr


def test_existing_run_is_never_overwritten(tiny_run, tmp_path):
    before = _snapshot(tiny_run)
    res = _cli("train", "--run-dir", str(tiny_run), *TINY, cwd=tmp_path)
    assert res.returncode == 2 and "already exists" in res.stderr
    assert _snapshot(tiny_run) == before


def test_corrupt_checkpoint_is_reported(tiny_run, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_run, broken)
    (broken / "DONE").unlink()
    ckpt = broken / "checkpoints" / (broken / "checkpoints" / "LATEST").read_text().strip()
    data = (ckpt / "ensemble.pt").read_bytes()
    (ckpt / "ensemble.pt").write_bytes(data[: len(data) // 2])  # truncated
    before = _snapshot(broken)
    res = _cli("train", "--resume", str(broken), "--no-progress", cwd=tmp_path)
    assert res.returncode == 2 and "corrupt or truncated checkpoint" in res.stderr
    assert "Traceback" not in res.stderr
    assert _snapshot(broken) == before


def test_train_flags_come_from_run_config_docstrings_and_the_readme_prints_them(capsys):
    import dataclasses

    from rlhf_control.cli import train_flags_markdown
    from rlhf_control.config import RunConfig, field_docs

    docs = field_docs()
    assert set(docs) == {f.name for f in dataclasses.fields(RunConfig)}  # a docstring per field
    assert all(docs.values())
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for f in dataclasses.fields(RunConfig):
        flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
        shown = f.metadata.get("cli", True)
        assert (flag in help_text) == shown, flag
        if shown:
            assert docs[f.name] in help_text, f.name
    assert train_flags_markdown() in (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_only_user_errors_are_one_line_messages(monkeypatch, capsys):
    from rlhf_control import cli
    from rlhf_control.errors import UserError

    def user_mistake(_args):
        raise UserError("labels 0 must be a positive integer\nsecond line")

    monkeypatch.setattr(cli, "_tasks", user_mistake)
    assert main(["tasks"]) == 2
    assert capsys.readouterr().err == "rlhf-control: error: labels 0 must be a positive integer\n"

    def internal_bug(_args):
        raise ValueError("operands could not be broadcast together")  # as NumPy raises it

    monkeypatch.setattr(cli, "_tasks", internal_bug)
    with pytest.raises(ValueError, match="broadcast"):
        main(["tasks"])


def test_a_run_from_before_the_bagging_change_is_refused_on_resume_in_one_line(tiny_run, tmp_path):
    import hashlib
    import shutil

    import torch

    old = tmp_path / "old"
    shutil.copytree(tiny_run, old)
    (old / "DONE").unlink()
    ckpt = old / "checkpoints" / (old / "checkpoints" / "LATEST").read_text().strip()
    state = torch.load(ckpt / "reward_trainer.pt", weights_only=True)
    state.pop("split_scheme")  # as a checkpoint written by the previous version
    torch.save(state, ckpt / "reward_trainer.pt")
    meta = json.loads((ckpt / "state.json").read_text())
    meta["files"]["reward_trainer.pt"] = hashlib.sha256((ckpt / "reward_trainer.pt").read_bytes()).hexdigest()
    (ckpt / "state.json").write_text(json.dumps(meta))
    before = {p: p.read_bytes() for p in old.rglob("*") if p.is_file()}
    res = _cli("train", "--resume", str(old), "--no-progress", cwd=tmp_path)
    assert res.returncode == 2 and "split_scheme" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert {p: p.read_bytes() for p in old.rglob("*") if p.is_file()} == before  # nothing touched


def test_diag_learned_reward_rolls_out_the_evaluated_policy(tiny_run, tmp_path, capsys):
    """The diagnostic's rollout is the policy `eval` measures (same checkpoint, observation statistics
    and seed: one 200-step Pendulum episode has the same true return), and the reward it prints is the
    run's ensemble's; a run of another task is refused in one line."""
    import importlib.util

    import numpy as np

    from rlhf_control.loop.evaluate import evaluate_run
    from rlhf_control.reward.ensemble import RewardEnsemble

    spec = importlib.util.spec_from_file_location("diag", Path(__file__).parents[1] / "scripts" / "diag_learned_reward.py")
    diag = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(diag)
    obs, acts, rews = diag.rollout(tiny_run, diag.run_task(tiny_run), 200, seed=5)
    assert rews.sum() == pytest.approx(evaluate_run(tiny_run, episodes=1, seed=5).returns[0], rel=1e-6)
    assert diag.main([str(tiny_run), "--steps", "200", "--seed", "5"]) == 0
    out = capsys.readouterr().out
    ens = RewardEnsemble.load(diag.newest_checkpoint(tiny_run) / "ensemble.pt")
    assert f"learned/step {ens.reward(obs, acts).mean():+8.3f}" in out
    assert f"true return {rews.sum():10.1f}" in out
    assert diag.main([str(tiny_run), "--steps", "200", "--seed", "5", "--actions"]) == 0
    line = [x for x in capsys.readouterr().out.splitlines() if "actions:" in x][0]
    assert f"with the policy's {ens.reward(obs, acts).mean():+.3f}" in line
    assert f"zero {ens.reward(obs, np.zeros_like(acts)).mean():+.3f}" in line
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.toml").write_text((tiny_run / "config.toml").read_text().replace('"Pendulum-v1"', '"CartPole-v1"'))
    assert diag.main([str(tiny_run), str(other)]) == 2
    assert "is of task 'CartPole-v1', not 'Pendulum-v1'" in capsys.readouterr().err
    assert np.isfinite(obs).all()


@pytest.mark.parametrize("field, value, allowed", [
    ("reward_obs", "later", "before or after"), ("reward_norm", "x", "reference or recent"),
    ("pretrain_policy", "x", "untrained or uniform"), ("algo", "dqn", "ppo, a2c, trpo or sac"),
])
def test_run_config_choices_are_refused_in_one_line(field, value, allowed):
    """What a config file reaches (argparse refuses a bad choice on the command line first)."""
    from rlhf_control.config import RunConfig
    from rlhf_control.errors import UserError

    with pytest.raises(UserError, match=f"^{field.replace('_', '-')} '{value}' is not allowed; use {allowed}$"):
        RunConfig(**{field: value})
    RunConfig(algo=None)  # None: the task's agent
