"""The RLHF loop end to end: kill and resume, learning on a classic task, an Atari run."""

import csv
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rlhf_control.agent.evaluation import make_eval_env
from rlhf_control.cli import main
from rlhf_control.config import RunConfig, resolve
from rlhf_control.errors import UserError
from rlhf_control.loop.evaluate import evaluate_run
from rlhf_control.loop.trainer import RLHFTrainer
from rlhf_control.tasks.catalogue import get_task
from rlhf_control.types import Answer

ROOT = Path(__file__).parents[1]


def _sql(run_dir: Path, query: str) -> list[tuple]:
    con = sqlite3.connect(run_dir / "preferences.sqlite")
    try:
        return con.execute(query).fetchall()
    finally:
        con.close()


def _steps(run_dir: Path) -> list[int]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


@pytest.mark.slow
def test_sigkill_then_resume_finishes_the_plan(tmp_path):
    run = tmp_path / "run"
    from test_clean_stop import short_rollouts_config  # 256 steps per env: four iterations of 512 steps

    args = ["train", "--steps", "2048", "--labels", "40", "--n-envs", "2", "--checkpoint-every", "1",
            "--iteration-steps", "512", "--seed", "3", "--eval-episodes", "0", "--config", short_rollouts_config(tmp_path),
            "--run-dir", str(run), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "rlhf_control.cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 150
    try:
        # Kill once a checkpoint exists and a later iteration has started asking.
        while time.time() < deadline:
            latest = run / "checkpoints" / "LATEST"
            if latest.exists() and latest.read_text().strip() >= "ckpt-000000001024":
                break
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.2)
        else:
            pytest.fail("no checkpoint within the time limit")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (run / "DONE").exists()
    ckpt_step = int((run / "checkpoints" / "LATEST").read_text().strip().split("-")[1])
    labels_before = _sql(run, "SELECT COUNT(*) FROM answers WHERE skipped = 0")[0][0]
    assert 0 < labels_before < 40

    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert (run / "DONE").exists()
    labels = _sql(run, "SELECT COUNT(*) FROM answers WHERE skipped = 0")[0][0]
    assert labels == 40
    # Every query answered exactly once; nothing was asked twice.
    answered = _sql(run, "SELECT query_id FROM answers")
    assert len(answered) == len({q for (q,) in answered})
    queries = _sql(run, "SELECT COUNT(*) FROM queries")[0][0]
    assert queries == len(answered)
    steps = _steps(run)
    assert steps == sorted(steps) and len(set(steps)) == len(steps)
    assert steps[-1] >= 2048 and any(s > ckpt_step for s in steps)


def _random_return(task, episodes: int = 5) -> float:
    venv = make_eval_env(task, seed=99)
    venv.action_space.seed(0)
    returns, obs = [], venv.reset()
    while len(returns) < episodes:
        obs, _, dones, infos = venv.step(np.array([venv.action_space.sample()]))
        if dones[0]:
            returns.append(infos[0]["episode"]["r"])
    venv.close()
    return float(np.mean(returns))


@pytest.mark.slow
def test_agent_learns_from_the_learned_reward(tmp_path):
    task = get_task("Pendulum-v1")
    # 40k steps and 150 labels, not the default run's 100k and 300 (the whole default run was the suite's
    # longest test, 135-183 s): seeds 0-3 evaluated at -332, -104, -122 and -163 at the end (2026-12-05,
    # 5 episodes), far above the bar.
    # No evaluations along the run (eval_episodes=0): the one below is what the test reads.
    cfg = RunConfig(task="Pendulum-v1", seed=0, steps=40_000, labels=150, checkpoint_every=100, eval_episodes=0)
    RLHFTrainer(cfg, tmp_path / "learn").run()
    trained = evaluate_run(tmp_path / "learn", episodes=5).mean
    random = _random_return(task)
    # Random swinging scores about -1200; learning to swing up and balance is far better.
    assert trained > random + 300, (trained, random)


