"""The PostgreSQL store's outbound queue, shared by every node on the database.

One ``deliveries`` row per recipient to relay to, inserted with its message
in the transaction that stores it (``insert_queued``), so the ``250`` the
client gets covers both.  Queue runners on any number of nodes then claim
due rows under a lease (``QueueOperations.claim``): ``lease_owner`` and
``lease_until`` name who may write their outcome and until when.  A runner
that dies leaves leases that simply run out, and anyone claims the rows
anew; the outcome of a runner whose lease went to another is dropped, as
``record`` writes only rows whose ``lease_owner`` is still the writer's.

Claims never wait for a lock: a claim locks the due rows it looks at with
``FOR UPDATE SKIP LOCKED``, so two claims running at once take disjoint
rows, and one that finds every due row locked (by another claim, or by an
outcome being written) takes nothing rather than queueing behind it.  A
claim takes every due row of the messages it picks, so that one connection
can carry them all; only when two claims pick one message at the same
moment does each take part of its rows.

A change that may wait for locks (an outcome, an operator's action) takes
them in key order first, message id then recipient, so that two changes to
one message's rows never deadlock: a hold asked for just as the outcome of
an attempt is written waits for it, and then acts on what it wrote.

Times are ``timestamptz``, and always the ``now`` the caller passes: the
database clock is never read, so that tests decide what is due.
``next_attempt`` is set only while a row is pending (``queued``,
``deferred``); the partial index ``deliveries_due`` keeps the scan for due
work to those rows.  Looking for work when there is none, renewing or
releasing leases one holds none of, is a read: an idle runner writes
nothing.

Every change to a message's rows writes a ``QUEUE`` event in the same
transaction, through the store's ``QueueEvents`` hook.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import AsyncConnection, AsyncCursor
from psycopg.rows import TupleRow, tuple_row
from psycopg_pool import AsyncConnectionPool

from mailgate.model import DeliveryOutcome, DeliveryState, MessageId, QueuedDelivery
from mailgate.stores.postgresql._connection import store_error

__all__ = [
    "QUEUE_SCHEMA",
    "ROWS_LOCKED_PER_MESSAGE",
    "QueueEvents",
    "QueueOperations",
    "insert_queued",
]

QUEUE_SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    message_id text COLLATE "C" NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    recipient text COLLATE "C" NOT NULL, -- sorted byte by byte, as in SQLite
    state text NOT NULL,                -- a DeliveryState value
    queued_at timestamptz NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    next_attempt timestamptz,           -- due time while pending and not held
    last_attempt timestamptz,
    last_reply text NOT NULL DEFAULT '',
    relay text NOT NULL DEFAULT '',
    bounce_requested boolean NOT NULL DEFAULT false,
    delay_notified boolean NOT NULL DEFAULT false,
    lease_owner text,
    lease_until timestamptz,
    PRIMARY KEY (message_id, recipient)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (next_attempt)
WHERE state IN ('queued', 'deferred');
CREATE INDEX IF NOT EXISTS deliveries_leased ON deliveries (lease_owner)
WHERE lease_owner IS NOT NULL;
"""

ROWS_LOCKED_PER_MESSAGE = 4
"""Due rows a claim of ``limit`` messages locks ``limit`` times over while it picks them.

Enough for the messages of most mail (a few recipients) to fill the claim;
a claim that finds messages with more recipients picks fewer of them, and
still takes every due row of those it picks."""

QueueEvents = Callable[[AsyncCursor[Any], Sequence[MessageId]], Awaitable[None]]
"""Writes a ``QUEUE`` event for these messages with the cursor's transaction."""

_PENDING = "state IN ('queued', 'deferred')"
_WAITING = "state IN ('queued', 'deferred', 'held')"
_OF_MESSAGE = "message_id = %(message_id)s"
_DUE = f"{_PENDING} AND next_attempt <= %(now)s AND (lease_until IS NULL OR lease_until <= %(now)s)"
_COLUMNS = (
    "d.message_id, d.recipient, coalesce(m.envelope ->> 'mail_from', ''), d.state,"
    " d.queued_at, d.attempts, d.next_attempt, d.last_attempt, d.last_reply, d.relay,"
    " d.bounce_requested, d.delay_notified"
)

