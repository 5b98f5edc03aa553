"""The label window's frames in one file: written once, read by reference, checked on resume."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from rlhf_control.errors import UserError
from rlhf_control.reward import (
    EnsembleConfig,
    PreferenceDataset,
    RewardEnsemble,
    RewardTrainer,
    RewardTrainerConfig,
)
from rlhf_control.reward.frame_file import FrameFile, index_path
from rlhf_control.types import FrameRef, Label, Segment, SegmentPair, StackedFrames, segment_steps


def clip(rng: np.random.Generator, uid: int, t: int = 5) -> Segment:
    frames = rng.integers(0, 256, size=(t + 3, 84, 84), dtype=np.uint8)
    return Segment(StackedFrames(frames, 4), rng.integers(0, 6, size=t), rng.normal(size=t), uid=uid)


def labels(n: int, seed: int = 0) -> list[Label]:
    rng = np.random.default_rng(seed)
    clips = [clip(rng, uid) for uid in range(n + 1)]
    # Neighbouring pairs share a clip, as the variance selector's pairs often do.
    return [Label(SegmentPair(clips[i], clips[i + 1]), [-1, 0, 1][i % 3]) for i in range(n)]


def test_put_writes_each_clip_once_and_gives_back_references_to_the_same_frames(tmp_path):
    ff = FrameFile(tmp_path / "f.u8")
    assert not (tmp_path / "f.u8").exists()  # nothing written before the first put
    raw = labels(6)
    stored = [ff.put_label(lb) for lb in raw]
    assert ff.size == 7 * 8 * 84 * 84  # 7 distinct clips, each written once
    assert (tmp_path / "f.u8").stat().st_size == ff.size
    for a, b in zip(raw, stored, strict=True):
        for s0, s1 in ((a.pair.first, b.pair.first), (a.pair.second, b.pair.second)):
            assert isinstance(s1.obs.frames, FrameRef) and s1.uid == s0.uid and s1.length == s0.length
            assert np.array_equal(np.asarray(s1.obs.frames), s0.obs.frames)
            assert np.array_equal(s1.acts, s0.acts) and np.array_equal(s1.true_rewards, s0.true_rewards)
    obs0, _ = segment_steps([s for lb in raw for s in (lb.pair.first, lb.pair.second)])
    obs1, _ = segment_steps([s for lb in stored for s in (lb.pair.first, lb.pair.second)])
    assert np.array_equal(obs0, obs1)
    # What goes to the reward worker is the reference, not the 56 KB of frames.
    assert len(pickle.dumps(stored[0])) < 3000 < len(pickle.dumps(raw[0]))
    # Clips that are not uint8 frame stacks stay as they are.
    plain = Segment(np.zeros((5, 3), np.float32), np.zeros(5, int))
    assert ff.put(plain) is plain
    ff.close()


def test_a_dataset_with_a_frame_file_trains_exactly_as_one_holding_the_frames(tmp_path):
    results = []
    for ff in (None, FrameFile(tmp_path / "f.u8")):
        ds = PreferenceDataset(max_size=None, frame_file=ff)
        for lb in labels(10):
            ds.add(lb)
        assert all(isinstance(s.obs.frames, FrameRef) == (ff is not None) for lb in ds.labels
                   for s in (lb.pair.first, lb.pair.second))
        ens = RewardEnsemble(EnsembleConfig.atari(n_members=2, cnn_filters=4, cnn_fc=8), (84, 84, 4), (), n_actions=6)
        rep = RewardTrainer(ens, RewardTrainerConfig(batch_size=4), np.random.default_rng(0)).train(ds, epochs=2)
        results.append((rep.train_loss, rep.val_loss, [p.detach().clone() for p in ens.members.parameters()]))
    assert results[0][:2] == results[1][:2]
    assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(results[0][2], results[1][2], strict=True))


def test_resume_reuses_the_file_and_appends_after_it(tmp_path):
    path = tmp_path / "f.u8"
    ff = FrameFile(path)
    first = [ff.put_label(lb) for lb in labels(4)]
    ff.close()
    size = path.stat().st_size
    again = FrameFile(path, resume=True)
    assert again.size == size
    same = again.put_label(labels(4)[1])  # clips 1 and 2: already in the file, nothing written
    assert path.stat().st_size == size and same.pair.first.obs.frames.offset == first[1].pair.first.obs.frames.offset
    new = again.put(clip(np.random.default_rng(9), uid=50))
    again.close()
    assert path.stat().st_size == size + 8 * 84 * 84
    assert FrameFile(path, resume=True).size == size + 8 * 84 * 84
    assert np.array_equal(np.asarray(new.obs.frames), clip(np.random.default_rng(9), uid=50).obs.frames)


def test_a_record_cut_short_by_a_kill_is_dropped_not_refused(tmp_path):
    path = tmp_path / "f.u8"
    ff = FrameFile(path)
    for lb in labels(3):
        ff.put_label(lb)
    ff.close()
    with open(index_path(path), "ab") as f:
        f.write(b"\x01\x02\x03")  # half a record: the process died while writing it
    again = FrameFile(path, resume=True)
    again.put(clip(np.random.default_rng(1), uid=77))
    again.close()
    assert index_path(path).stat().st_size % 32 == 0
    assert 77 in FrameFile(path, resume=True)._refs


@pytest.mark.parametrize("damage", ["truncate", "flip", "no-index"])
def test_a_truncated_or_corrupt_file_is_refused_on_resume_in_one_line_and_left_as_it_was(tmp_path, damage):
    path = tmp_path / "f.u8"
    ff = FrameFile(path)
    for lb in labels(3):
        ff.put_label(lb)
    ff.close()
    if damage == "truncate":
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size - 100)
    elif damage == "flip":
        data = bytearray(path.read_bytes())
        data[12345] ^= 0xFF
        path.write_bytes(bytes(data))
    else:
        index_path(path).unlink()
    before = path.read_bytes()
    with pytest.raises(UserError) as err:
        FrameFile(path, resume=True)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "preference store" in msg
    assert {"truncate": "truncated", "flip": "corrupt", "no-index": "unreadable"}[damage] in msg
    assert path.read_bytes() == before


@pytest.mark.slow
def test_an_atari_run_keeps_its_window_frames_in_the_file_and_resume_refuses_a_damaged_one(tmp_path, capsys):
    import sqlite3

    from rlhf_control import cli
    from rlhf_control.config import RunConfig
    from rlhf_control.loop.trainer import RLHFTrainer
    from rlhf_control.rundir import FRAMES_FILE, POOL_FRAMES_FILE, STORE_FILE
    from rlhf_control.tasks.catalogue import get_task

    task = get_task("Pong").with_overrides(n_envs=2, reward_net_kwargs={"cnn_filters": 4, "cnn_fc": 16},
                                           pretrain_epochs=1, agent={"n_steps": 20})
    cfg = RunConfig(task="Pong", steps=240, labels=8, pretrain_labels=4, seed=0, iteration_steps=120, eval_episodes=0)
    run = tmp_path / "pong"
    trainer = RLHFTrainer(cfg, run, task=task)
    trainer.run()
    frames = run / FRAMES_FILE
    window = {s.uid for lb in trainer.dataset.labels for s in (lb.pair.first, lb.pair.second)}
    assert all(isinstance(s.obs.frames, FrameRef) for lb in trainer.dataset.labels for s in (lb.pair.first, lb.pair.second))
    assert frames.stat().st_size == len(window) * 28 * 84 * 84  # each labelled clip once
    # The pool's clips are held by reference into its ring file, each checked by its uid when read.
    pool = trainer.pool.segments()
    assert pool and all(isinstance(s.obs.frames, FrameRef) and s.obs.frames.tag == s.uid for s in pool)
    assert not (run / POOL_FRAMES_FILE).exists()  # the ring's file goes with the run's process
    # The reference clips that set the reward's mean are labelled ones: by reference, nothing written again.
    reference = trainer.updater.reference_clips()
    assert reference and all(isinstance(s.obs.frames, FrameRef) for s in reference)
    assert frames.stat().st_size == len(window) * 28 * 84 * 84

    def labels_in_store() -> int:
        with sqlite3.connect(run / STORE_FILE) as db:
            return db.execute("SELECT COUNT(*) FROM answers WHERE skipped = 0").fetchone()[0]

    data = bytearray(frames.read_bytes())
    data[len(data) // 2] ^= 0x5A
    frames.write_bytes(bytes(data))
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "corrupt" in err and FRAMES_FILE in err, err
    assert labels_in_store() == 8 and frames.read_bytes() == bytes(data)
    # As the message says: without the two files, resume rebuilds them from the store.
    frames.unlink()
    index_path(frames).unlink()
    assert cli.main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert labels_in_store() == 8 and frames.stat().st_size == len(window) * 28 * 84 * 84