@pytest.mark.slow
def test_atari_run_with_a_small_cnn(tmp_path):
    task = get_task("Pong").with_overrides(
        n_envs=2, reward_net_kwargs={"cnn_filters": 4, "cnn_fc": 16}, pretrain_epochs=1,
        agent={"n_steps": 20},
    )
    cfg = RunConfig(task="Pong", steps=400, labels=8, pretrain_labels=4, seed=0, checkpoint_every=5,
                    iteration_steps=120, eval_episodes=0)  # (an evaluation is 2 episodes of 10,000 steps)
    run = tmp_path / "pong"
    RLHFTrainer(cfg, run, task=task).run()
    assert (run / "DONE").exists()
    labels = _sql(run, "SELECT COUNT(*) FROM answers WHERE skipped = 0")[0][0]
    assert labels == 8
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert int(rows[-1]["step"]) >= 400
    # An iteration (metrics row) every 120 steps or more, not after every 40-step A2C rollout.
    steps = [int(r["step"]) for r in rows]
    assert all(b - a >= 120 for a, b in zip(steps[:-2], steps[1:-1], strict=True))
    # Segments the reward model saw are 84x84 frames with the score area blank.
    from rlhf_control.store.store import PreferenceStore

    store = PreferenceStore.open(run / "preferences.sqlite")
    seg = store.get_segment(_sql(run, "SELECT first_id FROM queries LIMIT 1")[0][0])
    store.close()
    obs = np.asarray(seg.obs)
    assert obs.shape == (25, 84, 84, 4) and obs.dtype == np.uint8
    for r0, r1, c0, c1 in task.obs_mask:
        assert not obs[:, r0:r1, c0:c1, :].any()


def test_a_run_shorter_than_one_default_iteration_still_spends_its_budget(tmp_path):
    # No iteration_steps: the default (at least 2,048 steps) must shrink for a 512-step run, and the
    # last rollout must end an iteration so that every planned label is asked for.
    cfg = RunConfig(task="Pendulum-v1", steps=512, labels=12, pretrain_labels=2, pretrain_epochs=1, eval_episodes=0,
                    reward_epochs=1, n_envs=1, seed=0, agent={"n_steps": 64, "batch_size": 32, "n_epochs": 1})
    run = tmp_path / "short"
    RLHFTrainer(cfg, run).run()
    assert _sql(run, "SELECT COUNT(*) FROM answers WHERE skipped = 0")[0][0] == 12
    steps = _steps(run)
    assert len(steps) >= 4 and steps[-1] == 512


def _tiny(**kw) -> RunConfig:
    # No deterministic evaluations unless a test asks for them (two of 10 episodes each would be a
    # good part of such a run's time).
    return RunConfig(**{"task": "Pendulum-v1", "steps": 2048, "labels": 16, "pretrain_labels": 4, "pretrain_epochs": 1,
                        "reward_epochs": 1, "n_envs": 2, "seed": 0, "iteration_steps": 256, "checkpoint_every": 100,
                        "eval_episodes": 0, "agent": {"n_steps": 128, "batch_size": 64, "n_epochs": 1}, **kw})


def test_retraining_runs_in_the_worker_during_the_next_rollout(tmp_path, monkeypatch):
    from rlhf_control.reward.worker import RewardWorker

    events = []
    submit, result = RewardWorker.submit, RewardWorker.result
    monkeypatch.setattr(RewardWorker, "submit", lambda self, *a, **k: (
        events.append(("submit", trainer.iterations, len(trainer.dataset), trainer.agent.num_timesteps)),
        submit(self, *a, **k))[1])
    monkeypatch.setattr(RewardWorker, "result", lambda self, *a, **k: (
        events.append(("result", trainer.iterations, 0, trainer.agent.num_timesteps)), result(self, *a, **k))[1])
    trainer = RLHFTrainer(_tiny(), tmp_path / "run")
    trainer.run()
    submits = [e for e in events if e[0] == "submit"]
    results = [e for e in events if e[0] == "result"]
    assert len(submits) >= 4 and len(results) == len(submits)
    # Each job is taken after one more rollout of the agent, before the next iteration starts (just
    # before that rollout's rewards are computed).
    for (_, it_s, _, t_s), (_, it_r, _, t_r) in zip(submits, results, strict=True):
        assert it_r == it_s and t_r == t_s + 256
    assert [e[0] for e in events] == ["submit", "result"] * len(submits)
    # The window grows job by job, and the last labels were trained on by the end (in process).
    sizes = [n for _, _, n, _ in submits]
    assert sizes == sorted(sizes) and sizes[-1] < 16
    assert trainer.trained_answer_id == _sql(tmp_path / "run", "SELECT MAX(id) FROM answers WHERE skipped = 0")[0][0]
    assert trainer.worker is None  # closed with the run


