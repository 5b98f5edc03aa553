"""scripts/reward_from_stores.py: reward variants learned from finished runs' labels, scored across runs."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rlhf_control.store.store import PreferenceStore
from rlhf_control.types import Answer, Segment, SegmentPair

SCRIPT = Path(__file__).parents[1] / "scripts" / "reward_from_stores.py"
W = np.array([1.0, -2.0, 0.5, 0.0])  # the true reward: a linear function of the observation


def _store(path: Path, seed: int, n: int, flip: bool = False) -> Path:
    rng = np.random.default_rng(seed)
    store = PreferenceStore.create(path)

    def seg() -> Segment:
        obs = (rng.normal(size=(6, 4)) + rng.normal(size=4)).astype(np.float32)
        return Segment(obs, rng.uniform(-1, 1, (6, 1)).astype(np.float32), (obs @ W).astype(np.float32))

    for _ in range(n):
        a, b = seg(), seg()
        q = store.add_query(SegmentPair(a, b), step=0)
        value = int(np.sign(a.true_return - b.true_return)) * (-1 if flip else 1)
        store.record_answer(Answer(q.query_id, value, "oracle"))
    store.close()
    return path


def _run(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=300)


def _scores(out: str) -> dict[str, float]:
    rows = [line.split(" | ") for line in out.splitlines() if line.count(" | ") == 3 and not line.startswith("variant")]
    return {r[0]: float(r[1].split(",")[0]) for r in rows}


@pytest.mark.slow
def test_labels_that_follow_the_true_reward_generalise_to_the_other_runs_and_inverted_ones_do_not(tmp_path):
    a, b = _store(tmp_path / "a.sqlite", 0, 60), _store(tmp_path / "b.sqlite", 1, 60)
    res = _run(a, b, "--variants", "base", "crop5", "--round", "20", "--epochs", "5")
    assert res.returncode == 0, res.stderr
    good = _scores(res.stdout)
    assert set(good) == {"base", "crop5"} and min(good.values()) > 0.8, res.stdout
    bad = _scores(_run(_store(tmp_path / "c.sqlite", 2, 60, flip=True), b, "--variants", "base", "--round", "20",
                       "--epochs", "5").stdout)
    # The inverted run learns the opposite order; the other still learns the true one: the mean sits near 0.
    assert bad["base"] < 0.3


def test_one_store_is_refused_in_one_line(tmp_path):
    res = _run(_store(tmp_path / "a.sqlite", 0, 4))
    assert res.returncode != 0 and "1 store given" in res.stderr.strip().splitlines()[-1]
