"""The human oracle end to end through the labelling app's HTTP API: labels answered while the agent
trains, labels answered offline on a stopped run and learned on resume, and a task with no true reward."""

import csv
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

# PPO rollouts of 256 steps per env in the runs below: they need their queries, not the agent's learning.
from test_clean_stop import short_rollouts_config

from rlhf_control.cli import main, trained_answer_id
from rlhf_control.store.store import PreferenceStore
from rlhf_control.web.app import LabelApp
from rlhf_control.web.server import start_server

ROOT = Path(__file__).parents[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.status, (json.loads(r.read() or b"null"))


def _post(url: str, body: dict):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, json.loads(r.read())


def _answer_all(base: str, store_path: Path, want: int, deadline_s: float = 150) -> int:
    """A scripted labeller: answers by the true return of the two clips, until ``want`` answers."""
    import time

    store = PreferenceStore.open(store_path)
    done, t0 = 0, time.time()
    try:
        while done < want and time.time() - t0 < deadline_s:
            status, q = _get(f"{base}/api/next?labeller=bot")
            if status == 204 or not q:
                time.sleep(0.3)
                continue
            pair = store.load_query(q["query_id"]).pair
            a, b = pair.first.true_return, pair.second.true_return
            label = 1 if a > b else (-1 if b > a else 0)
            status, _ = _post(f"{base}/api/answer", {"query_id": q["query_id"], "label": label,
                                                      "labeller": "bot", "seconds": 1.5})
            assert status == 200
            done += 1
    finally:
        store.close()
    return done


def _train_and_label(args: list[str], run: Path, want: int) -> None:
    """``rlhf-control train`` with a human oracle in a child process, its page's pairs answered by
    :func:`_answer_all` until ``want`` answers; the run must then finish cleanly."""
    proc = subprocess.Popen([sys.executable, "-m", "rlhf_control.cli", *args], text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])},
                            stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        line = proc.stdout.readline()
        url = re.search(r"(http://127\.0\.0\.1:\d+)", line)
        assert url, line + proc.stderr.read()
        assert _answer_all(url.group(1), run / "preferences.sqlite", want=want) == want
        assert proc.wait(timeout=150) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()


def _rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_labels_answered_while_training_reach_the_reward_model(tmp_path):
    run = tmp_path / "human"
    # One iteration of 2,048 steps: the 4 labels after pretraining are asked and answered while the run
    # goes on, and trained on before it ends.
    args = ["train", "--oracle", "human", "--wait-for-labels", "--steps", "2048", "--labels", "8",
            "--pretrain-labels", "4", "--n-envs", "2", "--eval-episodes", "0", "--label-port", "0", "--run-dir", str(run),
            "--no-progress"]
    _train_and_label(args, run, want=8)
    rows = _rows(run)
    assert int(rows[-1]["labels"]) == 8
    assert rows[-1]["reward_val_accuracy"] != ""
    clips = sorted((run / "clips").glob("*.mp4"))
    assert len(clips) >= 8 * 2  # two clips per query, plus side-by-side ones


@pytest.mark.slow
def test_offline_labelling_then_resume_learns_the_answers(tmp_path, monkeypatch):
    run = tmp_path / "offline"
    # --run-ahead: nobody labels while it trains, and the run does not wait for anyone.
    # (--sync-reward: the reward worker is not what these tests are about, and its start costs seconds;
    # the test above runs with it.)
    assert main(["train", "--oracle", "human", "--run-ahead", "--steps", "1024", "--labels", "6",
                 "--pretrain-labels", "6", "--n-envs", "2", "--label-port", "0", "--run-dir", str(run),
                 "--config", short_rollouts_config(tmp_path), "--eval-episodes", "0", "--no-progress", "--sync-reward"]) == 0
    rows = _rows(run)
    assert rows[-1]["labels"] == "0" and rows[-1]["reward_val_accuracy"] == "" and trained_answer_id(run) == 0
    # The run has stopped; a person labels its pending queries with `rlhf-control label`.
    server = start_server(run, port=0)
    try:
        assert _answer_all(f"http://127.0.0.1:{server.port}", run / "preferences.sqlite", want=6) == 6
    finally:
        server.stop()
    told = []  # what the run tells its labelling page: the last answer its reward model trained on
    monkeypatch.setattr(LabelApp, "set_run", lambda self, **info: told.append(info))
    assert main(["train", "--resume", str(run), "--no-progress", "--label-port", "0", "--sync-reward"]) == 0
    rows = _rows(run)
    assert rows[-1]["labels"] == "6" and rows[-1]["reward_val_accuracy"] != ""
    with PreferenceStore.open(run / "preferences.sqlite") as store:
        last = store.last_answer_id()
    assert told[-1]["state"] == "finished" and told[-1]["trained_answer_id"] == last
    assert trained_answer_id(run) == last  # `rlhf-control label` reads it from the checkpoint
    steps = [r["step"] for r in rows]
    assert len(steps) == len(set(steps)) and (run / "DONE").is_file()  # the last row written again, once
    con = sqlite3.connect(run / "preferences.sqlite")
    assert con.execute("SELECT COUNT(*) FROM answers WHERE labeller = 'bot'").fetchone()[0] == 6
    con.close()