def test_without_reward_wait_the_agent_goes_on_while_a_job_runs(tmp_path, monkeypatch):
    """--no-reward-wait: an iteration takes a job's weights only once it has finished. Here every job
    looks unfinished at the first iteration after its submission (then its result is waited for, so
    that the test does not depend on timing): that iteration takes nothing and submits nothing, and the
    labels that came meanwhile go into the next job; the last iteration takes and trains on everything."""
    from rlhf_control.reward.worker import RewardWorker

    events, submitted_at = [], {}
    submit, result = RewardWorker.submit, RewardWorker.result

    def counted_submit(self, *a, **k):
        events.append(("submit", trainer.iterations, len(trainer.dataset)))
        submitted_at[id(self)] = trainer.iterations
        return submit(self, *a, **k)

    def slow_ready(self):
        if not self.busy:
            return False
        # unfinished until the second iteration after its submission
        return trainer.iterations >= submitted_at[id(self)] + 2 and self._recv_conn.poll(60)

    monkeypatch.setattr(RewardWorker, "submit", counted_submit)
    monkeypatch.setattr(RewardWorker, "ready", slow_ready)
    monkeypatch.setattr(RewardWorker, "result", lambda self, *a, **k: (
        events.append(("result", trainer.iterations, 0)), result(self, *a, **k))[1])
    trainer = RLHFTrainer(_tiny(reward_wait=False), tmp_path / "run")
    trainer.run()
    submits = [e for e in events if e[0] == "submit"]
    results = [e for e in events if e[0] == "result"]
    assert len(submits) >= 3 and len(results) == len(submits)
    assert [e[0] for e in events] == ["submit", "result"] * len(submits)  # one job at a time
    last = trainer.iterations
    for (_, it_s, _), (_, it_r, _) in zip(submits, results, strict=True):
        # one iteration went on without it; the last rollout waits for it before it is scored
        assert it_r == min(it_s + 2, last - 1)
    assert len(submits) < trainer.iterations - 1  # iterations that submitted nothing: a job was running
    sizes = [n for _, _, n in submits]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)
    assert trainer.trained_answer_id == _sql(tmp_path / "run", "SELECT MAX(id) FROM answers WHERE skipped = 0")[0][0]


def test_a_rollout_that_ends_an_iteration_is_scored_by_the_reward_trained_during_it(tmp_path, monkeypatch):
    """With the worker (the default), the rewards the agent updates on after a rollout come from
    weights trained on every label asked before that rollout began, not one round older."""
    from rlhf_control.agent.learned_reward import LearnedReward

    flushes, asked_before = [], {}
    flush = LearnedReward.flush

    def recording_flush(self):
        step = trainer.agent.num_timesteps
        if trainer._ends_iteration(step):
            start = step - 256  # the rollout's first step (rollouts of 128 steps x 2 envs)
            flushes.append((step, trainer.updater.running, trainer.trained_answer_id, asked_before.get(start)))
        return flush(self)

    rollout_end = RLHFTrainer._rollout_end

    def recording_rollout_end(self, step):
        rollout_end(self, step)
        ids = _sql(tmp_path / "run", "SELECT MAX(id) FROM answers WHERE skipped = 0")[0][0]
        asked_before[step] = ids  # the labels there are when the next rollout starts

    monkeypatch.setattr(LearnedReward, "flush", recording_flush)
    monkeypatch.setattr(RLHFTrainer, "_rollout_end", recording_rollout_end)
    trainer = RLHFTrainer(_tiny(), tmp_path / "run")
    trainer.run()
    scored = [f for f in flushes if f[3] is not None]
    assert len(scored) >= 5
    for step, running, trained, labelled in scored:
        assert not running, step
        assert trained == labelled, (step, trained, labelled)


def test_the_worker_gives_the_agent_what_training_in_process_gives(tmp_path):
    # The job trained during a rollout scores that rollout, as in-process training between rollouts
    # does: the two runs' agents are the same, step by step.
    returns = {}
    for reward_async in (True, False):
        run = tmp_path / f"async-{reward_async}"
        RLHFTrainer(_tiny(reward_async=reward_async, eval_episodes=2, eval_every=2), run).run()
        with open(run / "metrics.csv", newline="") as f:
            returns[reward_async] = [(r["step"], r["true_return"], r["eval_true_return"]) for r in csv.DictReader(f)]
    assert len(returns[True]) >= 8 and sum(bool(e) for _, _, e in returns[True]) >= 4
    assert returns[True] == returns[False]


