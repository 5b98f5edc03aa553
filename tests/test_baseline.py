"""RL-on-true-reward baseline: run directory layout, normalisation, random-policy return, resume."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
from stable_baselines3.common.vec_env import VecNormalize

from rlhf_control import __version__
from rlhf_control.config import RunConfig, resolve
from rlhf_control.experiments.baseline import (
    BASELINE_MARKER,
    BaselineTrainer,
    EpisodeReturns,
    is_baseline_dir,
    random_policy_return,
    train_baseline,
)
from rlhf_control.loop.metrics import COLUMNS, read_metrics
from rlhf_control.rundir import BASELINE_FILE
from rlhf_control.tasks.catalogue import get_task

# Pendulum: 200-step episodes; one env and 200-step rollouts, so every rollout ends an episode.
CFG = RunConfig(task="Pendulum-v1", seed=3, steps=800, n_envs=1, checkpoint_every=1, eval_episodes=1, eval_every=2,
                agent={"n_steps": 200, "batch_size": 100, "n_epochs": 1})


class _Stop(Exception):
    pass


class _KilledAfterTwo(BaselineTrainer):
    def iteration(self, step: int) -> None:
        super().iteration(step)
        if self.iterations == 2:
            raise _Stop


def _rows(run_dir: Path) -> list[tuple[str, str]]:
    return [(r["step"], r["true_return"]) for r in read_metrics(run_dir / "metrics.csv")]


def test_baseline_writes_a_run_directory_of_the_true_reward(tmp_path: Path) -> None:
    trainer = BaselineTrainer(CFG, tmp_path / "b")
    # Same agent as the RLHF run of this config, on VecNormalize with reward (not obs) normalisation.
    venv = trainer.agent.get_env()
    assert isinstance(venv, VecNormalize) and venv.norm_reward and not venv.norm_obs
    assert venv.gamma == trainer.agent.gamma == resolve(CFG).agent_params["gamma"]
    assert trainer.agent.n_steps == 200 and trainer.agent.seed == 3
    trainer.run()
    d = tmp_path / "b"
    doc = tomllib.loads((d / "config.toml").read_text())
    assert doc["meta"]["baseline"] == BASELINE_MARKER and doc["meta"]["version"] == __version__
    assert doc["run"]["steps"] == 800 and doc["task"]["env_id"] == "Pendulum-v1" and is_baseline_dir(d)
    with open(d / "metrics.csv") as f:
        assert f.readline().strip().split(",") == list(COLUMNS)
    rows = read_metrics(d / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [200, 400, 600, 800, 800]
    assert all(r["labels"] == "" and r["learned_return"] == "" for r in rows)
    # true_return is the mean env return of the episodes finished so far (the env reward, not normalised).
    rets = [float(r["true_return"]) for r in rows]
    assert all(-2000 < x < 0 for x in rets)
    # Pendulum's true reward is Gymnasium's: the Gymnasium return column is the same number.
    assert [float(r["gym_return"]) for r in rows] == pytest.approx(rets, abs=1e-3)
    # Evaluated every eval_every=2 rollouts, except the last one, and at the end (deterministic, own env).
    assert [r["eval_true_return"] != "" for r in rows] == [False, True, False, False, True]
    evals = [(float(r["eval_true_return"]), float(r["eval_gym_return"])) for r in rows if r["eval_true_return"]]
    assert all(-2000 < t < 0 and t == pytest.approx(g, abs=1e-3) for t, g in evals)
    assert json.loads((d / "DONE").read_text())["step"] == 800
    assert (d / "checkpoints" / "LATEST").is_file()
    info = json.loads((d / BASELINE_FILE).read_text())
    assert info["random_episodes"] == 10 and -1700 < info["random_return"] < -800  # Pendulum's random policy
    assert info["random_gym_return"] == pytest.approx(info["random_return"])


def test_baseline_evaluates_at_the_rlhf_run_s_steps_whatever_its_rollout_length(tmp_path: Path) -> None:
    # The RLHF run of this config evaluates every 3 x 100 steps; the baseline's rollouts are 200 steps
    # (A2C's on Atari are 80 against the loop's 2,048), so it evaluates on crossing 300 and 600.
    cfg = CFG.replace(iteration_steps=100, eval_every=3, checkpoint_every=10)
    BaselineTrainer(cfg, tmp_path / "b").run()
    rows = read_metrics(tmp_path / "b" / "metrics.csv")
    assert [(int(r["step"]), r["eval_true_return"] != "") for r in rows] == \
        [(200, False), (400, True), (600, True), (800, False), (800, True)]


def test_baseline_trains_on_the_paper_s_reward_and_logs_the_gymnasium_return_beside_it(tmp_path: Path) -> None:
    """Reacher: the true reward (what the agent is trained on) has no control cost, Gymnasium's has."""
    cfg = RunConfig(task="Reacher-v5", seed=0, steps=200, n_envs=1, checkpoint_every=1, eval_episodes=2,
                    eval_every=1, agent={"n_steps": 100, "batch_size": 50, "n_critic_updates": 2})
    trainer = BaselineTrainer(cfg, tmp_path / "r")
    env_rewards: list[float] = []
    gym_minus_ctrl: list[float] = []
    step_wait = trainer.tracker.venv.step_wait

    def spy():  # what VecNormalize (and so the agent) receives, against Gymnasium's reward without its control term
        obs, rews, dones, infos = step_wait()
        env_rewards.extend(map(float, rews))
        gym_minus_ctrl.extend(i["gym_reward"] - i["reward_ctrl"] for i in infos)
        return obs, rews, dones, infos

    trainer.tracker.venv.step_wait = spy
    trainer.run()
    assert len(env_rewards) >= 200 and env_rewards == pytest.approx(gym_minus_ctrl, abs=1e-5)
    rows = read_metrics(tmp_path / "r" / "metrics.csv")
    assert [r["eval_true_return"] != "" for r in rows] == [True, False, True]
    for r in rows:  # four 50-step episodes by the end; torques cost in every one of them
        assert float(r["true_return"]) > float(r["gym_return"])
    for r in (rows[0], rows[2]):
        assert float(r["eval_true_return"]) > float(r["eval_gym_return"])
    info = json.loads((tmp_path / "r" / BASELINE_FILE).read_text())
    assert info["random_return"] > info["random_gym_return"]


