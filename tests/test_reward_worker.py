"""RewardWorker: a job in the child process gives what training in this process gives."""

import dataclasses

import numpy as np
import pytest
import torch

from rlhf_control.reward import (
    EnsembleConfig,
    PreferenceDataset,
    RewardEnsemble,
    RewardTrainer,
    RewardTrainerConfig,
)
from rlhf_control.reward.worker import RewardWorker, RewardWorkerError
from rlhf_control.types import Label, Segment, SegmentPair

OBS, ACT, T = 5, 2, 10


def segments(rng: np.random.Generator, n: int) -> list[Segment]:
    out = []
    for _ in range(n):
        obs = rng.normal(size=(T, OBS)).astype(np.float32)
        acts = rng.uniform(-1, 1, size=(T, ACT)).astype(np.float32)
        out.append(Segment(obs, acts, obs[:, 0] + acts[:, 1], render_ref=[object()] * T))
    return out


def labelled(rng: np.random.Generator, ds: PreferenceDataset, n: int, first_seq: int) -> None:
    segs = segments(rng, 2 * n)
    for i in range(n):
        a, b = segs[2 * i], segs[2 * i + 1]
        ds.add(Label(SegmentPair(a, b), int(np.sign(a.true_return - b.true_return))), seq=first_seq + 3 * i)


def make(seed: int = 0) -> tuple[RewardEnsemble, RewardTrainer]:
    ens = RewardEnsemble(EnsembleConfig(), (OBS,), (ACT,), seed=seed)
    trainer = RewardTrainer(ens, RewardTrainerConfig(seed=seed), np.random.default_rng(seed + 1))
    return ens, trainer


def flat(ens: RewardEnsemble) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in ens.members.parameters()])


def test_jobs_in_the_worker_match_training_here_across_a_sliding_window():
    rng = np.random.default_rng(0)
    ds = PreferenceDataset(max_size=60)
    labelled(rng, ds, 40, 0)
    here, here_trainer = make()
    there, there_trainer = make()
    for ens in (here, there):
        ens.set_input_stats(np.concatenate([lb.pair.first.obs for lb in ds.labels]))
    worker = RewardWorker(there_trainer.config, window=60)
    try:
        for round_ in range(3):
            norm = segments(rng, 20)
            worker.submit(there, there_trainer, ds, epochs=2, norm_segments=norm)
            before = flat(there).clone()
            report = worker.result(there, there_trainer)
            assert not torch.equal(before, flat(there))  # the child's weights came back

            expected = here_trainer.train(ds, epochs=2)
            here.update_normalization(norm)
            torch.testing.assert_close(flat(there), flat(here), rtol=0, atol=1e-6)
            torch.testing.assert_close(there.norm_mean, here.norm_mean)
            assert there_trainer.l2 == here_trainer.l2
            assert there_trainer.epochs_done == here_trainer.epochs_done
            assert report.n_labels == expected.n_labels == len(ds)
            np.testing.assert_allclose(report.train_loss, expected.train_loss, rtol=1e-5)
            # The next job sees only the labels the child has not had yet; older ones leave its window.
            labelled(rng, ds, 15, 1000 * (round_ + 1))
        # The trainers' random generators moved on in step, so later jobs stay identical too.
        assert there_trainer.rng.integers(1 << 30) == here_trainer.rng.integers(1 << 30)
    finally:
        worker.close()
    assert worker.proc.poll() is not None  # the child is gone with the worker


def test_pool_clips_for_the_normalisation_are_sent_once():
    """The recent clips slide and the reference (centre) clips stay: each clip crosses the pipe once,
    and the worker sets the same mean (on the centre) and scale (on the recent clips) as this process."""
    rng = np.random.default_rng(3)
    ds = PreferenceDataset()
    labelled(rng, ds, 10, 0)
    ens, trainer = make()
    here, here_trainer = make()
    pool = [dataclasses.replace(s, uid=i) for i, s in enumerate(segments(rng, 12))]
    centre = [dataclasses.replace(s, uid=100 + i) for i, s in enumerate(segments(rng, 3))]
    worker = RewardWorker(trainer.config, window=None)
    sent = []
    build = worker._norm_message
    worker._norm_message = lambda segs, ref: sent.append(build(segs, ref)) or sent[-1]
    try:
        for window in (pool[:8], pool[4:12]):  # as the recent clips slide, only 4 are new
            worker.submit(ens, trainer, ds, epochs=1, norm_segments=window, centre=centre)
            worker.result(ens, trainer)
            here_trainer.train(ds, epochs=1)
            here.update_normalization(window, centre=centre)
            torch.testing.assert_close(ens.norm_mean, here.norm_mean)
            torch.testing.assert_close(ens.norm_std, here.norm_std)
    finally:
        worker.close()
    assert sorted(sent[0]["new"]) == [*range(8), 100, 101, 102]
    assert sorted(sent[1]["new"]) == list(range(8, 12))
    assert all(seg.render_ref is None for seg in sent[1]["new"].values())


def ten_labels_and_a_worker(seed: int):
    ds = PreferenceDataset()
    labelled(np.random.default_rng(seed), ds, 10, 0)
    ens, trainer = make()
    return ds, ens, trainer, RewardWorker(trainer.config, window=None)


def test_a_failed_job_leaves_this_side_untouched_and_says_why():
    ds, ens, trainer, worker = ten_labels_and_a_worker(1)
    try:
        before = flat(ens).clone()
        worker.submit(ens, trainer, ds, epochs=0, norm_segments=[])  # RewardTrainer.train refuses 0
        with pytest.raises(RewardWorkerError, match="epochs=0"):
            worker.result(ens, trainer)
        assert torch.equal(before, flat(ens))
    finally:
        worker.close()


def test_a_dead_worker_is_reported_not_waited_for():
    ds, ens, trainer, worker = ten_labels_and_a_worker(2)
    worker.proc.kill()
    worker.proc.wait()
    with pytest.raises(RewardWorkerError, match="gone|exited"):
        worker.submit(ens, trainer, ds, epochs=1, norm_segments=[])
        worker.result(ens, trainer)
    worker.close()


@pytest.mark.slow
def test_a_continuous_job_keeps_training_until_its_result_is_asked_for():
    import time

    rng = np.random.default_rng(3)
    ds = PreferenceDataset(max_size=60)
    labelled(rng, ds, 30, 0)
    for continuous in (False, True):
        ens, trainer = make()
        ens.set_input_stats(np.concatenate([lb.pair.first.obs for lb in ds.labels]))
        worker = RewardWorker(trainer.config, window=60, continuous=continuous)
        try:
            # A first job waits for the child to start (seconds on a loaded machine), so that the
            # timed one below measures training, not start-up.
            worker.submit(ens, trainer, ds, epochs=1, norm_segments=segments(rng, 10))
            warm = worker.result(ens, trainer)
            worker.submit(ens, trainer, ds, epochs=2, norm_segments=segments(rng, 10))
            time.sleep(1.5)  # the agent's rollout
            report = worker.result(ens, trainer)
            # a second job still works: the worker is back to waiting for jobs
            worker.submit(ens, trainer, ds, epochs=1, norm_segments=segments(rng, 10))
            second = worker.result(ens, trainer)
        finally:
            worker.close()
        if continuous:
            assert report.epochs > 2 and trainer.epochs_done == warm.epochs + report.epochs + second.epochs
        else:
            assert report.epochs == 2 and second.epochs == 1 and trainer.epochs_done == 4
