"""The segment pool's image frames in a ring of fixed slots in a file, instead of in memory.

An Atari run's pool holds its 2,000 newest clips (28 frames of 84x84 each: 377 MB) for the queries
and the reward's output normalisation. :class:`FrameRing` writes each added clip's frames into slot
``uid % slots`` of one file and gives back the clip with a :class:`~rlhf_control.types.FrameRef` in
their place, so the main process keeps a few dozen bytes per clip, the reward worker is sent the
references, and both read the frames when they use them (``pread``: the kernel's page cache holds
the file once and can drop it when memory runs short).

A slot starts with the uid of the clip in it (int64), which the reference carries as its ``tag``:
a reference to a clip whose slot a newer clip has taken over is refused when read, never read as
the wrong clip. With ``slots`` above the pool's capacity, the clips the pool still holds, and those
it evicted within the last ``slots - capacity`` additions, stay readable; a clip that must outlive
that (a query waiting for a person's answer) is copied out first, to the label window's frame file.

The file is started afresh by each process that opens it: the pool is not checkpointed.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from rlhf_control.types import FrameRef, Segment, StackedFrames

_TAG = 8  # bytes of the uid at the start of each slot


class FrameRing:
    """Frames of up to ``slots`` clips in ``path`` (uint8 frame stacks of the first clip's frame shape;
    other clips are left in memory as they are). Nothing is written until the first :meth:`put`."""

    def __init__(self, path: str | os.PathLike, slots: int) -> None:
        if isinstance(slots, bool) or not isinstance(slots, (int, np.integer)) or slots < 1:
            raise ValueError(f"ring slots={slots!r} is not allowed; use an integer >= 1")
        self.path = Path(path)
        self.slots = int(slots)
        self._shape: tuple[int, ...] | None = None
        self._fd: int | None = None

    @property
    def slot_bytes(self) -> int:
        """Bytes per slot (the uid, then the frames); 0 before the first clip."""
        return 0 if self._shape is None else _TAG + int(np.prod(self._shape))

    def store(self, obs: np.ndarray | StackedFrames, uid: int) -> np.ndarray | StackedFrames:
        """``obs`` of the clip ``uid`` (>= 0) written to slot ``uid % slots`` and held by reference:
        a :class:`StackedFrames` of a :class:`FrameRef`. Other observations come back as they are."""
        if (not isinstance(obs, StackedFrames) or isinstance(obs.frames, FrameRef) or obs.frames.dtype != np.uint8
                or uid < 0):
            return obs
        frames = obs.frames
        if self._shape is None:
            self._shape = tuple(frames.shape)
        if tuple(frames.shape) != self._shape:
            return obs  # another frame count than the ring's slots hold: stays in memory
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        start = (int(uid) % self.slots) * self.slot_bytes
        raw = int(uid).to_bytes(_TAG, "little", signed=True) + np.ascontiguousarray(frames).tobytes()
        if os.pwrite(self._fd, raw, start) != len(raw):
            raise OSError(f"short write to the pool's frame file {str(self.path)!r} (disk full?)")
        return StackedFrames(FrameRef(str(self.path), start + _TAG, frames.shape, tag=int(uid)), obs.k)

    def put(self, seg: Segment) -> Segment:
        """``seg`` with its frames in slot ``seg.uid % slots`` (:meth:`store`)."""
        obs = self.store(seg.obs, seg.uid)
        return seg if obs is seg.obs else dataclasses.replace(seg, obs=obs)

    def close(self) -> None:
        """Close and delete the file: its frames are of this process's pool only (a resumed run starts
        an empty pool), so nothing in it is worth its disk (593 MB for a 3,000-label Atari pool)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self.path.unlink(missing_ok=True)
