"""scripts/diag_posture.py: per-episode returns and the share of steps pitched beyond the limit."""

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "diag_posture.py"
_spec = importlib.util.spec_from_file_location("diag_posture", SCRIPT)
mod = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = mod
_spec.loader.exec_module(mod)


def test_each_episode_gets_its_own_return_and_share_pitched():
    obs = np.zeros((30, 3))
    obs[:10, 1] = np.where(np.arange(10) < 4, 2.0, 0.1)  # episode 0: 4 of 10 steps on its back
    obs[10:20, 1] = -3.0  # episode 1: all steps, pitched the other way
    obs[20:, 1] = math.pi / 2  # episode 2: exactly at the limit, which does not count
    obs[:, 2] = 5.0  # another entry far beyond the limit: not read
    rewards = np.concatenate([np.full(10, 1.0), np.full(10, -0.5), np.arange(10.0)])
    got = mod.episode_postures(obs, rewards, horizon=10)
    assert got == [(10.0, 0.4), (-5.0, 1.0), (45.0, 0.0)]
    assert mod.episode_postures(obs, rewards, horizon=10, index=2)[2] == (45.0, 1.0)


def test_a_rollout_that_is_not_whole_episodes_is_refused():
    with pytest.raises(ValueError, match="not whole episodes of 10"):
        mod.episode_postures(np.zeros((25, 2)), np.zeros(25), horizon=10)


def test_a_directory_that_is_not_a_run_is_refused_in_one_line(tmp_path, capsys):
    assert mod.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not a run directory" in err and "\n" not in err
