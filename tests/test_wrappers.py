"""Each wrapper on a tiny env built here."""

from __future__ import annotations

from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest

from rlhf_control.registry import UnknownNameError
from rlhf_control.tasks.wrappers import (
    WRAPPERS,
    AtariFrames,
    DropControlCost,
    FixedHorizon,
    GymReturn,
    HeightReward,
    ScoreMask,
    apply_wrappers,
)


class Counter(gym.Env):
    """obs = [t, resets]; reward 1 per step; terminated on every step with t >= die_at.

    ``refuse``: stepping after a termination raises ``ResetNeeded``; ``nan_at``: that step's obs is NaN.
    """

    def __init__(self, die_at: int = 3, refuse: bool = False, nan_at: int | None = None) -> None:
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.die_at, self.refuse, self.nan_at = die_at, refuse, nan_at
        self.t, self.resets, self.dead = 0, -1, False

    def _obs(self) -> np.ndarray:
        return np.array([self.t, self.resets], dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.dead = 0, False
        self.resets += 1
        return self._obs(), {}

    def step(self, action):
        if self.dead and self.refuse:
            raise gym.error.ResetNeeded("step after termination")
        self.t += 1
        self.dead = self.t >= self.die_at
        obs = self._obs()
        if self.nan_at == self.t:
            obs[:] = np.nan
        return obs, 1.0, self.dead, False, {"reward_ctrl": -0.25}


def run(env: gym.Env, n: int) -> list[tuple]:
    env.reset(seed=0)
    return [env.step(0) for _ in range(n)]


def test_fixed_horizon_continue_keeps_physics_and_penalises_each_terminal_step():
    env = FixedHorizon(Counter(die_at=3), horizon=6, penalty=-2.0)
    steps = run(env, 6)
    assert [s[2] for s in steps] == [False] * 6  # never terminated
    assert [s[3] for s in steps] == [False] * 5 + [True]  # truncated exactly at the horizon
    assert [s[0][0] for s in steps] == [1, 2, 3, 4, 5, 6]  # same episode of the inner env: no reset
    assert [s[1] for s in steps] == [1, 1, -1, -1, -1, -1]  # penalty on each step the env reports terminal
    assert [s[4]["oracle_reward"] for s in steps] == [1, 1, -1, -1, -1, -1]
    env.reset()
    assert env.step(0)[0][0] == 1  # a new episode restarts the count


def test_fixed_horizon_reset_restarts_inner_env_and_can_spare_the_agent():
    env = FixedHorizon(Counter(die_at=2), horizon=5, penalty=-3.0, on_termination="reset", penalize_reward=False)
    steps = run(env, 5)
    assert [s[0][0] for s in steps] == [1, 0, 1, 0, 1]  # reset obs after each death
    assert [s[1] for s in steps] == [1.0] * 5  # the agent's reward carries no game-over signal
    assert [s[4]["oracle_reward"] for s in steps] == [1, -2, 1, -2, 1]
    assert [s[4]["inner_reset"] for s in steps] == [False, True, False, True, False]
    assert [s[2] or s[3] for s in steps] == [False] * 4 + [True]


def test_fixed_horizon_resets_an_env_that_refuses_to_step():
    env = FixedHorizon(Counter(die_at=2, refuse=True), horizon=5, penalty=-1.0)
    steps = run(env, 5)
    assert [s[3] for s in steps] == [False] * 4 + [True]
    assert steps[2][4]["inner_reset"] and steps[2][0][1] == 1  # the refused step reset the env
    assert [s[4]["oracle_reward"] for s in steps] == [1, 0, -1, 1, 0]


def test_fixed_horizon_resets_invalid_state_and_keeps_last_obs_at_horizon():
    env = FixedHorizon(Counter(die_at=100, nan_at=2), horizon=4)
    steps = run(env, 4)
    assert all(np.all(np.isfinite(s[0])) for s in steps)
    assert steps[1][4]["inner_reset"] and steps[1][0].tolist() == [0, 1]
    # An inner time limit at the horizon keeps the real final obs (no reset on the last step).
    env = FixedHorizon(gym.wrappers.TimeLimit(Counter(die_at=100), 4), horizon=4)
    steps = run(env, 4)
    assert steps[-1][0][0] == 4 and not steps[-1][4]["inner_reset"]


def test_fixed_horizon_inner_time_limit_does_not_end_the_episode():
    env = FixedHorizon(gym.wrappers.TimeLimit(Counter(die_at=100), 3), horizon=7)
    steps = run(env, 7)
    assert [s[3] for s in steps] == [False] * 6 + [True]
    assert [s[0][0] for s in steps] == [1, 2, 0, 1, 2, 0, 1]


def test_fixed_horizon_rejects_bad_arguments():
    with pytest.raises(ValueError, match="on_termination"):
        FixedHorizon(Counter(), horizon=5, on_termination="stop")
    with pytest.raises(ValueError, match="horizon"):
        FixedHorizon(Counter(), horizon=0)


def test_drop_control_cost_changes_the_true_reward_and_the_oracle_alike_and_composes():
    steps = run(DropControlCost(Counter(die_at=100)), 2)
    # The paper's reward: Gymnasium's (1.0, control term -0.25) without the control cost, for the
    # agent (the true reward) and the oracle alike; the Gymnasium reward stays observable.
    assert [s[1] for s in steps] == [1.25, 1.25]
    assert [s[4]["oracle_reward"] for s in steps] == [1.25, 1.25]
    assert [s[4]["gym_reward"] for s in steps] == [1.0, 1.0]
    env = FixedHorizon(DropControlCost(Counter(die_at=2)), horizon=3, penalty=-1.0)
    steps = run(env, 3)
    assert [s[1] for s in steps] == [s[4]["oracle_reward"] for s in steps] == [1.25, 0.25, 0.25]
    assert [s[4]["gym_reward"] for s in steps] == [1.0, 1.0, 1.0]  # no control cost dropped, no penalty
    # In the other order the numbers are the same: each wrapper starts from what the inner one left.
    env = DropControlCost(FixedHorizon(Counter(die_at=2), horizon=3, penalty=-1.0))
    steps = run(env, 3)
    assert [s[1] for s in steps] == [s[4]["oracle_reward"] for s in steps] == [1.25, 0.25, 0.25]
    assert [s[4]["gym_reward"] for s in steps] == [1.0, 1.0, 1.0]


def test_fixed_horizon_penalty_is_the_oracle_s_alone_without_penalize_reward():
    env = FixedHorizon(DropControlCost(Counter(die_at=2)), horizon=3, penalty=-1.0, penalize_reward=False)
    steps = run(env, 3)
    assert [s[1] for s in steps] == [1.25, 1.25, 1.25]
    assert [s[4]["oracle_reward"] for s in steps] == [1.25, 0.25, 0.25]
    assert [s[4]["gym_reward"] for s in steps] == [1.0, 1.0, 1.0]


def test_gym_return_sums_the_gymnasium_reward_of_each_episode():
    env = GymReturn(FixedHorizon(DropControlCost(Counter(die_at=2)), horizon=3, penalty=-1.0))
    for _ in range(2):  # a reset starts the sum afresh
        env.reset(seed=0)
        infos = [env.step(0)[4] for _ in range(3)]
        assert ["gym_return" in i for i in infos] == [False, False, True]
        assert infos[2]["gym_return"] == 3.0  # not the true return 1.25 + 0.25 + 0.25
    # On a bare env (no reward-changing wrapper) the Gymnasium reward is the reward itself.
    env = GymReturn(gym.wrappers.TimeLimit(Counter(die_at=100), 4))
    steps = run(env, 4)
    assert [s[4]["gym_reward"] for s in steps] == [1.0] * 4 and steps[3][4]["gym_return"] == 4.0
    env = GymReturn(Counter(die_at=2))  # an env's own termination ends the episode too
    assert run(env, 2)[1][4]["gym_return"] == 2.0


def test_drop_control_cost_without_the_key_fails_loudly():
    env = DropControlCost(Counter(), key="reward_torque")
    env.reset()
    with pytest.raises(ValueError, match="reward_torque"):
        env.step(0)


class Body(gym.Env):
    """A body whose height ``data.qpos[1]`` follows ``heights`` step by step; Gymnasium-style reward:
    forward 0.5 plus a healthy reward of 1 while the height is above 0.8 (``info["reward_survive"]``)."""

    def __init__(self, heights: list[float]) -> None:
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.heights, self.t = heights, 0
        self.data = SimpleNamespace(qpos=np.array([0.0, heights[0]]))

    def reset(self, *, seed=None, options=None):
        self.t = 0
        self.data.qpos[1] = self.heights[0]
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        z = self.heights[self.t]
        self.data.qpos[1] = z
        survive = 1.0 if z > 0.8 else 0.0
        return np.zeros(1, np.float32), 0.5 + survive, z <= 0.8, False, {"reward_survive": survive}


def test_height_reward_grades_a_fallen_body_where_the_healthy_reward_does_not():
    heights = [1.25, 1.2, 0.6, 0.3, 0.5]  # upright, then down, lying flat, sitting up
    env = FixedHorizon(HeightReward(Body(heights), offset=1.0), horizon=4, penalty=0.0)
    steps = run(env, 4)
    rewards = [s[1] for s in steps]
    np.testing.assert_allclose(rewards, [0.5 + z - 1.0 for z in heights[1:]])
    assert rewards[2] < rewards[3]  # both out of the healthy range, yet sitting up earns more than lying
    assert [s[4]["oracle_reward"] for s in steps] == rewards  # the oracle compares the same reward
    assert [s[4]["gym_reward"] for s in steps] == [1.5, 0.5, 0.5, 0.5]  # Gymnasium's reward, unchanged
    scaled = run(HeightReward(Body(heights), offset=1.0, scale=2.0), 1)[0]
    assert scaled[1] == pytest.approx(0.5 + 2.0 * (1.2 - 1.0))


def test_height_reward_refuses_envs_it_cannot_read():
    with pytest.raises(ValueError, match="MuJoCo"):
        HeightReward(Counter())
    with pytest.raises(ValueError, match="index=5"):
        HeightReward(Body([1.0, 1.0]), index=5)
    env = HeightReward(Body([1.0, 1.0]), key="reward_healthy")
    env.reset()
    with pytest.raises(ValueError, match="reward_healthy"):
        env.step(0)


class Screen(gym.Env):
    """A 210x160 grayscale 'screen': frame i lights pixel column i; reward i; terminates at frame ``end``."""

    def __init__(self, end: int = 100) -> None:
        self.observation_space = gym.spaces.Box(0, 255, (210, 160), np.uint8)
        self.action_space = gym.spaces.Discrete(2)
        self.i, self.end = 0, end

    def reset(self, *, seed=None, options=None):
        self.i = 0
        return np.zeros((210, 160), np.uint8), {}

    def step(self, action):
        self.i += 1
        frame = np.zeros((210, 160), np.uint8)
        frame[:, self.i * 20 : self.i * 20 + 20] = 255  # 20 px wide band, so it survives the resize
        return frame, float(self.i), self.i >= self.end, False, {}


def test_atari_frames_skips_sums_and_max_pools_last_two_frames():
    env = AtariFrames(Screen(), frame_skip=4, size=84)
    obs, _ = env.reset()
    assert obs.shape == (84, 84, 1) and obs.dtype == np.uint8 and env.observation_space.shape == (84, 84, 1)
    obs, reward, term, trunc, _ = env.step(0)
    assert reward == 1 + 2 + 3 + 4
    lit = np.flatnonzero(obs[40, :, 0] > 200)  # bands of frames 3 and 4 (cols 60..100 of 160)
    assert lit.min() == round(60 * 84 / 160) and lit.max() == round(100 * 84 / 160) - 1
    assert obs[40, :20, 0].max() == 0  # frames 1 and 2 are not in the max


def test_atari_frames_stops_at_terminal_frame_and_resizes_by_area():
    env = AtariFrames(Screen(end=2), frame_skip=4)
    env.reset()
    _, reward, term, _, _ = env.step(0)
    assert term and reward == 1 + 2
    rgb = np.full((210, 160, 3), (255, 0, 0), np.uint8)
    assert np.all(AtariFrames(Screen())._process(rgb) == round(0.299 * 255))  # luma of pure red


def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """The resize AtariFrames used before OpenCV (the reference): ``(n_out, n_in)`` weights averaging
    the input pixels over each output pixel's span."""
    scale = n_in / n_out
    w = np.zeros((n_out, n_in), dtype=np.float32)
    for i in range(n_out):
        lo, hi = i * scale, (i + 1) * scale
        for j in range(int(np.floor(lo)), min(n_in, int(np.ceil(hi)))):
            w[i, j] = (min(hi, j + 1) - max(lo, j)) / scale
    return w


@pytest.mark.parametrize("game", ["Pong", "Enduro"])
def test_atari_frames_match_the_area_matrix_resize_on_real_frames(game):
    """OpenCV's INTER_AREA gives the frames the score masks in envs/atari.toml were found on."""
    import ale_py

    gym.register_envs(ale_py)
    raw = gym.make(f"ALE/{game}-v5", frameskip=1, obs_type="grayscale", repeat_action_probability=0.0)
    wrapper = AtariFrames(raw, frame_skip=4, size=84)
    rows, cols = _area_matrix(210, 84), _area_matrix(160, 84).T
    frame, _ = raw.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(300):
        new = wrapper._process(frame)[:, :, 0].astype(int)
        old = np.clip(np.rint(rows @ frame.astype(np.float32) @ cols), 0, 255).astype(int)
        diff = np.abs(new - old)
        assert diff.mean() < 1 and diff.max() <= 1  # rounding only (bilinear: up to ~150 at edges)
        frame = raw.step(int(rng.integers(raw.action_space.n)))[0]
    raw.close()


def test_score_mask_blanks_regions_on_all_layouts_without_touching_input():
    mask = ScoreMask([[0, 2, 1, 3]], fill=7)
    frame = np.arange(16, dtype=np.uint8).reshape(4, 4) + 100
    out = mask(frame)
    assert np.all(out[0:2, 1:3] == 7) and out[2, 2] == frame[2, 2] and frame[0, 1] == 101
    batch = np.stack([frame, frame])
    assert np.array_equal(mask(batch)[1], out)
    stacked = np.repeat(batch[..., None], 4, axis=-1)  # (N, H, W, C)
    assert np.array_equal(mask(stacked)[..., 3], np.stack([out, out]))
    with pytest.raises(ValueError, match="row0 < row1"):
        ScoreMask([[2, 1, 0, 3]])


def test_apply_wrappers_in_order_and_unknown_name():
    env = apply_wrappers(Counter(die_at=2), [{"name": "drop_control_cost"},
                                             {"name": "fixed_horizon", "kwargs": {"horizon": 3, "penalty": -1}}])
    assert isinstance(env, FixedHorizon) and isinstance(env.env, DropControlCost)
    with pytest.raises(UnknownNameError, match="fixed_horizon"):
        apply_wrappers(Counter(), [{"name": "fixed_horizons"}])
    assert {"fixed_horizon", "drop_control_cost", "atari_frames", "noop_reset"} <= set(WRAPPERS.names())


class NoopScreen(Screen):
    def get_action_meanings(self) -> list[str]:
        return ["NOOP", "FIRE"]


def test_noop_reset_takes_noops_after_reset():
    env = apply_wrappers(NoopScreen(end=1000), [{"name": "noop_reset", "kwargs": {"noop_max": 5}}])
    env.reset(seed=0)
    assert 1 <= env.unwrapped.i <= 5


class OracleScreen(Screen):
    """Screen whose even frames carry an oracle reward of 10x the reward."""

    def step(self, action):
        obs, reward, term, trunc, info = super().step(action)
        return obs, reward, term, trunc, ({"oracle_reward": 10 * reward} if self.i % 2 == 0 else {})


def test_atari_frames_sums_an_inner_oracle_reward():
    env = AtariFrames(OracleScreen(), frame_skip=3)
    env.reset()
    _, reward, _, _, info = env.step(0)
    assert reward == 1 + 2 + 3 and info["oracle_reward"] == 1 + 20 + 3
    env = AtariFrames(Screen(), frame_skip=3)
    env.reset()
    info = env.step(0)[4]
    assert "oracle_reward" not in info and "gym_reward" not in info  # none invented when no inner wrapper sets one


class GymScreen(Screen):
    """Screen whose reward some inner wrapper changed: the Gymnasium reward was 100 x the frame's."""

    def step(self, action):
        obs, reward, term, trunc, info = super().step(action)
        return obs, reward, term, trunc, {"gym_reward": 100.0 * reward}


def test_atari_frames_sums_an_inner_gymnasium_reward():
    env = GymReturn(AtariFrames(GymScreen(), frame_skip=3))
    env.reset()
    _, reward, _, _, info = env.step(0)
    assert reward == 1 + 2 + 3 and info["gym_reward"] == 100 + 200 + 300
