"""Benchmark reward-model training: seconds per epoch and peak memory.

Usage: ``python scripts/bench_reward.py`` (paper sizes: 3,000 pairs; MuJoCo-like 50-step segments with
obs 17 / act 6, and Atari 25-step segments of 84x84x4 uint8 held as StackedFrames). Atari is slow on a
CPU: ``--atari-pairs N`` trains on N pairs and extrapolates linearly to ``--pairs`` (the output says so).

The Atari CNN is timed on both of its paths in one run, alternately (``--atari-repeats`` rounds, the
best time of each kept, as the machine may be shared): the plain ``CNNReward.forward`` and the faster
path of ``reward/fast_cnn.py`` (the default), each from the same weights, labels and seeds; the ratio
is printed. A "pair-epoch" is one labelled pair through one epoch of all members, evaluation included.
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import time

import numpy as np
import torch

from rlhf_control.reward import (
    EnsembleConfig,
    PreferenceDataset,
    RewardEnsemble,
    RewardTrainer,
    RewardTrainerConfig,
    preference_loss,
)
from rlhf_control.reward.pixels import segment_frames
from rlhf_control.types import Label, Segment, SegmentPair, StackedFrames, segment_steps


def rss_mb() -> float:
    """Peak resident set size of this process so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_dataset(n_pairs: int, make_segment, rng: np.random.Generator) -> PreferenceDataset:
    ds = PreferenceDataset(max_size=None)
    for _ in range(n_pairs):
        ds.add(Label(SegmentPair(make_segment(), make_segment()), int(rng.choice([-1, 0, 1], p=[0.45, 0.1, 0.45]))))
    return ds


def saved_activation_mb(ens: RewardEnsemble, ds: PreferenceDataset, batch_size: int) -> float:
    """Bytes torch keeps for backward in one training batch of one member (what a step holds at peak)."""
    labels = ds.labels[:batch_size]
    segs = [s for lb in labels for s in (lb.pair.first, lb.pair.second)]
    x = ens.encode(*segment_steps(segs))
    kept: dict[int, int] = {}  # storage -> bytes: a tensor kept by two layers counts once

    def pack(t: torch.Tensor) -> torch.Tensor:
        kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    ens.members[0].train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = ens.member_forward_t(0, x).view(len(labels), 2, -1).sum(2)
        loss = preference_loss(out[:, 0], out[:, 1], torch.full((len(labels),), 0.5, device=ens.device)).mean()
    loss.backward()
    ens.members[0].eval()
    return sum(kept.values()) / 2**20


