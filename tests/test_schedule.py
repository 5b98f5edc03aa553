import numpy as np
import pytest

from rlhf_control.queries.schedule import make_schedule
from rlhf_control.registry import UnknownNameError


def test_paper_schedule_spends_budget_with_a_falling_rate():
    s = make_schedule("paper", budget=700, pretrain=175, total_steps=300_000, horizon=2e6)
    assert s.target(0) == 175
    assert s.target(300_000) == 700
    assert s.target(10**9) == 700
    steps = np.linspace(0, 300_000, 31).astype(int)
    targets = np.array([s.target(int(t)) for t in steps])
    assert np.all(np.diff(targets) >= 0)
    increments = np.diff(targets)
    # Labels per step fall over time: the first tenth gets more than the last tenth.
    assert increments[:3].sum() > increments[-3:].sum()


def test_paper_rate_follows_the_hyperbola():
    # With a horizon of c, the rate at T is proportional to c / (T + c): compare two windows.
    c = 1000.0
    s = make_schedule("paper", budget=100_000, pretrain=0, total_steps=10_000, horizon=c)
    early = s.target(100) - s.target(0)
    late = s.target(9100) - s.target(9000)
    expected_ratio = (c / (50 + c)) / (c / (9050 + c))
    assert early / late == pytest.approx(expected_ratio, rel=0.05)


def test_constant_and_offline():
    s = make_schedule("constant", budget=110, pretrain=10, total_steps=1000)
    assert [s.target(t) for t in (0, 500, 1000)] == [10, 60, 110]
    off = make_schedule("offline", budget=50, pretrain=0, total_steps=1000)
    assert off.target(0) == 50 and off.pretrain == 50


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(budget=0, pretrain=0, total_steps=10), "budget 0"),
        (dict(budget=10, pretrain=11, total_steps=10), "pretraining labels 11"),
        (dict(budget=10, pretrain=0, total_steps=0), "total steps 0"),
    ],
)
def test_bad_schedules(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_schedule("paper", **kwargs)


def test_unknown_schedule_lists_known():
    with pytest.raises(UnknownNameError, match="constant.*offline.*paper"):
        make_schedule("papr", 10, 0, 10)


def test_atari_schedule_counts_frames_and_keeps_the_papers_500_pretraining_labels():
    import math

    from rlhf_control.config import RunConfig, resolve
    from rlhf_control.tasks.catalogue import get_task

    pong, cheetah = get_task("Pong"), get_task("HalfCheetah-v5")
    assert pong.frames_per_step == 4 and cheetah.frames_per_step == 1
    r = resolve(RunConfig(task="Pong", labels=3300, steps=2_500_000))
    assert r.pretrain_labels == 500  # the paper's count, not 500/5500 of 3,300
    assert r.schedule_horizon == 5e6 / 4  # 5e6 frames = 1.25e6 agent steps
    sched = make_schedule(r.schedule, r.labels, r.pretrain_labels, r.steps, r.schedule_horizon)
    # The paper's rate 5e6/(T+5e6) with T in frames (4 per agent step): cumulative c*ln(1+4t/c).
    c, t_end = 5e6, 4 * r.steps
    t = 1_000_000  # agent steps
    expected = 500 + (3300 - 500) * math.log1p(4 * t / c) / math.log1p(t_end / c)
    assert abs(sched.target(t) - expected) <= 1
    # MuJoCo keeps its 25% share when the budget changes, and counts agent steps.
    rc = resolve(RunConfig(task="HalfCheetah-v5", labels=1400))
    assert rc.pretrain_labels == 350 and rc.schedule_horizon == 2e6


def test_evaluation_defaults_come_from_the_task_and_flags_override_them():
    from rlhf_control.config import RunConfig, resolve

    pong, pendulum = resolve(RunConfig(task="Pong")), resolve(RunConfig())
    assert (pong.eval_episodes, pong.eval_every) == (2, 100)
    assert (pendulum.eval_episodes, pendulum.eval_every) == (10, 5)
    assert resolve(RunConfig(task="Pong", eval_episodes=0, eval_every=3)).eval_episodes == 0
    assert resolve(RunConfig(task="Pong", eval_episodes=0, eval_every=3)).eval_every == 3
