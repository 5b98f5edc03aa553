"""The task catalogue: every entry loads, builds and steps; Atari score masks on real frames; errors."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import tomli_w

from rlhf_control.recording.pool import SegmentPool
from rlhf_control.recording.recorder import TrajectoryRecorder
from rlhf_control.registry import UnknownNameError
from rlhf_control.tasks.catalogue import (
    DEFAULT_TASK,
    get_task,
    list_tasks,
    load_catalogue,
    load_task,
    task_from_env_id,
    tasks_from_toml,
)
from rlhf_control.tasks.spec import TaskSpec

PAPER_MUJOCO = ["Reacher-v5", "HalfCheetah-v5", "Hopper-v5", "Walker2d-v5", "Swimmer-v5", "Ant-v5",
                "InvertedPendulum-v5", "InvertedDoublePendulum-v5"]
PAPER_ATARI = [f"ALE/{g}-v5" for g in ("BeamRider", "Breakout", "Enduro", "Pong", "Qbert", "Seaquest",
                                        "SpaceInvaders")]
NON_ATARI = [n for n in list_tasks() if not n.startswith("ALE/")]


@pytest.fixture(autouse=True)
def _run_in_tmp_dir(tmp_path, monkeypatch):
    """MuJoCo writes compiler warnings (Ant's model) to MUJOCO_LOG.TXT in the working directory."""
    monkeypatch.chdir(tmp_path)


def test_catalogue_holds_the_paper_tasks_with_paper_settings():
    names = list_tasks()
    assert DEFAULT_TASK == "Pendulum-v1" and names[0] == DEFAULT_TASK
    assert set(PAPER_MUJOCO + PAPER_ATARI + ["hopper-backflip", "halfcheetah-one-leg"]) <= set(names)
    assert list_tasks("atari") == PAPER_ATARI
    for name in PAPER_MUJOCO:
        t = load_task(name)
        assert (t.algo, t.label_budget, t.pretrain_labels, t.reward_std, t.schedule_horizon) == ("trpo", 700, 175, 1.0, 2e6)
        assert (t.agent["gamma"], t.agent["gae_lambda"]) in {(0.995, 0.97), (0.9999, 0.97)}
        assert "entropy" in t.paper_departures
    for name in PAPER_ATARI:
        t = load_task(name)
        assert (t.algo, t.n_envs, t.clip_length, t.frame_stack, t.reward_std, t.reward_net) == ("a2c", 16, 25, 4, 0.05, "cnn")
        assert (t.agent["n_steps"], t.agent["learning_rate"], t.agent["gamma"], t.agent["ent_coef"]) == (5, 7e-4, 0.99, 0.01)
        assert (t.label_budget, t.pretrain_labels, t.pretrain_epochs, t.schedule_horizon) == (5500, 500, 200, 5e6)
        assert t.reward_obs_fn is not None
        penalty = [w for w in t.wrappers if w["name"] == "fixed_horizon"][0]["kwargs"]["penalty"]
        assert (penalty == 0) == (name == "ALE/Pong-v5")  # game over is a penalty in every game but Pong
    for name in ("hopper-backflip", "halfcheetah-one-leg"):
        t = load_task(name)
        assert not t.has_true_reward and t.instructions and t.suite == "mujoco"
    assert all(load_task(n).instructions for n in names)


@pytest.mark.parametrize("name", NON_ATARI)
def test_entry_builds_steps_and_keeps_a_fixed_horizon(name):
    task = load_task(name)
    env = task.make_env(seed=0)
    obs, _ = env.reset()
    assert env.observation_space.contains(obs.astype(env.observation_space.dtype))
    if task.suite == "mujoco":
        # fps is the real frame rate and clips are 1.5 s within 15..60 steps (or one episode at most).
        assert task.fps == pytest.approx(1 / env.unwrapped.dt)
        rule = min(60, max(15, round(1.5 * task.fps)))
        assert task.clip_length == (rule if rule <= task.horizon else task.clip_length)
        assert task.clip_length <= task.horizon
    for t in range(1, task.horizon + 1):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert not terminated and truncated == (t == task.horizon)
        assert np.all(np.isfinite(obs))
        if any(w["name"] in ("fixed_horizon", "drop_control_cost") for w in task.wrappers):
            assert "oracle_reward" in info
        if t >= 60 and task.horizon > 300:
            break  # long episodes: enough steps to cross a fall with random actions
    env.close()


@pytest.mark.parametrize("name", ["HalfCheetah-v5", "Reacher-v5"])
def test_mujoco_true_reward_is_the_paper_s_and_the_gymnasium_return_stays_observable(name):
    """The env reward (what the baseline trains on and results report) and the oracle's reward are both
    Gymnasium's reward without the control cost; ``gym_return`` sums Gymnasium's own reward."""
    task = load_task(name)
    env = task.make_env(seed=5)
    raw = gym.make(task.env_id, max_episode_steps=task.horizon)  # the unmodified Gymnasium env
    raw.reset(seed=5)
    raw_sum, ends = 0.0, 0
    for _ in range(max(300, task.horizon)):
        action = env.action_space.sample()
        _, reward, terminated, truncated, info = env.step(action)
        _, raw_reward, raw_term, raw_trunc, raw_info = raw.step(action)
        assert not raw_term and raw_info["reward_ctrl"] < 0  # no termination penalty in these two tasks
        assert info["gym_reward"] == pytest.approx(raw_reward, abs=1e-12)
        assert reward == pytest.approx(raw_reward - raw_info["reward_ctrl"], abs=1e-12)
        assert info["oracle_reward"] == reward
        raw_sum += raw_reward
        assert ("gym_return" in info) == truncated == raw_trunc and not terminated
        if truncated:
            assert info["gym_return"] == pytest.approx(raw_sum)
            ends += 1
            raw_sum = 0.0
            env.reset()
            raw.reset()
    assert ends >= 1
    env.close()
    raw.close()


def test_mujoco_falls_cost_the_penalty_in_the_true_reward_and_the_oracle_s():
    task = load_task("Hopper-v5")
    env = task.make_env(seed=1)
    fell = False
    for _ in range(200):
        _, reward, _, _, info = env.step(env.action_space.sample())
        assert info["oracle_reward"] == reward
        fallen = info["reward_survive"] == 0  # v5 withholds the healthy reward, we add the penalty
        assert reward == pytest.approx(info["gym_reward"] - info["reward_ctrl"] - (1.0 if fallen else 0.0))
        assert info["gym_reward"] == pytest.approx(info["reward_forward"] + info["reward_ctrl"] + info["reward_survive"])
        fell = fell or fallen
    assert fell


def test_a_fallen_inverted_pendulum_costs_10_and_restarts_within_the_episode():
    env = load_task("InvertedPendulum-v5").make_env(seed=0)
    env.reset(seed=0)
    falls = 0
    for t in range(1, 301):
        obs, reward, terminated, truncated, info = env.step(np.array([3.0 if (t // 5) % 2 else -3.0]))
        assert not terminated and not truncated
        if reward < 0:
            falls += 1
            assert reward == -10.0 and info["inner_reset"]
            assert abs(obs[1]) < 0.05  # the pole stands again (start states are within +-0.01 rad)
        else:
            assert reward == 1.0 and abs(obs[1]) <= 0.2
    assert falls >= 3  # the bang-bang pushes topple it again and again, each time from a fresh start


def test_a_reward_read_after_the_step_sees_the_fallen_pole_not_the_restart():
    # With --reward-obs after, the fall step's -10 belongs to the state the step led to: the fallen
    # pole. The wrapper restarts the pole within that same step, so the recorder (the oracle's and the
    # fitter's clips) and the learned-reward wrapper (the agent's rewards) must be handed the state
    # before the restart, not the upright start state.
    from stable_baselines3.common.vec_env import DummyVecEnv

    from rlhf_control.agent.learned_reward import LearnedReward

    task = load_task("InvertedPendulum-v5")
    venv = DummyVecEnv([lambda: task.make_env(seed=0)])
    pool = SegmentPool(1000, np.random.default_rng(0))
    rec = TrajectoryRecorder(venv, clip_length=5, pool=pool, next_obs=True)
    seen = []
    env = LearnedReward(rec, lambda obs, acts: (seen.append(np.array(obs)), np.zeros(len(obs)))[1], next_obs=True)
    env.reset()
    fall_obs = []
    for t in range(1, 201):
        _, rews, _, infos = env.step(np.array([[3.0 if (t // 5) % 2 else -3.0]], dtype=np.float32))
        if infos[0]["inner_reset"]:
            assert rews[0] == 0.0 and infos[0]["true_reward"] == -10.0
            fall_obs.append(seen[-1][0])
    assert len(fall_obs) >= 3
    assert all(abs(o[1]) > 0.2 for o in fall_obs)  # the pole as it fell (falls are past 0.2 rad)
    clip_steps = [(seg.obs[j], seg.true_rewards[j]) for seg in pool.segments() for j in range(5)]
    falls = [o for o, r in clip_steps if r == -10.0]
    assert len(falls) >= 3 and all(abs(o[1]) > 0.2 for o in falls)
    assert all(abs(o[1]) <= 0.2 for o, r in clip_steps if r == 1.0)


def test_a_fallen_double_pendulum_costs_10_and_restarts_within_the_episode():
    env = load_task("InvertedDoublePendulum-v5").make_env(seed=0)
    env.reset(seed=0)
    falls, upright = 0, 0
    for t in range(1, 301):
        obs, reward, terminated, truncated, info = env.step(np.array([1.0 if (t // 4) % 2 else -1.0]))
        assert not terminated and not truncated
        if info["inner_reset"]:
            falls += 1
            assert reward < -10.0 + 1e-6 and reward == info["oracle_reward"]  # penalty, no healthy reward
            assert np.all(np.abs(obs[1:3]) < 0.11)  # both links stand again (start noise +-0.1)
        else:
            upright += 1
            assert 8.0 < reward <= 10.0  # the healthy 10 less the distance and velocity penalties
    assert falls >= 3 and upright > falls


def test_recorded_clips_and_monitor_carry_the_true_reward_and_the_gym_return_beside_it():
    """What the oracle reads (a clip's rewards), what Monitor sums (the baseline's and evaluation's return)
    and the env reward are one number; the Gymnasium return arrives with Monitor's episode."""
    task = load_task("Reacher-v5")
    pool = SegmentPool(64, np.random.default_rng(0))
    venv = TrajectoryRecorder(task.make_vec_env(2, seed=0), task.clip_length, pool)
    venv.reset()
    rewards, gym_sum, episodes = [], np.zeros(2), 0
    for _ in range(task.horizon):
        _, rews, dones, infos = venv.step(np.stack([venv.action_space.sample() for _ in range(2)]))
        rewards.append(rews)
        gym_sum += [i["gym_reward"] for i in infos]
        for i in np.flatnonzero(dones):
            assert infos[i]["episode"]["r"] == pytest.approx(np.array(rewards)[:, i].sum(), abs=1e-4)
            assert infos[i]["gym_return"] == pytest.approx(gym_sum[i])
            assert infos[i]["gym_return"] < infos[i]["episode"]["r"]  # Gymnasium's charges for torque
            episodes += 1
    venv.close()
    assert episodes == 2 and len(pool) == 4
    per_env = np.array(rewards).T  # (2, 50): clips are steps 0-24 and 25-49 of each env's episode
    expected = [per_env[i, k : k + 25] for i in range(2) for k in (0, 25)]
    for seg in pool.segments():
        assert sum(np.allclose(seg.true_rewards, e) for e in expected) == 1


@pytest.mark.parametrize("name", ["Pendulum-v1", "CartPole-v1"])
def test_classic_tasks_report_a_gym_return_too(name):
    task = load_task(name)
    env = task.make_env(seed=0)
    total, gym_total = 0.0, 0.0
    for _ in range(task.horizon):
        _, reward, _, truncated, info = env.step(env.action_space.sample())
        total, gym_total = total + reward, gym_total + info["gym_reward"]
    assert truncated and info["gym_return"] == pytest.approx(gym_total)
    # CartPole's falls cost -10 each in the true reward (fixed_horizon), not in Gymnasium's.
    assert (gym_total == pytest.approx(total)) == (name == "Pendulum-v1")
    assert load_task("hopper-backflip").make_env(seed=0).step(np.zeros(3))[4].get("gym_return") is None


def test_pendulum_vec_env_is_seeded_and_monitored():
    task = load_task(DEFAULT_TASK)
    a, b = task.make_vec_env(seed=3), task.make_vec_env(seed=3)
    assert a.num_envs == task.n_envs == 4
    oa, ob = a.reset(), b.reset()
    assert oa.shape == (4, 3) and np.array_equal(oa, ob) and not np.array_equal(oa[0], oa[1])
    infos = [a.step(np.zeros((4, 1), np.float32))[3] for _ in range(task.horizon)][-1]
    assert "episode" in infos[0] and infos[0]["episode"]["l"] == 200


def _frames(task: TaskSpec, steps: int, seed: int) -> np.ndarray:
    env = task.make_env(seed=seed)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        obs = env.step(int(rng.integers(env.action_space.n)))[0]
        out.append(obs[:, :, 0])
    env.close()
    return np.stack(out)  # (steps, 84, 84)


@pytest.mark.parametrize("name", PAPER_ATARI)
def test_atari_score_area_is_blank_for_the_reward_model(name):
    task = load_task(name)
    raw = _frames(task, 150, seed=0)[-20:]
    masked = task.reward_obs_fn(raw)
    inside = np.zeros((84, 84), bool)
    for r0, r1, c0, c1 in task.obs_mask:
        inside[r0:r1, c0:c1] = True
    # The regions hold the score (something drawn) in the raw frames, and nothing once masked.
    assert any(len(np.unique(f[inside])) > 1 for f in raw)
    assert np.all(masked[:, inside] == 0)
    # The rest of the frame is untouched and still shows the game.
    assert np.array_equal(masked[:, ~inside], raw[:, ~inside])
    assert all(f[~inside].std() > 1 for f in masked)


def test_atari_vec_env_stacks_four_frames():
    task = load_task("ALE/Pong-v5")
    venv = task.make_vec_env(2, seed=0)
    obs = venv.reset()
    assert obs.shape == (2, 84, 84, 4) and obs.dtype == np.uint8
    obs, rews, done, infos = venv.step(np.zeros(2, dtype=int))
    assert obs.shape == (2, 84, 84, 4) and not done.any() and "oracle_reward" in infos[0]
    assert infos[0]["gym_reward"] == rews[0]  # the true reward is the game score, Gymnasium's own
    assert task.reward_obs_fn(obs).shape == obs.shape
    venv.close()


def test_task_from_env_id_gives_suite_defaults():
    acrobot = task_from_env_id("Acrobot-v1")
    assert (acrobot.name, acrobot.suite, acrobot.horizon, acrobot.algo) == ("Acrobot-v1", "classic", 500, "ppo")
    assert acrobot.fps == pytest.approx(5.0) and acrobot.reward_obs_fn is None
    env = acrobot.make_env(seed=0)
    env.step(env.action_space.sample())
    freeway = task_from_env_id("ALE/Freeway-v5")
    assert (freeway.suite, freeway.algo, freeway.frame_stack, freeway.reward_std) == ("atari", "a2c", 4, 0.05)
    assert freeway.reward_obs_fn is None and freeway.obs_mask == ()
    venv = freeway.make_vec_env(1, seed=0)
    assert venv.reset().shape == (1, 84, 84, 4)
    swimmer = task_from_env_id("Swimmer-v4")
    assert (swimmer.suite, swimmer.clip_length, swimmer.horizon) == ("mujoco", 38, 1000)
    assert [w["name"] for w in swimmer.wrappers] == ["drop_control_cost", "fixed_horizon"]
    assert get_task("Swimmer-v4") == swimmer and get_task("hopper-v5") == load_task("Hopper-v5")
    with pytest.raises(ValueError, match="NoSuchEnv-v0"):
        task_from_env_id("NoSuchEnv-v0")


def test_unknown_task_name_is_one_line_with_suggestions():
    with pytest.raises(UnknownNameError) as err:
        load_task("Hoper-v5")
    msg = str(err.value)
    assert "'Hoper-v5'" in msg and "did you mean Hopper-v5" in msg and "Pendulum-v1" in msg and "\n" not in msg
    with pytest.raises(ValueError, match="Hoper-v5"):
        get_task("Hoper-v5")


def test_toml_unknown_key_and_bad_values_are_one_line_errors():
    good = '[tasks.mine]\nenv_id = "Pendulum-v1"\nhorizon = 200\n'
    assert tasks_from_toml(good)["mine"].horizon == 200
    with pytest.raises(ValueError) as err:
        tasks_from_toml(good + "clip_lenght = 30\n", "mine.toml")
    msg = str(err.value)
    assert "'clip_lenght'" in msg and "clip_length" in msg and "mine.toml" in msg and "\n" not in msg
    with pytest.raises(ValueError, match="'ppo2'.*allowed: ppo, a2c, trpo"):
        tasks_from_toml(good + 'algo = "ppo2"\n')
    with pytest.raises(ValueError, match="n_step"):
        tasks_from_toml(good + "agent = { n_step = 5 }\n")
    with pytest.raises(ValueError, match="clip_length='30' must be of type int"):
        tasks_from_toml(good + 'clip_length = "30"\n')
    with pytest.raises(ValueError, match="fixed_horizon needs horizon=100"):
        tasks_from_toml(good + 'wrappers = [{ name = "fixed_horizon", kwargs = { horizon = 100 } }]\n')
    with pytest.raises(ValueError, match="invalid TOML"):
        tasks_from_toml("[tasks.x\n")


def test_schedule_names_are_the_schedule_registry_s_and_checked_when_resolved():
    from rlhf_control.config import RunConfig, resolve
    from rlhf_control.queries.schedule import SCHEDULES

    assert {t.schedule for t in load_catalogue().values()} <= set(SCHEDULES.names())
    good = '[tasks.mine]\nenv_id = "Pendulum-v1"\nhorizon = 200\n'
    offline = tasks_from_toml(good + 'schedule = "offline"\n')["mine"]
    assert resolve(RunConfig(task="mine"), offline).schedule == "offline"
    bad = tasks_from_toml(good + 'schedule = "hyperbolic"\n')["mine"]
    for cfg, task in ((RunConfig(task="mine"), bad), (RunConfig(schedule="hyperbolic"), load_task(DEFAULT_TASK))):
        with pytest.raises(ValueError) as err:
            resolve(cfg, task)
        msg = str(err.value)
        assert "'hyperbolic'" in msg and "constant, offline, paper" in msg and "\n" not in msg


def test_to_dict_round_trips_through_toml_and_overrides_merge():
    import tomllib

    for task in load_catalogue().values():
        data = tomllib.loads(tomli_w.dumps(task.to_dict()))
        assert TaskSpec.from_dict(data) == task
    task = load_task("Hopper-v5")
    new = task.with_overrides(horizon=500, agent={"learning_rate": 3e-4})
    assert new.horizon == 500 and new.agent["learning_rate"] == 3e-4 and new.agent["gamma"] == 0.995
    assert task.horizon == 1000 and task.agent["learning_rate"] == 1e-3 and hash(new) != hash(task)
    env = new.make_env(seed=0)  # the fixed_horizon wrapper follows the task's horizon
    assert env.get_wrapper_attr("horizon") == 500
    with pytest.raises(ValueError, match="'horizn'"):
        task.with_overrides(horizn=5)


def test_agent_presets_build_sb3_agents():
    from sb3_contrib import TRPO
    from stable_baselines3 import A2C, PPO

    algos = {"ppo": PPO, "a2c": A2C, "trpo": TRPO}
    for name in (DEFAULT_TASK, "MountainCarContinuous-v0", "Hopper-v5", "ALE/Breakout-v5"):
        task = load_task(name)
        venv = task.make_vec_env(1, seed=0)
        model = algos[task.algo](task.policy, venv, device="cpu", **task.agent_kwargs())
        assert model.gamma == task.agent["gamma"]
        if task.algo == "a2c":  # the paper's A2C is baselines': TensorFlow's RMSprop, epsilon inside the root
            from stable_baselines3.common.sb2_compat.rmsprop_tf_like import RMSpropTFLike

            opt = model.policy.optimizer
            assert type(opt) is RMSpropTFLike and (opt.defaults["alpha"], opt.defaults["eps"]) == (0.99, 1e-5)
        venv.close()
    with pytest.raises(ValueError, match=r"policy_kwargs.optimizer_class.*'rmsprop_tf'.*rmsprop_tf_like"):
        load_task("ALE/Breakout-v5").with_overrides(agent={"policy_kwargs": {"optimizer_class": "rmsprop_tf"}})


@pytest.mark.parametrize("name", [DEFAULT_TASK, "Hopper-v5", "ALE/Pong-v5"])
def test_make_env_renders_rgb_frames_headless(name):
    env = load_task(name).make_env(seed=0, render_mode="rgb_array")
    env.step(env.action_space.sample())
    frame = env.render()
    assert frame.ndim == 3 and frame.shape[2] == 3 and frame.dtype == np.uint8 and frame.std() > 0
    env.close()
