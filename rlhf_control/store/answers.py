"""The rules an answer must pass to enter a preference store, applied inside one write transaction.

One live answer per query: the same answer again (same label and labeller) is a no-op, a different
one is refused (AlreadyAnsweredError), and a retired query takes none (QueryRetiredError). An undone
answer stays in the table, marked (``undone_at``, ``undone_by``): the history; only live answers
count, train and export (unless an export asks for the history). Imported rows
(shaped like :data:`EXPORT_FIELDS`) pass the same rules, and may bring a missing query whose
segments are stored. Label convention: +1 first better, -1 second better, 0 equal, None = skipped.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Callable
from typing import Any

from rlhf_control.store.errors import AlreadyAnsweredError, QueryRetiredError, UnknownQueryError
from rlhf_control.types import Answer, check_label

__all__ = ["EXPORT_FIELDS", "HISTORY_FIELDS", "check_answer", "export_rows", "import_row", "insert_answer",
           "undo_latest"]

# One row per answer in exports (rlhf_control.store.io) and imports.
EXPORT_FIELDS = ("answer_id", "query_id", "first_id", "second_id", "first_episode", "second_episode",
                 "first_start", "second_start", "length", "created_step", "label", "skipped",
                 "labeller", "answered_at", "seconds")
# An export with the history: every answer, undone ones too, with when and by whom.
HISTORY_FIELDS = (*EXPORT_FIELDS, "undone_at", "undone_by")


def check_answer(answer: Answer) -> tuple[int | None, str, float]:
    """``(label, labeller, seconds)`` of ``answer``, checked; ValueError naming a bad one."""
    label = None if answer.label is None else check_label(answer.label)
    if not isinstance(answer.labeller, str) or not answer.labeller:
        raise ValueError(f"labeller {answer.labeller!r} is not allowed; use a non-empty string")
    seconds = float(answer.seconds)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"seconds={answer.seconds!r} is not allowed; use a finite number >= 0")
    return label, answer.labeller, seconds


def insert_answer(conn: sqlite3.Connection, query_id: int, label: int | None, labeller: str,
                  seconds: float, answered_at: float) -> bool:
    """Add a checked answer and mark its query answered; False if that exact answer is there already."""
    row = conn.execute("SELECT status FROM queries WHERE id = ?", (query_id,)).fetchone()
    if row is None:
        raise UnknownQueryError(f"query {query_id} is not in the store")
    old = conn.execute("SELECT label, labeller FROM answers WHERE query_id = ? AND undone_at IS NULL",
                       (query_id,)).fetchone()
    if old is not None:
        if old == (label, labeller):
            return False
        hint = " (undo it first)" if old[1] == labeller else ""
        raise AlreadyAnsweredError(f"query {query_id} already has answer {old[0]} by {old[1]!r}; "
                                   f"refusing {label} by {labeller!r}{hint}")
    if row[0] == "retired":
        raise QueryRetiredError(f"query {query_id} was retired and takes no answers")
    conn.execute("INSERT INTO answers(query_id, label, skipped, labeller, answered_at, seconds)"
                 " VALUES (?, ?, ?, ?, ?, ?)", (query_id, label, int(label is None), labeller, answered_at,
                                                seconds))
    conn.execute("UPDATE queries SET status = 'answered', assigned_to = NULL, assigned_at = NULL,"
                 " lease_until = NULL WHERE id = ?", (query_id,))
    return True


def undo_latest(conn: sqlite3.Connection, labeller: str, query_id: int | None, now: float,
                lease_s: float) -> tuple[int, int] | None:
    """Mark ``labeller``'s latest live answer undone (the row stays) and hold its query for them;
    ``(answer id, query id)``, or None if they have none. ``query_id``: only if the answer is to that
    query (else AlreadyAnsweredError, nothing changed)."""
    row = conn.execute("SELECT id, query_id FROM answers WHERE labeller = ? AND undone_at IS NULL"
                       " ORDER BY id DESC LIMIT 1", (labeller,)).fetchone()
    if row is None:
        return None
    if query_id is not None and int(row[1]) != int(query_id):
        raise AlreadyAnsweredError(f"pair {query_id} is not {labeller!r}'s last answer (pair {row[1]} is); nothing undone")
    conn.execute("UPDATE answers SET undone_at = ?, undone_by = ? WHERE id = ?", (now, labeller, row[0]))
    conn.execute("UPDATE queries SET status = 'pending', assigned_to = ?, assigned_at = ?, lease_until = ?"
                 " WHERE id = ?", (labeller, now, now + lease_s, row[1]))
    return int(row[0]), int(row[1])


def export_rows(conn: sqlite3.Connection, history: bool = False) -> list[dict[str, Any]]:
    """Every live answer with its query's segments, as dicts keyed by ``EXPORT_FIELDS``, oldest first;
    with ``history``, undone answers too, keyed by ``HISTORY_FIELDS``."""
    fields = HISTORY_FIELDS if history else EXPORT_FIELDS
    rows = conn.execute(
        "SELECT a.id, a.query_id, q.first_id, q.second_id, f.episode_id, s.episode_id, f.start_step,"
        " s.start_step, f.length, q.created_step, a.label, a.skipped, a.labeller, a.answered_at, a.seconds"
        + (", a.undone_at, a.undone_by" if history else "") +
        " FROM answers a JOIN queries q ON q.id = a.query_id JOIN segments f ON f.id = q.first_id"
        " JOIN segments s ON s.id = q.second_id" + ("" if history else " WHERE a.undone_at IS NULL") +
        " ORDER BY a.id").fetchall()
    return [dict(zip(fields, r, strict=True)) | {"skipped": bool(r[11])} for r in rows]


def import_row(conn: sqlite3.Connection, row: Any, clock: Callable[[], float]) -> int:
    """Add one row shaped like :func:`export_rows`' (the rules are in the module docstring); 1 if it
    was new, else 0. ``clock`` (unix seconds) dates a row without ``answered_at``."""
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    if row.get("undone_at") is not None:
        return 0  # an undone answer of an exported history: not a label
    qid = row["query_id"]
    if not isinstance(qid, int) or isinstance(qid, bool):
        raise ValueError(f"query_id {qid!r} must be an integer")
    skipped = bool(row.get("skipped", row["label"] is None))
    if skipped != (row["label"] is None):
        raise ValueError(f"label {row['label']!r} with skipped={skipped} is inconsistent; skipped needs label null")
    label, labeller, seconds = check_answer(Answer(qid, row["label"], row["labeller"], row.get("seconds", 0.0)))
    at = row.get("answered_at", clock())
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
    return int(insert_answer(conn, qid, label, labeller, seconds, float(at)))
