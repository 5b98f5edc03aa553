"""Segments to bytes and back without pickle, as :class:`~rlhf_control.store.store.PreferenceStore` keeps them.

The arrays (obs or StackedFrames' frames, acts, true rewards when present) are ``np.lib.format`` arrays
written one after another into one zlib-compressed blob (encoding ``"npy+zlib"``); ``render_ref`` is
kept as JSON when it is JSON-serialisable (numpy arrays/scalars become lists/numbers), else dropped.
"""

from __future__ import annotations

import io
import json
import zlib
from typing import Any

import numpy as np

from rlhf_control.types import Segment, StackedFrames

__all__ = ["ENCODING", "decode_segment", "encode_segment"]

ENCODING = "npy+zlib"


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def encode_segment(seg: Segment) -> tuple[int, bytes, str | None]:
    """-> (stack_k (0 = plain obs array), zlib-compressed npy arrays, render_ref JSON or None)."""
    obs, k = (np.asarray(seg.obs.frames), seg.obs.k) if isinstance(seg.obs, StackedFrames) else (seg.obs, 0)
    buf = io.BytesIO()
    for arr in (obs, seg.acts) if seg.true_rewards is None else (obs, seg.acts, seg.true_rewards):
        if arr.dtype.hasobject:
            raise ValueError(f"segment arrays must not have dtype object, got {arr.dtype}; use numeric arrays")
        np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
    try:
        ref = None if seg.render_ref is None else json.dumps(seg.render_ref, default=_json_default)
    except (TypeError, ValueError):
        ref = None
    return k, zlib.compress(buf.getvalue(), 1), ref


def decode_segment(k: int, data: bytes, ref: str | None, *, episode_id: int, start_step: int,
                   uid: int, agent_step: int = -1) -> Segment:
    """The inverse of :func:`encode_segment` (``k``, ``data``, ``ref`` as it returned them)."""
    buf = io.BytesIO(zlib.decompress(data))
    arrays = []
    while buf.tell() < buf.getbuffer().nbytes:
        arrays.append(np.lib.format.read_array(buf, allow_pickle=False))
    obs = StackedFrames(arrays[0], k) if k else arrays[0]
    return Segment(obs=obs, acts=arrays[1], true_rewards=arrays[2] if len(arrays) > 2 else None,
                   episode_id=episode_id, start_step=start_step,
                   render_ref=None if ref is None else json.loads(ref), uid=uid, agent_step=agent_step)
