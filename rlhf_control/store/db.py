"""The SQLite file under a :class:`~rlhf_control.store.store.PreferenceStore`: its schema, the checks
that refuse a foreign file, a pool of connections and one-transaction writes.

Durability: WAL journal, ``synchronous=NORMAL`` by default (a committed write has reached the OS and
survives a SIGKILL, not a power loss); ``FULL`` or ``EXTRA`` fsync every commit. Threads: connections
come from a small pool (a thread-per-request web server does not leak them); writers in this process
take a lock, and every write is one ``BEGIN IMMEDIATE`` transaction, so other processes
(``busy_timeout``) and threads see all of it or none.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rlhf_control.store.errors import StoreError

__all__ = ["APPLICATION_ID", "SCHEMA_VERSION", "Database", "new_store_file"]

SCHEMA_VERSION = 3  # 2: answers are marked undone (undone_at, undone_by), not deleted; 3: segments.agent_step
APPLICATION_ID = 0x524C4846  # "RLHF" in the SQLite header, so a foreign SQLite file is refused
_SQLITE_MAGIC = b"SQLite format 3\x00"

_ANSWER_COLUMNS = """
  id INTEGER PRIMARY KEY AUTOINCREMENT, query_id INTEGER NOT NULL REFERENCES queries(id),
  label INTEGER CHECK(label IN (-1, 0, 1)), skipped INTEGER NOT NULL CHECK(skipped IN (0, 1)),
  labeller TEXT NOT NULL, answered_at REAL NOT NULL, seconds REAL NOT NULL,
  undone_at REAL, undone_by TEXT,
  CHECK((skipped = 1) = (label IS NULL)), CHECK((undone_at IS NULL) = (undone_by IS NULL))"""
_ANSWER_INDEXES = """
CREATE INDEX answers_labeller ON answers(labeller, id);
CREATE INDEX answers_time ON answers(answered_at);
CREATE UNIQUE INDEX answers_live ON answers(query_id) WHERE undone_at IS NULL;
"""
_SCHEMA = """
CREATE TABLE segments(
  id INTEGER PRIMARY KEY, episode_id INTEGER NOT NULL, start_step INTEGER NOT NULL,
  length INTEGER NOT NULL, stack_k INTEGER NOT NULL, encoding TEXT NOT NULL, data BLOB NOT NULL,
  render_ref TEXT, clip_path TEXT, agent_step INTEGER NOT NULL DEFAULT -1);
CREATE TABLE queries(
  id INTEGER PRIMARY KEY, first_id INTEGER NOT NULL REFERENCES segments(id),
  second_id INTEGER NOT NULL REFERENCES segments(id), created REAL NOT NULL,
  created_step INTEGER NOT NULL,
  status TEXT NOT NULL DEFAULT 'pending' CHECK(status IN ('pending', 'answered', 'retired')),
  clip_first TEXT, clip_second TEXT, clip_pair TEXT,
  assigned_to TEXT, assigned_at REAL, lease_until REAL);
CREATE INDEX queries_status ON queries(status, id);
CREATE TABLE answers(""" + _ANSWER_COLUMNS + """);
""" + _ANSWER_INDEXES
_TABLES = {"segments", "queries", "answers"}
# Version 1 had UNIQUE(query_id) and deleted undone answers; version 2 keeps them, marked.
_MIGRATE_1_TO_2 = """
CREATE TABLE answers_v2(""" + _ANSWER_COLUMNS + """);
INSERT INTO answers_v2(id, query_id, label, skipped, labeller, answered_at, seconds)
  SELECT id, query_id, label, skipped, labeller, answered_at, seconds FROM answers;
