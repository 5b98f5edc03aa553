"""The learned reward in an off-policy agent's replay buffer (SB3's SAC), after PEBBLE (Lee et al. 2021).

- :func:`relabel_replay`: every stored transition's reward recomputed with the current ensemble, in
  large chunks through the members' batched forward pass (:func:`batch_rewards`).
  New transitions get the current reward as they are stored (``LearnedReward``, one vector step at a
  time), so after a relabelling the whole buffer holds one reward function's values.
- :class:`StateEntropy` and :class:`SampleRewards`: PEBBLE's unsupervised pre-training reward, the
  particle-based state entropy of the sampled states among the buffer's states (the distance to the
  k-th nearest neighbour, divided by a running standard deviation), put into each sampled batch in
  place of the stored reward while the hook is on.
- :class:`HybridReplay`: QPA's hybrid experience replay (Hu et al. 2024), an option: a share of each
  sampled batch comes from the newest transitions, where the policy and the latest queries are.
- :func:`save_replay` / :func:`load_replay`: the buffer's filled part as an ``.npz`` (no pickle), so a
  resumed run continues with the transitions it had at its checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.running_mean_std import RunningMeanStd

REPLAY_FILE = "replay.npz"  # in a checkpoint of an off-policy run
RELABEL_CHUNK = 32_768  # transitions encoded per call (the members then run in cache-sized pieces, ensemble.py)
_ARRAYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


@dataclass(frozen=True)
class RelabelCost:
    """One relabelling: how many transitions, and how long it took (wall seconds)."""

    transitions: int
    seconds: float


def filled(buf: Any) -> int:
    """Rows of ``buf`` (SB3 ReplayBuffer: ``(buffer_size, n_envs, ...)``) that hold transitions."""
    return buf.buffer_size if buf.full else buf.pos


def batch_rewards(ensemble: Any, obs: np.ndarray, acts: np.ndarray, chunk: int = RELABEL_CHUNK) -> np.ndarray:
    """The ensemble's RL reward ``(N,)`` float32 of ``obs (N, *obs_shape)`` and ``acts (N, *act_shape)``
    (what ``ensemble.reward`` gives), in chunks of ``chunk`` rows through the members' batched torch
    forward pass. For batches this large that is the fast path: 1M HalfCheetah-sized transitions took
    about 1.2 s on one core (before the cache-sized pieces), against 4.7 s through :class:`~rlhf_control.reward.fast_mlp.FastMLP`'s
    broadcast NumPy matmuls (which win on one vector step, where torch's per-call overhead dominates)."""
    out = np.empty(len(obs), dtype=np.float32)
    ensemble.members.eval()
    with torch.no_grad():
        for a in range(0, len(obs), chunk):
            x = ensemble.encode(obs[a:a + chunk], acts[a:a + chunk])
            r = ensemble.normalize_t(ensemble.raw_member_outputs_t(x)).mean(dim=0)
            out[a:a + len(r)] = r.cpu().numpy()
    return out


def relabel_replay(agent: Any, ensemble: Any, obs_fn: Callable[[np.ndarray], np.ndarray] | None = None,
                   chunk: int = RELABEL_CHUNK, next_obs: bool = False) -> RelabelCost:
    """Recompute the reward of every transition in ``agent.replay_buffer`` with ``ensemble``.

    The buffer holds actions scaled to [-1, 1]; the reward model saw the env's actions, so they are
    unscaled first (``policy.unscale_action``), and observations go through ``obs_fn`` as in
    ``LearnedReward`` (``next_obs``: the observations the actions led to, as ``LearnedReward(next_obs=True)``).
    """
    t0 = time.perf_counter()
    buf = agent.replay_buffer
    n = filled(buf)
    if n == 0:
        return RelabelCost(0, 0.0)
    rows = n * buf.n_envs
    obs = (buf.next_observations if next_obs else buf.observations)[:n].reshape(rows, *buf.obs_shape)
    acts = buf.actions[:n].reshape(rows, buf.action_dim)
    out = np.empty(rows, dtype=np.float32)
    for a in range(0, rows, chunk):
        o = obs[a:a + chunk]
        o = o if obs_fn is None else obs_fn(o)
        u = agent.policy.unscale_action(acts[a:a + chunk]).reshape(len(o), *ensemble.act_shape)
        out[a:a + len(o)] = batch_rewards(ensemble, o, u, chunk)
    buf.rewards[:n] = out.reshape(n, buf.n_envs)
    return RelabelCost(rows, time.perf_counter() - t0)


class StateEntropy:
    """PEBBLE's intrinsic reward of sampled states ``obs (B, *obs_shape)`` (a torch tensor, as the agent
    sees them): the Euclidean distance to the k-th nearest of the buffer's states (the state itself,
    at distance 0, not counted), divided by the running standard deviation of these distances."""

    def __init__(self, buf: Any, k: int = 5, chunk: int = 10_000) -> None:
        if k < 1:
            raise ValueError(f"k={k} is not allowed; use an integer >= 1")
        self.buf, self.k, self.chunk = buf, int(k), int(chunk)
        self.stats = RunningMeanStd(shape=())

    def knn_distance(self, obs: torch.Tensor, env: Any = None) -> torch.Tensor:
        """``(B,)`` distance of each state to its k-th nearest buffer state (k+1-th counting itself)."""
        buf = self.buf
        n = filled(buf)
        q = obs.reshape(len(obs), -1).float()
        best = torch.full((len(q), 0), float("inf"), device=q.device)
        for a in range(0, n, max(1, self.chunk // buf.n_envs)):
            ref = buf.observations[a:min(n, a + self.chunk // buf.n_envs)]
            ref = buf._normalize_obs(ref.reshape(-1, *buf.obs_shape), env)  # as the sampled obs are
            d = torch.cdist(q, torch.as_tensor(ref, device=q.device).reshape(len(ref), -1).float())
            best = torch.cat([best, d], dim=1).topk(min(self.k + 1, best.shape[1] + d.shape[1]), dim=1,
                                                    largest=False).values
        return best[:, -1]

    def __call__(self, obs: torch.Tensor, env: Any = None) -> torch.Tensor:
        dist = self.knn_distance(obs, env)
        self.stats.update(dist.detach().cpu().numpy().astype(np.float64))
        return (dist / float(np.sqrt(self.stats.var) + 1e-8)).reshape(-1, 1)


class HybridReplay:
    """Makes ``agent.replay_buffer.sample`` draw ``round(share * batch_size)`` of each batch uniformly
    from the newest ``window`` transitions (per env) and the rest uniformly from the whole buffer, as
    SB3 does; ``share`` 0 leaves sampling as it was. Install before :class:`SampleRewards`."""

    def __init__(self, agent: Any, share: float, window: int) -> None:
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share={share} is not allowed; use a fraction in [0, 1]")
        if window < 1:
            raise ValueError(f"window={window} is not allowed; use an integer >= 1")
        buf = agent.replay_buffer
        if getattr(buf, "optimize_memory_usage", False):
            raise ValueError("hybrid replay needs a buffer without optimize_memory_usage")
        self.share, self.window = float(share), int(window)
        original = buf.sample

        def sample(batch_size: int, env: Any = None) -> Any:
            n = filled(buf)
            recent = int(round(self.share * batch_size))
            if recent == 0 or n == 0:
                return original(batch_size, env=env)
            span = min(n, max(1, self.window // buf.n_envs))
            newest = (buf.pos - 1 - np.random.randint(0, span, size=recent)) % buf.buffer_size
            anywhere = np.random.randint(0, n, size=batch_size - recent)
            return buf._get_samples(np.concatenate([newest, anywhere]), env=env)

        buf.sample = sample


class SampleRewards:
    """Replaces the rewards of the batches ``agent.replay_buffer.sample`` returns by ``fn(obs, env)``
    while :attr:`fn` is set (None: the stored rewards, untouched). Install once per buffer."""

    def __init__(self, agent: Any) -> None:
        buf = agent.replay_buffer
        self.fn: Callable[[torch.Tensor, Any], torch.Tensor] | None = None
        original = buf.sample

        def sample(batch_size: int, env: Any = None) -> Any:
            batch = original(batch_size, env=env)
            if self.fn is None:
                return batch
            return batch._replace(rewards=self.fn(batch.observations, env).to(batch.rewards.dtype))

        buf.sample = sample


def save_replay(agent: Any, path: Path) -> None:
    """The filled part of the agent's replay buffer, with its position, as an uncompressed npz."""
    buf = agent.replay_buffer
    n = filled(buf)
    arrays = {name: getattr(buf, name)[:n] for name in _ARRAYS if getattr(buf, name, None) is not None}
    with open(path, "wb") as f:
        np.savez(f, pos=np.array(buf.pos), full=np.array(buf.full), **arrays)


def load_replay(agent: Any, path: Path) -> int:
    """Fill the agent's (new, empty) replay buffer from :func:`save_replay`'s file; the transitions loaded."""
    buf = agent.replay_buffer
    with np.load(path, allow_pickle=False) as data:
        n = len(data["rewards"])
        if n > buf.buffer_size or data["observations"].shape[1:] != buf.observations.shape[1:]:
            raise ValueError(f"saved replay buffer of shape {data['observations'].shape} does not fit this "
                             f"agent's {buf.observations.shape}")
        for name in _ARRAYS:
            if name in data.files and getattr(buf, name, None) is not None:
                getattr(buf, name)[:n] = data[name]
        buf.pos, buf.full = int(data["pos"]), bool(data["full"])
    return n