def test_resume_continues_from_the_checkpoint(tmp_path: Path) -> None:
    train_baseline(CFG, tmp_path / "whole")
    with pytest.raises(_Stop):
        _KilledAfterTwo(CFG, tmp_path / "cut").run()
    assert not (tmp_path / "cut" / "DONE").exists()
    random_info = (tmp_path / "cut" / BASELINE_FILE).read_text()
    with pytest.raises(FileExistsError):
        BaselineTrainer(CFG, tmp_path / "cut")
    with pytest.raises(ValueError, match="other than its config"):
        BaselineTrainer(CFG.replace(steps=900), tmp_path / "cut", resume=True)
    resumed = BaselineTrainer(CFG, tmp_path / "cut", resume=True)
    assert resumed.agent.num_timesteps == 400 and resumed.iterations == 2
    resumed.run()
    cut, whole = _rows(tmp_path / "cut"), _rows(tmp_path / "whole")
    assert [s for s, _ in cut] == [s for s, _ in whole] == ["200", "400", "600", "800", "800"]
    assert cut[:2] == whole[:2]  # same seed, same run up to the checkpoint
    assert (tmp_path / "cut" / BASELINE_FILE).read_text() == random_info  # measured once


def test_episode_returns_match_the_monitor() -> None:
    task = get_task("Pendulum-v1")
    venv = EpisodeReturns(task.make_vec_env(2, seed=0))
    venv.reset()
    rng = np.random.default_rng(0)
    monitor = []
    for _ in range(450):
        _, _, dones, infos = venv.step(rng.uniform(-2, 2, size=(2, 1)).astype(np.float32))
        monitor += [i["episode"]["r"] for i, d in zip(infos, dones, strict=True) if d]
    venv.close()
    assert len(monitor) == 4 and np.allclose(sorted(venv.returns), sorted(monitor), atol=1e-3)
    assert np.allclose(sorted(venv.gym_returns), sorted(monitor), atol=1e-3)  # Pendulum: Gymnasium's reward
    ret, n = random_policy_return(task, seed=1, episodes=3)
    assert n == 3 and ret < 0


def test_a_resumed_agent_does_not_replay_its_first_starts_or_its_exploration_noise(tmp_path: Path) -> None:
    import torch

    from rlhf_control.agent.factory import load_agent, make_agent

    task = get_task("Pendulum-v1")
    params = {"n_steps": 64, "batch_size": 64, "n_epochs": 1}
    agent = make_agent("ppo", task.make_vec_env(1, seed=3), params, seed=3)
    first_start = agent.env.reset()  # where the run's first episode started (SB3 seeded the env with 3)
    agent.learn(64)
    agent.save(tmp_path / "agent.zip")
    torch.manual_seed(3)
    first_noise = torch.rand(4)

    plain = load_agent("ppo", str(tmp_path / "agent.zip"), task.make_vec_env(1, seed=3))
    assert np.array_equal(plain.env.reset(), first_start)  # SB3's load reseeds with the training seed

    starts, noises = [], []
    for _ in range(2):
        resumed = load_agent("ppo", str(tmp_path / "agent.zip"), task.make_vec_env(1, seed=3), resume=True)
        assert resumed.num_timesteps == 64
        starts.append(resumed.env.reset())
        noises.append(torch.rand(4))
    assert not np.allclose(starts[0], first_start) and not torch.equal(noises[0], first_noise)
    assert np.array_equal(starts[0], starts[1]) and torch.equal(noises[0], noises[1])  # a resume is repeatable