DROP TABLE answers;
ALTER TABLE answers_v2 RENAME TO answers;
"""


def _rebuild_answers(conn: sqlite3.Connection) -> None:
    """1 -> 2: the answers table rebuilt, keeping every answer id and the id counter (ids of answers
    undone under version 1 are not reused)."""
    seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'answers'").fetchone()
    for stmt in (_MIGRATE_1_TO_2 + _ANSWER_INDEXES).split(";"):
        if stmt.strip():
            conn.execute(stmt)
    if seq is not None:
        conn.execute("UPDATE sqlite_sequence SET seq = MAX(seq, ?) WHERE name = 'answers'", seq)


def _add_agent_step(conn: sqlite3.Connection) -> None:
    """2 -> 3: the segments' agent step (-1, unknown, for the clips stored before it)."""
    if "agent_step" not in {r[1] for r in conn.execute("PRAGMA table_info(segments)")}:
        conn.execute("ALTER TABLE segments ADD COLUMN agent_step INTEGER NOT NULL DEFAULT -1")


_MIGRATIONS = {1: _rebuild_answers, 2: _add_agent_step}  # schema version -> the step to the next

@contextmanager
def new_store_file(path: str | os.PathLike) -> Iterator[Path]:
    """Create an empty store (schema, application id, WAL) at ``path``, parent folders too.

    StoreError if anything is there. If the body of the ``with`` raises (e.g. opening the new file
    fails), the files this call made are removed again.
    """
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
        yield path
    except BaseException:
        for suffix in ("", "-wal", "-shm", "-journal"):  # only files this call just made
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        raise


class Database:
    """An open store file: checked on opening, then read through :meth:`read` and written through
    :meth:`write` from any thread until :meth:`close` (see the module docstring)."""

    def __init__(self, path: str | os.PathLike, *, synchronous: str = "NORMAL",
                 busy_timeout_s: float = 30.0) -> None:
        if synchronous.upper() not in ("NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous={synchronous!r} is not allowed; use NORMAL, FULL or EXTRA")
        self.path = Path(path)
        self._sync = synchronous.upper()
        self._busy_ms = int(busy_timeout_s * 1000)
        self._idle: list[sqlite3.Connection] = []
        self._pool_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._closed = False
        # Read the header as bytes before SQLite touches the file, so a foreign file is never changed.
        with open(self.path, "rb") as f:  # FileNotFoundError: PreferenceStore.open/create check first
            header = f.read(100)
        if len(header) < 100 or header[:16] != _SQLITE_MAGIC or \
                int.from_bytes(header[68:72], "big") != APPLICATION_ID:
            raise StoreError(f"{path} is not a rlhf-control preference store (bad SQLite header or application id)")
        try:
            with self.read() as conn:
                self._validate(conn)
        except sqlite3.DatabaseError as exc:  # damaged beyond the header
            self.close()
            raise StoreError(f"{path} is not a rlhf-control preference store ({exc})") from None
        except BaseException:
            self.close()
            raise

    def _validate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path} has schema version {version}; this code reads up to {SCHEMA_VERSION}")
        if version < 1 or not _TABLES <= tables:
            raise StoreError(f"{self.path} is not a rlhf-control preference store (schema missing)")
        for step_from in range(version, SCHEMA_VERSION):
            self._migrate(conn, step_from)
        if mode.lower() != "wal":
            conn.execute("PRAGMA journal_mode = WAL")

    def _migrate(self, conn: sqlite3.Connection, version: int) -> None:
        """Upgrade a store of schema ``version`` by one version, in one transaction (all of it or nothing)."""
        with self._write_lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if conn.execute("PRAGMA user_version").fetchone()[0] == version:  # (another process may have done it)
                    _MIGRATIONS[version](conn)
                    conn.execute(f"PRAGMA user_version = {version + 1}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def _connect(self) -> sqlite3.Connection:
        # mode=rw: never create a file here (new_store_file is the only place that does)
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
    def read(self) -> Iterator[sqlite3.Connection]:
        """A pooled connection in autocommit mode, for reads; StoreError once closed."""
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
    def write(self) -> Iterator[sqlite3.Connection]:
        """One BEGIN IMMEDIATE transaction: committed on success, rolled back on any exception."""
        with self._write_lock, self.read() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def close(self) -> None:
        """Close all connections; later reads and writes raise StoreError."""
        with self._pool_lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
