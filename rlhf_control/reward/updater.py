"""RewardUpdater: retrains the reward ensemble on the label window, in the reward worker or here.

The loop asks for a retraining with :meth:`RewardUpdater.submit` after an iteration's labels have
arrived and takes the result with :meth:`RewardUpdater.take` at the start of the next iteration. With
a worker (``asynchronous``), the job runs in a second process while the agent collects its next
rollout; without one, or when the worker fails or dies (a one-line warning, then in process for the
rest of the run), ``submit`` trains here and now. Either way the result is the fitter's
:func:`~rlhf_control.reward.fitting.retrain` of the same window, so the two paths give the same
weights. :meth:`train_now` trains here regardless (pretraining, resume, the last iteration).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from rlhf_control.reward.dataset import PreferenceDataset
from rlhf_control.reward.fitting import FitReport, RewardFitter, retrain
from rlhf_control.reward.worker import RewardWorker, RewardWorkerError
from rlhf_control.types import Segment, segment_steps


class RewardUpdater:
    """Owns the reward worker's life cycle and the in-process fallback.

    ``recent_clips()`` returns the clips that set the output scale after each retraining and
    ``reference_clips()`` those that set its mean (the recent ones when it is None or returns none).
    ``worker_args`` (the trainer config, window, threads, device and fitter name) start the worker.
    """

    def __init__(self, fitter: RewardFitter, dataset: PreferenceDataset,
                 recent_clips: Callable[[], Sequence[Segment]], asynchronous: bool,
                 worker_args: dict[str, Any] | None = None,
                 reference_clips: Callable[[], Sequence[Segment]] | None = None) -> None:
        self.fitter = fitter
        self.dataset = dataset
        self.recent_clips = recent_clips
        self.reference_clips = reference_clips or (lambda: [])
        self.asynchronous = asynchronous
        self.worker_args = worker_args or {}
        self.worker: RewardWorker | None = None
        self.last_report: FitReport | None = None
        self.trained_answer_id = 0  # the last answer (label seq) the ensemble's weights were trained on
        self._job: tuple[int, int] | None = None  # (epochs, last answer id) of the job in the worker

    @property
    def ensemble(self) -> Any:
        return self.fitter.ensemble

    def start(self) -> None:
        """Start the worker (when asynchronous); a failed start leaves training in this process."""
        if not self.asynchronous or self.worker is not None:
            return
        try:
            self.worker = RewardWorker(**self.worker_args)
        except (OSError, RewardWorkerError) as e:
            print(f"warning: no reward worker ({e}); training the reward in the main process",
                  file=sys.stderr, flush=True)
            self.worker = None

    def _prepare(self) -> None:
        ens = self.ensemble
        if ens.uses_input_norm and not ens.input_stats_set:
            # Fixed once, from the first labelled clips (random-policy clips when there is pretraining).
            segs = [s for lb in self.dataset.labels for s in (lb.pair.first, lb.pair.second)]
            ens.set_input_stats(segment_steps(segs)[0])

    def train_now(self, epochs: int) -> None:
        """Retrain on the window in this process (nothing to do on an empty window)."""
        if len(self.dataset) == 0:
            return
        self._prepare()
        self.last_report = retrain(self.fitter, self.dataset, epochs, self.recent_clips(),
                                   centre=self.reference_clips() or None)
        self.trained_answer_id = int(self.dataset.seqs[-1])

    def submit(self, epochs: int) -> None:
        """Retrain in the worker while the agent's next rollout runs (here and now without one)."""
        if self.worker is None or len(self.dataset) == 0:
            self.train_now(epochs)
            return
        self._prepare()
        try:
            self.worker.submit(self.ensemble, self.fitter, self.dataset, epochs, self.recent_clips(),
                               centre=self.reference_clips() or None)
        except RewardWorkerError as e:
            self._drop_worker(e)
            self.train_now(epochs)
            return
        self._job = (epochs, int(self.dataset.seqs[-1]))

    def ready(self) -> bool:
        """Whether a job runs in the worker and its result can be taken now without waiting."""
        return self._job is not None and self.worker is not None and self.worker.ready()

    @property
    def running(self) -> bool:
        """Whether a job was submitted to the worker and not taken yet."""
        return self._job is not None

    def behind(self) -> bool:
        """Whether the window holds labels that neither the weights nor the running job learn from."""
        covered = self._job[1] if self._job is not None else self.trained_answer_id
        return len(self.dataset) > 0 and int(self.dataset.seqs[-1]) > covered

    def take(self, wait: bool = True) -> bool:
        """Take the running job's weights, waiting for it (without ``wait``: only if it has finished);
        False when none was taken."""
        if self._job is None or not (wait or self.ready()):
            return False
        epochs, answer_id = self._job
        self._job = None
        try:
            self.last_report = self.worker.result(self.ensemble, self.fitter)
        except RewardWorkerError as e:
            # The ensemble and fitter are as they were at submission: train the job here instead.
            self._drop_worker(e)
            self.train_now(epochs)
            return True
        self.trained_answer_id = answer_id
        return True

    def _drop_worker(self, err: Exception) -> None:
        print(f"warning: {err}; training the reward in the main process from now on", file=sys.stderr, flush=True)
        self.worker.close(timeout=1)
        self.worker = None

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None
        if self.dataset.frame_file is not None:
            self.dataset.frame_file.close()
