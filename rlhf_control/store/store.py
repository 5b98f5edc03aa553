"""PreferenceStore: the durable record of queries and answers, one SQLite file per run.

Every oracle's answers go through it (synthetic ones too), so a resumed run rebuilds its label
window from here. Durability: WAL journal with ``synchronous=NORMAL`` by default, so an answer whose
:meth:`PreferenceStore.record_answer` returned has reached the OS and survives a SIGKILL of the
process, but not a power loss; pass ``synchronous="FULL"`` to survive that too (an fsync per commit).

Thread-safe: connections come from a small pool (a thread-per-request web server does not leak
them); writers in this process take a lock and every write is one ``BEGIN IMMEDIATE`` transaction,
so other processes (``busy_timeout``) and threads see all of it or none.

Segments are stored without pickle (:mod:`rlhf_control.store.serialize`: npy arrays in a zlib blob,
``render_ref`` as JSON or dropped); answers go to JSONL/CSV files and back through
:mod:`rlhf_control.store.io`. A segment with ``uid=-1`` gets the next free id; give segments run-unique uids so a segment shared by two queries
is stored once. Label convention: +1 first better, -1 second better, 0 equal, NULL + skipped=1.
"""

from __future__ import annotations

import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rlhf_control.store.serialize import ENCODING, decode_segment, encode_segment
from rlhf_control.types import Answer, Label, Query, Segment, SegmentPair, check_label

SCHEMA_VERSION = 1
APPLICATION_ID = 0x524C4846  # "RLHF" in the SQLite header, so a foreign SQLite file is refused
_SQLITE_MAGIC = b"SQLite format 3\x00"
_STATUSES = ("pending", "answered", "retired")
# One row per answer in exports (rlhf_control.store.io) and imports.
EXPORT_FIELDS = ("answer_id", "query_id", "first_id", "second_id", "first_episode", "second_episode",
                 "first_start", "second_start", "length", "created_step", "label", "skipped",
                 "labeller", "answered_at", "seconds")

_SCHEMA = """
CREATE TABLE segments(
  id INTEGER PRIMARY KEY, episode_id INTEGER NOT NULL, start_step INTEGER NOT NULL,
  length INTEGER NOT NULL, stack_k INTEGER NOT NULL, encoding TEXT NOT NULL, data BLOB NOT NULL,
  render_ref TEXT, clip_path TEXT);
CREATE TABLE queries(
  id INTEGER PRIMARY KEY, first_id INTEGER NOT NULL REFERENCES segments(id),
  second_id INTEGER NOT NULL REFERENCES segments(id), created REAL NOT NULL,
  created_step INTEGER NOT NULL,
  status TEXT NOT NULL DEFAULT 'pending' CHECK(status IN ('pending', 'answered', 'retired')),
  clip_first TEXT, clip_second TEXT, clip_pair TEXT,
  assigned_to TEXT, assigned_at REAL, lease_until REAL);
CREATE INDEX queries_status ON queries(status, id);
CREATE TABLE answers(
  id INTEGER PRIMARY KEY AUTOINCREMENT, query_id INTEGER NOT NULL UNIQUE REFERENCES queries(id),
  label INTEGER CHECK(label IN (-1, 0, 1)), skipped INTEGER NOT NULL CHECK(skipped IN (0, 1)),
  labeller TEXT NOT NULL, answered_at REAL NOT NULL, seconds REAL NOT NULL,
  CHECK((skipped = 1) = (label IS NULL)));
CREATE INDEX answers_labeller ON answers(labeller, id);
CREATE INDEX answers_time ON answers(answered_at);
"""
_TABLES = {"segments", "queries", "answers"}


class StoreError(ValueError):
    """The store file is missing, already exists, is not a preference store, or is closed."""


class UnknownQueryError(ValueError):
    """No query with that id in the store."""


class AlreadyAnsweredError(ValueError):
    """The query already has a different answer."""


class QueryRetiredError(ValueError):
    """The query was retired (stale) and takes no answers."""


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
_SEGCOLS = "id, episode_id, start_step, stack_k, encoding, data, render_ref"


def _decode_segment(row: tuple) -> Segment:
    seg_id, episode_id, start_step, k, encoding, data, ref = row
    if encoding != ENCODING:
        raise StoreError(f"segment {seg_id} has unknown encoding {encoding!r}; allowed: {ENCODING!r}")
    return decode_segment(k, data, ref, episode_id=episode_id, start_step=start_step, uid=seg_id)


