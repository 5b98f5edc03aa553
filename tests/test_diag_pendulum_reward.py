"""scripts/diag_pendulum_reward.py: the learned reward's shape over Pendulum's states."""

import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).parents[1] / "scripts" / "diag_pendulum_reward.py"
sys.path.insert(0, str(SCRIPT.parent))
from diag_pendulum_reward import main, reward_profile  # noqa: E402


class _Model:
    """A stand-in reward model: ``fn(theta, thetadot)`` read back from (cos, sin, thetadot)."""

    def __init__(self, fn):
        self.fn = fn

    def reward(self, obs, acts):
        theta = np.arctan2(obs[:, 1], obs[:, 0])
        return self.fn(theta, obs[:, 2])


def test_the_true_reward_matches_itself_and_a_smooth_one_is_flat_at_the_bottom():
    exact = reward_profile(_Model(lambda th, td: -(th**2 + 0.1 * td**2)))
    assert exact["spearman"] == pytest.approx({"all": 1.0, "lower": 1.0, "upper": 1.0}, abs=1e-4)  # (float32 obs)
    learned, true = exact["bottom_share"]
    assert learned == pytest.approx(true, abs=1e-5)
    assert true == pytest.approx(1 - (np.pi - 0.6) ** 2 / np.pi**2, abs=0.02)  # (the grid rounds the 0.6 rad)
    theta, lr, tr = exact["at_rest"]
    assert theta[0] == pytest.approx(-np.pi) and theta[-1] == pytest.approx(np.pi) and np.allclose(lr, tr)

    # 2 cos(theta) - 2 is -theta^2 near the top, without the cusp at the bottom.
    smooth = reward_profile(_Model(lambda th, td: 2 * np.cos(th) - 0.1 * td**2))
    assert smooth["bottom_share"][0] < 0.5 * smooth["bottom_share"][1]
    assert smooth["spearman"]["upper"] > 0.95 > smooth["spearman"]["lower"]


def test_bad_bottom_is_refused(capsys):
    assert main(["nowhere", "--bottom", "4"]) == 2
    assert "--bottom 4.0 must be between 0 and pi" in capsys.readouterr().err