# The messages of the due rows locked first, longest due first, then every due row of
# theirs that no other claim has locked meanwhile (this transaction's own locks do not
# count); the sender comes from the message.  Each step is materialized, so that it runs
# once whatever the planner thinks of the table (its estimates of a new one are far out).
_CLAIM = f"""
WITH locked AS MATERIALIZED (
    SELECT message_id, next_attempt FROM deliveries WHERE {_DUE}
    ORDER BY next_attempt LIMIT %(scan)s FOR UPDATE SKIP LOCKED
), picked AS MATERIALIZED (
    SELECT message_id FROM locked
    GROUP BY message_id ORDER BY min(next_attempt), message_id LIMIT %(limit)s
), taken AS MATERIALIZED (
    SELECT message_id, recipient FROM deliveries
    WHERE {_DUE} AND message_id IN (SELECT message_id FROM picked)
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE deliveries AS d SET lease_owner = %(owner)s, lease_until = %(until)s
    FROM taken AS t WHERE d.message_id = t.message_id AND d.recipient = t.recipient
    RETURNING d.*
)
SELECT {_COLUMNS} FROM claimed AS d LEFT JOIN messages AS m ON m.id = d.message_id
ORDER BY d.next_attempt, d.message_id, d.recipient
"""  # noqa: S608

# One statement for a batch of outcomes, fenced by the lease: a row another runner holds
# now is not even locked.  An operator may act on a row while its attempt runs: a deferral
# then keeps the row held (``hold``), or leaves it due at once, still flagged
# (``request_bounce``).  A delivery or a bounce is final whatever was asked meanwhile: it
# has happened.  An outcome named twice is written once.
_RECORD = """
WITH o (message_id, recipient, state, deferred, at, next_attempt, attempted, reply, relay,
        delay_notified) AS (
    SELECT * FROM unnest(
        %(message_ids)s::text[], %(recipients)s::text[], %(states)s::text[],
        %(deferred)s::boolean[], %(at)s::timestamptz[], %(next)s::timestamptz[],
        %(attempted)s::boolean[], %(replies)s::text[], %(relays)s::text[],
        %(delay_notified)s::boolean[])
), target AS MATERIALIZED (
    SELECT message_id, recipient FROM deliveries
    WHERE lease_owner = %(owner)s AND (message_id, recipient) IN (
        SELECT message_id, recipient FROM o)
    ORDER BY message_id, recipient FOR UPDATE
)
UPDATE deliveries AS d SET
    state = CASE WHEN o.deferred AND d.state = 'held' THEN 'held' ELSE o.state END,
    next_attempt = CASE WHEN NOT o.deferred OR d.state = 'held' THEN NULL
        WHEN d.bounce_requested THEN o.at ELSE o.next_attempt END,
    bounce_requested = o.deferred AND d.bounce_requested,
    attempts = d.attempts + CASE WHEN o.attempted THEN 1 ELSE 0 END,
    last_attempt = CASE WHEN o.attempted THEN o.at ELSE d.last_attempt END,
    last_reply = o.reply, relay = o.relay,
    delay_notified = d.delay_notified OR o.delay_notified,
    lease_owner = NULL, lease_until = NULL
FROM target AS t, o
WHERE d.message_id = t.message_id AND d.recipient = t.recipient
    AND o.message_id = t.message_id AND o.recipient = t.recipient
RETURNING d.message_id
"""


def _locked(where: str) -> str:
    """The rows ``where`` selects, locked in key order (the ``target`` of a change)."""
    return (
        f"WITH target AS MATERIALIZED (SELECT message_id, recipient FROM deliveries"  # noqa: S608
        f" WHERE {where} ORDER BY message_id, recipient FOR UPDATE)"
    )


def _update(sets: str, where: str) -> str:
    """Set ``sets`` on the rows ``where`` selects; returns their message ids."""
    return (
        f"{_locked(where)} UPDATE deliveries AS d SET {sets} FROM target AS t"  # noqa: S608
        " WHERE d.message_id = t.message_id AND d.recipient = t.recipient"
        " RETURNING d.message_id"
    )


_ENQUEUE = """
INSERT INTO deliveries (message_id, recipient, state, queued_at, next_attempt)
SELECT %(message_id)s, recipient, 'queued', %(now)s, %(now)s
FROM unnest(%(recipients)s::text[]) AS recipient
WHERE EXISTS (SELECT 1 FROM messages WHERE id = %(message_id)s)
ON CONFLICT (message_id, recipient) DO UPDATE SET state = 'queued',
    queued_at = excluded.queued_at, attempts = 0, next_attempt = excluded.next_attempt,
    last_attempt = NULL, last_reply = '', relay = '', bounce_requested = false,
    delay_notified = false, lease_owner = NULL, lease_until = NULL
WHERE deliveries.state NOT IN ('queued', 'deferred', 'held')
RETURNING message_id
"""


def _utc(when: datetime | None) -> datetime | None:
    return None if when is None else when.astimezone(UTC)