def cnn_flops(ens: RewardEnsemble) -> tuple[float, float]:
    """Floating-point operations (2 per multiply-add) of one 84x84x4 frame stack through one member:
    ``(forward, training step)``. A training step is the forward, every layer's weight gradient (as many
    multiply-adds as its forward) and the input gradient of every layer but the first (the pixels
    need none); batch norm, activations and dropout are left out (they are not multiply-adds)."""
    member = ens.members[0]
    macs: list[float] = []

    def count(module: torch.nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        if isinstance(module, torch.nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            macs.append(float(out[0].numel() * k))
        elif isinstance(module, torch.nn.Linear):
            macs.append(float(module.in_features * module.out_features))

    hooks = [m.register_forward_hook(count) for m in member.modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    was = member.training
    member.eval()
    with torch.no_grad():
        member(torch.zeros(1, 84, 84, 4, dtype=torch.uint8, device=ens.device))
    member.train(was)
    for h in hooks:
        h.remove()
    forward = 2 * sum(macs)
    return forward, forward + forward + 2 * sum(macs[1:])


def sgemm_gflops(size: int = 1024, seconds: float = 1.0) -> float:
    """This machine's float32 matrix-multiply speed at torch's thread setting, a ceiling no convolution
    of the same arithmetic beats: GFLOP/s of ``size`` x ``size`` products, best of repeated runs."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    best, end = math.inf, time.perf_counter() + seconds
    torch.mm(a, b)
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best / 1e9


def host_batch_ms(ds: PreferenceDataset, batch_size: int, members: int) -> None:
    """Host time to make one training batch's pixels: the stacks expanded on the host (segment_steps,
    what a CPU device trains on) against the frames gathered to be expanded on the device
    (reward/pixels.py, what a GPU device gets); best of 3. Each member makes its own batches."""
    segs = [s for lb in ds.labels[:batch_size] for s in (lb.pair.first, lb.pair.second)]
    times = {}
    for name, fn in (("stacks on the host", lambda: segment_steps(segs)), ("frames only", lambda: segment_frames(segs))):
        best = math.inf
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        times[name] = best
    per = {k: v / len(segs) * 2 * members for k, v in times.items()}
    print(f"[atari-cnn] host work per {len(segs) // 2}-pair batch: " + ", ".join(
        f"{k} {1e3 * v:.1f} ms ({per[k]:.4f} s per pair-epoch for {members} members)" for k, v in times.items()))


def bench_cnn_paths(ds: PreferenceDataset, members: int, cfg: RewardTrainerConfig, epochs: int, repeats: int,
                    scale: float, device: torch.device) -> None:
    """The plain and the fast CNN path, alternately, from the same start; the best time of each."""
    best = {False: math.inf, True: math.inf}
    losses = {}
    for _ in range(repeats):
        for fast in (False, True):
            ens = RewardEnsemble(EnsembleConfig.atari(n_members=members), (84, 84, 4), (), n_actions=6, device=device)
            ens.fast_cnn = fast
            trainer = RewardTrainer(ens, cfg, np.random.default_rng(0))
            rep = trainer.train(ds, epochs=epochs)
            best[fast] = min(best[fast], rep.seconds / epochs)
            losses[fast] = (rep.mean_train_loss, rep.mean_val_loss)
    note = f" (measured on {len(ds)} pairs, x{scale:g} extrapolated)" if scale != 1 else ""
    print(f"[atari-cnn] {len(ds) * scale:.0f} pairs, batch {cfg.batch_size}, {members} members, device {device}, "
          f"{torch.get_num_threads()} threads; best of {repeats} alternating rounds of {epochs} epoch(s) in one call")
    for fast, name in ((False, "plain (CNNReward.forward)"), (True, "fast (reward/fast_cnn.py)")):
        print(f"  {name:27s} per epoch {best[fast] * scale:8.2f} s{note} = {best[fast] / len(ds):.4f} s per pair-epoch; "
              f"train/val loss {losses[fast][0]:.4f}/{losses[fast][1]:.4f}")
    print(f"  speed-up fast/plain: {best[False] / best[True]:.2f}x")
    # The arithmetic a pair-epoch needs: each member trains on as many draws as there are pairs (2 clips
    # of `t` stacks each), and the evaluation after the epoch runs every member over every pair.
    fwd, step = cnn_flops(ens)
    t = ds.labels[0].pair.first.length
    need = members * 2 * t * (step + fwd)
    ceiling = sgemm_gflops() if device.type == "cpu" else math.nan
    print(f"  arithmetic: {need / 1e9:.2f} GFLOP per pair-epoch ({fwd / 1e6:.2f} MFLOP forward, {step / 1e6:.2f} "
          f"a training step, per stack); float32 matrix multiply here: {ceiling:.0f} GFLOP/s")
    for fast, name in ((False, "plain"), (True, "fast")):
        rate = need / (best[fast] / len(ds)) / 1e9
        print(f"  {name}: {rate:.1f} GFLOP/s, {100 * rate / ceiling:.0f}% of the matrix multiply's speed")
    print(f"  at the matrix multiply's speed a pair-epoch would take {need / ceiling / 1e9:.4f} s "
          f"({best[False] / len(ds) / (need / ceiling / 1e9):.2f}x faster than plain): the floor in float32")


def bench(name: str, ens: RewardEnsemble, ds: PreferenceDataset, cfg: RewardTrainerConfig, epochs: int,
          scale: float, device: torch.device) -> None:
    trainer = RewardTrainer(ens, cfg, np.random.default_rng(0))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rep1 = trainer.train(ds, epochs=1)
    t0 = time.perf_counter()
    rep = trainer.train(ds, epochs=epochs)
    per_epoch = (time.perf_counter() - t0) / epochs
    act_mb = saved_activation_mb(ens, ds, cfg.batch_size)
    note = f" (measured on {len(ds)} pairs, x{scale:g} extrapolated)" if scale != 1 else ""
    print(f"[{name}] {len(ds) * scale:.0f} pairs, batch {cfg.batch_size}, {ens.n_members} members, device {device}")
    print(f"  first train() call, 1 epoch (incl. pre-stacking + eval): {rep1.seconds * scale:8.2f} s{note}")
    print(f"  per epoch, mean over {epochs} epochs in one call:        {per_epoch * scale:8.2f} s{note}")
    print(f"  mean train/val loss {rep.mean_train_loss:.3f}/{rep.mean_val_loss:.3f} (random labels), l2 {rep.mean_l2:.2g}")
    print(f"  peak RSS so far (ru_maxrss): {rss_mb():.0f} MiB; torch saved-for-backward per batch: {act_mb:.0f} MiB")
    if device.type == "cuda":
        print(f"  torch.cuda.max_memory_allocated: {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=3000, help="pairs in the window (paper: 3,000)")
    p.add_argument("--members", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3, help="epochs in the timed call")
    p.add_argument("--steps", type=int, default=50, help="MuJoCo segment length")
    p.add_argument("--obs", type=int, default=17)
    p.add_argument("--act", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=RewardTrainerConfig.batch_size)
    p.add_argument("--atari-pairs", type=int, default=300, help="Atari pairs actually trained on (extrapolated to --pairs)")
    p.add_argument("--atari-steps", type=int, default=25)
    p.add_argument("--atari-batch-size", type=int, default=RewardTrainerConfig.batch_size)
    p.add_argument("--atari-epochs", type=int, default=1)
    p.add_argument("--atari-repeats", type=int, default=2, help="alternating plain/fast rounds (best kept)")
    p.add_argument("--skip-mujoco", action="store_true")
    p.add_argument("--skip-atari", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, start RSS {rss_mb():.0f} MiB")

    if not args.skip_mujoco:
        def mujoco_segment() -> Segment:
            return Segment(rng.normal(size=(args.steps, args.obs)).astype(np.float32),
                           rng.uniform(-1, 1, size=(args.steps, args.act)).astype(np.float32))

        ds = make_dataset(args.pairs, mujoco_segment, rng)
        ens = RewardEnsemble(EnsembleConfig(n_members=args.members), (args.obs,), (args.act,), device=device)
        bench("mujoco-mlp", ens, ds, RewardTrainerConfig(batch_size=args.batch_size), args.epochs, 1.0, device)
        del ds, ens

    if not args.skip_atari:
        n = min(args.atari_pairs, args.pairs)

        def atari_segment() -> Segment:
            frames = rng.integers(0, 256, size=(args.atari_steps + 3, 84, 84), dtype=np.uint8)
            return Segment(StackedFrames(frames, 4), rng.integers(0, 6, size=args.atari_steps))

        ds = make_dataset(n, atari_segment, rng)
        mb = sum(s.obs.nbytes for lb in ds.labels for s in (lb.pair.first, lb.pair.second)) / 2**20
        print(f"[atari-cnn] window frames held as StackedFrames: {mb:.0f} MiB for {n} pairs "
              f"(full 84x84x4 stacks would be {mb * 4 * args.atari_steps / (args.atari_steps + 3):.0f} MiB)")
        cfg = RewardTrainerConfig(batch_size=args.atari_batch_size)
        host_batch_ms(ds, cfg.batch_size, args.members)
        bench_cnn_paths(ds, args.members, cfg, args.atari_epochs, args.atari_repeats, args.pairs / n, device)
        ens = RewardEnsemble(EnsembleConfig.atari(n_members=args.members), (84, 84, 4), (), n_actions=6, device=device)
        print(f"  peak RSS so far (ru_maxrss): {rss_mb():.0f} MiB; torch saved-for-backward per batch: "
              f"{saved_activation_mb(ens, ds, cfg.batch_size):.0f} MiB")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
