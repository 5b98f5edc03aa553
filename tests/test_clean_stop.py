"""Clean stops and restarts: SIGTERM stops `train` within seconds after a checkpoint, with its reward
worker and labelling server stopped and no half-written clip left; a run checkpoints right after
pretraining, so a kill never makes it redo pretraining; on resume the metrics are cut back to the
checkpoint it continues from (no step logged twice)."""

from __future__ import annotations

import csv
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomli_w

from rlhf_control.loop.checkpoint import latest_checkpoint, load_checkpoint_state

ROOT = Path(__file__).parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
# Pendulum's PPO with rollouts of 256 steps per env (the catalogue's 1,024): the stop tests wait for a
# few iterations, and each costs a quarter of the default's agent updates.
SHORT_ROLLOUTS = {"n_steps": 256}


def short_rollouts_config(tmp_path: Path) -> str:
    """A run config file, ``tmp_path/c.toml``, that gives the agent :data:`SHORT_ROLLOUTS`."""
    path = tmp_path / "c.toml"
    path.write_text(tomli_w.dumps({"run": {"agent": SHORT_ROLLOUTS}}))
    return str(path)


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rlhf_control.cli", "train", *args, "--no-progress"], text=True,
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _steps(run: Path) -> list[int]:
    if not (run / "metrics.csv").exists():
        return []
    # One read, whole lines only: the run may be appending a row at this moment.
    text = (run / "metrics.csv").read_text()
    lines = text.splitlines()[: text.count("\n")]
    return [int(r["step"]) for r in csv.DictReader(lines)]


def _wait_until(proc: subprocess.Popen, done, timeout: float, failure: str) -> None:
    """Poll ``done()`` until it holds; fails if ``proc`` exits first or ``timeout`` seconds pass."""
    t0 = time.time()
    while not done():
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() - t0 < timeout, failure
        time.sleep(0.2)


def _wait_rows(proc: subprocess.Popen, run: Path, n: int, timeout: float = 120) -> None:
    _wait_until(proc, lambda: len(_steps(run)) >= n, timeout, "the run logged too few rows")


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_sigterm_checkpoints_and_stops_worker_server_and_renderer(tmp_path):
    run = tmp_path / "run"
    proc = _start(["--oracle", "human", "--run-ahead", "--steps", "40000", "--labels", "20", "--pretrain-labels", "4",
                   "--n-envs", "2", "--iteration-steps", "512", "--config", short_rollouts_config(tmp_path),
                   "--checkpoint-every", "100",
                   "--checkpoint-minutes", "0", "--label-port", "0", "--run-dir", str(run)])
    try:
        port = int(re.search(r"127\.0\.0\.1:(\d+)", proc.stdout.readline()).group(1))
        _wait_rows(proc, run, 2)
        workers = _children(proc.pid)
        assert workers  # the reward worker
        logged = _steps(run)[-1]
        t0 = time.time()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
        took = time.time() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 130, proc.stderr.read()
    assert took < 10, f"stopping took {took:.1f} s"
    ckpt = latest_checkpoint(run)
    assert load_checkpoint_state(ckpt)["step"] >= logged > 0  # the stop's checkpoint, not pretraining's
    time.sleep(0.5)
    assert not any(_alive(p) for p in workers)
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0  # the labelling server is gone
    assert not list((run / "clips").glob(".*.tmp"))
    assert list((run / "clips").glob("*.mp4"))


