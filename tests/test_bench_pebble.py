"""scripts/bench_pebble.py on a task whose agent sees normalised observations: the SAC yardstick sees
them as the loop's SAC does, and both are evaluated with their agent's statistics."""

import argparse
import csv
import importlib.util
import sys
from pathlib import Path

import pytest
from stable_baselines3.common.vec_env import VecNormalize

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_pebble.py"
_spec = importlib.util.spec_from_file_location("bench_pebble", SCRIPT)
bp = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bp
_spec.loader.exec_module(bp)

TASK = "MountainCarContinuous-v0"  # continuous actions, and `normalize = true` in the catalogue


def _args(**kw):
    base = dict(n_envs=1, rounds=2, unsup_steps=200, iteration_steps=400, eval_episodes=1, no_relabel=False,
                random_steps=200, net=16, batch_size=32, reward_epochs=0, selector="variance",
                no_critic_reset=False, recent_replay=0.0,
                query_min_clips=0, no_reward_l2=False, reward_crop=0, reward_obs="before")
    base.update(kw)
    return argparse.Namespace(**base)


def test_the_task_normalises_observations():
    assert bp.get_task(TASK).normalize


@pytest.fixture
def evaluations(monkeypatch):
    """The ``agent_env`` of every evaluation the script makes."""
    seen = []
    real = bp.evaluate_agent

    def spy(agent, task, episodes, *a, **kw):
        seen.append(kw.get("agent_env"))
        return real(agent, task, episodes, *a, **kw)

    monkeypatch.setattr(bp, "evaluate_agent", spy)
    return seen


def test_the_sac_yardstick_normalises_observations_and_is_evaluated_with_its_statistics(evaluations):
    ret, wall = bp.sac_true_reward(TASK, 0, 300, bp.agent_overrides(_args()), 1, 1)
    assert len(evaluations) == 1 and isinstance(evaluations[0], VecNormalize)
    assert evaluations[0].norm_obs and not evaluations[0].norm_reward
    assert wall > 0 and ret == ret


@pytest.mark.slow
def test_pebble_is_evaluated_with_its_agents_observation_statistics(tmp_path, evaluations):
    res = bp.pebble(TASK, 0, 1400, 4, _args(reward_epochs=7, no_critic_reset=True, recent_replay=0.25,
                                               query_min_clips=300, reward_obs="after"), tmp_path / "run")
    written = (tmp_path / "run" / "config.toml").read_text()
    assert "reward_epochs = 7\n" in written  # --reward-epochs reaches the run
    assert "critic_reset = false\n" in written  # and --no-critic-reset
    assert "recent_replay = 0.25\n" in written  # and --recent-replay
    assert "query_min_clips = 300\n" in written  # and --query-min-clips
    assert 'reward_obs = "after"\n' in written  # and --reward-obs
    env = evaluations[-1]
    assert isinstance(env, VecNormalize) and env.norm_obs
    assert env.obs_rms.count > 1000  # the statistics the agent trained with, not fresh ones
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["eval_true_return"]]
    # the run's own last evaluation was one SAC update earlier: close, not equal
    assert res["return"] == pytest.approx(float(rows[-1]["eval_true_return"]), abs=1.0)
