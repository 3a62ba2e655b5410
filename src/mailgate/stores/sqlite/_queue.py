"""The SQLite store's outbound queue: one ``deliveries`` row per recipient to relay to.

A row is inserted with its message, in the transaction that stores it
(``insert_queued``), so the ``250`` the client gets covers both.  Then a
queue runner claims due rows under a lease (``claim``): ``lease_owner`` and
``lease_until`` name who may write their outcome (``record``) and until
when; a runner that dies leaves leases that simply run out, and another
(or the same, started again) claims the rows anew.  Outcomes of a runner
whose lease has gone to another are dropped: it is fenced off by
``lease_owner``.

Times are milliseconds since the Unix epoch, as everywhere in the store.
``next_attempt`` is set only while a row is pending (``queued``,
``deferred``) and due; the partial index ``deliveries_due`` keeps the scan
for due work to the pending rows.  Deleting a message deletes its rows
(the ``message_deleted`` trigger, ``_schema``).

Every function here runs on the write connection inside the writer's
transaction (``_transactions.ChangeQueue``), except the reads, which run on
a read connection.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime

from mailgate.model import DeliveryOutcome, DeliveryState, MessageId, QueuedDelivery
from mailgate.stores.sqlite._records import NewMessageRecord

__all__ = [
    "QUEUE_SCHEMA",
    "anything_due",
    "claim",
    "dequeue",
    "enqueue",
    "hold",
    "holds_claims",
    "insert_queued",
    "queued",
    "record",
    "release",
    "release_claims",
    "renew_claims",
    "request_bounce",
    "retry",
]

QUEUE_SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    message_id TEXT NOT NULL,           -- messages.id
    recipient TEXT NOT NULL,
    state TEXT NOT NULL,                -- a DeliveryState value
    queued_at INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt INTEGER,               -- due time while pending and not held
    last_attempt INTEGER,
    last_reply TEXT NOT NULL DEFAULT '',
    relay TEXT NOT NULL DEFAULT '',
    bounce_requested INTEGER NOT NULL DEFAULT 0,
    delay_notified INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_until INTEGER,
    PRIMARY KEY (message_id, recipient)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (next_attempt)
WHERE state IN ('queued', 'deferred');
"""

_PENDING = "state IN ('queued', 'deferred')"
_DUE = f"{_PENDING} AND next_attempt <= :now AND (lease_until IS NULL OR lease_until <= :now)"

_SELECT = """
SELECT d.message_id, d.recipient, coalesce(json_extract(m.envelope, '$.mail_from'), ''),
       d.state, d.queued_at, d.attempts, d.next_attempt, d.last_attempt, d.last_reply,
       d.relay, d.bounce_requested, d.delay_notified
FROM deliveries AS d LEFT JOIN messages AS m ON m.id = d.message_id
"""


