"""Where sweep runs execute: a local process pool or a Ray cluster, and the worker entry point.

Each run gets a fresh process (spawned pool worker with ``max_tasks_per_child=1``, Ray worker with
``max_calls=1``) and one torch thread, so a run's numbers depend only on its config and seed, not on
the backend or on the runs before it in the same process.

Ray: without ``--address`` a local cluster is started for the sweep and stopped after it. On a
remote cluster every node needs rlhf-control installed, and checkpoints are only shared (so only
resumable from another node) when the output directory is on a file system all nodes mount; the
result files (``config.toml``, ``metrics.csv``, ``DONE``, ...) always come back to the driver's
output directory. Ray 2.x clusters with token authentication need ``RAY_AUTH_MODE=token`` and the
token on the driver. ``device = "auto"`` runs on CPU unless ``gpus_per_run`` asks for a GPU.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rlhf_control.errors import UserError
from rlhf_control.rundir import BASELINE_FILE, CONFIG_FILE, DONE_FILE, METRICS_FILE, write_atomic, write_json

Payload = dict[str, Any]
OnResult = Callable[[dict[str, Any]], None]

POINT_FILE = "point.json"  # the grid point a sweep run stands for (the report groups runs by it)
ERROR_FILE = "error.txt"  # the traceback of a run that failed; removed when a retry succeeds
# The files a worker sends back to the driver (a cluster need not share a file system).
SHIPPED_FILES = (CONFIG_FILE, METRICS_FILE, DONE_FILE, POINT_FILE, BASELINE_FILE, ERROR_FILE)
# The ablation that fits the reward to true segment returns instead of comparisons (a reward fitter).
REGRESSION = "true-return-regression"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _worker_env() -> None:
    # Before torch is imported in the worker: one thread per run, headless rendering.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")


def _init_worker() -> None:
    # A Ray worker ignores SIGINT while idle (else a stop printed its KeyboardInterrupt traceback); a pool
    # worker is born with it blocked (submit). execute_point turns it back on for its run (_interruptible).
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker_env()


def _interruptible() -> None:
    """The first SIGINT raises KeyboardInterrupt again (a sweep started by ``cmd &`` ignores SIGINT, and
    its workers inherit that), later ones are ignored (Ctrl-C at a terminal and the sweep's forward reach
    a run twice: it finishes its checkpoint). A pool worker is born with SIGINT blocked (:func:`submit`):
    unblocked here, a stop that came while it started or idled stops the run before it writes anything."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    stopping = [False]

    def handler(signum: int, frame: Any) -> None:
        if not stopping[0]:
            stopping[0] = True
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def execute_point(payload: Payload) -> dict[str, Any]:
    """Run one grid point to the end (resuming if asked); never raises: a failure comes back as a
    one-line error and its traceback goes to ``error.txt`` in the run directory."""
    _worker_env()
    _interruptible()
    t0 = time.time()
    run_dir = Path(payload["run_dir"])
    res: dict[str, Any] = {"name": payload["name"], "status": "ok", "error": None}
    try:
        import torch

        torch.set_num_threads(1)
        from rlhf_control.config import run_config_from_dict

        cfg = run_config_from_dict(payload["cfg"], where=payload["name"])
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / POINT_FILE, payload["point"])
        if payload["kind"] == "baseline":
            from rlhf_control.experiments.baseline import train_baseline

            train_baseline(cfg, run_dir, resume=payload["resume"])
        else:
            from rlhf_control.loop.trainer import RLHFTrainer

            RLHFTrainer(cfg, run_dir, resume=payload["resume"]).run()
        (run_dir / ERROR_FILE).unlink(missing_ok=True)
    except Exception as exc:  # one run's failure must not stop the sweep
        res.update(status="failed", error=_one_line(exc))
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(run_dir / ERROR_FILE, traceback.format_exc())
        except OSError:
            pass
    res["seconds"] = time.time() - t0
    if payload.get("ship_files"):
        # For a cluster without a shared file system: the driver writes these into its output directory.
        res["files"] = {f: (run_dir / f).read_bytes() for f in SHIPPED_FILES if (run_dir / f).is_file()}
    return res


def sync_files(out: Path, res: dict[str, Any]) -> None:
    """Write the result files a worker sent back, where the driver's copy is missing or differs."""
    for fname, data in (res.get("files") or {}).items():
        target = Path(out) / res["name"] / fname
        if target.is_file() and target.read_bytes() == data:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target, data)


