"""A demo run directory for the labelling app: synthetic segments, real mp4 clips, a real store.

Each segment's clip is ``length`` frames of a 64x64 colour image whose brightness grows with the
segment's true return (plus a small white square moving the same way in every clip), so a person,
or a script reading pixels, who picks the brighter clip answers like the perfect oracle. Used by
the web tests and the benchmark; try the app with::

    python -m rlhf_control.web.demo /tmp/label-demo --serve
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rlhf_control.rundir import CONFIG_FILE, STORE_FILE, write_atomic
from rlhf_control.store.store import PreferenceStore
from rlhf_control.types import Query, Segment, SegmentPair
from rlhf_control.video.mp4 import write_mp4

TINT = np.array([1.0, 0.82, 0.55])  # warm colour; brightness = level * tint
CRF = 10  # near-lossless: a script reading the clips' pixels sees the level drawn


def make_segments(n: int, rng: np.random.Generator, length: int = 8, obs_dim: int = 4, act_dim: int = 2,
                  start_uid: int = 0) -> list[Segment]:
    """``n`` segments with ``obs: (length, obs_dim)`` around a per-segment mean, random ``acts:
    (length, act_dim)`` and true reward ``obs @ w`` for a fixed unit vector ``w`` (returns spread ~ 2 * length)."""
    w = np.ones(obs_dim) / math.sqrt(obs_dim)
    segs = []
    for i in range(n):
        mu = rng.normal(size=obs_dim)
        obs = (mu + 0.5 * rng.normal(size=(length, obs_dim))).astype(np.float32)
        acts = rng.normal(size=(length, act_dim)).astype(np.float32)
        segs.append(Segment(obs=obs, acts=acts, true_rewards=obs.astype(np.float64) @ w, episode_id=i,
                            start_step=0, uid=start_uid + i, agent_step=1000 * i))
    return segs


def brightness(true_return: float, scale: float) -> float:
    """Grey level in [30, 225] that increases with the return."""
    return 30.0 + 195.0 / (1.0 + math.exp(-true_return / scale))


def clip_frames(level: float, length: int, size: int = 64) -> np.ndarray:
    """``(length, size, size, 3)`` uint8 frames of colour ``level * TINT`` with a moving white square."""
    frames = np.empty((length, size, size, 3), np.uint8)
    frames[:] = np.clip(level * TINT, 0, 255).astype(np.uint8)
    side = size // 8
    for t in range(length):
        x = int((size - side) * t / max(length - 1, 1))
        frames[t, size // 2 - side // 2: size // 2 + side // 2, x:x + side] = 255
    return frames


class BrightnessRenderer:
    """A renderer (``render_pair(pair, dir, query_id)``) drawing each segment as :func:`clip_frames`.

    One file per segment (``seg<uid>.mp4``), shared by every query that shows it; ``scale``: return
    that moves the level most of the way (see :func:`brightness`).
    """

    def __init__(self, scale: float = 8.0, fps: float = 8.0, size: int = 64) -> None:
        self.scale, self.fps, self.size = scale, fps, size

    def render_segment(self, seg: Segment, directory: Path) -> str:
        path = Path(directory) / f"seg{seg.uid}.mp4"
        if not path.exists():
            if seg.true_return is None:
                raise ValueError(f"segment {seg.uid} has no true reward; the demo renderer needs one")
            frames = clip_frames(brightness(seg.true_return, self.scale), seg.length, self.size)
            write_mp4(frames, path, self.fps, crf=CRF)
        return str(path)

    def render_pair(self, pair: SegmentPair, directory: Path, query_id: int) -> tuple[str, str, None]:
        return self.render_segment(pair.first, directory), self.render_segment(pair.second, directory), None


def add_queries(store: PreferenceStore, segments: Sequence[Segment], n: int, rng: np.random.Generator,
                step: int = 0) -> list[Query]:
    """Store ``n`` queries of random distinct pairs of ``segments``."""
    queries = []
    for _ in range(n):
        i, j = rng.choice(len(segments), size=2, replace=False)
        queries.append(store.add_query(SegmentPair(segments[i], segments[j]), step))
    return queries


def make_demo_run(run_dir: str | os.PathLike, n_segments: int = 16, n_queries: int = 30, seed: int = 0,
                  render: bool = True, instructions: str | None = None) -> tuple[list[Segment], list[Query]]:
    """Create ``run_dir`` with a store of ``n_queries`` queries over ``n_segments`` segments and, if
    ``render``, their clips (recorded in the store). Returns (segments, queries)."""
    from rlhf_control.oracles.human import HumanOracle

    run_dir = Path(run_dir)
    rng = np.random.default_rng(seed)
    segments = make_segments(n_segments, rng)
    with PreferenceStore.create(run_dir / STORE_FILE) as store:
        queries = add_queries(store, segments, n_queries, rng)
        if instructions is not None:
            write_atomic(run_dir / CONFIG_FILE, f"[task]\nname = \"demo\"\ninstructions = {json.dumps(instructions)}\n")
        if render:
            oracle = HumanOracle(store, BrightnessRenderer())
            oracle.submit(queries)
            oracle.wait_rendered()
            oracle.close()
            if oracle.errors:
                raise RuntimeError(f"rendering failed: {oracle.errors[0]}")
    return segments, queries


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rlhf_control.web.demo", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--segments", type=int, default=16)
    p.add_argument("--queries", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--serve", action="store_true", help="serve the labelling app on it afterwards")
    p.add_argument("--port", type=int, default=8765)
    args = p.parse_args(argv)
    make_demo_run(args.run_dir, args.segments, args.queries, args.seed,
                  instructions="Pick the brighter clip (it has the higher return).")
    print(f"demo run: {args.run_dir}")
    if args.serve:
        from rlhf_control.web.server import serve

        serve(args.run_dir, port=args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
