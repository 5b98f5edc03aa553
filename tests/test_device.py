"""The CUDA path, as far as a machine without a GPU can check it: ``--device auto``, pixels that move
as uint8 and become float on the device, and the reward worker on the run's device.

The last test runs only where CUDA is available (it is skipped here): the fast CNN path trained on
the GPU against the same step on the CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlhf_control.config import RunConfig, resolve_device
from rlhf_control.errors import UserError
from rlhf_control.reward import EnsembleConfig, RewardEnsemble, fast_cnn
from rlhf_control.types import StackedFrames


def test_auto_picks_cuda_only_where_it_exists_and_cuda_is_refused_without_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    for name in ("cuda", "cuda:1"):
        with pytest.raises(UserError, match=f"device '{name}' is not available on this machine"):
            resolve_device(name)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda" and resolve_device("cuda:1") == "cuda:1"


def test_cuda_on_a_machine_without_it_is_one_line_at_the_cli(capsys, monkeypatch):
    from rlhf_control import cli

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.main(["train", "--device", "cuda", "--no-progress", "--run-dir", "/nonexistent/never-made"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not available" in err and "cuda" in err


def test_pixels_move_as_uint8_and_become_float_on_the_ensembles_device(monkeypatch):
    ens = RewardEnsemble(EnsembleConfig.atari(n_members=2, cnn_filters=4, cnn_fc=8), (84, 84, 4), (), n_actions=6)
    rng = np.random.default_rng(0)
    obs = StackedFrames(rng.integers(0, 256, (8, 84, 84), dtype=np.uint8), 4)
    x = ens.encode(np.asarray(obs), np.zeros(5, dtype=np.int64))
    assert x.dtype == torch.uint8 and x.device == ens.device  # a quarter of float32's bytes to move
    seen = []
    real = fast_cnn.pixels_to_float

    def spy(t: torch.Tensor) -> torch.Tensor:
        seen.append((t.dtype, t.device))
        return real(t)

    monkeypatch.setattr(fast_cnn, "pixels_to_float", spy)
    ens.members.train()
    ens.member_forward_t(0, x).sum().backward()  # training: uint8 kept for backward, made float twice
    ens.members.eval()
    with torch.no_grad():
        ens.raw_member_outputs_t(x)  # evaluation: made float once for both members
    assert seen == [(torch.uint8, ens.device)] * 3


def test_the_reward_worker_gets_the_runs_device(tmp_path, monkeypatch):
    from rlhf_control.loop.build import build_run

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = RunConfig(task="Pendulum-v1", device="auto", steps=256, labels=4, n_envs=1)
    parts = build_run(cfg, tmp_path / "run")
    try:
        assert parts.device == "cpu" == str(parts.ensemble.device)
        assert parts.updater.worker_args["device"] == parts.device
        assert parts.agent.device.type == "cpu"
    finally:
        parts.agent_env.close()
        parts.store.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_fast_path_trains_as_on_the_cpu():
    from rlhf_control.reward.training import preference_loss

    rng = np.random.default_rng(0)
    obs = torch.as_tensor(rng.integers(0, 256, (40, 84, 84, 4), dtype=np.uint8))
    results = []
    for device in ("cpu", "cuda"):
        ens = RewardEnsemble(EnsembleConfig.atari(n_members=1, dropout=0.0), (84, 84, 4), (), n_actions=6,
                             device=device)
        ens.members.train()
        sums = ens.member_forward_t(0, obs.to(device)).view(4, 2, 5).sum(2)
        loss = preference_loss(sums[:, 0], sums[:, 1], torch.full((4,), 0.5, device=device)).mean()
        loss.backward()
        results.append((float(loss), ens.members[0].conv[0].weight.grad.cpu()))
    assert abs(results[0][0] - results[1][0]) < 1e-3 * abs(results[0][0])
    # Float32 on both (the ensemble turns cuDNN's TF32 off: with it, an H200 missed this bound, 1.3%
    # of the largest value); cuDNN's algorithms still sum in another order than the CPU's.
    assert torch.allclose(results[0][1], results[1][1], rtol=1e-2, atol=1e-2 * float(results[0][1].abs().max()))


def test_bench_atari_refuses_cuda_without_it_in_one_line():
    """The GPU benchmark's --device is checked before any run starts (scripts/gpu_check.sh uses it)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(root / "scripts" / "bench_atari.py"), "--device", "cuda",
                           "--frames", "8", "--out", "/nonexistent/never-made"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "'cuda' is not available" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("bench_atari.py: error: device 'cuda'")
    assert not Path("/nonexistent/never-made").exists()