def test_a_resume_that_retrains_sets_the_rewards_scale_on_the_stores_newest_clips(tmp_path):
    # A resumed run's clip pool starts empty; the retraining for labels that came after the checkpoint
    # must still set the reward's scale (std 1 over recent clips), not keep the checkpoint's.
    import json

    import torch

    run = tmp_path / "run"
    cfg = _tiny(reward_async=False)
    RLHFTrainer(cfg, run).run()
    ckpt = run / "checkpoints" / (run / "checkpoints" / "LATEST").read_text().strip()
    state = json.loads((ckpt / "state.json").read_text())
    state["trained_answer_id"] = 0  # as if every label had come after the checkpoint
    (ckpt / "state.json").write_text(json.dumps(state))
    trainer = RLHFTrainer(cfg, run, resume=True)
    try:
        assert trainer._train_on_resume and len(trainer.pool) == 0
        trainer.updater.train_now(1)
        clips = trainer.store.newest_segments(512)
        assert len(clips) >= 20
        with torch.no_grad():
            raw = trainer.ensemble._segment_step_outputs(clips).double()
        np.testing.assert_allclose((raw.std(dim=1, correction=0) / trainer.ensemble.norm_std).numpy(), 1.0, rtol=1e-6)
    finally:
        trainer.close()


def test_a_skip_after_the_checkpoint_is_no_label_to_retrain_on(tmp_path):
    run = tmp_path / "run"
    cfg = _tiny(reward_async=False)
    RLHFTrainer(cfg, run).run()
    from rlhf_control.store.store import PreferenceStore

    store = PreferenceStore.open(run / "preferences.sqlite")
    try:
        q = store.add_query(store.labels()[0].pair, 2048)
        store.record_answer(Answer(query_id=q.query_id, label=None))
    finally:
        store.close()
    trainer = RLHFTrainer(cfg, run, resume=True)
    try:
        assert not trainer._train_on_resume
    finally:
        trainer.close()


def test_a_second_process_on_a_run_directory_is_refused_until_the_first_closes(tmp_path):
    from rlhf_control.rundir import RunDirError

    run = tmp_path / "run"
    first = RLHFTrainer(_tiny(reward_async=False), run)
    try:
        with pytest.raises(RunDirError, match="is in use by another process"):
            RLHFTrainer(_tiny(reward_async=False), run, resume=True)
    finally:
        first.close()
    RLHFTrainer(_tiny(reward_async=False), run, resume=True).close()  # free again


def test_a_new_run_whose_label_port_is_taken_leaves_nothing_behind(tmp_path):
    import socket

    run = tmp_path / "run"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UserError, match=f"cannot listen on 127.0.0.1:{port}.*--label-port"):
            RLHFTrainer(_tiny(oracle="human", label_port=port), run)
    assert not run.exists() or not any(run.iterdir())


def test_flags_a_resume_changes_are_written_into_the_runs_config(tmp_path):
    import tomllib

    run = tmp_path / "run"
    RLHFTrainer(_tiny(), run).close()
    RLHFTrainer(_tiny(), run, resume=True).close()  # nothing changed: nothing recorded
    assert "resumed_with" not in tomllib.loads((run / "config.toml").read_text())["meta"]
    RLHFTrainer(_tiny(reward_wait=False), run, resume=True).close()
    doc = tomllib.loads((run / "config.toml").read_text())
    assert doc["run"]["reward_wait"] is False and doc["run"]["seed"] == 0
    assert len(doc["meta"]["resumed_with"]) == 1 and doc["meta"]["resumed_with"][0].endswith("reward_wait=False")


def test_the_no_online_queries_ablation_asks_every_label_before_rl(tmp_path):
    run = tmp_path / "run"
    cfg = _tiny(schedule="offline", pretrain_labels=None, reward_async=False)
    assert resolve(cfg).pretrain_labels == 16
    RLHFTrainer(cfg, run).run()
    steps = _sql(run, "SELECT q.created_step, s.agent_step FROM answers a JOIN queries q ON q.id = a.query_id "
                      "JOIN segments s ON s.id IN (q.first_id, q.second_id) WHERE a.skipped = 0")
    assert len(steps) == 2 * 16
    assert {c for c, _ in steps} == {0} and {a for _, a in steps} == {-1}  # random-policy clips only


def test_pretraining_labels_that_contradict_the_offline_schedule_are_refused():
    with pytest.raises(UserError, match="pretrain-labels 4 contradicts the offline schedule, which asks all 16"):
        resolve(_tiny(schedule="offline"))


