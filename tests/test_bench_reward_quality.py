"""scripts/bench_reward_quality.py: the label plan, the labelling loop and the rank scores, on clips
built on the spot (true reward = the first observation feature), in a second or two."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from rlhf_control.reward.ensemble import EnsembleConfig, RewardEnsemble
from rlhf_control.reward.training import RewardTrainerConfig
from rlhf_control.types import Segment

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_reward_quality.py"
_spec = importlib.util.spec_from_file_location("bench_reward_quality", SCRIPT)
brq = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = brq  # dataclasses look their module up there
_spec.loader.exec_module(brq)

T, OBS, ACT = 5, 3, 1


def clips(n: int, centre: float, rng: np.random.Generator, first_uid: int) -> list[Segment]:
    """Clips of one "policy": obs around ``centre``; the true reward is obs feature 0."""
    out = []
    for i in range(n):
        obs = (centre + rng.normal(size=(T, OBS))).astype(np.float32)
        acts = rng.uniform(-1, 1, size=(T, ACT)).astype(np.float32)
        out.append(Segment(obs, acts, true_rewards=obs[:, 0].astype(np.float64), episode_id=i, uid=first_uid + i))
    return out


class TrueReturns:
    """Ensemble stand-in whose members all predict ``sign`` times the true return."""

    def __init__(self, sign: float) -> None:
        self.sign = sign

    def member_segment_returns(self, segments, normalized=False):
        return np.tile([self.sign * s.true_return for s in segments], (2, 1))


def test_round_sizes_add_up_to_the_online_labels():
    plan = brq.LabelPlan(labels=700, pretrain=175, pretrain_epochs=1, reward_epochs=1, rounds=20)
    sizes = plan.round_sizes()
    assert sum(sizes) == 525 and len(sizes) == 20 and max(sizes) - min(sizes) <= 1
    assert brq.LabelPlan(10, 8, 1, 1, rounds=5).round_sizes() == [1, 1]  # empty rounds dropped
    assert brq.LabelPlan(10, 10, 1, 1, rounds=3).round_sizes() == []


def test_rank_scores_per_group_and_overall():
    rng = np.random.default_rng(0)
    held = {"a": clips(30, 0.0, rng, 0), "b": clips(30, 3.0, rng, 100)}
    assert brq.rank_scores(TrueReturns(1.0), held) == pytest.approx({"all": 1.0, "a": 1.0, "b": 1.0})
    assert brq.rank_scores(TrueReturns(-1.0), held) == pytest.approx({"all": -1.0, "a": -1.0, "b": -1.0})


@pytest.mark.parametrize("selector", ["random", "variance"])
def test_perfect_labels_teach_a_reward_that_ranks_held_out_clips(selector):
    rng = np.random.default_rng(1)
    pretrain = clips(60, 0.0, rng, 0)
    candidates = pretrain + clips(60, 2.0, rng, 1000)
    held = {"low": clips(40, 0.0, rng, 2000), "high": clips(40, 2.0, rng, 3000)}
    ens = RewardEnsemble(EnsembleConfig(n_members=2, hidden=(16,)), (OBS,), (ACT,), seed=0)
    untrained = brq.rank_scores(ens, held)
    plan = brq.LabelPlan(labels=60, pretrain=20, pretrain_epochs=20, reward_epochs=10, rounds=2)
    fast = RewardTrainerConfig(seed=0, lr=1e-2, batch_size=16)  # enough gradient steps on 60 labels
    ds = brq.learn_reward(ens, fast, plan, candidates, pretrain, selector, seed=0)

    assert len(ds) == 60
    pretrain_uids = {s.uid for s in pretrain}
    first = ds.labels[:20]
    assert all({lb.pair.first.uid, lb.pair.second.uid} <= pretrain_uids for lb in first)
    # The labels are the perfect oracle's: +1 exactly when the first clip's true return is higher.
    assert all(lb.value == np.sign(lb.pair.first.true_return - lb.pair.second.true_return) for lb in ds.labels)
    scores = brq.rank_scores(ens, held)
    assert scores["all"] > 0.9 and scores["low"] > 0.8 and scores["high"] > 0.8
    assert scores["all"] > untrained["all"] + 0.2
