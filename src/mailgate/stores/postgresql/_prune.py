"""Pruning the PostgreSQL store: the oldest messages over the retention limits, a batch at a
time, by one node at a time.

``prune`` is work for the writer's transaction (``_writer.Change``).  It
first takes ``PRUNE_LOCK_KEY``, a transaction-level advisory lock, without
waiting: while one node prunes, another that asks finds the lock taken,
prunes nothing, and asks again at its next round.  Even without the lock
two prunes could not delete a message twice (the second finds the row gone,
or locked and skips it), but each would wait on the other's rows and count
half a batch; with it, one deletes and the other costs one round trip.

The messages it picks are locked ``FOR UPDATE SKIP LOCKED``: a message whose
row another transaction has locked (an operator queueing it for delivery
right now, whose new queue row holds a key-share lock on it) is skipped,
and looked at again at the next round, when its pending queue row shows.
``ON DELETE CASCADE`` takes the content, tags and queue rows with the
message; the free-text index is on ``messages`` itself.

Only a window of the oldest messages is looked at, as in the SQLite store
(see ``mailgate.stores.sqlite._prune``): ``limit`` of them plus as many as
there are pending queue rows.  ``anything_to_prune`` asks the same with a
read first, so that a round that finds nothing writes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg import AsyncCursor
from psycopg_pool import AsyncConnectionPool

from mailgate.model import MessageId, StoreEvent, StoreEventKind
from mailgate.stores.postgresql._connection import store_error

__all__ = ["PRUNE_LOCK_KEY", "anything_to_prune", "prune"]

PRUNE_LOCK_KEY = 0x6D677072756E6500
"""The advisory lock a prune holds for its transaction ("mgprune" in ASCII)."""
_PENDING = "('queued', 'deferred', 'held')"


def _candidates(keep_newest: int | None, older_than: datetime | None) -> str | None:
    """SQL selecting the ids of up to ``%(limit)s`` messages to prune, oldest first, or
    ``None`` when no limit is set."""
    over: list[str] = []
    if keep_newest is not None:
        over.append(
            "m.id < (SELECT id FROM messages ORDER BY id DESC LIMIT 1 OFFSET %(beyond)s)"
            if keep_newest > 0
            else "true"
        )
    if older_than is not None:
        over.append("m.received_at < %(before)s")
    if not over:
        return None
    return (
        "SELECT m.id FROM messages AS m WHERE m.id IN (SELECT id FROM messages ORDER BY id"  # noqa: S608
        f" LIMIT %(limit)s + (SELECT count(*) FROM deliveries WHERE state IN {_PENDING}))"
        f" AND ({' OR '.join(over)}) AND NOT EXISTS (SELECT 1 FROM deliveries AS d"
        f" WHERE d.message_id = m.id AND d.state IN {_PENDING}) ORDER BY m.id LIMIT %(limit)s"
    )


def _parameters(
    keep_newest: int | None, older_than: datetime | None, limit: int
) -> dict[str, object]:
    return {"beyond": max((keep_newest or 0) - 1, 0), "before": older_than, "limit": limit}


async def anything_to_prune(
    pool: AsyncConnectionPool[Any], keep_newest: int | None, older_than: datetime | None
) -> bool:
    """Whether ``prune`` would delete a message now (a read).

    Raises ``StoreError`` when the database cannot answer.
    """
    candidates = _candidates(keep_newest, older_than)
    if candidates is None:
        return False
    try:
        async with pool.connection() as connection:
            cursor = await connection.execute(
                f"SELECT EXISTS ({candidates})",
                _parameters(keep_newest, older_than, 1),
            )
            row = await cursor.fetchone()
    except psycopg.Error as error:
        raise store_error("read", error) from error
    return row is not None and bool(row[0])


async def prune(
    cursor: AsyncCursor[Any], keep_newest: int | None, older_than: datetime | None, limit: int
) -> tuple[object, Sequence[StoreEvent]]:
    """Delete up to ``limit`` of the oldest messages beyond the newest ``keep_newest`` or
    received before ``older_than``, none with a pending queue row, unless another node is
    pruning; the result is how many."""
    candidates = _candidates(keep_newest, older_than)
    if candidates is None or limit <= 0:
        return 0, []
    await cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", (PRUNE_LOCK_KEY,))
    locked = await cursor.fetchone()
    if locked is None or not locked[0]:
        return 0, []
    await cursor.execute(
        f"DELETE FROM messages WHERE id IN ({candidates} FOR UPDATE OF m SKIP LOCKED)"  # noqa: S608
        " RETURNING id",
        _parameters(keep_newest, older_than, limit),
    )
    deleted = tuple(sorted(MessageId(row[0]) for row in await cursor.fetchall()))
    return len(deleted), [StoreEvent(StoreEventKind.DELETED, deleted)] if deleted else []