def test_a_round_larger_than_max_pending_is_asked_whole_when_the_oracle_answers_at_once(tmp_path):
    run = tmp_path / "run"
    # bpref: 4 labels in pretraining and B-Pref's first round of 12 at step 0, then rounds of 12 every
    # iteration (256 steps) until the 28 are spent; 5 pairs may be pending at a time.
    RLHFTrainer(_tiny(schedule="bpref", labels=28, label_batch=12, max_pending=5, reward_async=False), run).run()
    rounds = _sql(run, "SELECT q.created_step, COUNT(*) FROM answers a JOIN queries q ON q.id = a.query_id "
                       "WHERE a.skipped = 0 GROUP BY q.created_step")
    assert rounds == [(0, 16), (256, 12)]  # before, the first online round asked two batches at once


def test_a_teachers_thresholds_come_from_all_the_clips_a_round_is_drawn_from(tmp_path, monkeypatch):
    from rlhf_control.oracles import SyntheticOracle

    rounds = []  # per round: the returns the oracle was told, its scale when answering, queries asked
    online = []  # online rounds: the returns told, and those of the loop's candidate clips then
    observe, submit = SyntheticOracle.observe_behaviour, SyntheticOracle.submit

    def told(self, returns):
        rounds.append([list(returns)])
        if trainer.agent.num_timesteps > 0:
            online.append((list(returns), [float(c.true_rewards.sum()) for c in trainer.candidates()]))
        observe(self, returns)

    monkeypatch.setattr(SyntheticOracle, "observe_behaviour", told)
    monkeypatch.setattr(SyntheticOracle, "submit",
                        lambda self, qs: (rounds[-1].extend([self._abs_margin(), len(qs)]), submit(self, qs))[1])
    trainer = RLHFTrainer(_tiny(oracle="equal", reward_async=False, steps=1024), tmp_path / "run")
    trainer.run()
    assert len(rounds) >= 3 and all(len(r) == 3 for r in rounds)  # told before every round
    for returns, scale, asked in rounds:
        assert len(returns) > 2 * asked  # every candidate clip, not only the pairs asked about
        assert scale == pytest.approx(np.mean(np.abs(returns)))
    assert len(online) >= 2 and all(got == pytest.approx(want) for got, want in online)


def test_a_noisy_teacher_draws_from_its_own_stream_not_the_selectors(tmp_path):
    from rlhf_control.loop.build import ORACLE_STREAM

    trainer = RLHFTrainer(_tiny(oracle="mistake+stochastic", seed=3), tmp_path / "run")
    try:
        ours = trainer.oracle._rng.random(64)
        assert not np.isin(ours, np.random.default_rng(3).random(10_000)).any()  # not the selector's, shifted
        seed = int(np.random.SeedSequence([3, ORACLE_STREAM]).generate_state(1)[0])  # a function of the run's seed
        np.testing.assert_array_equal(np.random.default_rng(seed).random(64), ours)
    finally:
        trainer.close()


def test_continuous_reward_training_and_no_reward_wait_are_refused_together():
    with pytest.raises(UserError, match="reward-continuous and no-reward-wait contradict"):
        _tiny(reward_continuous=True, reward_wait=False)


def test_a_dead_reward_worker_leaves_the_run_to_train_in_process(tmp_path, capfd):
    trainer = RLHFTrainer(_tiny(), tmp_path / "run")
    start = trainer.updater.start

    def start_then_kill():
        start()
        trainer.worker.proc.kill()  # as if it crashed or was OOM-killed

    trainer.updater.start = start_then_kill
    trainer.run()
    assert "training the reward in the main process from now on" in capfd.readouterr().err
    assert _sql(tmp_path / "run", "SELECT COUNT(*) FROM answers WHERE skipped = 0")[0][0] == 16
    assert trainer.trained_answer_id == _sql(tmp_path / "run", "SELECT MAX(id) FROM answers WHERE skipped = 0")[0][0]


def test_sync_reward_starts_no_worker(tmp_path, monkeypatch):
    from rlhf_control.reward import worker

    def refuse(*a, **k):
        raise AssertionError("a worker was started")

    monkeypatch.setattr(worker.RewardWorker, "__init__", refuse)
    run = tmp_path / "run"
    args = ["train", "--steps", "2048", "--labels", "16", "--n-envs", "2", "--iteration-steps", "256",
            "--sync-reward", "--run-dir", str(run), "--no-progress"]
    assert main(args) == 0
    assert _sql(run, "SELECT COUNT(*) FROM answers WHERE skipped = 0")[0][0] == 16
    import tomllib

    assert tomllib.loads((run / "config.toml").read_text())["run"]["reward_async"] is False


