"""Benchmark clip rendering for the human labeller: seconds per query (one pair of clips).

A query costs: restoring each step's recorded state and drawing it (both clips), then encoding three
H.264 mp4s (first, second, side by side). Measured for a pair of 1.5-s HalfCheetah-v5 clips (30 steps
at 20 fps, 320x240) and a pair of 25-step ALE/Pong-v5 clips (15 fps, 320x420), plus the cost of
recording the render states while the agent runs (per env and step) and their JSON size.

    python scripts/bench_render.py [--repeats 5] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from rlhf_control.recording.render_states import GL_BACKEND, render_state_fn
from rlhf_control.types import Segment, SegmentPair
from rlhf_control.video.mp4 import side_by_side
from rlhf_control.video.render import SegmentRenderer


def record(env_id: str, steps: int, seed: int = 0) -> tuple[SegmentPair, float]:
    """A pair of consecutive random-policy segments of ``steps`` steps with render states, and the
    microseconds per env per call of the render-state function (as the TrajectoryRecorder calls it)."""
    import gymnasium as gym
    from stable_baselines3.common.vec_env import DummyVecEnv

    if env_id.startswith("ALE/"):
        import ale_py

        gym.register_envs(ale_py)
    venv = DummyVecEnv([lambda: gym.make(env_id)])
    venv.seed(seed)
    venv.action_space.seed(seed)
    fn = render_state_fn(env_id)
    venv.reset()
    states, t_capture = [], 0.0
    for _ in range(2 * steps):
        t0 = time.perf_counter()
        states.append(fn(venv)[0])
        t_capture += time.perf_counter() - t0
        venv.step(np.array([venv.action_space.sample()]))
    venv.close()
    segs = [Segment(obs=np.zeros((steps, 1)), acts=np.zeros((steps, 1)), render_ref=states[i * steps:(i + 1) * steps])
            for i in range(2)]
    return SegmentPair(*segs), t_capture / (2 * steps) * 1e6


def bench(env_id: str, steps: int, repeats: int, out: Path) -> None:
    pair, capture_us = record(env_id, steps)
    renderer = SegmentRenderer(env_id)
    renderer.frames(pair.first)  # make the render env and GL context once, as a long-lived renderer does
    draw, encode, total = [], [], []
    for i in range(repeats):
        t0 = time.perf_counter()
        a, b = renderer.frames(pair.first), renderer.frames(pair.second)
        t1 = time.perf_counter()
        renderer.write_mp4(a, out / f"{i}_a.mp4")
        renderer.write_mp4(b, out / f"{i}_b.mp4")
        renderer.write_mp4(side_by_side(a, b, renderer.gap), out / f"{i}_ab.mp4")
        t2 = time.perf_counter()
        paths = [p for p in renderer.render_pair(pair, out, query_id=i, side_by_side_clip=True) if p]
        t3 = time.perf_counter()
        draw.append(t1 - t0)
        encode.append(t2 - t1)
        total.append(t3 - t2)
    renderer.close()
    h, w = a.shape[1:3]
    ref_bytes = len(json.dumps(pair.first.render_ref))
    kib = sum(p.stat().st_size for p in paths) / 1024
    med = statistics.median
    print(f"{env_id}: pair of {steps}-step clips at {renderer.fps:g} fps, {w}x{h} (side by side {2 * w + renderer.gap}x{h})")
    print(f"  restore + draw both clips  {med(draw):.3f} s  ({med(draw) / (2 * steps) * 1e3:.1f} ms/frame)")
    print(f"  encode 3 mp4s              {med(encode):.3f} s  ({kib:.0f} KiB together)")
    print(f"  render_pair total          {med(total):.3f} s  (median of {repeats}; min {min(total):.3f} s)")
    print(f"  record states              {capture_us:.1f} us per env and step; render_ref {ref_bytes} bytes of JSON")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per task (median reported)")
    parser.add_argument("--out", type=Path, default=None, help="where to write the clips (default: a temp dir)")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats={args.repeats} must be >= 1")
    print(f"MUJOCO_GL={GL_BACKEND or 'unset'}")
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        bench("HalfCheetah-v5", 30, args.repeats, out)
        bench("ALE/Pong-v5", 25, args.repeats, out)


if __name__ == "__main__":
    main()