def _millis(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def _time(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)


def _delivery(row: Sequence[object]) -> QueuedDelivery:
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
    assert isinstance(queued_at, int)
    assert next_attempt is None or isinstance(next_attempt, int)
    assert last_attempt is None or isinstance(last_attempt, int)
    return QueuedDelivery(
        message_id=MessageId(str(message_id)),
        recipient=str(recipient),
        sender=str(sender),
        state=DeliveryState(str(state)),
        queued_at=datetime.fromtimestamp(queued_at / 1000, UTC),
        attempts=int(str(attempts)),
        next_attempt=_time(next_attempt),
        last_attempt=_time(last_attempt),
        last_reply=str(last_reply),
        relay=str(relay),
        bounce_requested=bool(bounce_requested),
        delay_notified=bool(delay_notified),
    )


def insert_queued(connection: sqlite3.Connection, records: Sequence[NewMessageRecord]) -> None:
    """Insert the queue rows the new messages carry (a recipient named twice, once)."""
    rows = [
        (record.id, queued.recipient, record.received_at_ms, queued.due_ms)
        for record in records
        for queued in record.queued
    ]
    if rows:
        connection.executemany(
            "INSERT OR IGNORE INTO deliveries (message_id, recipient, state, queued_at,"
            " next_attempt) VALUES (?, ?, 'queued', ?, ?)",
            rows,
        )


def anything_due(connection: sqlite3.Connection, now: datetime) -> bool:
    """Whether a claim at ``now`` would find anything: a read, so that a runner looking for
    work when there is none costs no write transaction (and no fsync)."""
    row = connection.execute(
        f"SELECT 1 FROM deliveries WHERE {_DUE} LIMIT 1",  # noqa: S608
        {"now": _millis(now)},
    ).fetchone()
    return row is not None


def holds_claims(connection: sqlite3.Connection, owner: str) -> bool:
    """Whether ``owner`` holds any lease (a read, as ``anything_due``)."""
    row = connection.execute(
        "SELECT 1 FROM deliveries WHERE lease_owner = ? LIMIT 1", (owner,)
    ).fetchone()
    return row is not None


def claim(
    connection: sqlite3.Connection, owner: str, now: datetime, lease_until: datetime, limit: int
) -> tuple[list[QueuedDelivery], list[MessageId]]:
    """Lease the due rows of up to ``limit`` messages, the longest due first."""
    params = {"now": _millis(now), "owner": owner, "until": _millis(lease_until), "limit": limit}
    claimed = connection.execute(
        f"UPDATE deliveries SET lease_owner = :owner, lease_until = :until"  # noqa: S608
        f" WHERE {_DUE} AND message_id IN ("
        f"  SELECT message_id FROM deliveries WHERE {_DUE}"
        f"  GROUP BY message_id ORDER BY min(next_attempt) LIMIT :limit)"
        f" RETURNING message_id, recipient",
        params,
    ).fetchall()
    if not claimed:
        return [], []
    rows = connection.execute(
        f"{_SELECT} WHERE d.lease_owner = :owner AND d.lease_until = :until"
        " ORDER BY d.next_attempt, d.message_id, d.recipient",
        params,
    ).fetchall()
    deliveries = [_delivery(row) for row in rows]
    return deliveries, []  # a claim changes no state anyone watches


def record(
    connection: sqlite3.Connection, owner: str, outcomes: Sequence[DeliveryOutcome]
) -> tuple[int, list[MessageId]]:
    """Write the outcomes of rows ``owner`` holds the lease of; release those leases.

    An operator may act on a row while its attempt runs: a deferral then
    keeps the row held (``hold``), or bounces it at once (``request_bounce``:
    still flagged, due now).  A delivery or a bounce is final whatever was
    asked meanwhile: it has happened.
    """
    written = 0
    changed: dict[MessageId, None] = {}
    for outcome in outcomes:
        deferred = outcome.state is DeliveryState.DEFERRED
        at = _millis(outcome.at)
        next_attempt = (
            _millis(outcome.next_attempt) if deferred and outcome.next_attempt is not None else None
        )
        cursor = connection.execute(
            "UPDATE deliveries SET"
            " state = CASE WHEN :deferred AND state = 'held' THEN 'held' ELSE :state END,"
            " next_attempt = CASE WHEN NOT :deferred OR state = 'held' THEN NULL"
            "  WHEN bounce_requested THEN :at ELSE :next END,"
            " bounce_requested = CASE WHEN :deferred THEN bounce_requested ELSE 0 END,"
            " attempts = attempts + :attempted,"
            " last_attempt = CASE WHEN :attempted THEN :at ELSE last_attempt END,"
            " last_reply = :reply, relay = :relay,"
            " delay_notified = max(delay_notified, :delay_notified),"
            " lease_owner = NULL, lease_until = NULL"
            " WHERE message_id = :message_id AND recipient = :recipient AND lease_owner = :owner",
            {
                "deferred": int(deferred),
                "state": outcome.state.value,
                "at": at,
                "next": next_attempt,
                "attempted": int(outcome.attempted),
                "reply": outcome.reply,
                "relay": outcome.relay,
                "delay_notified": int(outcome.delay_notified),
                "message_id": outcome.message_id,
                "recipient": outcome.recipient,
                "owner": owner,
            },
        )
        if cursor.rowcount:
            written += 1
            changed[outcome.message_id] = None
    return written, list(changed)


def renew_claims(
    connection: sqlite3.Connection, owner: str, until: datetime
) -> tuple[int, list[MessageId]]:
    """Extend every lease ``owner`` holds to ``until``."""
    count = connection.execute(
        "UPDATE deliveries SET lease_until = ? WHERE lease_owner = ?", (_millis(until), owner)
    ).rowcount
    return count, []


def release_claims(connection: sqlite3.Connection, owner: str) -> tuple[int, list[MessageId]]:
    """Drop every lease ``owner`` holds."""
    count = connection.execute(
        "UPDATE deliveries SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = ?",
        (owner,),
    ).rowcount
    return count, []


def queued(
    connection: sqlite3.Connection, message_id: MessageId | None, pending_only: bool
) -> list[QueuedDelivery]:
    """The queue's rows, the oldest message first."""
    where: list[str] = []
    params: list[object] = []
    if pending_only:
        where.append("d.state IN ('queued', 'deferred', 'held')")
    if message_id is not None:
        where.append("d.message_id = ?")
        params.append(message_id)
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    rows = connection.execute(
        f"{_SELECT}{clause} ORDER BY d.queued_at, d.message_id, d.recipient", params
    ).fetchall()
    return [_delivery(row) for row in rows]


def enqueue(
    connection: sqlite3.Connection, message_id: MessageId, recipients: Sequence[str], now: datetime
) -> tuple[int, list[MessageId]]:
    """Queue a stored message to ``recipients`` anew; a pending row stays as it is."""
    at = _millis(now)
    count = 0
    for recipient in recipients:
        count += connection.execute(
            "INSERT INTO deliveries (message_id, recipient, state, queued_at, next_attempt)"
            " SELECT ?, ?, 'queued', ?, ? WHERE EXISTS (SELECT 1 FROM messages WHERE id = ?)"
            " ON CONFLICT (message_id, recipient) DO UPDATE SET state = 'queued',"
            " queued_at = excluded.queued_at, attempts = 0, next_attempt = excluded.next_attempt,"
            " last_attempt = NULL, last_reply = '', relay = '', bounce_requested = 0,"
            " delay_notified = 0, lease_owner = NULL, lease_until = NULL"
            " WHERE state NOT IN ('queued', 'deferred', 'held')",
            (message_id, recipient, at, at, message_id),
        ).rowcount
    return count, [message_id] if count else []


def _update(
    connection: sqlite3.Connection, sql: str, params: Sequence[object]
) -> tuple[int, list[MessageId]]:
    rows = connection.execute(f"{sql} RETURNING message_id", params).fetchall()
    return len(rows), list(dict.fromkeys(MessageId(row[0]) for row in rows))


def retry(
    connection: sqlite3.Connection, message_id: MessageId | None, now: datetime
) -> tuple[int, list[MessageId]]:
    """Make pending rows due now."""
    if message_id is None:
        return _update(
            connection,
            f"UPDATE deliveries SET next_attempt = ? WHERE {_PENDING}",  # noqa: S608
            (_millis(now),),
        )
    return _update(
        connection,
        f"UPDATE deliveries SET next_attempt = ? WHERE {_PENDING} AND message_id = ?",  # noqa: S608
        (_millis(now), message_id),
    )


def hold(connection: sqlite3.Connection, message_id: MessageId) -> tuple[int, list[MessageId]]:
    """Hold a message's pending rows: no attempt until released."""
    return _update(
        connection,
        f"UPDATE deliveries SET state = 'held', next_attempt = NULL"  # noqa: S608
        f" WHERE {_PENDING} AND message_id = ?",
        (message_id,),
    )


def release(
    connection: sqlite3.Connection, message_id: MessageId, now: datetime
) -> tuple[int, list[MessageId]]:
    """Release a message's held rows, due now."""
    return _update(
        connection,
        "UPDATE deliveries SET state = CASE WHEN attempts THEN 'deferred' ELSE 'queued' END,"
        " next_attempt = ? WHERE state = 'held' AND message_id = ?",
        (_millis(now), message_id),
    )


def request_bounce(
    connection: sqlite3.Connection, message_id: MessageId, now: datetime
) -> tuple[int, list[MessageId]]:
    """Have a message's pending (or held) rows bounced by the runner, due now."""
    return _update(
        connection,
        "UPDATE deliveries SET bounce_requested = 1, next_attempt = ?,"
        " state = CASE WHEN state = 'held' THEN 'queued' ELSE state END"
        " WHERE state IN ('queued', 'deferred', 'held') AND message_id = ?",
        (_millis(now), message_id),
    )


def dequeue(connection: sqlite3.Connection, message_id: MessageId) -> tuple[int, list[MessageId]]:
    """Remove a message's pending (or held) rows."""
    return _update(
        connection,
        "DELETE FROM deliveries WHERE state IN ('queued', 'deferred', 'held') AND message_id = ?",
        (message_id,),
    )