def test_a_regression_run_fits_by_regression_in_the_worker_too(tmp_path, monkeypatch):
    # The fitter is one pluggable piece: the worker's jobs (the default, asynchronous path) must use the
    # run's fitter, not the comparison trainer, and the run must end with every label trained on.
    from rlhf_control.reward.fitting import WEIGHT_DECAY, RegressionReport
    from rlhf_control.reward.worker import RewardWorker

    reports = []
    result = RewardWorker.result
    monkeypatch.setattr(RewardWorker, "result", lambda self, *a, **k: reports.append(result(self, *a, **k))
                        or reports[-1])
    trainer = RLHFTrainer(_tiny(reward_fitter="true-return-regression"), tmp_path / "run")
    trainer.run()
    assert len(reports) >= 4
    assert all(isinstance(r, RegressionReport) and r.mean_l2 == WEIGHT_DECAY for r in reports)
    assert isinstance(trainer.updater.last_report, RegressionReport)
    assert trainer.trained_answer_id == _sql(tmp_path / "run", "SELECT MAX(id) FROM answers WHERE skipped = 0")[0][0]


def test_a_metrics_file_with_older_columns_is_rewritten_under_the_current_ones(tmp_path):
    from rlhf_control.loop.metrics import COLUMNS, MetricsLogger, read_metrics

    old = ["step", "iteration", "labels", "true_return", "reward_l2"]
    (tmp_path / "metrics.csv").write_text(",".join(old) + "\n100,1,4,-900.5,0.001\n")
    log = MetricsLogger(tmp_path, tensorboard=False)
    log.log({"step": 200, "iteration": 2, "labels": 8, "true_return": -800.0, "gym_return": -850.0})
    log.close()
    with open(tmp_path / "metrics.csv") as f:
        assert f.readline().strip().split(",") == list(COLUMNS)
    rows = read_metrics(tmp_path / "metrics.csv")
    assert [(r["step"], r["true_return"], r["reward_l2"], r["gym_return"]) for r in rows] == [
        ("100", "-900.5", "0.001", ""), ("200", "-800", "", "-850")]


def test_online_queries_come_from_the_clips_since_the_last_query_round(tmp_path):
    trainer = RLHFTrainer(_tiny(query_min_clips=4, reward_async=False), tmp_path / "run")
    calls = []
    select = trainer.selector.select

    def recording_select(segments, n, ensemble, rng):
        pairs = select(segments, n, ensemble, rng)
        calls.append((trainer.pretrain_done, trainer.query_mark, trainer.rl_start_uid,
                      trainer.pool.next_uid, [s.uid for s in segments],
                      [(p.first.uid, p.second.uid) for p in pairs]))
        return pairs

    object.__setattr__(trainer.selector, "select", recording_select)
    trainer.run()
    online = [c for c in calls if c[0]]
    assert len(online) >= 4
    for _, mark, rl_start, next_uid, cands, pairs in online:
        assert rl_start > 0 and min(cands) >= rl_start  # no random-policy clip once RL runs
        fresh = list(range(mark, next_uid))
        # the clips since the last round when there are enough, else the newest floor of the agent's own
        assert cands == fresh if len(fresh) >= 4 else cands == list(range(max(rl_start, next_uid - 4), next_uid))
        assert {u for p in pairs for u in p} <= set(cands)
    marks = [c[1] for c in online]
    assert marks == sorted(marks) and len(set(marks)) == len(marks)  # each round moves the window on


def test_pending_pairs_are_forgotten_when_their_queries_are_retired(tmp_path):
    class NeverAnswers:
        def __init__(self):
            self.asked = 0

        def submit(self, queries):
            self.asked += len(queries)

        def collect(self):
            return []

        @property
        def pending(self):
            return 0

    trainer = RLHFTrainer(_tiny(stale_after_steps=300, max_pending=8, reward_async=False).replace(pretrain_labels=0), tmp_path / "run")
    trainer.oracle = NeverAnswers()
    trainer.run()
    from rlhf_control.store.store import PreferenceStore

    store = PreferenceStore.open(tmp_path / "run" / "preferences.sqlite")
    retired = store.stats()["retired"]
    store.close()
    assert trainer.oracle.asked > 8 and retired > 0
    assert len(trainer._pairs) <= 8  # only the still pending ones, not every pair ever asked


