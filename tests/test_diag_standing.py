"""scripts/diag_standing.py: which labels compared upright and fallen walkers, and what a reward
replayed from them pays for standing (the fit recovers a known premium)."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from rlhf_control.store.store import PreferenceStore
from rlhf_control.types import Answer, Segment, SegmentPair

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "diag_standing.py"
_spec = importlib.util.spec_from_file_location("diag_standing", SCRIPT)
mod = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = mod
_spec.loader.exec_module(mod)


def clip(rng, up_steps, length=10, agent_step=-1, uid=-1):
    obs = rng.normal(0, 0.1, (length, 17)).astype(np.float32)
    obs[:, 0] = np.where(np.arange(length) < up_steps, 1.2, 0.3)  # height: upright, then on the ground
    obs[:, 8] = rng.normal(0, 1, length)  # x speed
    rewards = obs[:, 8] + 2.0 * (obs[:, 0] > 0.8) - 1.0
    return Segment(obs, rng.uniform(-1, 1, (length, 6)).astype(np.float32), rewards.astype(np.float64),
                   agent_step=agent_step, uid=uid)


def test_composition_counts_upright_steps_and_pairs():
    rng = np.random.default_rng(0)
    pairs = [SegmentPair(clip(rng, 10), clip(rng, 10)), SegmentPair(clip(rng, 0), clip(rng, 0)),
             SegmentPair(clip(rng, 5), clip(rng, 0))]
    from rlhf_control.types import Label
    c = mod.composition([Label(p, 1) for p in pairs])
    assert c["upright"] == pytest.approx((10 + 10 + 0 + 0 + 5 + 0) / 60)
    assert c["both_up"] == pytest.approx(1 / 3) and c["both_down"] == pytest.approx(1 / 3)


def test_slices_put_the_pretraining_labels_first_and_cut_the_rest_evenly():
    rng = np.random.default_rng(0)
    from rlhf_control.types import Label
    labels = [Label(SegmentPair(clip(rng, 3), clip(rng, 3)), 1) for _ in range(4)]
    labels += [Label(SegmentPair(clip(rng, 3, agent_step=100), clip(rng, 3, agent_step=90)), 1) for _ in range(6)]
    assert mod.slices(labels, 3) == [("pretraining", 0, 4), ("online 1/3", 4, 6), ("online 2/3", 6, 8),
                                     ("online 3/3", 8, 10)]


def test_premium_fit_recovers_a_known_reward():
    rng = np.random.default_rng(1)
    segs = [clip(rng, int(k)) for k in rng.integers(0, 11, 40)]
    obs = np.concatenate([s.obs for s in segs])
    known = 0.7 * mod.upright(obs) + 1.0 * obs[:, 8] - 0.2
    a, b = mod.premium_fit(known, obs, mod.upright(obs))
    assert a == pytest.approx(0.7) and b == pytest.approx(1.0)


def _store(path, rng, n):
    with PreferenceStore.create(path) as store:
        for _ in range(n):
            first, second = clip(rng, int(rng.integers(0, 11))), clip(rng, int(rng.integers(0, 11)))
            q = store.add_query(SegmentPair(first, second), 0)
            value = 1 if first.true_return > second.true_return else -1
            store.record_answer(Answer(q.query_id, value))
    return path


def test_two_runs_print_the_composition_and_the_replayed_premium(tmp_path, capsys):
    rng = np.random.default_rng(2)
    runs = [_store(tmp_path / f"s{i}.sqlite", rng, 60) for i in range(2)]
    assert mod.main([str(r) for r in runs] + ["--slices", "1", "--round", "30", "--epochs", "20"]) == 0
    head, replayed = capsys.readouterr().out.split("replayed offline")
    assert len([line for line in head.splitlines() if line.startswith(str(tmp_path))]) == 2  # one slice a run
    rows = [line.split(" | ") for line in replayed.splitlines() if line.startswith(str(tmp_path))]
    assert len(rows) == 2 and all(r[1] == "60" for r in rows)  # fitted after all 60 labels of each run
    # 60 perfect labels on clips whose true reward pays 2 for standing: the replay learns a premium,
    # and the stored true reward's own fit says 2.
    assert all(float(r[2]) > 0 for r in rows) and all(float(r[4]) == pytest.approx(2.0, abs=0.01) for r in rows)
    assert all(float(r[5]) == pytest.approx(float(r[2]) / float(r[4]), abs=0.01) for r in rows)


def test_relabel_answers_by_height_where_the_healthy_indicator_cannot_tell():
    rng = np.random.default_rng(3)
    flat, sitting = clip(rng, 0), clip(rng, 0)  # both on the ground all along: the indicator is 0 on both
    flat.obs[:, 0], sitting.obs[:, 0] = 0.2, 0.6
    flat.obs[:, 8], sitting.obs[:, 8] = 0.01, 0.0  # the flat one moves a little faster
    from rlhf_control.types import Label
    pair = [Label(SegmentPair(flat, sitting), 1)]
    assert mod.relabel(pair, mod.binary_reward)[0].value == 1  # speed alone decides
    assert mod.relabel(pair, mod.height_reward)[0].value == -1  # sitting up is worth more than 0.01 of speed
    assert mod.relabel([Label(SegmentPair(flat, flat), 1)], mod.height_reward)[0].value == 0


def test_relabelled_replay_prints_the_share_of_the_answering_reward_s_premium(tmp_path, capsys):
    rng = np.random.default_rng(4)
    runs = [_store(tmp_path / f"s{i}.sqlite", rng, 40) for i in range(2)]
    args = [str(r) for r in runs] + ["--slices", "1", "--round", "40", "--epochs", "5", "--relabel", "height",
                                     "--ensemble-seeds", "2"]
    assert mod.main(args) == 0
    rows = [line.split(" | ") for line in capsys.readouterr().out.split("replayed offline")[1].splitlines()
            if line.startswith(str(tmp_path))]
    assert len(rows) == 2 and all(len(r[3].split()) == 2 for r in rows)  # two ensemble seeds
    # the clips' heights are 1.2 upright and 0.3 down: the height reward's premium is 0.9, not 2
    assert all(float(r[4]) == pytest.approx(0.9, abs=0.01) for r in rows)


def test_bad_input_is_refused_in_one_line(tmp_path, capsys):
    assert mod.main([str(tmp_path / "nope")]) == 2
    assert "is neither a run directory" in capsys.readouterr().err
    assert mod.main([str(tmp_path), "--slices", "0"]) == 2
    assert "--slices 0 is not allowed" in capsys.readouterr().err
    assert mod.main([str(tmp_path), "--ensemble-seeds", "0"]) == 2
    assert "--ensemble-seeds 0 is not allowed" in capsys.readouterr().err
