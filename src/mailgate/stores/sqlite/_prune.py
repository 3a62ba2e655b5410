"""Pruning the SQLite store: the oldest messages over the retention limits, a batch at a time.

``prune`` runs on the write connection inside the writer's transaction
(``_transactions.Prune``), so what it picks and what it deletes are one
snapshot and no other writer comes between: a message that the same
transaction, or an earlier one, gave a pending queue row is never picked.
The ``message_deleted`` trigger takes a message's content, tags, inline
parts and queue rows with it, and ``message_search_deleted`` its search
entry; body files are unlinked once the transaction committed, as for any
delete.  ``anything_to_prune`` asks the same on a read connection first, so
that a check that finds nothing writes nothing: no transaction, no fsync.

Only a window of the oldest messages is looked at: ``limit`` of them plus as
many as there are pending queue rows (each holds back at most one message).
The messages beyond the newest ``keep_newest`` are the oldest ones by id, and
so, as ids are made from the same clock reading as the received time, are
those received before a time.  So a round costs the same at a thousand
messages and at a million, rather than reading every row to learn that none
is old enough.
"""

from __future__ import annotations

import sqlite3

from mailgate.model import MessageId

__all__ = ["PENDING_STATES", "anything_to_prune", "prune"]

PENDING_STATES = "('queued', 'deferred', 'held')"
"""The states of a queue row whose message must stay: a delivery is still to come."""


def _candidates(keep_newest: int | None, before_ms: int | None) -> str | None:
    """SQL selecting the ``seq`` of up to ``:limit`` messages to prune, oldest first, or
    ``None`` when no limit is set."""
    over: list[str] = []
    if keep_newest is not None:
        over.append(
            "m.id < (SELECT id FROM messages ORDER BY id DESC LIMIT 1 OFFSET :beyond)"
            if keep_newest > 0
            else "1"
        )
    if before_ms is not None:
        over.append("m.received_at < :before")
    if not over:
        return None
    return (
        "SELECT m.seq FROM (SELECT seq, id, received_at FROM messages ORDER BY id"  # noqa: S608
        f" LIMIT :limit + (SELECT count(*) FROM deliveries WHERE state IN {PENDING_STATES}))"
        f" AS m WHERE ({' OR '.join(over)}) AND NOT EXISTS (SELECT 1 FROM deliveries AS d"
        f" WHERE d.message_id = m.id AND d.state IN {PENDING_STATES}) ORDER BY m.id LIMIT :limit"
    )


def _parameters(keep_newest: int | None, before_ms: int | None, limit: int) -> dict[str, int]:
    return {"beyond": max((keep_newest or 0) - 1, 0), "before": before_ms or 0, "limit": limit}


def anything_to_prune(
    connection: sqlite3.Connection, keep_newest: int | None, before_ms: int | None
) -> bool:
    """Whether ``prune`` would delete a message now (on a read connection)."""
    candidates = _candidates(keep_newest, before_ms)
    if candidates is None:
        return False
    row = connection.execute(
        f"SELECT EXISTS ({candidates})",
        _parameters(keep_newest, before_ms, 1),
    ).fetchone()
    return bool(row[0])


def prune(
    connection: sqlite3.Connection, keep_newest: int | None, before_ms: int | None, limit: int
) -> list[tuple[MessageId, str | None]]:
    """Delete up to ``limit`` of the oldest messages beyond the newest ``keep_newest`` or
    received before ``before_ms`` (milliseconds since the epoch), none with a pending queue
    row; return each one's id and body file, oldest first.  Must not commit."""
    candidates = _candidates(keep_newest, before_ms)
    if candidates is None or limit <= 0:
        return []
    rows = connection.execute(
        f"DELETE FROM messages WHERE seq IN ({candidates}) RETURNING id, body_file",  # noqa: S608
        _parameters(keep_newest, before_ms, limit),
    ).fetchall()
    return sorted((MessageId(message_id), body_file) for message_id, body_file in rows)