def test_pretraining_clips_come_from_the_agents_untrained_policy(tmp_path):
    import torch

    def pretrain_actions(policy: str) -> np.ndarray:
        trainer = RLHFTrainer(_tiny(pretrain_policy=policy), tmp_path / policy)
        net = trainer.agent.policy
        with torch.no_grad():  # an "untrained" policy that pushes right, nearly deterministically
            net.action_net.weight.zero_()
            net.action_net.bias.fill_(1.5)
            net.log_std.fill_(-6.0)
        trainer.pretrain()
        acts = np.concatenate([np.asarray(s.acts).ravel() for s in trainer.pool.segments()])
        trainer.close()
        return acts

    assert np.allclose(pretrain_actions("untrained"), 1.5, atol=0.05)
    uniform = pretrain_actions("uniform")
    assert uniform.min() < -1.5 and uniform.max() > 1.5


def test_the_untrained_policy_acts_reproducibly_seeding_only_the_cpu_generator(tmp_path, monkeypatch):
    import torch

    from rlhf_control.agent.factory import pretrain_actor

    cfg = _tiny()  # plain Gaussian sampling (the catalogue's Pendulum agent uses gSDE: fixed noise per state)
    trainer = RLHFTrainer(cfg.replace(agent={**cfg.agent, "use_sde": False}), tmp_path / "run")
    obs = trainer.recorder.reset()
    seeded_all = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda s: seeded_all.append(s))
    state = torch.random.get_rng_state()
    first = pretrain_actor(trainer.agent, trainer.agent_env, trainer.recorder, "untrained", seed=3)(obs)
    again = pretrain_actor(trainer.agent, trainer.agent_env, trainer.recorder, "untrained", seed=3)
    np.testing.assert_array_equal(again(obs), first)  # the same seed acts the same
    assert not np.array_equal(again(obs), first)  # and each call draws afresh
    assert torch.equal(torch.random.get_rng_state(), state)  # the run's own stream is untouched
    assert seeded_all == []  # nor is every device type seeded at each step (2-3 ms a call on a CPU build)
    trainer.close()


@pytest.mark.slow
def test_a_run_with_continuous_reward_training_finishes_with_every_label_trained_on(tmp_path):
    reports = []
    trainer = RLHFTrainer(_tiny(reward_continuous=True), tmp_path / "run")
    take = trainer.updater.take

    def noting_take(*args, **kwargs):
        took = take(*args, **kwargs)
        if took:
            reports.append(trainer.updater.last_report)
        return took

    trainer.updater.take = noting_take
    trainer.run()
    assert reports and all(r.epochs >= 1 for r in reports)
    assert trainer.trained_answer_id == _sql(tmp_path / "run", "SELECT MAX(id) FROM answers WHERE skipped = 0")[0][0]


def test_return_scaled_reward_statistics_survive_a_checkpoint(tmp_path):
    """With reward_return_norm the agent's reward scale is part of the run's state: the checkpoint
    holds the scale's statistics and a resumed trainer continues from them, not from scratch."""
    import json
    from dataclasses import replace

    cfg = replace(_tiny(reward_return_norm=True, reward_async=False), steps=1024, checkpoint_every=2)
    run = tmp_path / "run"
    trainer = RLHFTrainer(cfg, run)
    trainer.run()
    saved = trainer.learned.scale.state_dict()
    trainer.close()
    assert saved["count"] > 100 and saved["var"] > 0
    latest = (run / "checkpoints" / "LATEST").read_text().strip()
    state = json.loads((run / "checkpoints" / latest / "state.json").read_text())
    assert state["return_scale"]["count"] == saved["count"]
    resumed = RLHFTrainer(cfg, run, resume=True)
    try:
        assert resumed.learned.scale.state_dict() == saved
    finally:
        resumed.close()
    plain = RLHFTrainer(_tiny(reward_return_norm=False), tmp_path / "plain")
    try:
        assert plain.learned.scale is None
    finally:
        plain.close()