@pytest.mark.slow
def test_a_kill_never_redoes_pretraining_and_resume_cuts_the_metrics_back(tmp_path):
    run = tmp_path / "run"
    args = ["--steps", "2048", "--labels", "40", "--pretrain-labels", "10", "--n-envs", "2",
            "--iteration-steps", "512", "--checkpoint-every", "100", "--checkpoint-minutes", "0",
            "--eval-episodes", "0", "--config", short_rollouts_config(tmp_path)]
    proc = _start([*args, "--run-dir", str(run)])
    try:
        _wait_rows(proc, run, 2)
        proc.kill()  # SIGKILL: no chance to checkpoint; only the one after pretraining exists
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert load_checkpoint_state(latest_checkpoint(run))["step"] == 0
    with sqlite3.connect(run / "preferences.sqlite") as con:
        pretrain_queries = con.execute("SELECT COUNT(*) FROM queries WHERE created_step = 0").fetchone()[0]
    assert pretrain_queries == 10 and len(_steps(run)) >= 2
    resumed = subprocess.run([sys.executable, "-m", "rlhf_control.cli", "train", "--resume", str(run), "--no-progress"],
                             env=ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    steps = _steps(run)
    assert steps == sorted(set(steps)) and steps[-1] == 2048  # no step logged twice
    with sqlite3.connect(run / "preferences.sqlite") as con:
        assert con.execute("SELECT COUNT(*) FROM queries WHERE created_step = 0").fetchone()[0] == pretrain_queries
        assert con.execute("SELECT COUNT(*) FROM answers WHERE skipped = 0").fetchone()[0] == 40


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        kids = _children(todo.pop())
        out += kids
        todo += kids
    return out


def _stop_sweep(spec: Path, out: Path, run: Path, signals: tuple[signal.Signals, ...], backend: str = "local",
                ignore_sigint: bool = False, grace: float = 15.0, workers: int = 1,
                after: Path | None = None) -> tuple[int, int, str, str]:
    """Start ``rlhf-control sweep`` with ``workers`` workers, wait until the file ``after`` exists (when
    given) and then until ``run`` has logged two more rows, send
    ``signals`` to the sweep's process alone (0.3 s apart) and wait for it to exit. Returns its exit
    status, the step logged before the stop, its stdout and stderr; asserts that nothing it started
    outlived it by ``grace`` seconds (and kills whatever did)."""
    # Set either way: a suite started in the background (``pytest &``) passes SIGINT ignored to what it
    # starts, and then a ``kill -INT`` would rightly do nothing to the sweep.
    disposition = signal.SIG_IGN if ignore_sigint else signal.SIG_DFL
    preexec = lambda: signal.signal(signal.SIGINT, disposition)  # noqa: E731
    proc = subprocess.Popen([sys.executable, "-m", "rlhf_control.cli", "sweep", str(spec), "--out", str(out),
                             "--workers", str(workers), "--backend", backend], text=True, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=preexec)
    below: list[int] = []
    try:
        if after is not None:
            _wait_until(proc, after.is_file, 180, f"{after} was not written")
        rows = len(_steps(run))
        _wait_rows(proc, run, rows + 2, timeout=240 if backend == "ray" else 120)  # (Ray starts its cluster first)
        below = _descendants(proc.pid)
        assert below  # the pool's worker running the run (and the run's reward worker)
        logged = _steps(run)[-1]
        for sig in signals:
            proc.send_signal(sig)
            time.sleep(0.3)
        rc = proc.wait(timeout=60)  # not the 2 minutes after which a stopped run is killed
    finally:
        if proc.poll() is None:
            proc.kill()
        end = time.time() + grace  # (Ray's own processes take a few seconds to go after its shutdown)
        while any(_alive(p) for p in below) and time.time() < end:
            time.sleep(0.2)
        survivors = [p for p in below if _alive(p)]
        for p in survivors:  # not left running whatever the test finds
            os.kill(p, signal.SIGKILL)
    assert not survivors, "a run went on after its sweep was stopped"
    return rc, logged, proc.stdout.read(), proc.stderr.read()


def _write_spec(tmp_path: Path, spec: dict) -> tuple[Path, list]:
    """``spec`` as ``tmp_path/spec.toml``; the sweep's output folder and its grid points."""
    from rlhf_control.experiments.sweep import expand_grid, spec_from_dict

    (tmp_path / "spec.toml").write_text(tomli_w.dumps(spec))
    return tmp_path / "out", expand_grid(spec_from_dict(spec, where="test"))


def _sweep_spec(tmp_path: Path, seeds: list[int]) -> tuple[dict, Path, list[Path]]:
    spec = {"sweep": {"tasks": ["Pendulum-v1"], "seeds": seeds, "labels": [20], "baseline": False},
            "run": {"steps": 40000, "pretrain_labels": 4, "n_envs": 2, "iteration_steps": 512,
                    "checkpoint_every": 100, "checkpoint_minutes": 0, "eval_episodes": 0, "agent": SHORT_ROLLOUTS}}
    out, points = _write_spec(tmp_path, spec)
    return spec, out, [out / p.name for p in points]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["local", "ray"])
def test_sigterm_to_a_sweep_stops_its_runs_after_their_checkpoints(tmp_path, backend):
    """Before, SIGTERM ended the sweep's process at once and its pool's run went on alone. The sweep is
    started with SIGINT ignored, as a script's ``cmd &`` starts it: its runs used to inherit that and
    go on until killed (the pool's after 2 minutes; Ray's cancel, which simulates SIGINT, did nothing)."""
    from rlhf_control.experiments.sweep import plan_sweep, spec_from_dict

    spec, out, (run, second) = _sweep_spec(tmp_path, [0, 1])
    rc, logged, stdout, err = _stop_sweep(tmp_path / "spec.toml", out, run, (signal.SIGTERM,), backend=backend,
                                          ignore_sigint=True)
    assert rc == 130, err
    assert "Traceback" not in err  # (Python 3.11's pool thread failed after a stop)
    assert "run the same command again to continue it" in stdout
    assert load_checkpoint_state(latest_checkpoint(run))["step"] >= logged > 0  # the stop's checkpoint
    assert not (second / "metrics.csv").exists()  # the queued run was not started by the stop
    assert [s for _, s in plan_sweep(spec_from_dict(spec, where="test"), out)] == ["resume", "new"]