def _delivery(row: TupleRow) -> QueuedDelivery:
    (
        message_id,
        recipient,
        sender,
        state,
        queued_at,
        attempts,
        next_attempt,
        last_attempt,
        last_reply,
        relay,
        bounce_requested,
        delay_notified,
    ) = row
    return QueuedDelivery(
        message_id=MessageId(message_id),
        recipient=recipient,
        sender=sender,
        state=DeliveryState(state),
        queued_at=queued_at.astimezone(UTC),
        attempts=attempts,
        next_attempt=_utc(next_attempt),
        last_attempt=_utc(last_attempt),
        last_reply=last_reply,
        relay=relay,
        bounce_requested=bounce_requested,
        delay_notified=delay_notified,
    )


async def insert_queued(
    cursor: AsyncCursor[Any], rows: Sequence[tuple[str, str, datetime, datetime]]
) -> None:
    """Insert new messages' queue rows, ``(message id, recipient, queued at, due)``, with the
    cursor's transaction (the one storing the messages); a recipient named twice, once."""
    if rows:
        await cursor.executemany(
            "INSERT INTO deliveries (message_id, recipient, state, queued_at, next_attempt)"
            " VALUES (%s, %s, 'queued', %s, %s) ON CONFLICT DO NOTHING",
            rows,
        )


