"""Reward training in a second process, one iteration behind the agent.

The paper trains the reward predictor asynchronously with the agent. Here the trainer hands each
retraining to a child process as a *job* (the ensemble's weights, the trainer's state and random
generator, the labels the child has not seen yet, and the recent clips that set the output
normalisation) and goes on with the next rollout; at the start of the next iteration it takes the
job's result: new weights, fitter state and report. The main process holds the authoritative state
between jobs, so checkpoints and resume work as in synchronous training, and a job's result is
exactly what :func:`rlhf_control.reward.fitting.retrain` gives in one process with the same fitter
(the only difference from synchronous training is that the agent sees each new reward one rollout
later). :mod:`rlhf_control.reward.updater` runs this worker's life cycle for the loop.

The child is a plain ``python -m rlhf_control.reward.worker`` started with two pipes (not
``multiprocessing``: spawning would re-run an unguarded ``__main__`` of the user's script, and
forking copies the label server's threads). It exits when the parent closes the pipes or dies.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import signal
import subprocess
import sys
import traceback
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from rlhf_control.types import Label, Segment, SegmentPair


class RewardWorkerError(RuntimeError):
    """The child failed a job or is gone; the parent's own state is untouched."""


def _strip(seg: Segment) -> Segment:
    # Render states (MuJoCo qpos/qvel per step) are only needed to draw clips.
    return seg if seg.render_ref is None else dataclasses.replace(seg, render_ref=None)


def _strip_label(label: Label) -> Label:
    return Label(SegmentPair(_strip(label.pair.first), _strip(label.pair.second)), label.value)


class RewardWorker:
    """Parent side: one child process that runs one training job at a time.

    ``trainer_config`` (a :class:`RewardTrainerConfig`), ``window`` (the label window's size),
    ``threads`` (torch threads in the child) and ``fitter`` (a name in
    :data:`~rlhf_control.reward.fitting.FITTERS`) are fixed for the worker's life. With ``continuous``
    a job goes on training, one pass over the window at a time, after its epochs until
    :meth:`result` asks for it (the paper's predictor trains without pause; the result then depends
    on timing).
    """

    def __init__(self, trainer_config: Any, window: int | None, threads: int = 1, device: str = "cpu",
                 fitter: str = "comparisons", continuous: bool = False) -> None:
        p_read, c_write = os.pipe()
        c_read, p_write = os.pipe()
        env = dict(os.environ)
        # The child's tensors are small: one BLAS/OpenMP thread unless asked for more.
        env.setdefault("OMP_NUM_THREADS", str(threads))
        # glibc keeps freed blocks under its (self-raising, up to 32 MB) mmap threshold in the heap: a
        # CNN training step's 16-35 MB pieces then left 250-300 MB of holes that raised the next step's
        # peak (1.13 GB instead of 0.91 GB resident, measured). A fixed 1 MB threshold returns them.
        env.setdefault("MALLOC_MMAP_THRESHOLD_", str(1 << 20))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rlhf_control.reward.worker", str(c_read), str(c_write)],
            pass_fds=(c_read, c_write), stdin=subprocess.DEVNULL, env=env, close_fds=True,
        )
        os.close(c_read)
        os.close(c_write)
        self._send_conn = Connection(p_write, readable=False)
        self._recv_conn = Connection(p_read, writable=False)
        self.sent_seq = -1  # highest label seq the child's window holds
        self.sent_removals = 0  # the dataset's removals the child's window has seen
        self._sent_uids: set[int] = set()  # pool segments the child keeps for the output normalisation
        self.busy = False
        self.continuous = bool(continuous)
        self._send({"init": {"config": trainer_config, "window": window, "threads": threads, "device": device,
                             "fitter": fitter, "continuous": self.continuous}})

    def _send(self, msg: dict[str, Any]) -> None:
        try:
            _send(self._send_conn, msg)
        except (BrokenPipeError, OSError) as e:
            raise RewardWorkerError(f"reward worker is gone (exit code {self.proc.poll()}): {e}") from None

    def submit(self, ensemble: Any, trainer: Any, dataset: Any, epochs: int, norm_segments: Sequence[Segment],
               centre: Sequence[Segment] | None = None) -> None:
        """Start training a copy of ``ensemble`` with a copy of the fitter ``trainer`` on ``dataset`` for
        ``epochs``, then setting its output normalisation on ``norm_segments`` (its mean on ``centre``
        when given: see :func:`retrain`). The caller must not train ``ensemble`` itself until
        :meth:`result` has been called."""
        if self.busy:
            raise RewardWorkerError("a reward job is already running; take its result first")
        seqs = dataset.seqs
        # Labels taken out of the window (undone answers) since the last job: send the whole window again.
        reset = getattr(dataset, "removals", 0) != self.sent_removals
        since = -1 if reset else self.sent_seq
        new = [(int(s), _strip_label(lb)) for lb, s in zip(dataset.labels, seqs, strict=True) if s > since]
        self._send({
            "job": {
                "ensemble": ensemble.blob(),
                "trainer": trainer.state_dict(),
                "rng": trainer.rng.bit_generator.state,
                "labels": new,
                "reset": reset,
                "epochs": int(epochs),
                "norm": self._norm_message(norm_segments, centre or []),
            }
        })
        if len(seqs):
            self.sent_seq = int(seqs[-1])
        self.sent_removals = getattr(dataset, "removals", 0)
        self.busy = True

    def _norm_message(self, segments: Sequence[Segment], centre: Sequence[Segment]) -> dict[str, Any]:
        """The normalisation clips: the recent pool segments change by one rollout's worth per job
        and the centre's not at all, so stored segments (unique ``uid`` >= 0) are sent once and named
        by uid afterwards."""
        uids, centre_uids = [int(s.uid) for s in segments], [int(s.uid) for s in centre]
        if any(u < 0 for u in uids + centre_uids) or len(set(uids)) != len(uids) or len(set(centre_uids)) != len(centre_uids):
            self._sent_uids = set()
            return {"segments": [_strip(s) for s in segments], "centre": [_strip(s) for s in centre]}
        new = {s.uid: _strip(s) for s in [*segments, *centre] if s.uid not in self._sent_uids}
        self._sent_uids = set(uids) | set(centre_uids)
        return {"uids": uids, "centre_uids": centre_uids, "new": new}

    def ready(self) -> bool:
        """Whether the running job's result can be taken without waiting (never for a continuous job,
        which trains until asked)."""
        try:
            return self.busy and not self.continuous and self._recv_conn.poll()
        except (OSError, EOFError):
            return True  # the child is gone: result() says so

    def result(self, ensemble: Any, trainer: Any) -> Any:
        """Wait for the running job; load its weights and trainer state into ``ensemble`` and
        ``trainer`` and return its :class:`TrainReport`. Raises :class:`RewardWorkerError`
        (leaving both untouched) when the job failed or the child died."""
        if not self.busy:
            raise RewardWorkerError("no reward job is running")
        self.busy = False
        try:
            if self.continuous:
                self._send({"take": True})
            msg = _recv(self._recv_conn)
        except (EOFError, OSError):
            code = self.proc.wait(timeout=10)
            raise RewardWorkerError(f"reward worker exited (code {code}) during a job") from None
        if "error" in msg:
            raise RewardWorkerError(f"reward worker failed a job: {msg['error']}")
        ensemble.load_blob_weights(msg["ensemble"])
        trainer.load_state_dict(msg["trainer"])
        trainer.rng.bit_generator.state = msg["rng"]
        return msg["report"]

    def close(self, timeout: float = 0.1) -> None:
        """Stop the child: it exits when its input pipe closes, or is killed after ``timeout`` seconds."""
        for conn in (self._send_conn, self._recv_conn):
            try:
                conn.close()
            except OSError:
                pass
        # It holds nothing worth keeping: no need to wait long for its interpreter to shut down.
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _send(conn: Connection, msg: dict[str, Any]) -> None:
    # Plain pickle: Connection.send would use torch's reductions, which share tensors through file
    # descriptors handed over by a multiprocessing server that this child is not part of.
    conn.send_bytes(pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL))