def _check_answer(answer: Answer) -> tuple[int | None, str, float]:
    label = None if answer.label is None else check_label(answer.label)
    if not isinstance(answer.labeller, str) or not answer.labeller:
        raise ValueError(f"labeller {answer.labeller!r} is not allowed; use a non-empty string")
    seconds = float(answer.seconds)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"seconds={answer.seconds!r} is not allowed; use a finite number >= 0")
    return label, answer.labeller, seconds


class PreferenceStore:
    """Queries, answers and their segments in one SQLite file (see the module docstring).

    Build with :meth:`create`, :meth:`open` or :meth:`open_or_create`; ``clock`` (unix seconds) is
    injectable for tests of leases and rates.
    """

    def __init__(self, path: str | os.PathLike, *, synchronous: str = "NORMAL",
                 busy_timeout_s: float = 30.0, clock: Callable[[], float] = time.time) -> None:
        if synchronous.upper() not in ("NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous={synchronous!r} is not allowed; use NORMAL, FULL or EXTRA")
        self.path = Path(path)
        self._sync = synchronous.upper()
        self._busy_ms = int(busy_timeout_s * 1000)
        self._clock = clock
        self._idle: list[sqlite3.Connection] = []
        self._pool_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._closed = False
        # Read the header as bytes before SQLite touches the file, so a foreign file is never changed.
        with open(self.path, "rb") as f:  # FileNotFoundError: use open()/create(), which check first
            header = f.read(100)
        if len(header) < 100 or header[:16] != _SQLITE_MAGIC or \
                int.from_bytes(header[68:72], "big") != APPLICATION_ID:
            raise StoreError(f"{path} is not a rlhf-control preference store (bad SQLite header or application id)")
        try:
            with self._read() as conn:
                self._validate(conn)
        except sqlite3.DatabaseError as exc:  # damaged beyond the header
            self.close()
            raise StoreError(f"{path} is not a rlhf-control preference store ({exc})") from None
        except BaseException:
            self.close()
            raise

    # ---- open / create -------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike, **kwargs: Any) -> PreferenceStore:
        """Create a new store at ``path`` (parent folders too); StoreError if anything is there."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:  # O_EXCL claims the name atomically, so two creators never share (or clobber) a file
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            raise StoreError(f"{path} already exists; open it with PreferenceStore.open") from None
        try:
            conn = sqlite3.connect(path, isolation_level=None)
            try:
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                conn.executescript(f"BEGIN; {_SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
                conn.execute("PRAGMA journal_mode = WAL")
            finally:
                conn.close()
            return cls(path, **kwargs)
        except BaseException:
            for suffix in ("", "-wal", "-shm", "-journal"):  # only files this call just made
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            raise

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

    def _validate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path} has schema version {version}; this code reads up to {SCHEMA_VERSION}")
        if version < 1 or not _TABLES <= tables:
            raise StoreError(f"{self.path} is not a rlhf-control preference store (schema missing)")
        if mode.lower() != "wal":
            conn.execute("PRAGMA journal_mode = WAL")

    # ---- connections -------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        # mode=rw: never create a file here (create() is the only place that does)
        conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=rw", uri=True, isolation_level=None,
                               check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
            conn.execute(f"PRAGMA synchronous = {self._sync}")
            conn.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            conn.close()
            raise
        return conn

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._pool_lock:
            if self._closed:
                raise StoreError(f"store {self.path} is closed")
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._connect()
        try:
            yield conn
        finally:
            with self._pool_lock:
                if self._closed:
                    conn.close()
                else:
                    self._idle.append(conn)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One BEGIN IMMEDIATE transaction: committed on success, rolled back on any exception."""
        with self._write_lock, self._read() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def close(self) -> None:
        """Close all connections; later calls raise StoreError."""
        with self._pool_lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

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
            "INSERT INTO segments(id, episode_id, start_step, length, stack_k, encoding, data, render_ref)"
            " VALUES (?, ?, ?, ?, ?, 'npy+zlib', ?, ?)",
            (None if seg.uid == -1 else int(seg.uid), int(seg.episode_id), int(seg.start_step),
             seg.length, k, data, ref))
        return int(cur.lastrowid)

    def add_segment(self, seg: Segment) -> int:
        """Store ``seg`` (if its uid is not stored yet) and return its id."""
        enc = encode_segment(seg)  # outside the write lock: compression is the slow part
        with self._write() as conn:
            return self._put_segment(conn, seg, enc)

    def get_segments(self, ids: Sequence[int]) -> list[Segment]:
        """Segments in the order of ``ids`` (repeats allowed), batched; ValueError if one is absent."""
        wanted = list(dict.fromkeys(int(i) for i in ids))
        found: dict[int, Segment] = {}
        with self._read() as conn:
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

    def set_segment_clip(self, seg_id: int, path: str | None) -> None:
        """Record the rendered clip file of a segment."""
        with self._write() as conn:
            conn.execute("UPDATE segments SET clip_path = ? WHERE id = ?", (path, int(seg_id)))

    def segment_clip(self, seg_id: int) -> str | None:
        with self._read() as conn:
            row = conn.execute("SELECT clip_path FROM segments WHERE id = ?", (int(seg_id),)).fetchone()
        return None if row is None else row[0]

    # ---- queries -----------------------------------------------------------------------------
    def add_query(self, pair: SegmentPair, step: int) -> Query:
        """Store a new pending query (and its segments) asked at agent step ``step``.

        The returned Query carries the segments with their store ids as ``uid``.
        """
        encs = (encode_segment(pair.first), encode_segment(pair.second))
        with self._write() as conn:
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
        with self._read() as c:
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

    def pending_queries(self, limit: int | None = None) -> list[QueryRecord]:
        """Pending queries, oldest first (held ones included)."""
        return self._query_rows("WHERE status = 'pending' ORDER BY id LIMIT ?", (-1 if limit is None else limit,))

    def count_pending(self) -> int:
        return self._scalar("SELECT COUNT(*) FROM queries WHERE status = 'pending'")

    def set_clips(self, query_id: int, first: str | None, second: str | None, pair: str | None) -> None:
        """Record the rendered clip files (first, second, side by side) of a query."""
        with self._write() as conn:
            cur = conn.execute("UPDATE queries SET clip_first = ?, clip_second = ?, clip_pair = ? WHERE id = ?",
                               (first, second, pair, int(query_id)))
            if cur.rowcount == 0:
                raise UnknownQueryError(f"query {query_id} is not in the store")

    def retire(self, query_id: int) -> bool:
        """Retire a pending query (it takes no answers); False if it was not pending."""
        with self._write() as conn:
            cur = conn.execute("UPDATE queries SET status = 'retired', assigned_to = NULL, assigned_at = NULL,"
                               " lease_until = NULL WHERE id = ? AND status = 'pending'", (int(query_id),))
            if cur.rowcount == 0 and conn.execute("SELECT 1 FROM queries WHERE id = ?",
                                                  (int(query_id),)).fetchone() is None:
                raise UnknownQueryError(f"query {query_id} is not in the store")
        return cur.rowcount == 1

    def retire_older_than(self, step: int) -> int:
        """Retire pending queries asked before agent step ``step``; returns how many."""
        with self._write() as conn:
            return conn.execute("UPDATE queries SET status = 'retired', assigned_to = NULL, assigned_at = NULL,"
                                " lease_until = NULL WHERE status = 'pending' AND created_step < ?",
                                (int(step),)).rowcount

    def claim_next(self, labeller: str, lease_s: float = 120.0,
                   exclude: Sequence[int] = ()) -> QueryRecord | None:
        """Hold the next pending query for ``labeller`` for ``lease_s`` seconds, or None if none is free.

        The labeller's own held query comes first, then the oldest one nobody holds (or whose lease
        ran out). ``exclude``: query ids to skip (e.g. the pair on screen while preloading the next).
        """
        if not isinstance(labeller, str) or not labeller:
            raise ValueError(f"labeller {labeller!r} is not allowed; use a non-empty string")
        ex = [int(i) for i in exclude]
        not_ex = f"AND id NOT IN ({','.join('?' * len(ex))})" if ex else ""
        with self._write() as conn:
            now = self._clock()
            rows = self._query_rows(f"WHERE status = 'pending' AND assigned_to = ? {not_ex} ORDER BY id LIMIT 1",
                                    [labeller, *ex], conn) or \
                self._query_rows(f"WHERE status = 'pending' AND (assigned_to IS NULL OR lease_until < ?) {not_ex}"
                                 " ORDER BY id LIMIT 1", [now, *ex], conn)
            if not rows:
                return None
            conn.execute("UPDATE queries SET assigned_to = ?, assigned_at = ?, lease_until = ? WHERE id = ?",
                         (labeller, now, now + lease_s, rows[0].query_id))
        return replace(rows[0], assigned_to=labeller, assigned_at=now, lease_until=now + lease_s)

    def release(self, query_id: int, labeller: str) -> bool:
        """Give back a query held by ``labeller``; False if they did not hold it."""
        with self._write() as conn:
            return conn.execute("UPDATE queries SET assigned_to = NULL, assigned_at = NULL, lease_until = NULL"
                                " WHERE id = ? AND assigned_to = ?", (int(query_id), labeller)).rowcount == 1

    # ---- answers -----------------------------------------------------------------------------
    def _insert_answer(self, conn: sqlite3.Connection, query_id: int, label: int | None, labeller: str,
                       seconds: float, answered_at: float) -> bool:
        row = conn.execute("SELECT status FROM queries WHERE id = ?", (query_id,)).fetchone()
        if row is None:
            raise UnknownQueryError(f"query {query_id} is not in the store")
        old = conn.execute("SELECT label, labeller FROM answers WHERE query_id = ?", (query_id,)).fetchone()
        if old is not None:
            if old == (label, labeller):
                return False
            raise AlreadyAnsweredError(f"query {query_id} already has answer {old[0]} by {old[1]!r}; "
                                       f"refusing {label} by {labeller!r} (undo it first)")
        if row[0] == "retired":
            raise QueryRetiredError(f"query {query_id} was retired and takes no answers")
        conn.execute("INSERT INTO answers(query_id, label, skipped, labeller, answered_at, seconds)"
                     " VALUES (?, ?, ?, ?, ?, ?)", (query_id, label, int(label is None), labeller, answered_at,
                                                    seconds))
        conn.execute("UPDATE queries SET status = 'answered', assigned_to = NULL, assigned_at = NULL,"
                     " lease_until = NULL WHERE id = ?", (query_id,))
        return True

    def record_answer(self, answer: Answer) -> bool:
        """Store ``answer`` durably (committed on return). False if that exact answer (same label
        and labeller) is already stored; raises UnknownQueryError, AlreadyAnsweredError,
        QueryRetiredError or ValueError (bad label/labeller/seconds), leaving the store unchanged."""
        label, labeller, seconds = _check_answer(answer)
        with self._write() as conn:
            return self._insert_answer(conn, int(answer.query_id), label, labeller, seconds, self._clock())

    def undo_last(self, labeller: str, lease_s: float = 120.0) -> int | None:
        """Delete ``labeller``'s most recent answer; its query goes back to pending, held by them.

        Returns that query id, or None if they have no answer. Labels already collected from
        :meth:`answers_since` are not recalled; the training window comes from :meth:`labels`.
        """
        with self._write() as conn:
            row = conn.execute("SELECT id, query_id FROM answers WHERE labeller = ? ORDER BY id DESC LIMIT 1",
                               (labeller,)).fetchone()
            if row is None:
                return None
            now = self._clock()
            conn.execute("DELETE FROM answers WHERE id = ?", (row[0],))
            conn.execute("UPDATE queries SET status = 'pending', assigned_to = ?, assigned_at = ?, lease_until = ?"
                         " WHERE id = ?", (labeller, now, now + lease_s, row[1]))
        return int(row[1])

    def answers_since(self, answer_id: int = 0) -> list[tuple[int, Answer]]:
        """Answers with id > ``answer_id``, oldest first, as (answer_id, Answer)."""
        with self._read() as conn:
            rows = conn.execute("SELECT id, query_id, label, labeller, seconds FROM answers WHERE id > ?"
                                " ORDER BY id", (int(answer_id),)).fetchall()
        return [(r[0], Answer(r[1], r[2], r[3], r[4])) for r in rows]

    def _scalar(self, sql: str, args: Sequence = ()) -> Any:
        with self._read() as conn:
            return conn.execute(sql, args).fetchone()[0]

    def count_labels(self) -> int:
        """Answers that are labels (not skipped)."""
        return self._scalar("SELECT COUNT(*) FROM answers WHERE skipped = 0")

    def count_answers(self) -> int:
        """All answers, skipped ones included."""
        return self._scalar("SELECT COUNT(*) FROM answers")

    def answered_query_ids(self) -> set[int]:
        with self._read() as conn:
            return {r[0] for r in conn.execute("SELECT query_id FROM answers")}

    def labels(self, limit: int | None = None) -> list[Label]:
        """The most recent ``limit`` (all if None) non-skipped answers as Labels, oldest first."""
        return [label for _, label in self.labels_with_ids(limit)]

    def labels_with_ids(self, limit: int | None = None) -> list[tuple[int, Label]]:
        """Like :meth:`labels`, each with its answer id: ``(answer_id, Label)``, oldest first."""
        with self._read() as conn:
            rows = conn.execute("SELECT a.id, a.label, q.first_id, q.second_id FROM answers a JOIN queries q"
                                " ON q.id = a.query_id WHERE a.skipped = 0 ORDER BY a.id DESC LIMIT ?",
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
        with self._read() as conn:
            status = dict(conn.execute("SELECT status, COUNT(*) FROM queries GROUP BY status").fetchall())
            labels, skipped = conn.execute("SELECT COUNT(*) - COALESCE(SUM(skipped), 0), COALESCE(SUM(skipped), 0)"
                                           " FROM answers").fetchone()
            recent = conn.execute("SELECT COUNT(*) FROM answers WHERE answered_at >= ?",
                                  (self._clock() - 300.0,)).fetchone()[0]
        return {"answered": labels + skipped, "labels": labels, "skipped": skipped,
                "pending": status.get("pending", 0), "retired": status.get("retired", 0),
                "answers_per_minute": recent / 5.0}

    # ---- export / import (the file formats are rlhf_control.store.io's) ----------------------------
    def answer_rows(self) -> list[dict[str, Any]]:
        """Every answer with its query's segments, as dicts keyed by ``EXPORT_FIELDS``, oldest first."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT a.id, a.query_id, q.first_id, q.second_id, f.episode_id, s.episode_id, f.start_step,"
                " s.start_step, f.length, q.created_step, a.label, a.skipped, a.labeller, a.answered_at, a.seconds"
                " FROM answers a JOIN queries q ON q.id = a.query_id JOIN segments f ON f.id = q.first_id"
                " JOIN segments s ON s.id = q.second_id ORDER BY a.id").fetchall()
        return [dict(zip(EXPORT_FIELDS, r, strict=True)) | {"skipped": bool(r[11])} for r in rows]

    @contextmanager
    def import_batch(self) -> Iterator[Callable[[Any], int]]:
        """One write transaction for an import: yields ``add(row) -> 1 if new else 0`` for rows shaped
        like :meth:`answer_rows`'. A row's query must be in the store with the same first/second
        segment ids; a missing query whose segments are here is created (answered, with the row's
        ``created_step``); a row already present (same label and labeller) adds nothing. Any error
        raised inside the block rolls the whole batch back."""
        with self._write() as conn:
            yield lambda row: self._import_row(conn, row)

    def _import_row(self, conn: sqlite3.Connection, row: Any) -> int:
        if not isinstance(row, dict):
            raise ValueError(f"expected a JSON object, got {type(row).__name__}")
        qid = row["query_id"]
        if not isinstance(qid, int) or isinstance(qid, bool):
            raise ValueError(f"query_id {qid!r} must be an integer")
        skipped = bool(row.get("skipped", row["label"] is None))
        if skipped != (row["label"] is None):
            raise ValueError(f"label {row['label']!r} with skipped={skipped} is inconsistent; skipped needs label null")
        label, labeller, seconds = _check_answer(Answer(qid, row["label"], row["labeller"], row.get("seconds", 0.0)))
        at = row.get("answered_at", self._clock())
        if not isinstance(at, (int, float)) or isinstance(at, bool) or not math.isfinite(at):
            raise ValueError(f"answered_at {at!r} must be a finite number (unix seconds)")
        pair = (row.get("first_id"), row.get("second_id"))
        stored = conn.execute("SELECT first_id, second_id FROM queries WHERE id = ?", (qid,)).fetchone()
        if stored is None and None not in pair:
            have = {r[0] for r in conn.execute("SELECT id FROM segments WHERE id IN (?, ?)", pair)}
            if set(pair) - have:
                raise UnknownQueryError(f"query {qid} and segments {sorted(set(pair) - have)} are not in the store")
            conn.execute("INSERT INTO queries(id, first_id, second_id, created, created_step, status) VALUES"
                         " (?, ?, ?, ?, ?, 'pending')", (qid, *pair, at, int(row.get("created_step", 0))))
        elif stored is not None and None not in pair and tuple(stored) != tuple(pair):
            raise ValueError(f"query {qid} has segments {tuple(stored)} here but {pair} in the file")
        return int(self._insert_answer(conn, qid, label, labeller, seconds, float(at)))


__all__ = ["EXPORT_FIELDS", "SCHEMA_VERSION", "AlreadyAnsweredError", "PreferenceStore",
           "QueryRecord", "QueryRetiredError", "StoreError", "UnknownQueryError"]