@pytest.mark.slow
def test_task_without_true_reward(tmp_path, capsys):
    # Only a person can label it; a synthetic oracle is refused before anything is written.
    assert main(["train", "--task", "hopper-backflip", "--run-dir", str(tmp_path / "no")]) == 2
    assert "no true reward" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()
    run = tmp_path / "flip"
    assert main(["train", "--task", "hopper-backflip", "--oracle", "human", "--run-ahead", "--steps", "512", "--labels", "2",
                 "--pretrain-labels", "2", "--n-envs", "1", "--label-port", "0", "--run-dir", str(run),
                 "--config", short_rollouts_config(tmp_path), "--no-progress", "--sync-reward"]) == 0
    for row in _rows(run):
        assert row["true_return"] == "" and row["reward_return_corr"] == ""
    store = PreferenceStore.open(run / "preferences.sqlite")
    q = store.pending_queries()[0]
    assert store.load_query(q.query_id).pair.first.true_rewards is None
    store.close()


@pytest.mark.slow
def test_label_renders_the_clips_a_stopped_run_still_needs(tmp_path):
    run = tmp_path / "stopped"
    assert main(["train", "--oracle", "human", "--run-ahead", "--steps", "512", "--labels", "4",
                 "--pretrain-labels", "4", "--n-envs", "2", "--label-port", "0", "--run-dir", str(run),
                 "--config", short_rollouts_config(tmp_path), "--eval-episodes", "0", "--no-progress", "--sync-reward"]) == 0
    # As if the run had been stopped before its clips were rendered.
    for clip in (run / "clips").glob("*.mp4"):
        clip.unlink()
    con = sqlite3.connect(run / "preferences.sqlite")
    con.execute("UPDATE queries SET clip_first = NULL, clip_second = NULL, clip_pair = NULL")
    con.commit()
    pending = con.execute("SELECT COUNT(*) FROM queries WHERE status = 'pending'").fetchone()[0]
    con.close()
    assert pending == 4
    proc = subprocess.Popen([sys.executable, "-m", "rlhf_control.cli", "label", str(run), "--port", "0"], text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        url = re.search(r"(http://127\.0\.0\.1:\d+)", proc.stdout.readline())
        assert url, proc.stderr.read()
        import time

        t0, stats = time.time(), {}
        while time.time() - t0 < 60:
            stats = _get(f"{url.group(1)}/api/stats")[1]
            if stats["ready"] == pending:
                break
            time.sleep(0.3)
        assert stats["ready"] == pending and stats["run"]["state"] == "stopped" and stats["budget"] == 4
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(list((run / "clips").glob("*.mp4"))) == 2 * pending
    assert not list((run / "clips").glob(".*.tmp"))


def test_a_pair_whose_clips_fail_to_render_is_retired_so_that_another_is_asked(tmp_path):
    from rlhf_control.oracles.human import HumanOracle
    from rlhf_control.web.demo import BrightnessRenderer, make_demo_run

    class Flaky(BrightnessRenderer):
        def render_pair(self, pair, directory, query_id):
            if query_id == 2:
                raise RuntimeError("GL context lost\nmore detail")
            return super().render_pair(pair, directory, query_id)

    run = tmp_path / "run"
    make_demo_run(run, n_segments=6, n_queries=4, render=False)
    with PreferenceStore.open(run / "preferences.sqlite") as store:
        oracle = HumanOracle(store, Flaky())  # queues the 4 pending queries without clips
        assert oracle.wait_rendered(timeout=60)
        oracle.close()
        # Never shown to anyone, it would have counted as asked and as ready to label all run long.
        assert store.get_query(2).status == "retired" and oracle.errors == [(2, "RuntimeError: GL context lost")]
        assert sorted(r.query_id for r in store.pending_queries()) == [1, 3, 4]
        assert store.count_pending() == 3


def test_label_refuses_a_run_that_is_training(tmp_path, capsys):
    from rlhf_control.rundir import RunLock
    from rlhf_control.web.demo import make_demo_run

    run = tmp_path / "run"
    make_demo_run(run, n_segments=4, n_queries=2, render=False)
    (run / "config.toml").write_text('[run]\ntask = "Pendulum-v1"\n')
    lock = RunLock(run)  # as `train` holds it while it runs
    try:
        assert main(["label", str(run), "--port", "0"]) == 2
        err = capsys.readouterr().err.strip()
        assert "is in use by another process (a training run serves its own labelling page" in err
        assert "\n" not in err
    finally:
        lock.close()
