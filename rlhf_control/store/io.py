"""A :class:`~rlhf_control.store.store.PreferenceStore`'s answers to files and back: JSONL and CSV exports
(one row per answer, fields :data:`EXPORT_FIELDS`, label null/empty when skipped) and JSONL imports.
"""

from __future__ import annotations

import csv
import io
import json
import os

from rlhf_control.errors import UserError
from rlhf_control.rundir import write_atomic
from rlhf_control.store.answers import EXPORT_FIELDS, HISTORY_FIELDS
from rlhf_control.store.errors import AlreadyAnsweredError, QueryRetiredError, UnknownQueryError
from rlhf_control.store.store import PreferenceStore

__all__ = ["EXPORT_FIELDS", "export_csv", "export_jsonl", "import_jsonl"]


def export_jsonl(store: PreferenceStore, path: str | os.PathLike, history: bool = False) -> int:
    """One JSON object per live answer (fields EXPORT_FIELDS; label null when skipped); with ``history``
    undone answers too (HISTORY_FIELDS: when and by whom); returns the count."""
    rows = store.answer_rows(history)
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
    return len(rows)


def export_csv(store: PreferenceStore, path: str | os.PathLike, history: bool = False) -> int:
    """One CSV row per live answer (header EXPORT_FIELDS; label empty when skipped); with ``history``
    undone answers too (HISTORY_FIELDS); returns the count."""
    rows = store.answer_rows(history)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS if history else EXPORT_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, buf.getvalue())
    return len(rows)


def import_jsonl(store: PreferenceStore, path: str | os.PathLike) -> int:
    """Add the answers of an :func:`export_jsonl` file to ``store``; returns how many were new.

    The rules per row are :meth:`PreferenceStore.import_batch`'s. All or nothing: any bad line
    raises UserError (or one of the answer errors) naming ``path:line`` and nothing is imported.
    """
    answer_errors = (UnknownQueryError, AlreadyAnsweredError, QueryRetiredError)
    new = 0
    with open(path, encoding="utf-8") as f, store.import_batch() as add:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                new += add(json.loads(line))
            except (ValueError, TypeError, KeyError) as exc:
                kind = type(exc) if type(exc) in answer_errors else UserError
                msg = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0]
                raise kind(f"{path}:{lineno}: {msg}") from None
    return new
