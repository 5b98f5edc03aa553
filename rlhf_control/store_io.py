"""A :class:`~rlhf_control.store.PreferenceStore`'s answers to files and back: JSONL and CSV exports
(one row per answer, fields :data:`EXPORT_FIELDS`, label null/empty when skipped) and JSONL imports.

``PreferenceStore.export_jsonl``, ``export_csv`` and ``import_jsonl`` call these.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlhf_control.types import Answer

if TYPE_CHECKING:
    from rlhf_control.store import PreferenceStore

__all__ = ["EXPORT_FIELDS", "export_csv", "export_jsonl", "import_jsonl"]

EXPORT_FIELDS = ("answer_id", "query_id", "first_id", "second_id", "first_episode", "second_episode",
                 "first_start", "second_start", "length", "created_step", "label", "skipped",
                 "labeller", "answered_at", "seconds")


def _export_rows(store: PreferenceStore) -> list[dict[str, Any]]:
    with store._read() as conn:
        rows = conn.execute(
            "SELECT a.id, a.query_id, q.first_id, q.second_id, f.episode_id, s.episode_id, f.start_step,"
            " s.start_step, f.length, q.created_step, a.label, a.skipped, a.labeller, a.answered_at, a.seconds"
            " FROM answers a JOIN queries q ON q.id = a.query_id JOIN segments f ON f.id = q.first_id"
            " JOIN segments s ON s.id = q.second_id ORDER BY a.id").fetchall()
    return [dict(zip(EXPORT_FIELDS, r, strict=True)) | {"skipped": bool(r[11])} for r in rows]


def export_jsonl(store: PreferenceStore, path: str | os.PathLike) -> int:
    """One JSON object per answer (fields EXPORT_FIELDS; label null when skipped); returns the count."""
    rows = _export_rows(store)
    _write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
    return len(rows)


def export_csv(store: PreferenceStore, path: str | os.PathLike) -> int:
    """One CSV row per answer (header EXPORT_FIELDS; label empty when skipped); returns the count."""
    rows = _export_rows(store)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=EXPORT_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    _write_atomic(path, buf.getvalue())
    return len(rows)


def import_jsonl(store: PreferenceStore, path: str | os.PathLike) -> int:
    """Add the answers of an :func:`export_jsonl` file to ``store``; returns how many were new.

    A row's query must be in the store with the same first/second segment ids; if the query is
    missing but the row has ``first_id``/``second_id`` whose segments are there, the query is
    created (answered, with the row's ``created_step``). Rows already present (same label and
    labeller) are skipped. All or nothing: any bad line raises ValueError (or one of the answer
    errors) naming ``path:line`` and nothing is imported.
    """
    # Here, not at the top: rlhf_control.store imports this module.
    from rlhf_control.store import AlreadyAnsweredError, QueryRetiredError, UnknownQueryError

    answer_errors = (UnknownQueryError, AlreadyAnsweredError, QueryRetiredError)
    new = 0
    with open(path, encoding="utf-8") as f, store._write() as conn:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                new += _import_row(store, conn, json.loads(line))
            except (ValueError, TypeError, KeyError) as exc:
                kind = type(exc) if type(exc) in answer_errors else ValueError
                msg = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0]
                raise kind(f"{path}:{lineno}: {msg}") from None
    return new


def _import_row(store: PreferenceStore, conn: sqlite3.Connection, row: Any) -> int:
    from rlhf_control.store import UnknownQueryError, _check_answer

    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    qid = row["query_id"]
    if not isinstance(qid, int) or isinstance(qid, bool):
        raise ValueError(f"query_id {qid!r} must be an integer")
    skipped = bool(row.get("skipped", row["label"] is None))
    if skipped != (row["label"] is None):
        raise ValueError(f"label {row['label']!r} with skipped={skipped} is inconsistent; skipped needs label null")
    ans = Answer(qid, row["label"], row["labeller"], row.get("seconds", 0.0))
    label, labeller, seconds = _check_answer(ans)
    at = row.get("answered_at", store._clock())
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
    return int(store._insert_answer(conn, qid, label, labeller, seconds, float(at)))


def _write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write via a temporary file and rename, so an interrupted export leaves no half file."""
    tmp = Path(f"{path}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