class QueueOperations:
    """The ``ports.QueueStore`` methods beyond ``ports.MessageStore``, on a connection pool.

    ``events`` writes the ``QUEUE`` event of each change with its transaction
    (``None``: no events); ``check_open``, called before each operation,
    raises ``StoreError`` when the store may not be used.  Several instances,
    in one process or on many nodes, may share the database.  Every
    operation raises ``StoreError`` (one line) when the database cannot do
    it; then a change has not happened.
    """

    def __init__(
        self,
        pool: AsyncConnectionPool[AsyncConnection[Any]],
        events: QueueEvents | None = None,
        *,
        check_open: Callable[[], None] | None = None,
    ) -> None:
        self._pool = pool
        self._events = events
        self._check_open = check_open

    async def _read(self, query: str, params: dict[str, object]) -> list[TupleRow]:
        if self._check_open is not None:
            self._check_open()
        try:
            async with (
                self._pool.connection() as connection,
                connection.cursor(row_factory=tuple_row) as cursor,
            ):
                await cursor.execute(query, params)
                return await cursor.fetchall()
        except psycopg.Error as error:
            raise store_error("read", error) from error

    async def _exists(self, query: str, params: dict[str, object]) -> bool:
        rows = await self._read(f"SELECT EXISTS ({query})", params)
        return bool(rows[0][0])

    async def _write(
        self, query: str, params: dict[str, object], *, events: bool = True
    ) -> list[TupleRow]:
        """Run ``query`` in a transaction of its own; return its rows.

        With ``events``, its rows are the ids of the messages whose rows it
        changed (``RETURNING message_id``), and their event is written with it.
        """
        if self._check_open is not None:
            self._check_open()
        try:
            async with self._pool.connection() as connection, connection.transaction():
                cursor = connection.cursor(row_factory=tuple_row)
                await cursor.execute(query, params)
                rows = await cursor.fetchall()
                if events and rows and self._events is not None:
                    changed = list(dict.fromkeys(MessageId(row[0]) for row in rows))
                    await self._events(cursor, changed)
        except psycopg.Error as error:
            raise store_error("write", error) from error
        return rows

    async def _change(self, query: str, params: dict[str, object]) -> int:
        """Change rows (``query`` returning the message id of each), with their event;
        return how many."""
        return len(await self._write(query, params))

    async def claim(
        self, owner: str, *, now: datetime, lease: timedelta, limit: int
    ) -> list[QueuedDelivery]:
        """Lease up to ``limit`` messages' due recipients to ``owner`` (``ports.QueueStore``).

        The longest due first; a claim running at the same time as another
        takes other rows than it does, and waits for none of them.
        """
        if limit <= 0 or not await self._exists(
            f"SELECT 1 FROM deliveries WHERE {_DUE}",  # noqa: S608
            {"now": now},
        ):
            return []
        params = {
            "now": now,
            "owner": owner,
            "until": now + lease,
            "limit": limit,
            "scan": limit * ROWS_LOCKED_PER_MESSAGE,
        }
        rows = await self._write(_CLAIM, params, events=False)  # no state anyone watches
        return [_delivery(row) for row in rows]

    async def record(self, owner: str, outcomes: Sequence[DeliveryOutcome]) -> int:
        """Write the outcomes of recipients ``owner`` holds; return how many were written.

        Outcomes of recipients whose lease ``owner`` no longer holds are
        dropped.  A hold asked for while the attempt ran outlives a
        deferral, and a bounce asked for makes it due at once; a delivery
        or a bounce is final whatever was asked.
        """
        if not outcomes:
            return 0
        deferred = [o.state is DeliveryState.DEFERRED for o in outcomes]
        params: dict[str, object] = {
            "owner": owner,
            "message_ids": [o.message_id for o in outcomes],
            "recipients": [o.recipient for o in outcomes],
            "states": [o.state.value for o in outcomes],
            "deferred": deferred,
            "at": [o.at for o in outcomes],
            "next": [
                o.next_attempt if d else None for o, d in zip(outcomes, deferred, strict=True)
            ],
            "attempted": [o.attempted for o in outcomes],
            "replies": [o.reply for o in outcomes],
            "relays": [o.relay for o in outcomes],
            "delay_notified": [o.delay_notified for o in outcomes],
        }
        return await self._change(_RECORD, params)

    async def renew_claims(self, owner: str, until: datetime) -> int:
        """Extend every lease ``owner`` holds to ``until``; return how many."""
        return await self._leases(
            "UPDATE deliveries SET lease_until = %(until)s WHERE lease_owner = %(owner)s"
            " RETURNING message_id",
            {"owner": owner, "until": until},
        )

    async def release_claims(self, owner: str) -> int:
        """Drop every lease ``owner`` holds; return how many."""
        return await self._leases(
            "UPDATE deliveries SET lease_owner = NULL, lease_until = NULL"
            " WHERE lease_owner = %(owner)s RETURNING message_id",
            {"owner": owner},
        )

    async def _leases(self, query: str, params: dict[str, object]) -> int:
        """Change ``owner``'s leases (no event: no state anyone watches), if it holds any."""
        if not await self._exists("SELECT 1 FROM deliveries WHERE lease_owner = %(owner)s", params):
            return 0
        return len(await self._write(query, params, events=False))

    async def queued(
        self, message_id: MessageId | None = None, *, pending_only: bool = True
    ) -> list[QueuedDelivery]:
        """The queue's rows, oldest message first (pending ones only, unless told)."""
        where: list[str] = []
        if pending_only:
            where.append("d.state IN ('queued', 'deferred', 'held')")
        if message_id is not None:
            where.append("d.message_id = %(message_id)s")
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = await self._read(
            f"SELECT {_COLUMNS} FROM deliveries AS d"  # noqa: S608
            f" LEFT JOIN messages AS m ON m.id = d.message_id{clause}"
            " ORDER BY d.queued_at, d.message_id, d.recipient",
            {"message_id": message_id},
        )
        return [_delivery(row) for row in rows]

    async def enqueue(self, message_id: MessageId, recipients: Sequence[str], now: datetime) -> int:
        """Queue a stored message for delivery to ``recipients``; return how many rows were
        added (or queued again after they were done).  A pending one stays as it is."""
        wanted = sorted(set(recipients))  # in key order, as every change takes its locks
        if not wanted:
            return 0
        return await self._change(
            _ENQUEUE, {"message_id": message_id, "recipients": wanted, "now": now}
        )

    async def retry(self, message_id: MessageId | None, now: datetime) -> int:
        """Make pending recipients (of one message, or all) due at ``now``."""
        which = "" if message_id is None else f" AND {_OF_MESSAGE}"
        return await self._change(
            _update("next_attempt = %(now)s", f"{_PENDING}{which}"),
            {"now": now, "message_id": message_id},
        )

    async def hold(self, message_id: MessageId) -> int:
        """Hold a message's pending recipients until released."""
        return await self._change(
            _update("state = 'held', next_attempt = NULL", f"{_PENDING} AND {_OF_MESSAGE}"),
            {"message_id": message_id},
        )

    async def release(self, message_id: MessageId, now: datetime) -> int:
        """Release a message's held recipients, due at ``now``."""
        return await self._change(
            _update(
                "next_attempt = %(now)s,"
                " state = CASE WHEN attempts > 0 THEN 'deferred' ELSE 'queued' END",
                f"state = 'held' AND {_OF_MESSAGE}",
            ),
            {"now": now, "message_id": message_id},
        )

    async def request_bounce(self, message_id: MessageId, now: datetime) -> int:
        """Have a message's pending (or held) recipients bounced at the next run, due now."""
        return await self._change(
            _update(
                "bounce_requested = true, next_attempt = %(now)s,"
                " state = CASE WHEN state = 'held' THEN 'queued' ELSE state END",
                f"{_WAITING} AND {_OF_MESSAGE}",
            ),
            {"now": now, "message_id": message_id},
        )

    async def dequeue(self, message_id: MessageId) -> int:
        """Remove a message's pending (or held) recipients from the queue (no bounce)."""
        return await self._change(
            f"{_locked(f'{_WAITING} AND {_OF_MESSAGE}')} DELETE FROM deliveries AS d"  # noqa: S608
            " USING target AS t WHERE d.message_id = t.message_id AND d.recipient = t.recipient"
            " RETURNING d.message_id",
            {"message_id": message_id},
        )
