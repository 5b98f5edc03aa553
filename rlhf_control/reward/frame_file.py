"""The label window's image frames, held once: in a file of the run directory, written once by the
main process, read by it and by the reward worker a batch at a time.

At the paper's Atari window (3,000 labels, 6,000 clips of 25 steps, 28 frames of 84x84 each) the
frames are 1.2 GB. Kept in memory they were held twice, by the main process's window and by the
worker's copy of it. Here :meth:`FrameFile.put` appends a labelled clip's frames to the file once
(by clip uid: a clip in several pairs is written once) and gives back the clip with its frames as a
:class:`~rlhf_control.types.FrameRef`; the labels that go to the worker carry those references, and
a training batch reads its clips' frames with ``pread`` (nothing stays mapped: the kernel's page
cache holds the file, shared by both processes and dropped first when memory runs short).

The file is append-only (frames of clips that left the window stay in it); a second file, the
index, has one fixed-size record per clip: uid, offset, frame count, height, width and the CRC32 of
the bytes. A run that continues (``resume``) checks every record against the file first, and a
truncated or corrupt file is refused in one line; the labels themselves are in the preference
store, so deleting both files rebuilds them from it.
"""

from __future__ import annotations

import dataclasses
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from rlhf_control.errors import UserError
from rlhf_control.types import FrameRef, Label, Segment, SegmentPair, StackedFrames

_RECORD = struct.Struct("<qqiiiI")  # uid, offset, frames, height, width, crc32


def index_path(path: str | os.PathLike) -> Path:
    """The index file beside the frame file ``path``."""
    path = Path(path)
    return path.with_name(path.name + ".idx")


class FrameFile:
    """Frames of labelled clips in ``path`` (uint8 frame stacks only; other clips are left as they are).

    Nothing is written until the first :meth:`put`. With ``resume`` an existing file is verified now
    and appended to (:class:`UserError` when it is truncated or corrupt); without, the first
    :meth:`put` starts it afresh.
    """

    def __init__(self, path: str | os.PathLike, resume: bool = False) -> None:
        self.path = Path(path)
        self.index_path = index_path(self.path)
        self._refs: dict[int, FrameRef] = {}
        self._end = 0
        self._whole_index = 0  # bytes of whole records in the index (what a resumed run appends after)
        self._append = resume and self.path.exists()
        self._files: tuple | None = None
        if self._append:
            self._verify()

    def _refuse(self, problem: str) -> UserError:
        return UserError(f"frame file {str(self.path)!r} is {problem}; the labels are safe in the preference store: "
                         f"delete {self.path.name} and {self.index_path.name} to rebuild them from it, then resume")

    def _verify(self) -> None:
        try:
            raw = self.index_path.read_bytes()
            size = self.path.stat().st_size
        except OSError as e:
            raise self._refuse(f"unreadable ({type(e).__name__}: {e.strerror or e})") from None
        whole = len(raw) - len(raw) % _RECORD.size  # a record cut short by a kill is not one
        with open(self.path, "rb", buffering=0) as f:
            for pos in range(0, whole, _RECORD.size):
                uid, offset, n, h, w, crc = _RECORD.unpack_from(raw, pos)
                nbytes = n * h * w
                if offset < 0 or min(n, h, w) < 1:
                    raise self._refuse(f"corrupt (index record {pos // _RECORD.size} is not valid)")
                if offset + nbytes > size:
                    raise self._refuse(f"truncated ({size} bytes; its index needs {offset + nbytes})")
                if zlib.crc32(os.pread(f.fileno(), nbytes, offset)) != crc:
                    raise self._refuse(f"corrupt (the frames of clip {uid} at byte {offset} fail their checksum)")
                if uid >= 0:
                    self._refs[uid] = FrameRef(str(self.path), offset, (n, h, w))
        self._whole_index = whole
        self._end = size

    def _open(self) -> tuple:
        if self._files is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self._append:
                with open(self.index_path, "r+b") as f:
                    f.truncate(self._whole_index)
                data, index = open(self.path, "ab"), open(self.index_path, "ab")
            else:
                data, index = open(self.path, "wb"), open(self.index_path, "wb")
                self._end = 0
            self._files = (data, index)
        return self._files

    def put(self, seg: Segment) -> Segment:
        """``seg`` with its frames in the file (written now unless its uid's are there already)."""
        obs = seg.obs
        if not isinstance(obs, StackedFrames) or obs.frames.dtype != np.uint8:
            return seg
        frames = obs.frames
        if isinstance(frames, FrameRef) and frames.path == str(self.path):
            return seg
        ref = self._refs.get(seg.uid) if seg.uid >= 0 else None
        if ref is None or ref.shape != frames.shape:
            data, index = self._open()
            # A pool clip in the ring file (recording/frame_ring.py) is copied here, where it lasts.
            raw = np.ascontiguousarray(frames.read() if isinstance(frames, FrameRef) else frames).tobytes()
            data.write(raw)
            data.flush()  # in the kernel before any reader is handed the reference
            n, h, w = frames.shape
            index.write(_RECORD.pack(int(seg.uid), self._end, n, h, w, zlib.crc32(raw)))
            index.flush()
            ref = FrameRef(str(self.path), self._end, frames.shape)
            self._end += len(raw)
            if seg.uid >= 0:
                self._refs[seg.uid] = ref
        return dataclasses.replace(seg, obs=StackedFrames(ref, obs.k))

    def put_pair(self, pair: SegmentPair) -> SegmentPair:
        """``pair`` with both clips' frames in the file (e.g. a query's, before its answer arrives)."""
        first, second = self.put(pair.first), self.put(pair.second)
        return pair if first is pair.first and second is pair.second else SegmentPair(first, second)

    def put_label(self, label: Label) -> Label:
        """``label`` with both clips' frames in the file."""
        pair = self.put_pair(label.pair)
        return label if pair is label.pair else Label(pair, label.value)

    @property
    def size(self) -> int:
        """Bytes of frames in the file."""
        return self._end

    def close(self) -> None:
        for f in self._files or ():
            f.close()
        self._files = None
