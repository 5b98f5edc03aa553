"""scripts/diag_queries.py: what a run's queries showed, slice by slice, read from its store."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rlhf_control.store.store import PreferenceStore
from rlhf_control.types import Answer, Segment, SegmentPair

SCRIPT = Path(__file__).parents[1] / "scripts" / "diag_queries.py"
sys.path.insert(0, str(SCRIPT.parent))
from diag_queries import query_slices  # noqa: E402


def _seg(rewards: list[float], agent_step: int) -> Segment:
    t = len(rewards)
    return Segment(np.zeros((t, 2), np.float32), np.zeros((t, 1), np.float32), np.asarray(rewards, np.float32),
                   agent_step=agent_step)


def _store(path: Path) -> Path:
    """Two pretraining labels on random-policy clips, then two online ones asked at step 1,000 with clips
    recorded at steps 900 and 700; the second online pair compares two fallen bodies (reward -1)."""
    store = PreferenceStore.create(path)
    pairs = [
        (_seg([1, 1, 1, 1], -1), _seg([-1, -1, 0, 0], -1), 0, 1),     # returns 4 and -2; half of the second down
        (_seg([0, 0, 0, 0], -1), _seg([2, 2, 2, 2], -1), 0, -1),      # 0 and 8
        (_seg([3, 3, 3, 3], 900), _seg([2, 2, 3, 3], 700), 1000, 1),  # 12 and 10
        (_seg([-1, -1, -1, -1], 900), _seg([-1, -1, -1, -1], 700), 1000, 0),  # -4 and -4, a tie
    ]
    for a, b, step, value in pairs:
        q = store.add_query(SegmentPair(a, b), step=step)
        store.record_answer(Answer(q.query_id, value, "oracle"))
    skipped = store.add_query(SegmentPair(_seg([9] * 4, 950), _seg([9] * 4, 950)), step=1000)
    store.record_answer(Answer(skipped.query_id, None, "oracle"))  # a skip is not a label: not counted
    store.close()
    return path


def test_each_slice_reports_the_age_returns_falls_ties_and_gaps_of_its_labels(tmp_path):
    pre, online = query_slices(_store(tmp_path / "p.sqlite"), slices=2)
    assert pre["labels"] == online["labels"] == 2
    assert pre["pretrain"] == 1.0 and np.isnan(pre["age_median"]) and (pre["step_min"], pre["step_max"]) == (0, 0)
    assert pre["return_mean"] == pytest.approx((4 - 2 + 0 + 8) / 4)
    assert pre["down"] == pytest.approx(0.5 / 4) and pre["both_down"] == 0.0 and pre["ties"] == 0.0
    assert pre["gap_median"] == pytest.approx(7.0)  # gaps 6 and 8
    assert online["pretrain"] == 0.0 and online["age_median"] == pytest.approx(200.0)  # ages 100, 100, 300, 300
    assert online["down"] == pytest.approx(0.5) and online["both_down"] == 0.5 and online["ties"] == 0.5
    assert online["gap_median"] == pytest.approx(1.0)  # gaps 2 and 0


def test_the_script_prints_a_row_per_slice_and_refuses_bad_input_in_one_line(tmp_path):
    path = _store(tmp_path / "p.sqlite")
    res = subprocess.run([sys.executable, str(SCRIPT), str(path), "--slices", "2"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("4 labels in 2 slices") and len(res.stdout.strip().splitlines()) == 4
    for args, said in (([str(path), "--slices", "0"], "--slices 0"), ([str(tmp_path / "none")], "neither a run")):
        bad = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)
        assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and said in bad.stderr
