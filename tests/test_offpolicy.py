"""Off-policy preference learning (SAC, PEBBLE): replay relabelling, state entropy, the B-Pref schedule,
bad input, and the loop end to end with a SIGKILL and resume."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import tomli_w
import torch
from stable_baselines3 import SAC
from stable_baselines3.common.vec_env import DummyVecEnv

from rlhf_control.agent.replay import (
    SampleRewards,
    StateEntropy,
    batch_rewards,
    load_replay,
    relabel_replay,
    save_replay,
)
from rlhf_control.cli import main
from rlhf_control.config import RunConfig, resolve
from rlhf_control.errors import UserError
from rlhf_control.loop.trainer import RLHFTrainer
from rlhf_control.queries.schedule import ShiftedSchedule, make_schedule
from rlhf_control.reward.ensemble import EnsembleConfig, RewardEnsemble
from rlhf_control.reward.training import RewardTrainerConfig  # noqa: F401  (the worker's config type)

ROOT = Path(__file__).parents[1]
# The runs below test the loop's mechanics, not how well SAC learns: 32-unit networks, not SB3's 256,
# make each gradient step several times cheaper.
SMALL_SAC = {"policy_kwargs": {"net_arch": [32, 32]}}
# Where a test does not count gradient steps: one SAC update every 4 env steps, not every step (an
# update of even these networks takes about 10 ms on a 2-core machine, the most of such a run's time).
FAST_SAC = {**SMALL_SAC, "train_freq": 4}


def _sac(buffer_size=500, steps=300, seed=0):
    env = DummyVecEnv([lambda: gym.make("Pendulum-v1")])  # actions in [-2, 2]: scaled in the buffer
    agent = SAC("MlpPolicy", env, buffer_size=buffer_size, learning_starts=steps, seed=seed)
    agent.learn(steps)  # random actions only: fills the buffer
    return agent


def _ensemble(seed=0):
    return RewardEnsemble(EnsembleConfig(n_members=3, hidden=(16, 16)), (3,), (1,), seed=seed)


def test_relabelling_gives_every_transition_the_ensembles_reward_of_its_env_action():
    agent, ens = _sac(), _ensemble()
    buf = agent.replay_buffer
    cost = relabel_replay(agent, ens, chunk=64)  # several chunks
    assert cost.transitions == 300
    obs, scaled = buf.observations[:300, 0], buf.actions[:300, 0]
    env_actions = 2.0 * scaled  # Pendulum's bounds are +-2
    expected = np.array([ens.reward(obs[i:i + 1], env_actions[i:i + 1])[0] for i in range(300)])
    np.testing.assert_allclose(buf.rewards[:300, 0], expected, rtol=1e-5, atol=1e-5)
    assert np.all(buf.rewards[300:] == 0)  # the empty part is left alone
    # The buffer's scaled actions would give other rewards: the unscaling matters.
    assert not np.allclose(ens.reward(obs, scaled), expected, atol=1e-3)
    np.testing.assert_allclose(batch_rewards(ens, obs, env_actions, chunk=7), expected, rtol=1e-5, atol=1e-5)
    # reward-obs after: each transition's reward from the observation its action led to.
    relabel_replay(agent, ens, chunk=64, next_obs=True)
    after = buf.next_observations[:300, 0]
    assert not np.allclose(after, obs)
    np.testing.assert_allclose(buf.rewards[:300, 0], ens.reward(after, env_actions), rtol=1e-5, atol=1e-5)


def test_replay_buffer_round_trips_through_its_file(tmp_path):
    agent = _sac()
    relabel_replay(agent, _ensemble())
    save_replay(agent, tmp_path / "replay.npz")
    other = SAC("MlpPolicy", agent.get_env(), buffer_size=500, seed=1)
    assert load_replay(other, tmp_path / "replay.npz") == 300
    for name in ("observations", "next_observations", "actions", "rewards", "dones", "timeouts"):
        np.testing.assert_array_equal(getattr(other.replay_buffer, name), getattr(agent.replay_buffer, name))
    assert other.replay_buffer.pos == 300 and not other.replay_buffer.full
    small = SAC("MlpPolicy", agent.get_env(), buffer_size=100, seed=1)
    with pytest.raises(ValueError, match="does not fit"):
        load_replay(small, tmp_path / "replay.npz")


def test_state_entropy_is_the_kth_neighbour_distance_over_its_running_std():
    agent = _sac()
    buf = agent.replay_buffer
    ent = StateEntropy(buf, k=5, chunk=70)  # several chunks of the buffer
    states = buf.observations[:300, 0]
    q = torch.as_tensor(states[[3, 50, 299]])
    d = np.linalg.norm(states[[3, 50, 299]][:, None, :] - states[None, :, :], axis=2)
    want = np.sort(d, axis=1)[:, 5]  # index 0 is the state itself
    np.testing.assert_allclose(ent.knn_distance(q).numpy(), want, rtol=1e-4)
    r = ent(q).numpy().ravel()
    np.testing.assert_allclose(r, want / np.sqrt(ent.stats.var), rtol=1e-3)


def test_sampled_batches_carry_the_intrinsic_reward_only_while_it_is_on():
    agent = _sac()
    relabel_replay(agent, _ensemble())
    hook = SampleRewards(agent)
    stored = set(np.round(agent.replay_buffer.rewards[:300, 0], 5))
    hook.fn = lambda obs, env: torch.full((len(obs), 1), 7.0)
    assert torch.all(agent.replay_buffer.sample(32).rewards == 7.0)
    hook.fn = None
    got = agent.replay_buffer.sample(32).rewards.numpy().ravel()
    assert set(np.round(got, 5)) <= stored


def test_bpref_schedule_asks_a_batch_every_interval_after_the_shift():
    s = make_schedule("bpref", budget=100, pretrain=0, total_steps=490_000, batch=10, interval=20_000)
    assert [s.target(t) for t in (0, 19_999, 20_000, 180_000, 200_000)] == [10, 10, 20, 100, 100]
    shifted = ShiftedSchedule(s, 10_000)
    assert shifted.target(9_999) == 0 and shifted.target(10_000) == 10 and shifted.target(30_000) == 20
    assert make_schedule("bpref", budget=100, pretrain=0, total_steps=1000).batch == 10  # B-Pref's ratio
    assert s.target(490_000) == 100
    with pytest.raises(UserError, match="label batch 0"):
        make_schedule("bpref", budget=10, pretrain=0, total_steps=100, batch=0)


def test_dmc_tasks_resolve_to_pebbles_settings():
    r = resolve(RunConfig(task="walker-walk"))
    assert (r.algo, r.rl_start, r.iteration_steps, r.schedule, r.task.clip_length) == ("sac", 10_000, 20_000, "bpref", 50)
    env = r.task.make_env(0)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (24,) and obs.dtype == np.float32 and env.action_space.shape == (6,)
    rewards = [env.step(env.action_space.sample())[1] for _ in range(5)]
    assert all(0.0 <= x <= 1.0 for x in rewards)
    env.close()


@pytest.mark.parametrize("flags, message", [
    (["--algo", "sac", "--task", "CartPole-v1"], "needs continuous (Box) actions"),
    (["--algo", "sac", "--task", "CartPole-v1", "--steps", "1000"], "needs continuous (Box) actions"),
    (["--algo", "sac", "--steps", "5000"], "unsup-steps 9000 after 1000 random steps"),
    (["--algo", "sac", "--steps", "20000", "--clip-length", "30", "--n-envs", "1"], None),
    (["--unsup-steps", "100"], "is for off-policy agents"),
])
def test_bad_off_policy_input_is_refused_in_one_line_before_anything_is_written(tmp_path, capsys, flags, message):
    run = tmp_path / "run"
    if message is None:  # a replay buffer smaller than one segment, through a config file's agent table
        cfg = tmp_path / "c.toml"
        cfg.write_text('[run]\nagent = { buffer_size = 20 }\n')
        flags, message = [*flags, "--config", str(cfg)], "replay buffer_size 20"
    assert main(["train", *flags, "--run-dir", str(run), "--no-progress"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not run.exists()


def _count(run: Path, query: str) -> int:
    con = sqlite3.connect(run / "preferences.sqlite")
    try:
        return con.execute(query).fetchone()[0]
    finally:
        con.close()


SAC_FLAGS = ["--task", "Pendulum-v1", "--algo", "sac", "--n-envs", "1", "--steps", "1600", "--labels", "12",
             "--pretrain-labels", "0", "--schedule", "bpref", "--label-batch", "4", "--unsup-steps", "400",
             "--iteration-steps", "400", "--eval-episodes", "1", "--checkpoint-every", "1", "--seed", "2",
             "--sync-reward"]  # (the reward worker is not what this test is about; its start costs seconds)


@pytest.mark.slow
def test_a_sac_run_killed_after_its_first_round_resumes_with_its_labels_and_buffer(tmp_path):
    run = tmp_path / "run"
    cfg = tmp_path / "c.toml"
    cfg.write_text(tomli_w.dumps({"run": {"agent": {"learning_starts": 200, "batch_size": 64, **FAST_SAC}}}))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "rlhf_control.cli", "train", *SAC_FLAGS, "--config", str(cfg),
                             "--run-dir", str(run), "--no-progress"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    try:
        while time.time() < deadline:  # the first round's checkpoint is at step 600, the next at 1000
            latest = run / "checkpoints" / "LATEST"
            if latest.exists() and latest.read_text().strip() >= "ckpt-000000001000":
                break
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.1)
        else:
            pytest.fail("no checkpoint after the first round within the time limit")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (run / "DONE").exists()
    before = _count(run, "SELECT COUNT(*) FROM answers WHERE skipped = 0")
    assert 4 <= before < 12
    ckpt = run / "checkpoints" / (run / "checkpoints" / "LATEST").read_text().strip()
    with np.load(ckpt / "replay.npz") as data:
        assert len(data["rewards"]) == int(ckpt.name.split("-")[1])  # every transition up to the checkpoint

    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert (run / "DONE").exists()
    assert _count(run, "SELECT COUNT(*) FROM answers WHERE skipped = 0") == 12
    answered = _count(run, "SELECT COUNT(*) FROM answers")
    assert _count(run, "SELECT COUNT(*) FROM queries") == answered  # nothing asked twice
    # The final checkpoint: every transition of the run (those before the kill came back from the
    # buffer's file), holding the final reward's values (the buffer was relabelled).
    final = run / "checkpoints" / (run / "checkpoints" / "LATEST").read_text().strip()
    ens = RewardEnsemble.load(final / "ensemble.pt")
    with np.load(final / "replay.npz") as data:
        assert len(data["rewards"]) == 1600
        obs, acts = data["observations"][:, 0], 2.0 * data["actions"][:, 0]  # Pendulum's actions: +-2
        np.testing.assert_allclose(data["rewards"][:, 0], batch_rewards(ens, obs, acts), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_no_relabelling_leaves_stored_rewards_as_they_were_stored(tmp_path):
    run = tmp_path / "run"
    cfg = RunConfig(task="Pendulum-v1", algo="sac", n_envs=1, steps=1400, labels=8, pretrain_labels=0,
                    schedule="bpref", label_batch=4, unsup_steps=0, iteration_steps=400, eval_episodes=0,
                    relabel=False, reward_async=False, agent={"learning_starts": 200, "batch_size": 32, **FAST_SAC})
    trainer = RLHFTrainer(cfg, run)
    trainer.run()
    assert trainer.offpolicy.relabels == 0
    buf, ens = trainer.agent.replay_buffer, trainer.ensemble
    obs, acts = buf.observations[:buf.pos, 0], trainer.agent.policy.unscale_action(buf.actions[:buf.pos, 0])
    assert not np.allclose(buf.rewards[:buf.pos, 0], batch_rewards(ens, obs, acts), atol=1e-3)


def test_dmc_clips_are_drawn_headless_from_their_recorded_physics_states():
    from rlhf_control.recording.render_states import render_state_fn
    from rlhf_control.tasks.catalogue import get_task
    from rlhf_control.video.render import SegmentRenderer

    task = get_task("walker-walk")
    venv, record = task.make_vec_env(1, seed=0), render_state_fn(task)
    venv.reset()
    states = []
    for _ in range(12):
        venv.step(np.array([venv.action_space.sample()]))
        states.append(record(venv)[0])
    venv.close()
    with SegmentRenderer(task) as renderer:  # (closed here: dm_control's GL context freed at exit is noisy)
        frames = renderer._draw_all(states)
        assert frames.shape == (12, 240, 320, 3) and renderer.fps == 40.0
        assert np.abs(frames[11].astype(int) - frames[0]).mean() > 1.0  # the walker moved
        np.testing.assert_array_equal(renderer._draw_all(states[:1])[0], frames[0])  # a state draws one frame


@pytest.mark.slow
def test_sac_trains_on_the_state_entropy_until_the_first_labels_then_on_the_learned_reward(tmp_path, monkeypatch):
    from rlhf_control.agent import replay

    filled_at_calls = []
    original = replay.StateEntropy.__call__

    def spy(self, obs, env=None):
        filled_at_calls.append(replay.filled(self.buf))
        return original(self, obs, env)

    monkeypatch.setattr(replay.StateEntropy, "__call__", spy)
    cfg = RunConfig(task="Pendulum-v1", algo="sac", n_envs=1, steps=900, labels=6, pretrain_labels=0,
                    schedule="bpref", label_batch=3, unsup_steps=300, iteration_steps=300, eval_episodes=0,
                    reward_async=False, agent={"learning_starts": 100, "batch_size": 32, **SMALL_SAC})
    trainer = RLHFTrainer(cfg, tmp_path / "run")
    trainer.run()
    # One intrinsic batch per gradient step after the random steps (SB3 trains once more than 100 steps
    # are stored) until the first round at step 400 (which comes before that step's update), none after.
    assert filled_at_calls == list(range(101, 400))
    assert trainer.offpolicy.samples.fn is None and trainer.offpolicy.relabels >= 2
    with sqlite3.connect(tmp_path / "run" / "preferences.sqlite") as con:
        first = con.execute("SELECT MIN(created_step) FROM queries").fetchone()[0]
    assert first == 400  # the first labels come when the unsupervised phase ends


@pytest.mark.slow
def test_the_sac_baseline_logs_every_iteration_not_every_step(tmp_path):
    import csv

    from rlhf_control.experiments.baseline import train_baseline

    cfg = RunConfig(task="Pendulum-v1", algo="sac", n_envs=1, steps=1200, unsup_steps=0, iteration_steps=500,
                    eval_episodes=1, eval_every=1,
                    agent={"learning_starts": 200, "batch_size": 32, **FAST_SAC})
    train_baseline(cfg, tmp_path / "rl")
    with open(tmp_path / "rl" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [500, 1000, 1200]
    assert all(r["eval_true_return"] for r in rows)  # evaluated every iteration


@pytest.mark.slow
def test_a_person_labels_a_sac_run_first_round_included(tmp_path):
    from test_human_loop import _train_and_label  # the scripted labeller of the human-oracle tests

    run = tmp_path / "human"
    cfg = tmp_path / "c.toml"
    cfg.write_text(tomli_w.dumps({"run": {"agent": {"learning_starts": 100, "batch_size": 32, **FAST_SAC}}}))
    args = ["train", "--oracle", "human", "--wait-for-labels", "--task", "Pendulum-v1", "--algo", "sac", "--n-envs", "1",
            "--steps", "900", "--labels", "6", "--pretrain-labels", "0", "--schedule", "bpref", "--label-batch", "2",
            "--unsup-steps", "200", "--iteration-steps", "200", "--eval-episodes", "0", "--label-port", "0",
            "--config", str(cfg), "--run-dir", str(run), "--no-progress", "--sync-reward"]
    _train_and_label(args, run, want=6)
    assert _count(run, "SELECT COUNT(*) FROM answers WHERE skipped = 0") == 6
    assert _count(run, "SELECT MIN(created_step) FROM queries") == 300  # after 100 random and 200 unsupervised steps
    assert len(list((run / "clips").glob("*.mp4"))) >= 12


def test_sac_on_a_task_written_for_an_on_policy_agent_retrains_its_reward_fifty_epochs_a_round():
    # HalfCheetah's entry trains 6 epochs per TRPO iteration (hundreds of them); a SAC run retrains once
    # per label round, and 6 a round left its reward barely fitted.
    assert resolve(RunConfig(task="HalfCheetah-v5")).reward_epochs == 6
    assert resolve(RunConfig(task="HalfCheetah-v5", algo="sac")).reward_epochs == 50
    assert resolve(RunConfig(task="HalfCheetah-v5", algo="sac", reward_epochs=7)).reward_epochs == 7
    assert resolve(RunConfig(task="HalfCheetah-v5", algo="ppo")).reward_epochs == 6
    assert resolve(RunConfig(task="walker-walk")).reward_epochs == 50


def _first_round_spy(monkeypatch):
    """Critic and actor weights and the critic's Adam step count just before and just after PEBBLE's
    first round."""
    from rlhf_control.loop.offpolicy import OffPolicyPhases

    seen = {}
    original = OffPolicyPhases.first_round

    def state(agent):
        critic = agent.policy.critic
        steps = [float(s["step"]) for s in critic.optimizer.state.values()]
        return ([p.detach().clone() for p in critic.parameters()],
                [p.detach().clone() for p in agent.policy.actor.parameters()], max(steps, default=0.0))

    def spy(self, step):
        seen["before"] = state(self.t.agent)
        original(self, step)
        seen["after"] = state(self.t.agent)
        seen["target"] = [p.detach().clone() for p in self.t.agent.policy.critic_target.parameters()]

    monkeypatch.setattr(OffPolicyPhases, "first_round", spy)
    return seen


@pytest.mark.slow
@pytest.mark.parametrize("reset", [True, False])
def test_the_first_labels_start_sacs_critics_afresh_as_pebble_does(tmp_path, monkeypatch, reset):
    from rlhf_control.agent.factory import RESET_UPDATES

    seen = _first_round_spy(monkeypatch)
    cfg = RunConfig(task="Pendulum-v1", algo="sac", n_envs=1, steps=700, labels=6, pretrain_labels=0,
                    schedule="bpref", label_batch=3, unsup_steps=300, iteration_steps=300, eval_episodes=0,
                    critic_reset=reset, reward_async=False, agent={"learning_starts": 100, "batch_size": 32, **SMALL_SAC})
    RLHFTrainer(cfg, tmp_path / "run").run()
    (critic0, actor0, steps0), (critic1, actor1, steps1) = seen["before"], seen["after"]
    assert steps0 == 299  # the critic trained on the state entropy, one step per unsupervised step
    moved = max(float((a - b).abs().mean()) for a, b in zip(critic0, critic1, strict=True))
    actor_moved = max(float((a - b).abs().max()) for a, b in zip(actor0, actor1, strict=True))
    if reset:
        # a fresh initialisation then RESET_UPDATES Adam steps (each moves a weight by about the learning
        # rate, 3e-4, at most): far from the trained critic; the actor only took those steps
        assert steps1 == RESET_UPDATES
        assert moved > 0.05 and actor_moved < RESET_UPDATES * 3e-4 * 1.5
        target_lag = max(float((a - b).abs().max()) for a, b in zip(seen["target"], critic1, strict=True))
        assert target_lag < 0.05  # the targets copied the fresh critics, then followed them at tau
    else:
        assert steps1 == steps0 and moved == 0.0 and actor_moved == 0.0


def test_no_critic_reset_is_refused_for_an_on_policy_agent():
    with pytest.raises(UserError, match="no-critic-reset is for off-policy agents"):
        resolve(RunConfig(task="Pendulum-v1", algo="ppo", critic_reset=False))


@pytest.mark.slow
def test_the_first_round_asks_random_pairs_and_later_rounds_the_runs_selector(tmp_path, monkeypatch):
    from rlhf_control.queries import selection

    used = []
    for cls in (selection.RandomSelector, selection.VarianceSelector):
        original = cls.select

        def spy(self, segments, n, *a, _original=original, **kw):
            used.append((type(self).__name__, n))
            return _original(self, segments, n, *a, **kw)

        monkeypatch.setattr(cls, "select", spy)
    cfg = RunConfig(task="Pendulum-v1", algo="sac", n_envs=1, steps=1000, labels=6, pretrain_labels=0,
                    schedule="bpref", label_batch=3, unsup_steps=200, iteration_steps=300, eval_episodes=0,
                    selector="variance", reward_async=False, agent={"learning_starts": 100, "batch_size": 32, **FAST_SAC})
    RLHFTrainer(cfg, tmp_path / "run").run()
    assert used[0] == ("RandomSelector", 3)  # PEBBLE: an untrained ensemble's disagreement says nothing
    assert used[1:] and all(name == "VarianceSelector" for name, _ in used[1:])


@pytest.mark.slow
def test_sac_queries_may_come_from_its_own_first_steps_and_dmc_uses_b_prefs_window(tmp_path, monkeypatch):
    from rlhf_control.queries import selection

    # The floor is 256 clips, but a DeepMind Control entry asks B-Pref's: its last 100 episodes' clips.
    assert resolve(RunConfig(task="Pendulum-v1", algo="ppo")).query_min_clips == 256
    assert resolve(RunConfig(task="Pendulum-v1", algo="sac")).query_min_clips == 256
    assert resolve(RunConfig(task="HalfCheetah-v5", algo="sac")).query_min_clips == 256
    assert resolve(RunConfig(task="walker-walk")).query_min_clips == 100 * 1000 // 50
    assert resolve(RunConfig(task="walker-walk", query_min_clips=64)).query_min_clips == 64
    assert resolve(RunConfig(task="walker-walk", algo="sac", query_min_clips=None)).task.query_episodes == 100

    seen = []
    original = selection.VarianceSelector.select

    def spy(self, segments, n, *a, **kw):
        seen.append([s.agent_step for s in segments])
        return original(self, segments, n, *a, **kw)

    monkeypatch.setattr(selection.VarianceSelector, "select", spy)
    cfg = RunConfig(task="Pendulum-v1", algo="sac", n_envs=1, steps=1000, labels=9, pretrain_labels=0,
                    schedule="bpref", label_batch=3, unsup_steps=200, iteration_steps=300, eval_episodes=0,
                    reward_async=False, agent={"learning_starts": 100, "batch_size": 32, **FAST_SAC})
    RLHFTrainer(cfg, tmp_path / "run").run()
    # The rounds after the first (at step 300) choose among the newest 256 clips (here: all 40 so far),
    # the random and unsupervised steps' clips too: in PEBBLE they are the agent's own.
    assert len(seen) == 2
    for steps in seen:
        assert min(steps) < 100 and max(steps) > 300


@pytest.mark.parametrize("share", [1.0, 0.5])
def test_hybrid_replay_draws_its_share_of_each_batch_from_the_newest_transitions(monkeypatch, share):
    from rlhf_control.agent.replay import HybridReplay

    agent = _sac(buffer_size=500, steps=300)  # 300 transitions stored, positions 0-299
    buf = agent.replay_buffer
    drawn = []
    original = buf._get_samples
    monkeypatch.setattr(buf, "_get_samples", lambda inds, env=None: drawn.append(inds) or original(inds, env))
    HybridReplay(agent, share, window=40)
    np.random.seed(0)
    for _ in range(50):
        batch = buf.sample(64)
        assert batch.observations.shape == (64, 3)
    inds = np.stack(drawn)
    recent = round(share * 64)
    assert inds.min() >= 0 and inds.max() < 300
    assert (inds[:, :recent] >= 260).all()  # the newest 40 positions
    if recent < 64:  # the rest from the whole buffer, as SB3 samples it
        rest = inds[:, recent:]
        assert (rest < 260).mean() > 0.8 and rest.min() < 30


@pytest.mark.slow
def test_recent_replay_reaches_the_run_and_bad_values_are_refused(tmp_path):
    assert resolve(RunConfig(task="walker-walk")).recent_replay_steps == 10 * 1000
    assert resolve(RunConfig(task="Pendulum-v1", algo="sac")).recent_replay_steps == 10 * 200
    for bad in (-0.1, 1.5, True, "half"):
        with pytest.raises(UserError, match="recent-replay .* must be a fraction in \\[0, 1\\]"):
            RunConfig(task="walker-walk", recent_replay=bad)
    with pytest.raises(UserError, match="recent-replay 0.5 is for off-policy agents"):
        resolve(RunConfig(task="Pendulum-v1", algo="ppo", recent_replay=0.5))
    cfg = RunConfig(task="Pendulum-v1", algo="sac", n_envs=1, steps=700, labels=4, pretrain_labels=0,
                    schedule="bpref", label_batch=2, unsup_steps=0, iteration_steps=300, eval_episodes=0,
                    recent_replay=0.5, reward_async=False, agent={"learning_starts": 100, "batch_size": 32, **FAST_SAC})
    trainer = RLHFTrainer(cfg, tmp_path / "run")
    trainer.run()
    hybrid = trainer.offpolicy.hybrid
    assert hybrid is not None and (hybrid.share, hybrid.window) == (0.5, 2000)