def _failed(payload: Payload, exc: BaseException) -> dict[str, Any]:
    return {"name": payload["name"], "status": "failed", "error": _one_line(exc), "seconds": 0.0}


def default_workers(cpus_per_run: float) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, int(cores // max(cpus_per_run, 1e-9)))


class Terminated(KeyboardInterrupt):
    """The sweep was sent SIGTERM (:func:`stop_on_sigterm`): stopped as Ctrl-C stops it, runs included."""


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """In this block SIGTERM raises :class:`Terminated` in the main thread, so the sweep stops its runs."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


STOP_SECONDS = 120.0  # how long stopped runs get to checkpoint before they are killed


def stop_pool(pool: Any, running: Any, timeout: float = STOP_SECONDS) -> None:
    """Stop a pool's runs as Ctrl-C stops one ``train`` (nothing more is queued): each worker gets SIGINT
    (:func:`_interruptible`), the ``running`` futures get ``timeout`` seconds, then the pool shuts down.
    A run still going then, or a second stop (Ctrl-C, SIGTERM) during the wait, has every worker killed
    first; none is killed when the runs have finished (an idle worker holds the call queue's lock, and
    killing it there left its replacement blocked on that lock for ever)."""
    import signal
    from concurrent.futures import wait

    def alive() -> list[Any]:
        out = []
        for proc in list((getattr(pool, "_processes", None) or {}).values()):  # the executor's own workers
            with contextlib.suppress(OSError, ValueError):
                if proc.is_alive():
                    out.append(proc)
        return out

    finished = False
    try:
        for proc in alive():
            with contextlib.suppress(OSError):
                os.kill(proc.pid, signal.SIGINT)
        finished = not wait(list(running), timeout=timeout).not_done
    finally:  # (also when a second stop interrupts the wait)
        if not finished:
            _kill_until_quiet(alive)
        pool.shutdown(wait=True, cancel_futures=True)


def _kill_until_quiet(alive: Callable[[], list[Any]], quiet: float = 1.0) -> None:
    """Kill the processes ``alive()`` lists, reading it again until it has been empty for ``quiet``
    seconds: a worker that ends its run is replaced by a new one, which is killed too."""
    quiet_until = time.monotonic() + quiet
    while time.monotonic() < quiet_until:
        left = alive()
        for proc in left:
            with contextlib.suppress(OSError):
                proc.kill()
            with contextlib.suppress(OSError, ValueError):
                proc.join(1.0)
        if left:
            quiet_until = time.monotonic() + quiet
        time.sleep(0.05)


def new_pool(n: int) -> Any:
    """The local backend's pool: ``n`` spawned workers, a fresh one for each run."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max_workers=n, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_worker_env, max_tasks_per_child=1)


def submit(pool: Any, fn: Callable[..., Any], *args: Any) -> Any:
    """``pool.submit`` with SIGINT blocked here: the worker it may start and the manager thread the first
    submit starts (so every replacement worker) inherit the mask, and a stop's SIGINT to a worker still
    importing, or idle, waits for :func:`_interruptible` instead of ending it with a traceback."""
    import signal

    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}) if hasattr(signal, "pthread_sigmask") else None
    try:
        return pool.submit(fn, *args)
    finally:
        if old is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


def run_local(payloads: list[Payload], workers: int | None, on_result: OnResult) -> None:
    """Run the payloads on a spawned process pool, ``workers`` at once, each submitted when a worker is
    free (so none waits in the pool's queue to start after a stop). Stopped (Ctrl-C, or SIGTERM under
    :func:`stop_on_sigterm`), it stops its runs after their checkpoints (:func:`stop_pool`). A worker
    that dies (killed, out of memory) fails its run, and the runs after it get a new pool."""
    if not payloads:
        return
    from concurrent.futures import FIRST_COMPLETED, wait
    from concurrent.futures.process import BrokenProcessPool

    n = min(workers or default_workers(max(p["cpus"] for p in payloads)), len(payloads))
    pool, waiting, running = new_pool(n), list(payloads), {}
    try:
        while waiting or running:
            while waiting and len(running) < n:
                try:
                    fut = submit(pool, execute_point, waiting[0])
                except BrokenProcessPool:  # a worker died: the pool takes no more work
                    pool.shutdown(wait=True)
                    pool = new_pool(n)
                    continue
                running[fut] = waiting.pop(0)
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                payload = running.pop(fut)
                try:
                    res = fut.result()
                except Exception as exc:  # the worker process died (killed, out of memory)
                    res = _failed(payload, exc)
                on_result(res)
    except BaseException:
        stop_pool(pool, running)
        raise
    pool.shutdown(wait=True)


