"""Leases: which labeller holds which pending query, and until when (unix seconds).

A labeller's page holds the pair on screen (and at most one in reserve) and renews the hold with a
heartbeat; a hold whose ``lease_until`` has passed is free for anyone. Each function runs inside one
write transaction of :class:`~rlhf_control.store.store.PreferenceStore` (``conn``) at time ``now``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

__all__ = ["check_labeller_name", "claim_next", "hold", "pending_overview", "release"]

_FREE = "(assigned_to IS NULL OR lease_until < ?)"


def check_labeller_name(labeller: object) -> str:
    """ValueError unless ``labeller`` is a non-empty string."""
    if not isinstance(labeller, str) or not labeller:
        raise ValueError(f"labeller {labeller!r} is not allowed; use a non-empty string")
    return labeller


def claim_next(conn: sqlite3.Connection, labeller: str, now: float, lease_s: float, exclude: Sequence[int] = (),
               newest_first: bool = False) -> int | None:
    """Hold a pending query for ``labeller`` until ``now + lease_s``: their own held one first, then a
    free one (the oldest, or the newest with ``newest_first``). Returns its id, or None if none is free."""
    ex = [int(i) for i in exclude]
    not_ex = f"AND id NOT IN ({','.join('?' * len(ex))})" if ex else ""
    order = "DESC" if newest_first else ""
    row = conn.execute(f"SELECT id FROM queries WHERE status = 'pending' AND assigned_to = ? {not_ex}"
                       " ORDER BY id LIMIT 1", [labeller, *ex]).fetchone() or \
        conn.execute(f"SELECT id FROM queries WHERE status = 'pending' AND {_FREE} {not_ex} ORDER BY id {order}"
                     " LIMIT 1", [now, *ex]).fetchone()
    if row is None:
        return None
    conn.execute("UPDATE queries SET assigned_to = ?, assigned_at = ?, lease_until = ? WHERE id = ?",
                 (labeller, now, now + lease_s, row[0]))
    return int(row[0])


def hold(conn: sqlite3.Connection, labeller: str, query_ids: Sequence[int], now: float, lease_s: float) -> list[int]:
    """Renew (or take again) ``labeller``'s hold on each of ``query_ids`` that is pending and either
    theirs or free; returns the ids they hold now. (A heartbeat, and a page coming back into view.)"""
    held = []
    for qid in dict.fromkeys(int(i) for i in query_ids):
        row = conn.execute(f"SELECT assigned_to FROM queries WHERE id = ? AND status = 'pending'"
                           f" AND (assigned_to = ? OR {_FREE})", (qid, labeller, now)).fetchone()
        if row is None:
            continue
        if row[0] == labeller:  # keep when it was first handed out
            conn.execute("UPDATE queries SET lease_until = ? WHERE id = ?", (now + lease_s, qid))
        else:
            conn.execute("UPDATE queries SET assigned_to = ?, assigned_at = ?, lease_until = ? WHERE id = ?",
                         (labeller, now, now + lease_s, qid))
        held.append(qid)
    return held


def release(conn: sqlite3.Connection, query_id: int, labeller: str) -> bool:
    """Give back a query held by ``labeller``; False if they did not hold it."""
    return conn.execute("UPDATE queries SET assigned_to = NULL, assigned_at = NULL, lease_until = NULL"
                        " WHERE id = ? AND assigned_to = ?", (int(query_id), labeller)).rowcount == 1


def pending_overview(conn: sqlite3.Connection, now: float) -> list[tuple[int, str | None, str | None, str | None]]:
    """Every pending query as ``(id, clip_first, clip_second, holder)``, holder None when free (or its
    lease ran out), oldest first."""
    return [(int(r[0]), r[1], r[2], r[3] if r[4] is not None and r[4] >= now else None)
            for r in conn.execute("SELECT id, clip_first, clip_second, assigned_to, lease_until FROM queries"
                                  " WHERE status = 'pending' ORDER BY id")]