@pytest.mark.slow
def test_sigint_to_the_sweeps_process_alone_stops_its_run_and_a_second_signal_stops_it_at_once(tmp_path):
    """``kill -INT`` to a sweep's process (not a terminal's Ctrl-C, which reaches the whole process group)
    used to leave its pool's run going until killed 2 minutes later; and a SIGTERM while the sweep waited
    for its runs to checkpoint ended the sweep's code but not the runs, which went on to their ends."""
    from rlhf_control.experiments.sweep import plan_sweep, spec_from_dict

    spec, out, (run,) = _sweep_spec(tmp_path, [0])
    rc, logged, _, err = _stop_sweep(tmp_path / "spec.toml", out, run, (signal.SIGINT,), grace=10)
    assert rc == 130 and "Traceback" not in err, err
    assert load_checkpoint_state(latest_checkpoint(run))["step"] >= logged > 0  # the run's stop checkpoint
    # Resumed, then stopped twice.
    rc, _, _, err = _stop_sweep(tmp_path / "spec.toml", out, run, (signal.SIGINT, signal.SIGTERM), grace=10)
    assert rc == 130 and "Traceback" not in err, err
    assert [s for _, s in plan_sweep(spec_from_dict(spec, where="test"), out)] == ["resume"]


@pytest.mark.slow
def test_a_sweep_stopped_while_one_of_its_workers_is_idle_ends_within_seconds(tmp_path):
    """Two workers, and a short run that ends first: its worker is replaced by an idle one. A stop used
    to wait the full 2 minutes for that idle worker (it ignores SIGINT), then killed it while it held the
    pool's queue lock, and the sweep could hang in the pool's shutdown for ever."""
    spec = {"sweep": {"tasks": ["Pendulum-v1", "CartPole-v1"], "seeds": [0], "labels": [6], "baseline": False},
            "run": {"pretrain_labels": 2, "n_envs": 2, "checkpoint_every": 100, "checkpoint_minutes": 0,
                    "eval_episodes": 0},
            "overrides": {"Pendulum-v1": {"steps": 40000, "iteration_steps": 512, "agent": SHORT_ROLLOUTS},
                          "CartPole-v1": {"steps": 256, "iteration_steps": 128}}}
    out, points = _write_spec(tmp_path, spec)
    runs = {p.cfg.task: out / p.name for p in points}
    # Stopped only once the short run has ended (its worker's place is then idle): on a slow machine the
    # long run's first rows can come before that.
    rc, logged, _, err = _stop_sweep(tmp_path / "spec.toml", out, runs["Pendulum-v1"], (signal.SIGTERM,),
                                     workers=2, grace=10, after=runs["CartPole-v1"] / "DONE")
    assert rc == 130 and "Traceback" not in err, err
    assert load_checkpoint_state(latest_checkpoint(runs["Pendulum-v1"]))["step"] >= logged > 0


def _blocked_signals(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigBlk:"):
            return int(line.split()[1], 16)
    raise AssertionError(f"no SigBlk line for process {pid}")


def test_a_stop_that_reaches_a_pool_worker_while_it_starts_waits_for_its_run(capfd):
    """The sweep's pool replaces each worker after its run; a stop's SIGINT that reached the replacement
    while Python was still starting in it raised KeyboardInterrupt there (a traceback, and a broken pool):
    the idle-worker stop test above failed so once. Every worker, the replacement too, is now born with
    SIGINT blocked."""
    from rlhf_control.experiments.backends import new_pool, submit

    sigint = 1 << (signal.SIGINT - 1)
    pool = new_pool(1)
    try:
        fut = submit(pool, time.sleep, 0.2)
        assert not signal.pthread_sigmask(signal.SIG_BLOCK, set()) & {signal.SIGINT}  # this thread: as before
        (first,) = pool._processes
        assert _blocked_signals(first) & sigint
        fut.result(timeout=120)
        end = time.time() + 60
        while not set(pool._processes) - {first} and time.time() < end:
            time.sleep(0.001)
        (second,) = set(pool._processes) - {first}  # started by the pool's own thread, not by submit
        assert _blocked_signals(second) & sigint
        os.kill(second, signal.SIGINT)  # as a stop sends it, while Python is still starting there
        time.sleep(5)
        assert pool._processes[second].is_alive()
    finally:
        pool.shutdown(wait=True)
    assert "Traceback" not in capfd.readouterr().err
