"""The training window of preference labels: the most recent N, oldest dropped first.

Each label gets a run-unique, increasing ``seq`` that survives save/load; the trainer derives each
label's validation membership and bootstrap weight from it, so they stay fixed as the window slides.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Iterable
from typing import Any

import numpy as np

from rlhf_control.rundir import atomic_path
from rlhf_control.types import Label, Segment, SegmentPair, StackedFrames

_FORMAT = "rlhf_control.PreferenceDataset/1"


def _jsonable(value: Any) -> Any:
    """``value`` if it survives a JSON round trip unchanged, else None (render refs are optional)."""
    try:
        return value if json.loads(json.dumps(value)) == value else None
    except (TypeError, ValueError):
        return None


class PreferenceDataset:
    """FIFO window of :class:`Label` s. ``max_size=None`` keeps every label (paper's Atari window: 3,000).

    With a ``frame_file`` (a :class:`~rlhf_control.reward.frame_file.FrameFile`), each added label's
    uint8 frame stacks are written there once and the window keeps references to them.
    """

    def __init__(self, max_size: int | None = 3000, frame_file: Any = None) -> None:
        if max_size is not None and (isinstance(max_size, bool) or int(max_size) != max_size or max_size < 1):
            raise ValueError(f"max_size={max_size!r} is not allowed; use an int >= 1 or None (unbounded)")
        self.max_size = None if max_size is None else int(max_size)
        self.frame_file = frame_file
        self._labels: deque[Label] = deque()
        self._seqs: deque[int] = deque()
        self._next_seq = 0
        self._shapes: tuple[tuple[int, ...], tuple[int, ...]] | None = None
        self.removals = 0  # how many times labels were taken out (undone answers): copies must resync

    def add(self, label: Label, seq: int | None = None) -> int:
        """Append ``label`` (dropping the oldest past ``max_size``); returns its seq.

        ``seq`` may be given (e.g. the store's answer id, so a window rebuilt on resume keeps each
        label's validation split and bootstrap weight); it must exceed every seq already used.
        """
        if not isinstance(label, Label):
            raise ValueError(f"expected a Label, got {type(label).__name__}")
        shapes = (label.pair.first.obs_shape, label.pair.first.act_shape)
        if self._shapes is not None and shapes != self._shapes:
            raise ValueError(
                f"label shapes obs {shapes[0]} / acts {shapes[1]} differ from the dataset's "
                f"{self._shapes[0]} / {self._shapes[1]}"
            )
        if seq is None:
            seq = self._next_seq
        elif isinstance(seq, bool) or int(seq) != seq or seq < self._next_seq:
            raise ValueError(f"seq={seq!r} is not allowed; use an int >= {self._next_seq} (seqs only increase)")
        seq = int(seq)
        if self.frame_file is not None:
            label = self.frame_file.put_label(label)
        self._shapes = shapes
        self._next_seq = seq + 1
        self._labels.append(label)
        self._seqs.append(seq)
        if self.max_size is not None and len(self._labels) > self.max_size:
            self._labels.popleft()
            self._seqs.popleft()
        return seq

    def remove(self, seqs: Iterable[int]) -> int:
        """Take the labels with these seqs out of the window (answers undone after they were added);
        returns how many were there. Later seqs keep increasing as before."""
        drop = {int(s) for s in seqs}
        keep = [(lb, s) for lb, s in zip(self._labels, self._seqs, strict=True) if s not in drop]
        removed = len(self._labels) - len(keep)
        if removed:
            self._labels = deque(lb for lb, _ in keep)
            self._seqs = deque(s for _, s in keep)
            self.removals += 1
        return removed

    def extend(self, labels: Iterable[Label]) -> None:
        for label in labels:
            self.add(label)

    def __len__(self) -> int:
        return len(self._labels)

    @property
    def labels(self) -> list[Label]:
        """Labels in the window, oldest first."""
        return list(self._labels)

    @property
    def seqs(self) -> np.ndarray:
        """``(N,)`` int64 run-unique increasing id of each label in the window (oldest first)."""
        return np.fromiter(self._seqs, dtype=np.int64, count=len(self._seqs))

    @property
    def next_seq(self) -> int:
        """The seq the next added label will get (= labels ever added, across saves)."""
        return self._next_seq

    def targets(self) -> np.ndarray:
        """``(N,)`` float32 training targets P(first better) = (label + 1) / 2, in {0, 0.5, 1}."""
        return np.array([lb.target for lb in self._labels], dtype=np.float32)

    # ---- persistence: one .npz (allow_pickle=False) with a JSON header; each segment stored once ----

    def save(self, path: str | os.PathLike) -> None:
        """Write the window to ``path`` (npz, no pickle), atomically via a temp file."""
        index: dict[int, int] = {}
        segs: list[Segment] = []
        pairs = np.zeros((len(self), 2), dtype=np.int64)
        for i, lb in enumerate(self._labels):
            for j, seg in enumerate((lb.pair.first, lb.pair.second)):
                if id(seg) not in index:  # a segment shared by several pairs is stored once
                    index[id(seg)] = len(segs)
                    segs.append(seg)
                pairs[i, j] = index[id(seg)]
        stacked = [s for s in segs if isinstance(s.obs, StackedFrames)]
        plain = [s for s in segs if not isinstance(s.obs, StackedFrames)]
        arrays: dict[str, np.ndarray] = {
            "pairs": pairs,
            "values": np.array([lb.value for lb in self._labels], dtype=np.int8),
            "seqs": self.seqs,
            "seg_len": np.array([s.length for s in segs], dtype=np.int64),
            "seg_k": np.array([s.obs.k if isinstance(s.obs, StackedFrames) else 0 for s in segs], dtype=np.int64),
            "seg_episode": np.array([s.episode_id for s in segs], dtype=np.int64),
            "seg_start": np.array([s.start_step for s in segs], dtype=np.int64),
            "seg_uid": np.array([s.uid for s in segs], dtype=np.int64),
            "seg_has_true": np.array([s.true_rewards is not None for s in segs], dtype=bool),
        }
        if segs:
            arrays["acts"] = np.concatenate([s.acts for s in segs])
            arrays["true_rewards"] = np.concatenate(
                [s.true_rewards if s.true_rewards is not None else np.zeros(s.length) for s in segs]
            )
        if plain:
            arrays["obs_plain"] = np.concatenate([s.obs for s in plain])
        if stacked:
            arrays["obs_frames"] = np.concatenate([np.asarray(s.obs.frames) for s in stacked])
        for name, arr in arrays.items():
            if arr.dtype == object:
                raise ValueError(f"cannot save {name} with dtype=object; segments must hold numeric arrays")
        meta = {
            "format": _FORMAT,
            "max_size": self.max_size,
            "next_seq": self._next_seq,
            "render_refs": [_jsonable(s.render_ref) for s in segs],
        }
        arrays["meta"] = np.array(json.dumps(meta))
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> PreferenceDataset:
        """Read a window written by :meth:`save`; seqs continue where the saved run stopped."""
        name = os.fspath(path)
        try:
            with np.load(name, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
            meta = json.loads(str(data["meta"]))
        except FileNotFoundError:
            raise ValueError(f"preference dataset file {name!r} does not exist") from None
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"preference dataset file {name!r} is not readable: {type(e).__name__}") from None
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            raise ValueError(f"{name!r} is not a PreferenceDataset file (format {_FORMAT})")
        try:
            segs = _segments_from_arrays(data, meta["render_refs"])
            ds = cls(meta["max_size"])
            for (a, b), value in zip(data["pairs"], data["values"], strict=True):
                ds.add(Label(SegmentPair(segs[a], segs[b]), int(value)))
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"preference dataset file {name!r} is corrupt: {e}") from None
        ds._seqs = deque(int(s) for s in data["seqs"])
        if len(ds._seqs) != len(ds._labels):
            raise ValueError(f"preference dataset file {name!r} is corrupt: {len(ds._seqs)} seqs for {len(ds)} labels")
        ds._next_seq = int(meta["next_seq"])
        return ds


def _segments_from_arrays(data: dict[str, np.ndarray], render_refs: list[Any]) -> list[Segment]:
    """Rebuild segments; their arrays are views into the loaded blocks (no per-segment copy)."""
    segs: list[Segment] = []
    t = p = f = 0  # offsets into acts/true_rewards, obs_plain, obs_frames
    fields = zip(data["seg_len"], data["seg_k"], data["seg_episode"], data["seg_start"], data["seg_uid"],
                 data["seg_has_true"], render_refs, strict=True)
    for n, k, episode, start, uid, has_true, ref in fields:
        n, k = int(n), int(k)
        if k:
            obs: np.ndarray | StackedFrames = StackedFrames(data["obs_frames"][f : f + n + k - 1], k)
            f += n + k - 1
        else:
            obs = data["obs_plain"][p : p + n]
            p += n
        rew = data["true_rewards"][t : t + n] if has_true else None
        segs.append(Segment(obs, data["acts"][t : t + n], rew, int(episode), int(start), ref, int(uid)))
        t += n
    return segs
