"""Following the event log: what other stores commit, on this node or another.

Each store runs one ``Follower`` task from the moment it opens until it
closes, on a connection of its own that ``LISTEN``s on ``EVENTS_CHANNEL``.
A ``NOTIFY`` wakes it at once; without one it reads every
``FOLLOW_INTERVAL_SECONDS`` all the same, so a lost notification (or a
writer that sent none) delays events and loses none.  The log is the truth;
the notification is a hint.

Order of commits, not of ids: ``events.id`` is drawn from a sequence when a
row is inserted, and transactions commit in another order than they drew
their ids, so reading "ids above the last one seen" would skip a row whose
transaction committed after a later id had been read.  The follower reads by
transaction id instead, which ``events.xid`` records (``pg_current_xact_id``):
each read takes, in one statement and so one snapshot, the rows whose
``xid`` lies between the previous read's horizon and this one's, the horizon
being ``pg_snapshot_xmin(pg_current_snapshot())``, the oldest transaction
still running.  Every transaction below it has ended, and none can start
below it, so each row is read exactly once, in the first read after its
transaction commits (a rolled-back transaction's rows are never seen).  The
rows are published in ``id`` order.  The price: transaction ids are the
server's, not the database's, so a long transaction that has written
anything, in any database of the server, holds back every event committed
after it began until it ends (the writer's transactions are short, and so
are the queue's).  (Remembering gaps in ``id`` and reading them again for a
while would not wait, but would have to guess how long a gap may stay open.)

Invariants:
- the starting horizon and snapshot are read when the store opens
  (``EventReader.starting``); rows of transactions the opening snapshot
  already saw committed are skipped, so what a store's subscribers hear is
  exactly what committed after it opened;
- rows of the store's own origin are skipped: its writer published them;
- the log is pruned of rows older than ``_writer.EVENTS_KEEP_SECONDS``, and
  only below the horizon; a follower that could not read for half that long
  (the database was away) publishes ``OVERFLOW`` ("list again") first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import psycopg

from mailgate.model import StoreEvent, StoreEventKind
from mailgate.stores.postgresql._events import EVENTS_CHANNEL, event_from_row

__all__ = ["FOLLOW_INTERVAL_SECONDS", "EventReader", "Follower"]

log = logging.getLogger(__name__)

FOLLOW_INTERVAL_SECONDS = 0.5
"""How often a follower reads the log when no notification woke it."""

_READ = """
WITH horizon AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin)
SELECT horizon.xmin::text, e.origin, e.kind, e.message_ids
FROM horizon LEFT JOIN LATERAL (
    SELECT id, origin, kind, message_ids FROM events
    WHERE xid >= %(low)s::xid8 AND xid < horizon.xmin
      AND (%(skip)s::pg_snapshot IS NULL OR NOT pg_visible_in_snapshot(xid, %(skip)s::pg_snapshot))
) AS e ON true
ORDER BY e.id
"""


class EventReader:
    """Reads the rows committed since the last read, as events; the position, no I/O of its own."""

    def __init__(self, origin: str, low: int, skip: str | None, *, lost_after: float) -> None:
        self._origin = origin
        self.low = low
        """The horizon of the last read: rows of transactions from it on are still to read."""
        self._skip = skip
        self._skip_until = _snapshot_xmax(skip) if skip else 0
        self._lost_after = lost_after
        self._last_read = time.monotonic()
        self.reads = 0
        """How many reads succeeded."""

    @staticmethod
    def starting(connection: psycopg.Connection[Any]) -> tuple[int, str]:
        """Where a store that opens now starts: the horizon, and the snapshot to skip."""
        row = connection.execute("SELECT pg_current_snapshot()::text").fetchone()
        assert row is not None
        snapshot = str(row[0])
        return int(snapshot.split(":", 1)[0]), snapshot

    async def read(self, connection: psycopg.AsyncConnection[Any]) -> list[StoreEvent]:
        """The events of other origins committed since the last read, oldest first.

        Raises ``psycopg.Error`` when the log cannot be read; the next read
        starts where the last good one ended.
        """
        cursor = await connection.execute(_READ, {"low": str(self.low), "skip": self._skip})
        rows = await cursor.fetchall()
        events: list[StoreEvent] = []
        now = time.monotonic()
        if now - self._last_read > self._lost_after:
            events.append(StoreEvent(StoreEventKind.OVERFLOW))
        self._last_read = now
        for _, origin, kind, message_ids in rows:
            if kind is None or origin == self._origin:
                continue
            event = event_from_row(kind, message_ids)
            if event is None:
                log.debug("skipping an event of unknown kind %r", kind)
            else:
                events.append(event)
        self.low = int(rows[0][0])
        self.reads += 1
        if self._skip is not None and self.low >= self._skip_until:
            self._skip = None  # every transaction it saw running has ended and been read
        return events


def _snapshot_xmax(snapshot: str) -> int:
    """The ``xmax`` of a ``pg_snapshot`` in its text form, ``xmin:xmax:xip,...``."""
    return int(snapshot.split(":")[1])


class Follower:
    """A task publishing what other stores commit, until stopped."""

    def __init__(
        self,
        conninfo: str,
        reader: EventReader,
        publish: Callable[[list[StoreEvent]], None],
        *,
        interval: float = FOLLOW_INTERVAL_SECONDS,
        connect_timeout: float,
    ) -> None:
        self._conninfo = conninfo
        self._reader = reader
        self._publish = publish
        self._interval = interval
        self._connect_timeout = connect_timeout
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the task on the running loop (once)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="mailgate-postgresql-follower"
            )

    async def stop(self) -> None:
        """End the task and close its connection."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                await self._follow()
            except psycopg.Error as error:
                log.warning("cannot follow the message store's events; trying again: %s", error)
            except Exception:  # a bug: subscribers would hear nothing more; keep following
                log.exception("following the message store's events failed; trying again")
            await asyncio.sleep(self._interval)

    async def _follow(self) -> None:
        connection = await psycopg.AsyncConnection.connect(
            self._conninfo, autocommit=True, connect_timeout=max(1, round(self._connect_timeout))
        )
        async with connection:
            await connection.execute(f"LISTEN {EVENTS_CHANNEL}")
            while True:
                events = await self._reader.read(connection)
                if events:
                    self._publish(events)
                async for _ in connection.notifies(timeout=self._interval, stop_after=1):
                    pass