def _recv(conn: Connection) -> dict[str, Any]:
    return pickle.loads(conn.recv_bytes())


# ----------------------------------------------------------------------------- child side
def _run_job(state: dict[str, Any], job: dict[str, Any], recv: Connection | None = None) -> dict[str, Any]:
    from rlhf_control.reward.ensemble import RewardEnsemble
    from rlhf_control.reward.fitting import make_fitter, retrain

    ens = state.get("ensemble")
    if ens is None:
        ens = state["ensemble"] = RewardEnsemble.from_blob(job["ensemble"], state["device"])
        state["trainer"] = make_fitter(state["fitter"], ens, state["config"], np.random.default_rng(0))
    else:
        ens.load_blob_weights(job["ensemble"])
    trainer = state["trainer"]
    trainer.load_state_dict(job["trainer"])
    trainer.rng.bit_generator.state = job["rng"]
    dataset = state["dataset"]
    if job.get("reset"):
        dataset = state["dataset"] = type(dataset)(dataset.max_size)
    for seq, label in job["labels"]:
        dataset.add(label, seq=seq)
    norm = job["norm"]
    if "segments" in norm:
        segments, centre = norm["segments"], norm["centre"]
        state["clips"] = {}
    else:
        clips = state.setdefault("clips", {})
        clips.update(norm["new"])
        segments, centre = [clips[u] for u in norm["uids"]], [clips[u] for u in norm["centre_uids"]]
        state["clips"] = {u: clips[u] for u in [*norm["uids"], *norm["centre_uids"]]}
    keep_going = None
    if state.get("continuous") and recv is not None:
        keep_going = lambda: not recv.poll()  # noqa: E731  (until the parent asks for the result)
    report = retrain(trainer, dataset, job["epochs"], segments, keep_going, centre=centre or None)
    if keep_going is not None and "take" not in _recv(recv):
        raise RuntimeError("expected the parent's request for the job's result")
    return {"ensemble": ens.blob(), "trainer": trainer.state_dict(), "rng": trainer.rng.bit_generator.state,
            "report": report}


def _child(read_fd: int, write_fd: int) -> None:
    # Ctrl-C reaches the whole process group: the parent stops the run and closes the pipes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    recv = Connection(read_fd, writable=False)
    send = Connection(write_fd, readable=False)
    state: dict[str, Any] = {}
    while True:
        try:
            msg = _recv(recv)
        except (EOFError, OSError):
            return  # the parent closed the pipe or died
        if "init" in msg:
            import torch

            from rlhf_control.reward.dataset import PreferenceDataset

            init = msg["init"]
            torch.set_num_threads(int(init["threads"]))
            state.update(config=init["config"], device=init["device"], fitter=init["fitter"],
                         continuous=init.get("continuous", False), dataset=PreferenceDataset(init["window"]))
            continue
        try:
            reply = _run_job(state, msg["job"], recv)
        except Exception as e:  # reported to the parent, which trains the job itself
            reply = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        try:
            _send(send, reply)
        except (BrokenPipeError, OSError):
            return


if __name__ == "__main__":
    _child(int(sys.argv[1]), int(sys.argv[2]))