def _check_reachable(address: str) -> None:
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UserError(f"Ray address {address!r} is not host:port, ray://host:port or auto")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise UserError(f"Ray address {address!r} is unreachable ({exc.strerror or exc}); "
                         "start the cluster (ray start --head) or leave out --address for a local one") from None


def _ray_init(ray: Any, **kw: Any) -> None:
    """``ray.init``, keeping this process's Python SIGTERM handler: Ray's core installs a C handler over
    it that logs and ends the process (so :func:`stop_on_sigterm` could not stop the runs)."""
    import signal
    import threading

    handler = signal.getsignal(signal.SIGTERM)
    try:
        ray.init(**kw)
    finally:
        if callable(handler) and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, handler)


def connect_ray(address: str | None, workers: int | None) -> bool:
    """Connect to the cluster at ``address`` (or start a local one); True if this call started Ray."""
    try:
        import ray
    except ImportError:
        raise UserError("the ray backend needs Ray: pip install 'rlhf-control[ray]'") from None
    if ray.is_initialized():
        return False
    if address not in (None, "auto"):
        _check_reachable(address)
    _init_worker()  # inherited by the workers a local cluster starts
    kw: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False}
    if address is None:
        try:
            _ray_init(ray, address="local", num_cpus=workers, include_dashboard=False, **kw)
        except Exception as exc:
            raise UserError(f"cannot start a local Ray cluster: {_one_line(exc)}") from None
        return True
    error = None
    with _captured_stderr() as captured:
        try:
            _ray_init(ray, address=address, **kw)
        except Exception as exc:
            error = exc
    log = "".join(captured)
    if error is None:
        sys.stderr.write(log)
        return True
    # Ray's C++ client logs a line per retry on fd 2; the one-line error replaces them, with their reason.
    reasons = [line.split("RPC error:", 1)[1].strip() for line in log.splitlines() if "RPC error:" in line]
    why = f" ({reasons[-1]})" if reasons else ""
    hint = ("; the cluster uses token authentication: set RAY_AUTH_MODE=token and its token (RAY_AUTH_TOKEN or "
            "~/.ray/auth_token), or use --address auto on a cluster node"
            if "Authentication token" in why else "")
    raise UserError(f"cannot connect to Ray at {address!r}: {_one_line(error)}{why}{hint}")


@contextlib.contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """Redirect file descriptor 2 (C++ logging included) to a temporary file inside the block;
    the yielded list holds what was written once the block has ended."""
    sys.stderr.flush()
    saved = os.dup(2)
    out: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.append(tmp.read().decode(errors="replace"))


def run_ray(payloads: list[Payload], workers: int | None, on_result: OnResult) -> None:
    """Run each payload as a Ray task with its CPU and GPU needs (at most ``workers`` in flight)."""
    if not payloads:
        return
    import ray

    remote = ray.remote(max_calls=1)(execute_point)
    waiting = list(payloads)
    inflight: dict[Any, Payload] = {}
    limit = workers or len(payloads)
    try:
        while waiting or inflight:
            while waiting and len(inflight) < limit:
                p = waiting.pop(0)
                inflight[remote.options(num_cpus=p["cpus"], num_gpus=p["gpus"]).remote(p)] = p
            ready, _ = ray.wait(list(inflight), num_returns=1)
            payload = inflight.pop(ready[0])
            try:
                res = ray.get(ready[0])
            except Exception as exc:  # the worker died or the task was lost
                res = _failed(payload, exc)
            on_result(res)
    except BaseException:
        stop_ray_tasks(list(inflight))
        raise


def stop_ray_tasks(refs: list[Any], timeout: float = STOP_SECONDS) -> None:
    """Stop running Ray tasks as Ctrl-C stops one ``train``: each gets a KeyboardInterrupt (Ray's
    non-forced cancel), so its run checkpoints and exits; waited for up to ``timeout`` seconds (then
    the cluster, if this sweep started it, is shut down with whatever is still running)."""
    import ray

    for ref in refs:
        with contextlib.suppress(Exception):
            ray.cancel(ref, force=False)
    if refs:
        with contextlib.suppress(Exception):
            ray.wait(refs, num_returns=len(refs), timeout=timeout)
