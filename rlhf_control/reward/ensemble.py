"""An ensemble of reward predictors, each normalised on its own; the RL reward is their mean.

Raw member outputs are on the Bradley-Terry scale the trainer fits (selectors compare those);
the RL reward uses each member's output normalised to mean 0 and std ``target_std`` over recent
segments (paper: 1 for MuJoCo, 0.05 for Atari), averaged over members.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from rlhf_control.errors import UserError
from rlhf_control.reward.fast_cnn import ensemble_forward, float32_convolutions, member_forward
from rlhf_control.reward.fast_mlp import FastMLP
from rlhf_control.reward.nets import CNNReward, MLPReward, _check_dropout, _check_sizes
from rlhf_control.reward.pixels import encode_segments
from rlhf_control.rundir import atomic_path
from rlhf_control.types import Segment

NETS = ("mlp", "cnn")
# Largest float input encoded at once for a no-grad pass (an MLP then runs it in MLP_PIECE_BYTES pieces);
# bounds the memory of scoring many image segments at once (84x84x4 floats are 113 KB per step).
EVAL_CHUNK_BYTES = 64 * 2**20
# A no-grad MLP pass on a CPU goes in pieces whose widest activation fits about one core's L2 cache:
# 35,000 rows through 64-wide members ran 3x slower in one pass than in 4,096-row pieces (same outputs).
MLP_PIECE_BYTES = 2**20
FAST_MAX_STEPS = 64  # batches up to this size (one vector step of the agent) take the NumPy path
_FORMAT = "rlhf_control.RewardEnsemble/1"

Encoded = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
"""What :meth:`RewardEnsemble.encode` returns: one tensor, or ``(obs_u8, acts)`` for a CNN with actions."""


@dataclass(frozen=True)
class EnsembleConfig:
    """Reward ensemble settings. ``hidden`` is used by the MLP; ``cnn_*``, ``batch_norm`` by the CNN.

    ``use_actions``: feed actions to the predictor (MLP: concatenated with obs; CNN: at the FC layer).
    ``target_std``: std of each member's normalised reward (paper: 1 MuJoCo, 0.05 Atari).
    ``input_norm``: the MLP standardises each observation feature with statistics fixed once by
    :meth:`RewardEnsemble.set_input_stats` (identity until then). Not in the paper: without it the
    features that carry the reward can be drowned by large ones (Reacher's fingertip offset has std
    0.15 beside joint velocities of std 9; 300 random-policy labels gave a Spearman rank correlation
    of 0.4 with the true return without it, 0.83 with it). The CNN ignores it (batch norm instead).
    """

    n_members: int = 3
    net: str = "mlp"
    hidden: tuple[int, ...] = (64, 64)
    cnn_filters: int = 16
    cnn_fc: int = 64
    dropout: float = 0.0
    batch_norm: bool = False
    use_actions: bool = True
    target_std: float = 1.0
    cnn_kernels: tuple[int, ...] = (7, 5, 3, 3)
    cnn_strides: tuple[int, ...] = (3, 2, 1, 1)
    slope: float = 0.01
    input_norm: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.n_members, bool) or int(self.n_members) != self.n_members or self.n_members < 1:
            raise UserError(f"n_members={self.n_members!r} is not allowed; use an int >= 1")
        if self.net not in NETS:
            raise UserError(f"net={self.net!r} is not allowed; use one of {', '.join(NETS)}")
        for name in ("hidden", "cnn_kernels", "cnn_strides"):
            object.__setattr__(self, name, _check_sizes(name, getattr(self, name)))
        _check_sizes("cnn_filters", (self.cnn_filters,))
        _check_sizes("cnn_fc", (self.cnn_fc,))
        _check_dropout(self.dropout)
        if not (math.isfinite(self.target_std) and self.target_std > 0):
            raise UserError(f"target_std={self.target_std!r} is not allowed; use a number > 0")
        if self.batch_norm and self.net != "cnn":
            raise UserError(f"batch_norm=True is not allowed with net={self.net!r}; only net='cnn' has batch norm")

    @classmethod
    def mujoco(cls, **overrides: Any) -> EnsembleConfig:
        """Paper's MuJoCo predictor: MLP 64-64 on (obs, act), std 1."""
        return replace(cls(), **overrides)

    @classmethod
    def atari(cls, **overrides: Any) -> EnsembleConfig:
        """Paper's Atari predictor: CNN on observations only, batch norm, dropout 0.5, std 0.05."""
        base = cls(net="cnn", dropout=0.5, batch_norm=True, use_actions=False, target_std=0.05)
        return replace(base, **overrides)