@pytest.mark.parametrize("norm", ["reference", "recent"])
def test_the_reward_is_centred_on_the_clips_reward_norm_names(tmp_path, norm):
    """reference: after every retraining the pretraining round's clips (from the store, so a resumed
    run keeps them) get mean 0; recent: the newest clips of the pool do. Either way the newest clips
    get std target_std."""
    from dataclasses import replace

    from rlhf_control.store.store import PreferenceStore

    cfg = replace(_tiny(reward_norm=norm, reward_async=False), steps=1024, checkpoint_every=2)
    trainer = RLHFTrainer(cfg, tmp_path / "run")
    trainer.run()
    ens = trainer.ensemble
    recent = trainer.pool.recent(min(len(trainer.pool), 512))
    trainer.close()
    with PreferenceStore.open(tmp_path / "run" / "preferences.sqlite") as store:
        first = store.first_round_segments(512)
        later = [(store.get_query(q).created_step, store.load_query(q).pair) for q in range(len(first) // 2 + 1, 17)]
    assert 4 <= len(first) <= 8  # the 4 pretraining pairs
    # Clips know the agent step they began at (the labelling page shows it); pretraining clips have none.
    assert all(s.agent_step == -1 for s in first)
    assert later and all(0 <= s.agent_step <= step for step, pair in later for s in (pair.first, pair.second))

    def norm_stats(segments):
        obs = np.concatenate([s.obs for s in segments])
        acts = np.concatenate([s.acts for s in segments])
        out = ens.member_rewards(obs, acts, normalized=True)
        return out.mean(axis=1), out.std(axis=1)

    np.testing.assert_allclose(norm_stats(recent)[1], ens.config.target_std, rtol=1e-3)
    centred, other = (first, recent) if norm == "reference" else (recent, first)
    np.testing.assert_allclose(norm_stats(centred)[0], 0.0, atol=1e-4)
    assert np.abs(norm_stats(other)[0]).max() > 1e-2
    if norm == "reference":
        resumed = RLHFTrainer(cfg, tmp_path / "run", resume=True)
        try:
            assert [s.uid for s in resumed.updater.reference_clips()] == [s.uid for s in first]
        finally:
            resumed.close()


def test_the_pool_holds_the_newest_clips_not_the_whole_budget(tmp_path):
    """Queries come from the newest clips, so a large budget does not grow the pool (4 x 5,000 clips
    before): it holds 2,000, or the pretraining round's 2 x its labels when that is more."""
    big = RLHFTrainer(RunConfig(task="Pendulum-v1", labels=5000, steps=200_000, n_envs=1), tmp_path / "big")
    small = RLHFTrainer(RunConfig(task="Pendulum-v1", labels=300, n_envs=1), tmp_path / "small")
    try:
        assert big.r.pretrain_labels == 1250 and big.pool.capacity == 2500
        assert small.pool.capacity == 2000
    finally:
        big.close()
        small.close()


def test_a_run_writes_nothing_into_the_temporary_directory(tmp_path, monkeypatch):
    # SB3 makes an empty SB3-<time> folder there on every learn() unless the agent has its own logger.
    import tempfile

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    args = ["train", "--steps", "1024", "--labels", "8", "--pretrain-labels", "4", "--n-envs", "2",
            "--iteration-steps", "256", "--sync-reward", "--run-dir", str(tmp_path / "run"), "--no-progress"]
    assert main(args) == 0
    assert [p.name for p in scratch.iterdir() if p.name.startswith("SB3-")] == []


def test_the_temporal_crop_reaches_the_reward_trainer_in_both_processes(tmp_path, monkeypatch):
    from rlhf_control.reward import training

    crops = []
    real = training.cropped_sums
    monkeypatch.setattr(training, "cropped_sums", lambda steps, crop: crops.append(crop) or real(steps, crop))
    trainer = RLHFTrainer(_tiny(reward_crop=5, reward_async=False), tmp_path / "run")
    assert trainer.updater.worker_args["trainer_config"].crop == 5
    trainer.run()
    assert crops and set(crops) == {5}


def test_reward_obs_after_reaches_the_recorder_and_the_agents_reward_and_a_run_completes(tmp_path):
    # What each wrapper then records and computes is checked in test_recording.py / test_learned_reward.py.
    trainer = RLHFTrainer(_tiny(reward_obs="after", reward_async=False), tmp_path / "run")
    assert trainer.recorder.next_obs and trainer.learned.next_obs
    trainer.run()
    assert (tmp_path / "run" / "DONE").exists()
    plain = RLHFTrainer(_tiny(), tmp_path / "plain")
    try:
        assert not plain.recorder.next_obs and not plain.learned.next_obs  # the paper's, by default
    finally:
        plain.close()
