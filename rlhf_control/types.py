"""Core value types: segments of behaviour, pairs of them, labels, queries and answers.

Label convention (everywhere): for a pair (first, second), ``+1`` means the first is better,
``-1`` the second, ``0`` equally good. A skipped query is an :class:`Answer` with ``label=None``
and is never a :class:`Label`. The training target is P(first > second) = (label + 1) / 2.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

VALID_LABELS = (-1, 0, 1)


class FrameRef:
    """Frames ``(n, H, W)`` stored at ``offset`` of a file, read when used (``np.asarray``): how the
    label window's Atari frames are held once, on disk, by both the main process and the reward
    worker (:mod:`rlhf_control.reward.frame_file`), and how the segment pool holds its clips
    (:mod:`rlhf_control.recording.frame_ring`). Pickles as the reference, not the frames.

    ``tag``: when given, the 8 bytes before ``offset`` hold it (int64) and :meth:`read` checks them:
    a slot of the pool's ring file that a newer clip took over is refused, not read as this clip.
    """

    __slots__ = ("path", "offset", "shape", "dtype", "tag")

    def __init__(self, path: str, offset: int, shape: tuple[int, ...], dtype: Any = np.uint8,
                 tag: int | None = None) -> None:
        self.path, self.offset = str(path), int(offset)
        self.shape, self.dtype = tuple(int(s) for s in shape), np.dtype(dtype)
        self.tag = None if tag is None else int(tag)

    def __getstate__(self) -> tuple[str, int, tuple[int, ...], str, int | None]:
        return self.path, self.offset, self.shape, self.dtype.str, self.tag

    def __setstate__(self, state: tuple) -> None:
        self.path, self.offset, self.shape, self.dtype = state[0], state[1], tuple(state[2]), np.dtype(state[3])
        self.tag = state[4] if len(state) > 4 else None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def read(self) -> np.ndarray:
        """The frames, read from the file now (a fresh array; nothing stays mapped)."""
        head = 0 if self.tag is None else 8
        with open(self.path, "rb", buffering=0) as f:
            data = os.pread(f.fileno(), self.nbytes + head, self.offset - head)
        if len(data) != self.nbytes + head:
            raise ValueError(f"frame file {self.path!r} ends before the {self.nbytes} bytes at offset {self.offset}")
        if head and int.from_bytes(data[:8], "little", signed=True) != self.tag:
            raise ValueError(f"frame file {self.path!r}: the slot at offset {self.offset} no longer holds clip "
                             f"{self.tag} (a newer clip took it over)")
        return np.frombuffer(data, dtype=self.dtype, offset=head).reshape(self.shape)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        arr = self.read()
        return arr if dtype is None else arr.astype(dtype)


class StackedFrames:
    """Frame-stacked observations kept as single frames, so each frame is stored once.

    ``frames: (T + k - 1, H, W)`` (any dtype, uint8 for Atari; an array, or a :class:`FrameRef` to
    frames in a file); behaves like an array of shape ``(T, H, W, k)`` whose step ``t`` holds frames
    ``t .. t + k - 1`` (oldest first), which matches SB3's ``VecFrameStack`` with channels last.
    """

    __slots__ = ("frames", "k")

    def __init__(self, frames: np.ndarray | FrameRef, k: int) -> None:
        frames = frames if isinstance(frames, FrameRef) else np.asarray(frames)
        if k < 1:
            raise ValueError(f"frame stack k={k} must be >= 1")
        if frames.ndim != 3:
            raise ValueError(f"frames must have shape (T + k - 1, H, W), got {frames.shape}")
        if frames.shape[0] < k:
            raise ValueError(f"need at least k={k} frames, got {frames.shape[0]}")
        self.frames = frames
        self.k = int(k)

    def __len__(self) -> int:
        return self.frames.shape[0] - self.k + 1

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.frames.shape[1:], self.k)

    @property
    def dtype(self) -> np.dtype:
        return self.frames.dtype

    @property
    def nbytes(self) -> int:
        return int(self.frames.nbytes)

    def to_array(self) -> np.ndarray:
        """The full ``(T, H, W, k)`` array (a fresh copy)."""
        windows = np.lib.stride_tricks.sliding_window_view(np.asarray(self.frames), self.k, axis=0)
        return np.ascontiguousarray(windows)  # (T, H, W, k)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        arr = self.to_array()
        return arr if dtype is None else arr.astype(dtype)

    def __getitem__(self, idx: Any) -> np.ndarray:
        return self.to_array()[idx]


def _as_obs(obs: Any) -> np.ndarray | StackedFrames:
    return obs if isinstance(obs, StackedFrames) else np.asarray(obs)


@dataclass(frozen=True, eq=False)
class Segment:
    """A short clip of behaviour.

    ``obs: (T, *obs_shape)`` (an array, or :class:`StackedFrames` for stacked image frames);
    ``acts: (T, *act_shape)`` (``(T,)`` integers for a discrete action space);
    ``true_rewards: (T,)`` float or ``None`` when the task has no true reward.
    ``episode_id``/``start_step`` locate the clip in its episode and ``agent_step`` in the run (the
    agent's step count, all envs, when the clip began; -1 for pretraining clips or unknown); ``render_ref`` is whatever a renderer needs to
    draw it later (filled by the loop, opaque here); ``uid`` is a run-unique id (-1 = unassigned).
    """

    obs: np.ndarray | StackedFrames
    acts: np.ndarray
    true_rewards: np.ndarray | None = None
    episode_id: int = 0
    start_step: int = 0
    render_ref: Any = field(default=None, repr=False)
    uid: int = -1
    agent_step: int = -1

    def __post_init__(self) -> None:
        obs = _as_obs(self.obs)
        acts = np.asarray(self.acts)
        object.__setattr__(self, "obs", obs)
        object.__setattr__(self, "acts", acts)
        t = len(obs)
        if t < 1:
            raise ValueError("a segment needs at least one step, got T=0")
        if acts.ndim < 1 or acts.shape[0] != t:
            raise ValueError(f"acts must have shape (T={t}, ...), got {acts.shape}")
        if self.true_rewards is not None:
            rew = np.asarray(self.true_rewards, dtype=np.float64)
            if rew.shape != (t,):
                raise ValueError(f"true_rewards must have shape (T={t},), got {rew.shape}")
            if not np.all(np.isfinite(rew)):
                raise ValueError("true_rewards must be finite")
            object.__setattr__(self, "true_rewards", rew)

    @property
    def length(self) -> int:
        """Number of steps T."""
        return len(self.obs)

    @property
    def obs_shape(self) -> tuple[int, ...]:
        return tuple(self.obs.shape[1:])

    @property
    def act_shape(self) -> tuple[int, ...]:
        return tuple(self.acts.shape[1:])

    @property
    def true_return(self) -> float | None:
        """Undiscounted sum of the true reward, or None without a true reward."""
        return None if self.true_rewards is None else float(self.true_rewards.sum())

    def obs_array(self) -> np.ndarray:
        """Observations as a plain ``(T, *obs_shape)`` array."""
        return np.asarray(self.obs)


@dataclass(frozen=True, eq=False)
class SegmentPair:
    """Two segments of equal length and matching observation/action shapes."""

    first: Segment
    second: Segment

    def __post_init__(self) -> None:
        a, b = self.first, self.second
        if a.length != b.length:
            raise ValueError(f"segments in a pair must have equal length, got {a.length} and {b.length}")
        if a.obs_shape != b.obs_shape:
            raise ValueError(f"observation shapes differ: {a.obs_shape} vs {b.obs_shape}")
        if a.act_shape != b.act_shape:
            raise ValueError(f"action shapes differ: {a.act_shape} vs {b.act_shape}")

    def swapped(self) -> SegmentPair:
        return SegmentPair(self.second, self.first)


def check_label(value: Any) -> int:
    """Return ``value`` as an int label, or raise if it is not one of -1, 0, +1."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer, float, np.floating)):
        raise ValueError(f"label {value!r} is not allowed; use +1 (first better), -1 (second better) or 0 (equal)")
    if float(value) not in VALID_LABELS:
        raise ValueError(f"label {value!r} is not allowed; use +1 (first better), -1 (second better) or 0 (equal)")
    return int(value)


@dataclass(frozen=True, eq=False)
class Label:
    """A comparison: ``value`` is +1 (first better), -1 (second better) or 0 (equal)."""

    pair: SegmentPair
    value: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", check_label(self.value))

    @property
    def target(self) -> float:
        """P(first better) used as the training target: (value + 1) / 2."""
        return (self.value + 1) / 2.0


@dataclass(frozen=True, eq=False)
class Query:
    """A pair sent to an oracle, with a run-unique id."""

    query_id: int
    pair: SegmentPair


@dataclass(frozen=True)
class Answer:
    """An oracle's answer to a query. ``label`` None means skipped (incomparable / can't tell)."""

    query_id: int
    label: int | None
    labeller: str = "synthetic"
    seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.label is not None:
            object.__setattr__(self, "label", check_label(self.label))

    @property
    def skipped(self) -> bool:
        return self.label is None


def segment_steps(segments: Sequence[Segment]) -> tuple[np.ndarray, np.ndarray]:
    """All steps of ``segments`` concatenated: ``obs (sum T, *obs_shape)``, ``acts (sum T, *act_shape)``.

    :class:`StackedFrames` observations are expanded straight into the output (one copy).
    """
    if not segments:
        raise ValueError("no segments given; need at least one")
    first = segments[0]
    total = sum(s.length for s in segments)
    obs = np.empty((total, *first.obs_shape), dtype=first.obs.dtype)
    acts = np.empty((total, *first.act_shape), dtype=first.acts.dtype)
    t = 0
    for seg in segments:
        if seg.obs_shape != first.obs_shape or seg.act_shape != first.act_shape:
            raise ValueError(
                f"segment shapes obs {seg.obs_shape} / acts {seg.act_shape} differ from the first segment's "
                f"{first.obs_shape} / {first.act_shape}; all segments must match"
            )
        n = seg.length
        if isinstance(seg.obs, StackedFrames):
            obs[t : t + n] = np.lib.stride_tricks.sliding_window_view(np.asarray(seg.obs.frames), seg.obs.k, axis=0)
        else:
            obs[t : t + n] = seg.obs
        acts[t : t + n] = seg.acts
        t += n
    return obs, acts