def _shape(value: Any, name: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in value)
    except TypeError:
        raise UserError(f"{name}={value!r} is not allowed; use a tuple of ints") from None
    if any(s < 1 for s in shape):
        raise UserError(f"{name}={shape} is not allowed; sizes must be >= 1")
    return shape


class RewardEnsemble:
    """K reward predictors with per-member normalisation; works on cpu or cuda.

    ``members: nn.ModuleList`` of :class:`MLPReward` or :class:`CNNReward`. Discrete actions
    (``n_actions`` given, ``act_shape == ()``) are ints ``(N,)`` one-hot encoded to ``n_actions``.
    """

    def __init__(self, config: EnsembleConfig, obs_shape: Sequence[int], act_shape: Sequence[int],
                 n_actions: int | None = None, device: str | torch.device = "cpu", seed: int = 0) -> None:
        self.config = config
        self.obs_shape = _shape(obs_shape, "obs_shape")
        self.act_shape = _shape(act_shape, "act_shape")
        if n_actions is not None:
            if isinstance(n_actions, bool) or int(n_actions) != n_actions or n_actions < 1:
                raise ValueError(f"n_actions={n_actions!r} is not allowed; use an int >= 1 or None")
            if self.act_shape != ():
                raise ValueError(f"act_shape={self.act_shape} is not allowed with n_actions; discrete acts are ()")
            n_actions = int(n_actions)
        self.n_actions = n_actions
        self.seed = int(seed)
        self.device = torch.device(device)
        self.act_dim = (n_actions or math.prod(self.act_shape)) if config.use_actions else 0
        if config.net == "cnn" and len(self.obs_shape) != 3:
            raise ValueError(f"obs_shape={self.obs_shape} is not allowed for net='cnn'; use (H, W, C)")
        # Build on a forked CPU generator so the seed fixes the weights without touching global RNG.
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(self.seed)
            self.members = nn.ModuleList([self._make_net() for _ in range(config.n_members)])
        self.members.to(self.device).eval()
        float32_convolutions(self.device)
        k = config.n_members
        self.norm_mean = torch.zeros(k, dtype=torch.float64, device=self.device)
        self.norm_std = torch.ones(k, dtype=torch.float64, device=self.device)
        # Observation standardisation of the MLP's input (identity until set_input_stats).
        self.in_mean: np.ndarray | None = None
        self.in_inv_std: np.ndarray | None = None
        self._fast: FastMLP | None = None  # what reward() runs small batches on; see weights_changed()
        self.fast_cnn = True  # the CNN's faster path (reward/fast_cnn.py); False: its plain forward

    def weights_changed(self) -> None:
        """Drop the NumPy copy of the weights that :meth:`reward` uses for small batches. This class's
        methods call it; code that changes ``members``' parameters itself (an optimiser step) must too."""
        self._fast = None

    @property
    def uses_input_norm(self) -> bool:
        """Whether observations are standardised (an MLP with ``config.input_norm``)."""
        return self.config.net == "mlp" and self.config.input_norm

    @property
    def input_stats_set(self) -> bool:
        return self.in_mean is not None

    def set_input_stats(self, obs: Any) -> None:
        """Fix the MLP's per-feature observation mean and std from ``obs (N, *obs_shape)``, once,
        before training (changing them later would change what the trained weights mean). A
        constant feature keeps scale 1. No effect unless ``config.input_norm`` and the net is an MLP."""
        if not self.uses_input_norm:
            return
        self.weights_changed()
        obs = np.asarray(obs, dtype=np.float64)
        if obs.ndim < 1 or len(obs) < 2 or tuple(obs.shape[1:]) != self.obs_shape:
            raise ValueError(f"input statistics need obs of shape (N >= 2, *{self.obs_shape}), got {obs.shape}")
        flat = obs.reshape(len(obs), -1)
        if not np.all(np.isfinite(flat)):
            raise ValueError("input statistics got non-finite observations")
        std = flat.std(axis=0)
        self.in_mean = flat.mean(axis=0).astype(np.float32)
        self.in_inv_std = np.where(std > 1e-6, 1.0 / np.maximum(std, 1e-6), 1.0).astype(np.float32)

    def _standardise(self, flat_obs: np.ndarray) -> np.ndarray:
        x = flat_obs.astype(np.float32, copy=False)
        return x if self.in_mean is None else (x - self.in_mean) * self.in_inv_std

    def _make_net(self) -> nn.Module:
        c = self.config
        if c.net == "mlp":
            return MLPReward(math.prod(self.obs_shape), self.act_dim, c.hidden, c.slope, c.dropout)
        return CNNReward(self.obs_shape, self.act_dim, c.cnn_filters, c.cnn_kernels, c.cnn_strides, c.cnn_fc,
                         c.dropout, c.batch_norm, c.slope)

    @property
    def n_members(self) -> int:
        return len(self.members)

    # ---- torch side (used by the trainer) ----

    def step_bytes(self) -> int:
        """Bytes of float input per step, for sizing batches."""
        return 4 * (math.prod(self.obs_shape) + self.act_dim)

    def _check_inputs(self, obs: Any, acts: Any) -> tuple[np.ndarray, np.ndarray]:
        obs, acts = np.asarray(obs), np.asarray(acts)
        n = obs.shape[0] if obs.ndim else -1
        if obs.ndim and acts.ndim and len(obs) != len(acts):
            raise ValueError(f"obs has {len(obs)} steps but acts has {len(acts)}; they must match")
        if obs.ndim == 0 or tuple(obs.shape[1:]) != self.obs_shape:
            raise ValueError(f"obs shape {obs.shape} is not allowed; expected (N, *{self.obs_shape})")
        if acts.shape != (n, *self.act_shape):
            raise ValueError(f"acts shape {acts.shape} is not allowed; expected ({n}, *{self.act_shape})")
        return obs, acts

    def encode(self, obs: Any, acts: Any) -> Encoded:
        """``obs: (N, *obs_shape)``, ``acts: (N, *act_shape)`` -> network input on ``self.device``.

        MLP: float ``(N, obs_dim + act_dim)``. CNN: ``(N, H, W, C)`` (uint8 kept as uint8), or
        ``(obs, acts_float)`` when actions are used.
        """
        obs, acts = self._check_inputs(obs, acts)
        a = torch.as_tensor(self._encode_acts(acts)).to(self.device) if self.act_dim else None
        if self.config.net == "mlp":
            x = torch.as_tensor(self._standardise(obs.reshape(len(obs), -1))).to(self.device)
            return x if a is None else torch.cat([x, a], dim=1)
        o = torch.as_tensor(obs if obs.dtype == np.uint8 else obs.astype(np.float32)).to(self.device)
        return o if a is None else (o, a)

    def _encode_acts(self, acts: np.ndarray) -> np.ndarray:
        """``acts (N, *act_shape)`` -> float32 ``(N, act_dim)``: flattened, or one-hot when discrete."""
        if self.n_actions is None:
            return acts.reshape(len(acts), -1).astype(np.float32, copy=False)
        if not np.issubdtype(acts.dtype, np.integer):
            if not np.all(np.mod(acts, 1) == 0):
                raise ValueError(f"discrete acts must be integers in [0, {self.n_actions}), got dtype {acts.dtype}")
            acts = acts.astype(np.int64)
        if len(acts) and (acts.min() < 0 or acts.max() >= self.n_actions):
            raise ValueError(f"discrete action {acts.min()}..{acts.max()} out of range; allowed 0..{self.n_actions - 1}")
        return np.eye(self.n_actions, dtype=np.float32)[acts]

    def member_forward_t(self, k: int, x: Encoded) -> torch.Tensor:
        """Raw output ``(N,)`` of member ``k`` on encoded input (grad and train/eval mode as set)."""
        net = member_forward if self.fast_cnn and self.config.net == "cnn" else self.members[k]
        args = (self.members[k],) if net is member_forward else ()
        return net(*args, *x) if isinstance(x, tuple) else net(*args, x)

    def raw_member_outputs_t(self, x: Encoded) -> torch.Tensor:
        """Raw outputs ``(K, N)`` of all members on encoded input (a CNN's pixels made float once;
        without grad, an MLP's rows in pieces of :data:`MLP_PIECE_BYTES`)."""
        if self.fast_cnn and self.config.net == "cnn":
            return ensemble_forward(self.members, *x) if isinstance(x, tuple) else ensemble_forward(self.members, x)
        rows = max(256, MLP_PIECE_BYTES // (4 * max(self.config.hidden)))
        if self.config.net == "mlp" and len(x) > rows and self.device.type == "cpu" and not torch.is_grad_enabled():
            return torch.cat([self.raw_member_outputs_t(x[a:a + rows]) for a in range(0, len(x), rows)], dim=1)
        return torch.stack([self.member_forward_t(k, x) for k in range(self.n_members)])

    def normalize_t(self, raw: torch.Tensor) -> torch.Tensor:
        """Per-member normalisation of raw outputs ``(K, N)`` -> ``(K, N)``."""
        scale = (self.config.target_std / self.norm_std).to(raw.dtype)
        return (raw - self.norm_mean.to(raw.dtype)[:, None]) * scale[:, None]

    # ---- numpy side ----

    @torch.no_grad()
    def _raw_outputs(self, obs: np.ndarray, acts: np.ndarray) -> torch.Tensor:
        """``(K, N)`` float32 raw outputs in eval mode, in memory-bounded chunks."""
        self.members.eval()
        obs, acts = np.asarray(obs), np.asarray(acts)
        if len(obs) != len(acts):
            raise ValueError(f"obs has {len(obs)} steps but acts has {len(acts)}; they must match")
        step = max(1, EVAL_CHUNK_BYTES // self.step_bytes())
        outs = [self.raw_member_outputs_t(self.encode(obs[a:a + step], acts[a:a + step]))
                for a in range(0, len(obs), step)]
        if not outs:
            return torch.zeros(self.n_members, 0, device=self.device)
        return torch.cat(outs, dim=1)

    def member_rewards(self, obs: Any, acts: Any, normalized: bool = False) -> np.ndarray:
        """``obs: (N, *obs_shape)``, ``acts: (N, *act_shape)`` -> ``(K, N)`` float32 per-member reward."""
        raw = self._raw_outputs(obs, acts)
        out = self.normalize_t(raw) if normalized else raw
        return out.cpu().numpy().astype(np.float32, copy=False)

    def reward(self, obs: Any, acts: Any) -> np.ndarray:
        """RL reward ``(N,)`` float32: mean over members of the normalised member rewards (no grad).

        For a batch of up to ``FAST_MAX_STEPS`` steps (one vector step of the agent) the MLP on the
        CPU runs as a :class:`FastMLP` (tens of microseconds; rebuilt after :meth:`weights_changed`),
        since torch's per-call overhead costs more than the arithmetic there. Larger batches (a whole
        rollout) go through torch, which is faster for them and keeps to ``torch.set_num_threads``:
        NumPy's BLAS would start a thread per core and leave it spinning after the call, on the core
        the reward worker trains on.
        """
        if len(obs) > FAST_MAX_STEPS or self.config.net != "mlp" or self.device.type != "cpu":
            return self.member_rewards(obs, acts, normalized=True).mean(axis=0)
        obs, acts = self._check_inputs(obs, acts)
        x = self._standardise(obs.reshape(len(obs), -1))  # the MLP input that encode() gives, in NumPy
        if self.act_dim:
            x = np.concatenate([x, self._encode_acts(acts)], axis=1)
        if self._fast is None:
            self._fast = FastMLP.from_members(self.members, self.norm_mean, self.norm_std, self.config.target_std)
        return self._fast.reward(x)

    def member_segment_returns(self, segments: Sequence[Segment], normalized: bool = False) -> np.ndarray:
        """``(K, len(segments))`` float64: per-member sum of reward over each segment's steps."""
        if len(segments) == 0:
            return np.zeros((self.n_members, 0))
        per_step = self._segment_step_outputs(segments)
        if normalized:
            per_step = self.normalize_t(per_step)
        per_step = per_step.double().cpu().numpy()
        starts = np.cumsum([0] + [s.length for s in segments[:-1]])
        return np.add.reduceat(per_step, starts, axis=1)

    @torch.no_grad()
    def _segment_step_outputs(self, segments: Sequence[Segment]) -> torch.Tensor:
        """Raw outputs ``(K, sum T)`` in eval mode; segments are encoded a few at a time to bound memory."""
        self.members.eval()
        max_steps = max(1, EVAL_CHUNK_BYTES // self.step_bytes())
        outs, group, steps = [], [], 0
        for seg in [*segments, None]:
            if group and (seg is None or steps + seg.length > max_steps):
                outs.append(self.raw_member_outputs_t(encode_segments(self, group)))
                group, steps = [], 0
            if seg is not None:
                group.append(seg)
                steps += seg.length
        return torch.cat(outs, dim=1)

    def update_normalization(self, segments: Sequence[Segment], centre: Sequence[Segment] | None = None) -> None:
        """Set each member's offset/scale so its normalised output over these segments' steps has
        std ``config.target_std`` and mean 0, or, given ``centre``, mean 0 over those segments' steps."""
        if len(segments) == 0:
            raise ValueError("update_normalization needs at least one segment, got 0")
        raw = self._segment_step_outputs(segments).double()
        std = raw.std(dim=1, correction=0) if raw.shape[1] > 1 else torch.zeros_like(raw[:, 0])
        self.weights_changed()
        self.norm_mean = (self._segment_step_outputs(centre).double() if centre else raw).mean(dim=1)
        # A constant member (e.g. untrained on one step) keeps scale 1 rather than blowing up.
        self.norm_std = torch.where(std > 1e-8, std, torch.ones_like(std))

    # ---- persistence ----

    def to(self, device: str | torch.device) -> RewardEnsemble:
        """Move members and normalisation to ``device`` (in place); returns self."""
        self.weights_changed()
        self.device = torch.device(device)
        self.members.to(self.device)
        float32_convolutions(self.device)
        self.norm_mean, self.norm_std = self.norm_mean.to(self.device), self.norm_std.to(self.device)
        return self

    def blob(self) -> dict[str, Any]:
        """Config, shapes, weights and normalisation as one dict of plain values and CPU tensors
        (what :meth:`save` writes and what the reward worker ships between processes)."""
        return {
            "format": _FORMAT, "config": asdict(self.config),
            "obs_shape": list(self.obs_shape), "act_shape": list(self.act_shape),
            "n_actions": self.n_actions, "seed": self.seed,
            "state_dict": {k: v.detach().cpu() for k, v in self.members.state_dict().items()},
            "norm_mean": self.norm_mean.cpu(), "norm_std": self.norm_std.cpu(),
            "in_mean": None if self.in_mean is None else torch.from_numpy(self.in_mean),
            "in_inv_std": None if self.in_inv_std is None else torch.from_numpy(self.in_inv_std),
        }

    def load_blob_weights(self, blob: dict[str, Any]) -> None:
        """Take weights and normalisation from a :meth:`blob` of an ensemble with the same config.
        Parameters are copied in place, so optimisers holding them stay valid."""
        self.weights_changed()
        self.members.load_state_dict(blob["state_dict"])
        self.norm_mean = blob["norm_mean"].double().to(self.device)
        self.norm_std = blob["norm_std"].double().to(self.device)
        stats = (blob["in_mean"], blob["in_inv_std"]) if blob.get("in_mean") is not None else (None, None)
        self.in_mean, self.in_inv_std = (None if v is None else v.numpy().astype(np.float32) for v in stats)

    @classmethod
    def from_blob(cls, blob: dict[str, Any], device: str | torch.device = "cpu") -> RewardEnsemble:
        """A new ensemble from a :meth:`blob` (ValueError when the weights do not fit the config)."""
        known = {f.name for f in fields(EnsembleConfig)}
        cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in blob["config"].items() if k in known}
        ens = cls(EnsembleConfig(**cfg), blob["obs_shape"], blob["act_shape"], blob["n_actions"], "cpu", blob["seed"])
        try:
            ens.load_blob_weights(blob)
        except RuntimeError:
            raise ValueError("ensemble weights do not match its config") from None
        return ens.to(device)

    def save(self, path: str | os.PathLike) -> None:
        """Write :meth:`blob` to ``path`` (atomically, via a temp file)."""
        with atomic_path(path) as tmp:
            torch.save(self.blob(), tmp)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> RewardEnsemble:
        """Rebuild an ensemble saved by :meth:`save` (loaded with ``weights_only=True``)."""
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise UserError(f"reward ensemble file {os.fspath(path)!r} does not exist") from None
        except Exception as e:  # any unpickling failure means a bad file
            raise UserError(f"reward ensemble file {os.fspath(path)!r} is not readable: {type(e).__name__}") from None
        if not isinstance(blob, dict) or blob.get("format") != _FORMAT:
            raise UserError(f"{os.fspath(path)!r} is not a RewardEnsemble checkpoint (format {_FORMAT})")
        try:
            return cls.from_blob(blob, device)
        except ValueError:
            raise UserError(f"weights in {os.fspath(path)!r} do not match its config") from None
