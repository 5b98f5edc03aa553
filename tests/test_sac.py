"""agent/sac.py: SB3's SAC unchanged by default; PEBBLE's target interval, temperature rate and log-std
squashing when asked for; saved and loaded with them."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3 import SAC

from rlhf_control.agent.sac import PebbleSAC, SquashedLogStdActor
from rlhf_control.tasks.catalogue import get_task
from rlhf_control.tasks.spec import algo_class

SMALL = {"learning_starts": 64, "batch_size": 32, "policy_kwargs": {"net_arch": [16, 16]}, "seed": 0}


def _params(model) -> list[np.ndarray]:
    return [p.detach().numpy().copy() for p in model.policy.parameters()]


def test_without_options_it_is_sb3s_sac_step_for_step():
    ours = PebbleSAC("MlpPolicy", gym.make("Pendulum-v1"), **SMALL).learn(200)
    sb3 = SAC("MlpPolicy", gym.make("Pendulum-v1"), **SMALL).learn(200)
    for a, b in zip(_params(ours), _params(sb3), strict=True):
        np.testing.assert_array_equal(a, b)
    assert algo_class("sac") is PebbleSAC


def _targets_equal(model) -> bool:
    return all(th.equal(a, b) for a, b in zip(model.critic.parameters(), model.critic_target.parameters(),
                                              strict=True))


def test_targets_move_on_every_interval_th_gradient_step_of_the_run():
    # tau 1 copies the critics into the targets when they move: after a step on which they moved the
    # two are equal, after one on which they did not they differ (the critics just took a step).
    model = PebbleSAC("MlpPolicy", gym.make("Pendulum-v1"), tau=1.0, target_update_interval=2, **SMALL).learn(80)
    moved = []
    for _ in range(6):
        n = model._n_updates
        model.train(1, 32)  # one gradient step per call, as the loop's train_freq=1, gradient_steps=1
        moved.append((n % 2 == 0, _targets_equal(model)))
    assert all(expected == got for expected, got in moved) and {e for e, _ in moved} == {True, False}
    assert model.tau == 1.0  # restored after each call
    sb3 = SAC("MlpPolicy", gym.make("Pendulum-v1"), tau=1.0, target_update_interval=2, **SMALL).learn(80)
    sb3.train(1, 32)
    sb3.train(1, 32)
    assert _targets_equal(sb3)  # SB3 counts within a call: with one step a call, it moves them every step


def test_the_temperature_learns_at_its_own_rate():
    model = PebbleSAC("MlpPolicy", gym.make("Pendulum-v1"), learning_rate=5e-4, ent_coef_lr=1e-4, **SMALL).learn(100)
    assert model.ent_coef_optimizer.param_groups[0]["lr"] == 1e-4
    assert model.actor.optimizer.param_groups[0]["lr"] == model.critic.optimizer.param_groups[0]["lr"] == 5e-4
    with pytest.raises(ValueError, match=r"ent_coef_lr=-1 is not allowed; use a positive number"):
        PebbleSAC("MlpPolicy", gym.make("Pendulum-v1"), ent_coef_lr=-1)


def test_log_std_is_squashed_into_its_bounds_and_survives_save_and_load(tmp_path):
    kw = dict(SMALL, policy_kwargs={"net_arch": [16, 16], "log_std_bounds": [-5.0, 2.0]})
    model = PebbleSAC("MlpPolicy", gym.make("Pendulum-v1"), **kw)
    actor = model.actor
    assert isinstance(actor, SquashedLogStdActor)
    with th.no_grad():
        for layer in actor.log_std.parameters():
            layer.mul_(1000.0)  # drive the raw output far past both bounds
        obs = th.as_tensor(np.random.default_rng(0).normal(scale=10.0, size=(256, 3)), dtype=th.float32)
        _, log_std, _ = actor.get_action_dist_params(obs)
        raw = actor.log_std(actor.latent_pi(actor.extract_features(obs, actor.features_extractor)))
    assert log_std.min() >= -5.0 and log_std.max() <= 2.0
    assert log_std.min() < -4.9 and log_std.max() > 1.9  # both ends reached, not clipped at SB3's -20
    np.testing.assert_allclose(log_std.numpy(), (-5.0 + 3.5 * (np.tanh(raw.numpy()) + 1.0)), rtol=1e-5, atol=1e-5)
    model.learn(100)
    model.save(tmp_path / "sac.zip")
    back = PebbleSAC.load(tmp_path / "sac.zip")
    assert isinstance(back.actor, SquashedLogStdActor) and back.actor.log_std_bounds == (-5.0, 2.0)
    np.testing.assert_array_equal(back.predict(obs.numpy()[:8], deterministic=True)[0],
                                  model.predict(obs.numpy()[:8], deterministic=True)[0])
    with pytest.raises(ValueError, match=r"log_std_bounds=\[2.0, -5.0\] is not allowed; use \[low, high\]"):
        PebbleSAC("MlpPolicy", gym.make("Pendulum-v1"), policy_kwargs={"log_std_bounds": [2.0, -5.0]})


def test_the_control_suite_entries_ask_for_pebbles_settings():
    agent = get_task("walker-walk").agent_kwargs()
    assert (agent["target_update_interval"], agent["ent_coef_lr"]) == (2, 1e-4)
    assert agent["policy_kwargs"]["log_std_bounds"] == [-5.0, 2.0]
    # an override of the networks keeps the entry's other policy keywords
    narrow = get_task("walker-walk").with_overrides(agent={"policy_kwargs": {"net_arch": [64, 64]}}).agent_kwargs()
    assert narrow["policy_kwargs"] == {"net_arch": [64, 64], "log_std_bounds": [-5.0, 2.0]}
