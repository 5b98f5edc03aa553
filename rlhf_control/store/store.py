"""PreferenceStore: the durable record of queries and answers, one SQLite file per run.

Every oracle's answers go through it (synthetic ones too), so a resumed run rebuilds its label
window from here. Durability: WAL journal with ``synchronous=NORMAL`` by default, so an answer whose
:meth:`PreferenceStore.record_answer` returned has reached the OS and survives a SIGKILL of the
process, but not a power loss; pass ``synchronous="FULL"`` to survive that too (an fsync per commit).

Thread-safe: connections come from a small pool (a thread-per-request web server does not leak
them); writers in this process take a lock and every write is one ``BEGIN IMMEDIATE`` transaction,
so other processes (``busy_timeout``) and threads see all of it or none. The file, its pool and its
transactions are :mod:`rlhf_control.store.db`'s; the rules an answer must pass are
:mod:`rlhf_control.store.answers`'; what the store raises is in :mod:`rlhf_control.store.errors`.

Segments are stored without pickle (:mod:`rlhf_control.store.serialize`: npy arrays in a zlib blob,
``render_ref`` as JSON or dropped); answers go to JSONL/CSV files and back through
:mod:`rlhf_control.store.io`. A segment with ``uid=-1`` gets the next free id; give segments run-unique
uids so a segment shared by two queries is stored once. Label convention: +1 first better, -1 second
better, 0 equal, NULL + skipped=1.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rlhf_control.store import leases
from rlhf_control.store.answers import check_answer, export_rows, import_row, insert_answer, undo_latest
from rlhf_control.store.db import Database, new_store_file
from rlhf_control.store.errors import StoreError, UnknownQueryError
from rlhf_control.store.leases import check_labeller_name
from rlhf_control.store.serialize import ENCODING, decode_segment, encode_segment
from rlhf_control.types import Answer, Label, Query, Segment, SegmentPair

__all__ = ["PreferenceStore", "QueryRecord"]


@dataclass(frozen=True)
class QueryRecord:
    """A query row. Times are unix seconds; ``created_step`` is the agent step when it was asked."""

    query_id: int
    first_id: int
    second_id: int
    created: float
    created_step: int
    status: str
    clip_first: str | None
    clip_second: str | None
    clip_pair: str | None
    assigned_to: str | None
    assigned_at: float | None
    lease_until: float | None


_QCOLS = "id, first_id, second_id, created, created_step, status, clip_first, clip_second, clip_pair, " \
         "assigned_to, assigned_at, lease_until"
_SEGCOLS = "id, episode_id, start_step, stack_k, encoding, data, render_ref, agent_step"


def _decode_segment(row: tuple) -> Segment:
    seg_id, episode_id, start_step, k, encoding, data, ref, agent_step = row
    if encoding != ENCODING:
        raise StoreError(f"segment {seg_id} has unknown encoding {encoding!r}; allowed: {ENCODING!r}")
    return decode_segment(k, data, ref, episode_id=episode_id, start_step=start_step, uid=seg_id,
                          agent_step=int(agent_step))


class PreferenceStore:
    """Queries, answers and their segments in one SQLite file (see the module docstring).

    Build with :meth:`create`, :meth:`open` or :meth:`open_or_create`; ``clock`` (unix seconds) is
    injectable for tests of leases and rates.
    """

    def __init__(self, path: str | os.PathLike, *, synchronous: str = "NORMAL",
                 busy_timeout_s: float = 30.0, clock: Callable[[], float] = time.time) -> None:
        self._db = Database(path, synchronous=synchronous, busy_timeout_s=busy_timeout_s)
        self._clock = clock

    @property
    def path(self) -> Path:
        """The store's SQLite file."""
        return self._db.path

    # ---- open / create -------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike, **kwargs: Any) -> PreferenceStore:
        """Create a new store at ``path`` (parent folders too); StoreError if anything is there."""
        with new_store_file(path) as made:  # removed again if opening it fails
            return cls(made, **kwargs)

    @classmethod
    def open(cls, path: str | os.PathLike, **kwargs: Any) -> PreferenceStore:
        """Open an existing store; StoreError if missing or not a preference store (file untouched)."""
        path = Path(path)
        if not path.is_file():
            raise StoreError(f"no preference store at {path}; create one with PreferenceStore.create")
        return cls(path, **kwargs)

    @classmethod
    def open_or_create(cls, path: str | os.PathLike, **kwargs: Any) -> PreferenceStore:
        """Open the store at ``path``, creating it if nothing is there."""
        try:
            return cls.create(path, **kwargs) if not os.path.lexists(path) else cls.open(path, **kwargs)
        except StoreError:
            if os.path.lexists(path):  # lost a creation race: someone else made it meanwhile
                return cls.open(path, **kwargs)
            raise

    def close(self) -> None:
        """Close all connections; later calls raise StoreError."""
        self._db.close()

    def __enter__(self) -> PreferenceStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- segments ----------------------------------------------------------------------------
    def _put_segment(self, conn: sqlite3.Connection, seg: Segment, enc: tuple) -> int:
        k, data, ref = enc
        if seg.uid != -1:
            row = conn.execute("SELECT episode_id, start_step, length FROM segments WHERE id = ?",
                               (seg.uid,)).fetchone()
            if row is not None:
                if row != (seg.episode_id, seg.start_step, seg.length):
                    raise ValueError(f"segment uid {seg.uid} is already stored with (episode, start, length)="
                                     f"{row}, not {(seg.episode_id, seg.start_step, seg.length)}")
                return seg.uid
        cur = conn.execute(
            "INSERT INTO segments(id, episode_id, start_step, length, stack_k, encoding, data, render_ref, agent_step)"
            " VALUES (?, ?, ?, ?, ?, 'npy+zlib', ?, ?, ?)",
            (None if seg.uid == -1 else int(seg.uid), int(seg.episode_id), int(seg.start_step),
             seg.length, k, data, ref, int(seg.agent_step)))
        return int(cur.lastrowid)

    def add_segment(self, seg: Segment) -> int:
        """Store ``seg`` (if its uid is not stored yet) and return its id."""
        enc = encode_segment(seg)  # outside the write lock: compression is the slow part
        with self._db.write() as conn:
            return self._put_segment(conn, seg, enc)

    def get_segments(self, ids: Sequence[int]) -> list[Segment]:
        """Segments in the order of ``ids`` (repeats allowed), batched; ValueError if one is absent."""
        wanted = list(dict.fromkeys(int(i) for i in ids))
        found: dict[int, Segment] = {}
        with self._db.read() as conn:
            for lo in range(0, len(wanted), 500):
                chunk = wanted[lo:lo + 500]
                marks = ",".join("?" * len(chunk))
                for row in conn.execute(f"SELECT {_SEGCOLS} FROM segments WHERE id IN ({marks})", chunk):
                    found[row[0]] = _decode_segment(row)
        missing = [i for i in wanted if i not in found]
        if missing:
            raise ValueError(f"segment ids {missing[:10]} are not in the store")
        return [found[int(i)] for i in ids]

    def get_segment(self, seg_id: int) -> Segment:
        """One segment by id; ValueError if absent."""
        return self.get_segments([seg_id])[0]

    def agent_steps(self, seg_ids: Sequence[int]) -> dict[int, int]:
        """``{segment id: agent step}`` for these segments (-1: a pretraining clip, or unknown)."""
        ids = [int(i) for i in seg_ids]
        with self._db.read() as conn:
            rows = conn.execute(f"SELECT id, agent_step FROM segments WHERE id IN ({','.join('?' * len(ids))})", ids)
            return {int(i): int(s) for i, s in rows}

    def set_segment_clip(self, seg_id: int, path: str | None) -> None:
        """Record the rendered clip file of a segment."""
        with self._db.write() as conn:
            conn.execute("UPDATE segments SET clip_path = ? WHERE id = ?", (path, int(seg_id)))

    def segment_clip(self, seg_id: int) -> str | None:
        with self._db.read() as conn:
            row = conn.execute("SELECT clip_path FROM segments WHERE id = ?", (int(seg_id),)).fetchone()
        return None if row is None else row[0]

    # ---- queries -----------------------------------------------------------------------------
    def add_query(self, pair: SegmentPair, step: int) -> Query:
        """Store a new pending query (and its segments) asked at agent step ``step``.

        The returned Query carries the segments with their store ids as ``uid``.
        """
        encs = (encode_segment(pair.first), encode_segment(pair.second))
        with self._db.write() as conn:
            a = self._put_segment(conn, pair.first, encs[0])
            b = self._put_segment(conn, pair.second, encs[1])
            cur = conn.execute("INSERT INTO queries(first_id, second_id, created, created_step) VALUES (?, ?, ?, ?)",
                               (a, b, self._clock(), int(step)))
        qid = int(cur.lastrowid)
        return Query(qid, SegmentPair(replace(pair.first, uid=a), replace(pair.second, uid=b)))

    def _query_rows(self, where: str, args: Sequence = (), conn: sqlite3.Connection | None = None) -> list:
        sql = f"SELECT {_QCOLS} FROM queries {where}"
        if conn is not None:
            return [QueryRecord(*r) for r in conn.execute(sql, args)]
        with self._db.read() as c:
            return [QueryRecord(*r) for r in c.execute(sql, args)]

    def get_query(self, query_id: int) -> QueryRecord:
        rows = self._query_rows("WHERE id = ?", (int(query_id),))
        if not rows:
            raise UnknownQueryError(f"query {query_id} is not in the store")
        return rows[0]

    def load_query(self, query_id: int) -> Query:
        """The query with both segments loaded."""
        rec = self.get_query(query_id)
        first, second = self.get_segments([rec.first_id, rec.second_id])
        return Query(rec.query_id, SegmentPair(first, second))

    def first_round_segments(self, limit: int) -> list[Segment]:
        """The distinct segments of the earliest step's queries (pretraining), as asked, at most ``limit``."""
        with self._db.read() as conn:
            rows = conn.execute("SELECT first_id, second_id FROM queries WHERE created_step ="
                                " (SELECT MIN(created_step) FROM queries) ORDER BY id").fetchall()
        ids = list(dict.fromkeys(i for row in rows for i in row))[: max(0, int(limit))]
        return self.get_segments(ids) if ids else []

    def newest_segments(self, limit: int) -> list[Segment]:
        """The ``limit`` most recently stored segments (the clips of the latest queries), oldest first."""
        with self._db.read() as conn:
            ids = [i for (i,) in conn.execute("SELECT id FROM segments ORDER BY id DESC LIMIT ?", (max(0, limit),))]
        return self.get_segments(ids[::-1])

    def pending_queries(self, limit: int | None = None) -> list[QueryRecord]:
        """Pending queries, oldest first (held ones included)."""
        return self._query_rows("WHERE status = 'pending' ORDER BY id LIMIT ?", (-1 if limit is None else limit,))

    def count_pending(self) -> int:
        return self._scalar("SELECT COUNT(*) FROM queries WHERE status = 'pending'")

    def set_clips(self, query_id: int, first: str | None, second: str | None, pair: str | None) -> None:
        """Record the rendered clip files (first, second, side by side) of a query."""
        with self._db.write() as conn:
            cur = conn.execute("UPDATE queries SET clip_first = ?, clip_second = ?, clip_pair = ? WHERE id = ?",
                               (first, second, pair, int(query_id)))
            if cur.rowcount == 0:
                raise UnknownQueryError(f"query {query_id} is not in the store")

    def retire(self, query_id: int) -> bool:
        """Retire a pending query (it takes no answers); False if it was not pending."""
        with self._db.write() as conn:
            cur = conn.execute("UPDATE queries SET status = 'retired', assigned_to = NULL, assigned_at = NULL,"
                               " lease_until = NULL WHERE id = ? AND status = 'pending'", (int(query_id),))
            if cur.rowcount == 0 and conn.execute("SELECT 1 FROM queries WHERE id = ?",
                                                  (int(query_id),)).fetchone() is None:
                raise UnknownQueryError(f"query {query_id} is not in the store")
        return cur.rowcount == 1

    def retire_older_than(self, step: int, keep_held: bool = False) -> int:
        """Retire pending queries asked before agent step ``step`` (how many); ``keep_held``: not held ones."""
        held = " AND (assigned_to IS NULL OR lease_until < ?)" if keep_held else ""
        with self._db.write() as conn:
            return conn.execute("UPDATE queries SET status = 'retired', assigned_to = NULL, assigned_at = NULL,"
                                f" lease_until = NULL WHERE status = 'pending' AND created_step < ?{held}",
                                (int(step), *((self._clock(),) if keep_held else ()))).rowcount

    def claim_next(self, labeller: str, lease_s: float = 120.0, exclude: Sequence[int] = (),
                   newest_first: bool = False) -> QueryRecord | None:
        """Hold the next pending query for ``labeller`` for ``lease_s`` seconds, or None if none is free.

        The labeller's own held query comes first, then the oldest one nobody holds (or whose lease
        ran out; the newest with ``newest_first``). ``exclude``: query ids to skip (e.g. the pair on
        screen while preloading the next).
        """
        check_labeller_name(labeller)
        with self._db.write() as conn:
            qid = leases.claim_next(conn, labeller, self._clock(), lease_s, exclude, newest_first)
            return None if qid is None else self._query_rows("WHERE id = ?", (qid,), conn)[0]

    def hold(self, labeller: str, query_ids: Sequence[int], lease_s: float = 120.0) -> list[int]:
        """Renew ``labeller``'s hold on those of ``query_ids`` still pending and theirs or free (taking
        the free ones again); returns the ids they hold now."""
        check_labeller_name(labeller)
        with self._db.write() as conn:
            return leases.hold(conn, labeller, query_ids, self._clock(), lease_s)

    def release(self, query_id: int, labeller: str) -> bool:
        """Give back a query held by ``labeller``; False if they did not hold it."""
        with self._db.write() as conn:
            return leases.release(conn, query_id, labeller)

    def pending_overview(self) -> list[tuple[int, str | None, str | None, str | None]]:
        """Pending queries as ``(id, clip_first, clip_second, holder or None)``, oldest first."""
        with self._db.read() as conn:
            return leases.pending_overview(conn, self._clock())

    # ---- answers -----------------------------------------------------------------------------
    def record_answer(self, answer: Answer) -> bool:
        """Store ``answer`` durably (committed on return). False if that exact answer (same label
        and labeller) is already stored; raises UnknownQueryError, AlreadyAnsweredError,
        QueryRetiredError or ValueError (bad label/labeller/seconds), leaving the store unchanged."""
        label, labeller, seconds = check_answer(answer)
        with self._db.write() as conn:
            return insert_answer(conn, int(answer.query_id), label, labeller, seconds, self._clock())

    def undo_last(self, labeller: str, lease_s: float = 120.0, query_id: int | None = None) -> int | None:
        """Mark ``labeller``'s latest live answer undone (the row stays; a trainer drops it) and hold its
        query for them; its id, or None. ``query_id``: only if it is that query's (else AlreadyAnsweredError)."""
        undone = self.undo_last_answer(labeller, lease_s, query_id)
        return None if undone is None else undone[1]

    def undo_last_answer(self, labeller: str, lease_s: float = 120.0,
                         query_id: int | None = None) -> tuple[int, int] | None:
        """:meth:`undo_last`, returning ``(answer id, query id)``."""
        with self._db.write() as conn:
            return undo_latest(conn, labeller, query_id, self._clock(), lease_s)

    def answers_since(self, answer_id: int = 0) -> list[tuple[int, Answer]]:
        """Live answers with id > ``answer_id``, oldest first, as (answer_id, Answer)."""
        with self._db.read() as conn:
            rows = conn.execute("SELECT id, query_id, label, labeller, seconds FROM answers WHERE id > ?"
                                " AND undone_at IS NULL ORDER BY id", (int(answer_id),)).fetchall()
        return [(r[0], Answer(r[1], r[2], r[3], r[4])) for r in rows]

    def undone_answer_ids(self) -> set[int]:
        """Ids of the answers marked undone."""
        with self._db.read() as conn:
            return {r[0] for r in conn.execute("SELECT id FROM answers WHERE undone_at IS NOT NULL")}

    def _scalar(self, sql: str, args: Sequence = ()) -> Any:
        with self._db.read() as conn:
            return conn.execute(sql, args).fetchone()[0]

    def count_labels(self) -> int:
        """Answers that are labels (not skipped)."""
        return self._scalar("SELECT COUNT(*) FROM answers WHERE skipped = 0 AND undone_at IS NULL")

    def count_answers(self) -> int:
        """All answers, skipped ones included."""
        return self._scalar("SELECT COUNT(*) FROM answers WHERE undone_at IS NULL")

    def answered_query_ids(self) -> set[int]:
        with self._db.read() as conn:
            return {r[0] for r in conn.execute("SELECT query_id FROM answers WHERE undone_at IS NULL")}

    def labels(self, limit: int | None = None) -> list[Label]:
        """The most recent ``limit`` (all if None) non-skipped answers as Labels, oldest first."""
        return [label for _, label in self.labels_with_ids(limit)]

    def labels_with_ids(self, limit: int | None = None) -> list[tuple[int, Label]]:
        """Like :meth:`labels`, each with its answer id: ``(answer_id, Label)``, oldest first."""
        with self._db.read() as conn:
            rows = conn.execute("SELECT a.id, a.label, q.first_id, q.second_id FROM answers a JOIN queries q"
                                " ON q.id = a.query_id WHERE a.skipped = 0 AND a.undone_at IS NULL ORDER BY a.id DESC LIMIT ?",
                                (-1 if limit is None else int(limit),)).fetchall()[::-1]
        ids = sorted({i for r in rows for i in r[2:]})
        segs = dict(zip(ids, self.get_segments(ids), strict=True))
        return [(aid, Label(SegmentPair(segs[a], segs[b]), value)) for aid, value, a, b in rows]

    def last_answer_id(self) -> int:
        """Id of the newest answer, 0 when there is none."""
        return int(self._scalar("SELECT COALESCE(MAX(id), 0) FROM answers"))

    def max_segment_id(self) -> int:
        """Largest stored segment id, -1 when there is none."""
        return int(self._scalar("SELECT COALESCE(MAX(id), -1) FROM segments"))

    def stats(self) -> dict[str, float]:
        """answered (queries with an answer), labels, skipped, pending, retired, answers_per_minute (last 5 min)."""
        with self._db.read() as conn:
            status = dict(conn.execute("SELECT status, COUNT(*) FROM queries GROUP BY status").fetchall())
            labels, skipped = conn.execute("SELECT COUNT(*) - COALESCE(SUM(skipped), 0), COALESCE(SUM(skipped), 0)"
                                           " FROM answers WHERE undone_at IS NULL").fetchone()
            undone = conn.execute("SELECT COUNT(*) FROM answers WHERE undone_at IS NOT NULL").fetchone()[0]
            recent = conn.execute("SELECT COUNT(*) FROM answers WHERE answered_at >= ? AND undone_at IS NULL",
                                  (self._clock() - 300.0,)).fetchone()[0]
        return {"answered": labels + skipped, "labels": labels, "skipped": skipped, "undone": undone,
                "pending": status.get("pending", 0), "retired": status.get("retired", 0),
                "answers_per_minute": recent / 5.0}

    # ---- export / import (the file formats are rlhf_control.store.io's) ----------------------------
    def answer_rows(self, history: bool = False) -> list[dict[str, Any]]:
        """Every live answer with its query's segments, as dicts keyed by ``EXPORT_FIELDS``
        (:mod:`rlhf_control.store.answers`), oldest first; ``history``: undone ones too (``HISTORY_FIELDS``)."""
        with self._db.read() as conn:
            return export_rows(conn, history)

    @contextmanager
    def import_batch(self) -> Iterator[Callable[[Any], int]]:
        """One write transaction for an import: yields ``add(row) -> 1 if new else 0`` for rows shaped
        like :meth:`answer_rows`'. A row's query must be in the store with the same first/second
        segment ids; a missing query whose segments are here is created (answered, with the row's
        ``created_step``); a row already present (same label and labeller) adds nothing. Any error
        raised inside the block rolls the whole batch back."""
        with self._db.write() as conn:
            yield lambda row: import_row(conn, row, self._clock)
