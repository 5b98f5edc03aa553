"""HumanOracle: people answer in the browser labelling app (``rlhf_control.web``); the store is the queue.

``submit`` renders the two clips of each query in a background thread (so the training loop never
waits for video encoding), newest query first, and records their paths with
``PreferenceStore.set_clips``; the web app hands out only queries whose clips are ready. The oracle is
paced (:class:`~rlhf_control.oracles.base.PacedOracle`): the loop asks it for a few pairs at a time,
as its labellers need them, rather than queueing a round's worth that would go stale. Answers reach the trainer through the store
(``answers_since``), so ``collect`` returns ``[]``: handing the same answers back as well could
re-record an answer the labeller has just undone.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from rlhf_control.errors import UserError
from rlhf_control.oracles.base import ORACLES, OracleContext, SpecTerm
from rlhf_control.rundir import CLIPS_DIR
from rlhf_control.store.errors import StoreError, UnknownQueryError
from rlhf_control.store.store import PreferenceStore
from rlhf_control.types import Answer, Query, SegmentPair

log = logging.getLogger(__name__)


class PairRenderer(Protocol):
    """Writes the clips of a pair: ``render_pair(pair, dir, query_id) -> (first, second, side_by_side or None)``."""

    def render_pair(self, pair: SegmentPair, directory: Path, query_id: int) -> tuple[str, str, str | None]: ...


class HumanOracle:
    """Oracle whose answers come from people labelling in the web app.

    ``renderer``: anything with ``render_pair`` (e.g. ``rlhf_control.video.render.SegmentRenderer``); without
    one, queries stay in the store without clips (and the app shows nothing until clips are recorded
    by someone else). ``clips_dir``: where clips go (default ``<store dir>/clips``, which the app
    serves). On construction, pending queries without clips (a resumed run) are queued for rendering.
    """

    def __init__(self, store: PreferenceStore, renderer: PairRenderer | None = None,
                 clips_dir: str | os.PathLike | None = None) -> None:
        self.store = store
        self.renderer = renderer
        self.clips_dir = Path(clips_dir) if clips_dir is not None else store.path.parent / CLIPS_DIR
        self.errors: list[tuple[int, str]] = []  # (query_id, one-line reason) of failed renders
        self._queue: queue.Queue[Query | int | None] = queue.LifoQueue()  # the newest pair first
        self._queued: set[int] = set()  # query ids queued or being rendered, so none is drawn twice
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        remove_partial_clips(self.clips_dir)  # a killed run's half-written clips
        if renderer is not None:
            missing = [r.query_id for r in store.pending_queries() if not (r.clip_first and r.clip_second)]
            if missing:
                self._enqueue(missing)

    # ---- Oracle protocol ---------------------------------------------------------------------
    def submit(self, queries: Sequence[Query]) -> None:
        """Queue the queries' clips for rendering (returns at once); the queries must be in the store."""
        if self._closed:
            raise ValueError("this HumanOracle is closed; make a new one")
        if self.renderer is not None and queries:
            self._enqueue(list(queries))

    def collect(self) -> list[Answer]:
        """Always ``[]``: the trainer reads the answers from the store (``answers_since``)."""
        return []

    @property
    def pending(self) -> int:
        """Queries in the store still waiting for an answer."""
        return self.store.count_pending()

    def resume(self, pending: Sequence[Query]) -> None:
        """Nothing was lost: the store is this oracle's queue, and clips still missing were queued for
        rendering when it was made."""

    def unheld(self) -> int:
        """Pending queries that no labeller holds now (rendered or still being rendered)."""
        return sum(1 for *_, holder in self.store.pending_overview() if holder is None)

    # ---- rendering ---------------------------------------------------------------------------
    def _enqueue(self, items: list[Query | int]) -> None:
        with self._lock:
            for item in items:
                qid = item if isinstance(item, int) else item.query_id
                if qid not in self._queued:
                    self._queued.add(qid)
                    self._queue.put(item)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="human-oracle-render", daemon=True)
                self._thread.start()

    def _relative(self, path: str | os.PathLike | None) -> str | None:
        """Clip paths are stored relative to the run directory when inside it, so the run can move."""
        if path is None:
            return None
        p = Path(path).resolve()
        root = self.store.path.parent.resolve()
        return p.relative_to(root).as_posix() if p.is_relative_to(root) else str(p)

    def _render_one(self, item: Query | int) -> None:
        qid = item if isinstance(item, int) else item.query_id
        try:
            rec = self.store.get_query(qid)
        except UnknownQueryError:
            self.errors.append((qid, "not in the store"))
            log.warning("human oracle: query %d is not in the store; not rendered", qid)
            return
        if rec.status != "pending" or (rec.clip_first and rec.clip_second):
            return  # answered or retired meanwhile (nobody will watch it), or already rendered
        pair = self.store.load_query(qid).pair if isinstance(item, int) else item.pair
        self.clips_dir.mkdir(parents=True, exist_ok=True)
        first, second, side = self.renderer.render_pair(pair, self.clips_dir, qid)
        self.store.set_clips(qid, self._relative(first), self._relative(second), self._relative(side))

    def _work(self) -> None:
        try:
            while True:
                item = self._queue.get()
                try:
                    if item is None:
                        return
                    self._render_one(item)
                except StoreError:  # the store was closed (run over): drop what is left
                    self._drain()
                    return
                except Exception as exc:  # one bad clip must not stop the others
                    qid = item if isinstance(item, int) else getattr(item, "query_id", -1)
                    msg = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                    self.errors.append((qid, msg))
                    # No page can show it: retired, it no longer counts as asked nor as ready to label,
                    # so the loop asks another pair in its place.
                    try:
                        self.store.retire(qid)
                    except StoreError:
                        pass
                    log.warning("human oracle: rendering query %d failed (%s); retired, another pair will be asked",
                                qid, msg)
                finally:
                    if item is not None:
                        with self._lock:
                            self._queued.discard(item if isinstance(item, int) else item.query_id)
                    self._queue.task_done()
        finally:
            # A renderer's GL context belongs to the thread that made it: free it here.
            close = getattr(self.renderer, "close", None)
            if callable(close):
                try:
                    close()
                except Exception as exc:
                    log.warning("human oracle: closing the renderer failed (%s)", exc)

    def _drain(self) -> None:
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return
            self._queue.task_done()

    def wait_rendered(self, timeout: float | None = None) -> bool:
        """Block until every queued clip is rendered (or failed); False if ``timeout`` seconds passed first."""
        done = threading.Event()

        def join() -> None:
            self._queue.join()
            done.set()

        threading.Thread(target=join, daemon=True).start()
        return done.wait(timeout)

    def close(self, timeout: float = 30.0, finish: bool = True) -> None:
        """Render the clips already queued (waiting up to ``timeout`` s; none with ``finish=False``, only
        the one being written), then stop the render thread and close the renderer (if it has
        ``close``). Clips left unrendered are rendered by whoever serves the run next. Idempotent."""
        self._closed = True
        with self._lock:
            thread = self._thread
        if thread is not None and thread.is_alive():
            deadline = time.monotonic() + timeout
            if finish:
                self.wait_rendered(timeout)
            self._drain()
            self._queue.put(None)  # (a LIFO queue: the stop comes next)
            thread.join(max(0.0, deadline - time.monotonic()))
        remove_partial_clips(self.clips_dir)


def remove_partial_clips(clips_dir: Path) -> int:
    """Delete the hidden ``.*.tmp`` files a kill mid-encoding leaves in ``clips_dir``; how many."""
    n = 0
    if clips_dir.is_dir():
        for tmp in clips_dir.glob(".*.tmp"):
            try:
                tmp.unlink()
                n += 1
            except OSError:
                pass
    return n


__all__ = ["HumanOracle", "PairRenderer", "remove_partial_clips"]


class _HumanFactory:
    """``human``: people label in the browser; needs the run's store, and a renderer to show them clips."""

    shows_clips = True
    needs_true_reward = False

    def check(self, terms: list[SpecTerm]) -> None:
        if terms[0].params:
            raise UserError(f"oracle 'human' takes no options (got {terms[0]})")

    def build(self, terms: list[SpecTerm], seed: int, context: OracleContext) -> HumanOracle:
        if context.store is None:
            raise ValueError("oracle 'human' needs the run's preference store; build it with an OracleContext")
        return HumanOracle(context.store, renderer=context.renderer, clips_dir=context.clips_dir)


ORACLES.register("human")(_HumanFactory())
