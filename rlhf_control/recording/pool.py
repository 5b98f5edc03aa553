"""SegmentPool: the bounded store of recent clips that queries are drawn from."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from rlhf_control.recording.frame_ring import FrameRing
from rlhf_control.types import Segment


class SegmentPool:
    """The ``capacity`` most recent segments (oldest evicted first), each given a run-unique ``uid``.

    ``uid`` values increase by one per added segment and continue across checkpoints through
    :meth:`state_dict` / :meth:`load_state_dict` (the segments themselves are not checkpointed).
    With ``frames`` (a :class:`FrameRing` of more slots than ``capacity``), image frames are written
    there as segments arrive and the pool holds references to them, not the frames.
    """

    def __init__(self, capacity: int, rng: np.random.Generator, frames: FrameRing | None = None) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)) or capacity < 1:
            raise ValueError(f"pool capacity={capacity!r} is not allowed; use an integer >= 1")
        self._capacity = int(capacity)
        self._rng = rng
        self._segments: deque[Segment] = deque(maxlen=self._capacity)
        self._next_uid = 0
        if frames is not None and frames.slots <= self._capacity:
            raise ValueError(f"a frame ring of {frames.slots} slots cannot back a pool of {self._capacity} clips; "
                             "give it more slots than the pool's capacity")
        self.frames = frames

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def next_uid(self) -> int:
        """The uid the next added segment gets."""
        return self._next_uid

    def add(self, segment: Segment) -> Segment:
        """Store ``segment`` under a fresh uid (any uid it had is replaced); returns the stored copy."""
        uid = self._next_uid
        obs = segment.obs if self.frames is None else self.frames.store(segment.obs, uid)
        stored = replace(segment, uid=uid, obs=obs)
        self._next_uid += 1
        self._segments.append(stored)
        return stored

    def __len__(self) -> int:
        return len(self._segments)

    def segments(self) -> list[Segment]:
        """All stored segments, oldest first."""
        return list(self._segments)

    def recent(self, n: int) -> list[Segment]:
        """The ``n`` newest segments (fewer if the pool holds fewer), oldest first."""
        n = _check_count(n)
        if n == 0:
            return []
        return list(self._segments)[-n:]

    def since(self, uid: int) -> list[Segment]:
        """The stored segments added at or after the one that got ``uid`` (uids grow by one per
        segment), oldest first: e.g. the clips of the rollouts since a mark of ``next_uid``."""
        out = []
        for seg in reversed(self._segments):
            if seg.uid < uid:
                break
            out.append(seg)
        return out[::-1]

    def sample(self, n: int) -> list[Segment]:
        """``n`` distinct segments drawn uniformly without replacement (all of them, shuffled, if fewer)."""
        n = _check_count(n)
        size = min(n, len(self._segments))
        idx = self._rng.choice(len(self._segments), size=size, replace=False)
        return [self._segments[int(i)] for i in idx]

    def clear(self) -> None:
        """Drop all segments; uids keep increasing."""
        self._segments.clear()

    def close(self) -> None:
        """Close the frame ring's file (the references of stored segments cannot be read after)."""
        if self.frames is not None:
            self.frames.close()

    def state_dict(self) -> dict[str, int]:
        return {"next_uid": self._next_uid}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        value = state.get("next_uid") if isinstance(state, Mapping) else None
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"pool state next_uid={value!r} is not allowed; use an integer >= 0")
        if self._segments and int(value) <= max(s.uid for s in self._segments):
            raise ValueError(
                f"pool state next_uid={value} would reuse uids of stored segments; clear() first"
            )
        self._next_uid = int(value)


def _check_count(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"segment count n={n!r} is not allowed; use an integer >= 0")
    return int(n)
