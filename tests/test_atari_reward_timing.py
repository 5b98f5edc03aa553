"""scripts/atari_reward_timing.py: where the points of held-out clips fall, and grouping by it."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from rlhf_control.types import Segment

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "atari_reward_timing.py"
_spec = importlib.util.spec_from_file_location("atari_reward_timing", SCRIPT)
art = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = art
_spec.loader.exec_module(art)


def clip(episode, start, points):
    """A 5-step clip of ``episode`` from ``start`` whose rewards are ``points`` ({step: value})."""
    r = np.zeros(5)
    for k, v in points.items():
        r[k] = v
    return Segment(np.zeros((5, 2), np.float32), np.zeros(5, np.int64), true_rewards=r, episode_id=episode,
                   start_step=start)


def test_point_timing_reads_the_neighbouring_clips():
    a, b, c = clip(0, 0, {3: -1}), clip(0, 5, {}), clip(0, 10, {1: 1})
    lone = clip(1, 0, {})
    rows = art.point_timing([a, b, c, lone], [a, b, c, lone])
    assert rows[0] == {"ret": -1.0, "at": 3, "since": None, "until": 10**6, "next_sign": 0.0}
    # b: the point of a fell at a's step 3, i.e. 2 steps before b starts; c's at its step 1, 2 steps after b ends
    assert rows[1] == {"ret": 0.0, "at": None, "since": 2, "until": 2, "next_sign": 1.0}
    assert rows[2]["at"] == 1 and rows[2]["since"] == 10**6 and rows[2]["until"] is None
    assert rows[3] == {"ret": 0.0, "at": None, "since": None, "until": None, "next_sign": None}


def test_grouped_means_by_range():
    rows = [{"at": 0}, {"at": 2}, {"at": 5}, {"at": None}, {"at": 30}]
    pred = np.array([1.0, 3.0, 10.0, 100.0, 7.0])
    got = art.grouped(rows, pred, "at", ((0, 2), (3, 6), (7, None)))
    assert [g[:3] for g in got] == [(0, 2, 2), (3, 6, 1), (7, None, 1)]
    assert [g[3] for g in got] == pytest.approx([2.0, 10.0, 7.0])
    only_late = art.grouped(rows, pred, "at", ((0, 2),), lambda r: r["at"] is not None and r["at"] > 0)
    assert only_late[0][2:4] == (1, 3.0)
    assert np.isnan(art.grouped(rows, pred, "at", ((8, 9),))[0][3])
