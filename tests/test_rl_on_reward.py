"""scripts/rl_on_reward.py: the reward is the observation's entry before or after each step (the
terminal observation at an episode's end), Gymnasium's own (the info's gym_reward), the env's, or a
fixed learned reward of the observation before (or after) each step and the action taken."""

import importlib.util
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from stable_baselines3.common.vec_env import DummyVecEnv

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "rl_on_reward.py"
_spec = importlib.util.spec_from_file_location("rl_on_reward", SCRIPT)
mod = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = mod
_spec.loader.exec_module(mod)


class Steps(gym.Env):
    """obs = [step index]; reward 100 + step; episodes of 4 steps."""

    observation_space = spaces.Box(-np.inf, np.inf, (1,), np.float32)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return np.array([0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        return np.array([self.t], np.float32), 100.0 + self.t, self.t >= 4, False, {"gym_reward": -self.t}


@pytest.mark.parametrize("mode, expected", [("before", [0, 1, 2, 3, 0, 1]), ("after", [1, 2, 3, 4, 1, 2]),
                                            ("true", [101, 102, 103, 104, 101, 102]),
                                            ("gym", [-1, -2, -3, -4, -1, -2])])
def test_speed_reward_reads_the_observation_before_or_after_each_step(mode, expected):
    env = mod.ChosenReward(DummyVecEnv([Steps]), mode, 0)
    env.reset()
    got = [float(env.step(np.array([0]))[1][0]) for _ in range(6)]
    assert got == expected


@pytest.mark.parametrize("next_obs, expected", [(False, [0, 11, 20, 31, 0, 11]), (True, [10, 21, 30, 41, 10, 21])])
def test_learned_reward_reads_the_observation_and_the_action_taken(next_obs, expected):
    """reward_fn(obs, actions) = 10 * obs + action: the observation the action was taken from (or, with
    next_obs, the one it led to, the terminal one at an episode's end), and the action of that step."""
    env = mod.ChosenReward(DummyVecEnv([Steps]), "learned", reward_fn=lambda o, a: 10 * o[:, 0] + a,
                           obs_fn=lambda o: o.copy(), next_obs=next_obs)
    env.reset()
    got = [float(env.step(np.array([t % 2]))[1][0]) for t in range(6)]
    assert got == expected


def test_learned_mode_refuses_bad_input_in_one_line(tmp_path, capsys):
    assert mod.main(["learned", "0"]) == 2
    assert "--reward-run None with mode 'learned' is not allowed" in capsys.readouterr().err
    assert mod.main(["true", "0", "--reward-run", str(tmp_path)]) == 2
    assert "give --reward-run with mode learned, and only then" in capsys.readouterr().err
    assert mod.main(["learned", "0", "--reward-run", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert mod.main(["true", "0", "--evals", "0"]) == 2
    assert "--evals 0 is not allowed" in capsys.readouterr().err


def test_learned_reward_loads_the_runs_final_ensemble_and_task(tmp_path):
    from rlhf_control.config import RunConfig, write_config_file
    from rlhf_control.loop.checkpoint import ENSEMBLE_FILE, save_checkpoint
    from rlhf_control.reward.ensemble import EnsembleConfig, RewardEnsemble
    from rlhf_control.tasks.catalogue import get_task

    run = tmp_path / "run"
    run.mkdir()
    task = get_task("Pendulum-v1")
    write_config_file(run / "config.toml", RunConfig(task="Pendulum-v1", reward_obs="after", labels=50),
                      task.to_dict(), {"version": "0.1.0"})
    with pytest.raises(ValueError, match="has no checkpoint yet"):
        mod.learned_reward(run, None)
    ens = RewardEnsemble(EnsembleConfig.mujoco(), (3,), (1,), seed=3)
    save_checkpoint(run, 100, {ENSEMBLE_FILE: ens.save}, {})
    cfg, got_task, loaded = mod.learned_reward(run, None)
    assert cfg.reward_obs == "after" and cfg.labels == 50 and got_task.name == "Pendulum-v1"
    obs, acts = np.random.default_rng(0).normal(size=(5, 3)), np.zeros((5, 1))
    assert np.allclose(loaded.reward(obs, acts), ens.reward(obs, acts))
    with pytest.raises(ValueError, match="does not match the reward run's task 'Pendulum-v1'"):
        mod.learned_reward(run, "CartPole-v1")


def test_standing_reward_with_weight_2_is_walker2ds_true_reward():
    """On random steps of the catalogue's Walker2d-v5 (control cost dropped, a fallen step costs 1), the
    observation-read reward with the true premium follows the task's reward (they differ by the speed:
    read at the step's end here, averaged over the step there); another weight moves the upright steps alone."""
    from rlhf_control.tasks.catalogue import get_task

    env = get_task("Walker2d-v5").make_env(0)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    obs, true = [], []
    for _ in range(400):
        o, r, *_ = env.step(rng.uniform(-1, 1, env.action_space.shape).astype(np.float32))
        obs.append(o)
        true.append(r)
    env.close()
    got = mod.standing_reward(2.0)(np.array(obs), None)
    true = np.array(true)
    assert (true < -0.5).any() and (true > 0.5).any()  # the walker both stood and lay in these steps
    assert np.corrcoef(got, true)[0, 1] > 0.95 and np.mean(np.abs(got - true)) < 0.3
    half = mod.standing_reward(0.7)(np.array(obs), None)
    healthy = got > half + 1e-9  # the premium moves exactly the healthy steps, by 2 - 0.7
    assert np.allclose((got - half)[healthy], 1.3) and np.allclose((got - half)[~healthy], 0.0)


def test_standing_mode_refuses_bad_input_in_one_line(capsys):
    assert mod.main(["standing", "0"]) == 2
    assert "--standing-weight None with mode 'standing' is not allowed" in capsys.readouterr().err
    assert mod.main(["true", "0", "--standing-weight", "1"]) == 2
    assert "give --standing-weight with mode standing, and only then" in capsys.readouterr().err
    assert mod.main(["standing", "0", "--standing-weight", "1", "--task", "Hopper-v5"]) == 2
    assert "--task 'Hopper-v5' with mode standing is not allowed" in capsys.readouterr().err
    assert mod.main(["standing", "0", "--standing-weight", "nan"]) == 2
    assert "--standing-weight nan is not allowed" in capsys.readouterr().err
