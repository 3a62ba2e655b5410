"""The PostgreSQL store's one writer: group commit of everything the store changes.

Every change a store makes (new mail, read flags, deletions, tags) is
submitted to its ``Writer``, a task on the store's event loop.  While one
transaction commits, what is submitted meanwhile waits; the next
transaction takes all of it (up to ``MAX_BATCH_OPERATIONS``): messages
arriving together share one transaction, and so one flush of PostgreSQL's
write-ahead log (group commit).  New mail is inserted with ``executemany``,
which psycopg runs in pipeline mode: one round trip for the whole batch.

One transaction holds, in the order they were submitted: each new message's
row, its content (one row, or for large content parts read from its spool file a
part at a time: ``_contents``), its tags and its outbound queue rows
(``_queue.insert_queued``),
so that the ``250`` a client gets covers all of them; the changes; and the
batch's events with one ``NOTIFY`` (``_events.insert_events``).  A future
resolves only after COMMIT returned, and ``synchronous_commit`` is ``on`` for
the store's connections (``_connection``): so ``store`` returns once the
message is durable.  When a batch fails, each operation is tried again in a
transaction of its own, so one bad operation fails alone; unless the database
could not be reached, or is full (``psycopg.OperationalError``): then they
all fail at once, with the same one-line ``StoreError``.

Events are published to the store's own subscribers right after the
commit, in commit order (this writer is the store's only one).  Now and then
(every ``PRUNE_INTERVAL_SECONDS``) a transaction also prunes the event log
of rows older than ``EVENTS_KEEP_SECONDS`` that every follower has read.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import psycopg
from psycopg import AsyncCursor
from psycopg_pool import AsyncConnectionPool

from mailgate.model import StoreEvent, StoreEventKind
from mailgate.ports import StoreError
from mailgate.stores._health import WriteHealth
from mailgate.stores.postgresql._connection import store_error
from mailgate.stores.postgresql._contents import insert_parts
from mailgate.stores.postgresql._events import insert_events
from mailgate.stores.postgresql._queue import insert_queued
from mailgate.stores.postgresql._records import MESSAGE_COLUMNS, NewMessageRow

__all__ = [
    "EVENTS_KEEP_SECONDS",
    "MAX_BATCH_OPERATIONS",
    "PRUNE_INTERVAL_SECONDS",
    "Change",
    "Writer",
    "WriterStats",
]

log = logging.getLogger(__name__)

MAX_BATCH_OPERATIONS = 1000
"""Operations in one transaction at most, so that one batch's latency stays bounded."""
EVENTS_KEEP_SECONDS = 3600
"""How long the event log keeps a row that every follower has read."""
PRUNE_INTERVAL_SECONDS = 60.0

_INSERT_MESSAGE = (
    f"INSERT INTO messages ({MESSAGE_COLUMNS})"  # noqa: S608 - constants
    f" VALUES ({', '.join(['%s'] * len(MESSAGE_COLUMNS.split(',')))})"
)
_INSERT_CONTENT = "INSERT INTO contents (message_id, data) VALUES (%s, %b)"
_INSERT_TAG = (
    "INSERT INTO tags (message_id, tag, folded) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING"
)
_PRUNE = (
    "DELETE FROM events WHERE at < clock_timestamp() - make_interval(secs => %s)"
    " AND xid < pg_snapshot_xmin(pg_current_snapshot())"
)

ChangeWork = Callable[[AsyncCursor[Any]], Awaitable[tuple[object, Sequence[StoreEvent]]]]
"""A change run inside the writer's transaction: its result and its events."""


@dataclasses.dataclass(frozen=True, slots=True)
class Change:
    """A change to stored mail, run by the writer in its transaction (it must not commit)."""

    work: ChangeWork


Operation = NewMessageRow | Change


@dataclasses.dataclass(slots=True)
class WriterStats:
    """What a store's writer has done since the store opened: for tests and metrics."""

    transactions: int = 0
    """Transactions committed, each one flush of the write-ahead log."""
    messages: int = 0
    """New messages committed."""


@dataclasses.dataclass(slots=True)
class _Batch:
    results: list[object] = dataclasses.field(default_factory=list)
    events: list[StoreEvent] = dataclasses.field(default_factory=list)
    stored: int = 0


class Writer:
    """The task that commits a store's changes, batching what is submitted meanwhile."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        origin: str,
        publish: Callable[[Sequence[StoreEvent]], None],
    ) -> None:
        self._pool = pool
        self._origin = origin
        self._publish = publish
        self._pending: collections.deque[tuple[Operation, asyncio.Future[object]]] = (
            collections.deque()
        )
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._last_prune = 0.0
        self.stats = WriterStats()
        self.health = WriteHealth()
        """Whether the writer's commits go through (``/readyz``'s ``commits``)."""

    async def submit(self, operation: Operation) -> object:
        """Commit ``operation`` (with whatever else is waiting); return its result.

        Raises ``StoreError`` when it could not be committed: then nothing of
        it is in the database.
        """
        if self._stopping:
            raise StoreError("the message store is closed")
        loop = asyncio.get_running_loop()
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._run(), name="mailgate-postgresql-writer")
        future: asyncio.Future[object] = loop.create_future()
        self._pending.append((operation, future))
        assert self._wake is not None
        self._wake.set()
        # A cancelled caller must not cancel the commit others share: it goes on regardless.
        return await asyncio.shield(future)

    async def stop(self) -> None:
        """Commit what was submitted, then end the task."""
        self._stopping = True
        task = self._task
        if task is None:
            return
        assert self._wake is not None
        self._wake.set()
        await task

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                taken = [
                    self._pending.popleft()
                    for _ in range(min(len(self._pending), MAX_BATCH_OPERATIONS))
                ]
                results = await self._commit(taken)
                failures = [r for r in results if isinstance(r, BaseException)]
                if len(failures) < len(results):
                    self.health.succeeded()
                else:
                    self.health.failed(str(failures[0]))
            if self._stopping:
                return

    async def _commit(self, taken: list[tuple[Operation, asyncio.Future[object]]]) -> list[object]:
        """Commit and settle ``taken``; return each one's result, or the error it failed with."""
        operations = [operation for operation, _ in taken]
        try:
            batch = await self._transaction(operations)
        except Exception as error:  # a bug must fail the writes, not stall them
            if len(taken) == 1 or isinstance(error, psycopg.OperationalError):
                # One operation, or a database that cannot be reached (or is full): trying
                # each again alone would only make every caller wait longer for the same.
                failure = error if isinstance(error, StoreError) else store_error("write", error)
                log.error("store write failed: %s", failure)
                for _, future in taken:
                    _settle(future, failure)
                return [failure] * len(taken)
            return [result for one in taken for result in await self._commit([one])]
        self._publish(batch.events)
        for (_, future), result in zip(taken, batch.results, strict=True):
            _settle(future, result)
        return batch.results

    async def _transaction(self, operations: list[Operation]) -> _Batch:
        batch = _Batch()
        async with self._pool.connection() as connection, connection.transaction():
            cursor = connection.cursor()
            pending: list[NewMessageRow] = []
            for operation in operations:
                if isinstance(operation, NewMessageRow):
                    pending.append(operation)
                    batch.results.append(operation.id)
                    continue
                await self._insert(cursor, pending, batch)
                pending = []
                result, events = await operation.work(cursor)
                batch.results.append(result)
                batch.events.extend(events)
            await self._insert(cursor, pending, batch)
            await insert_events(cursor, self._origin, batch.events)
            now = time.monotonic()
            if now - self._last_prune >= PRUNE_INTERVAL_SECONDS:
                await cursor.execute(_PRUNE, (EVENTS_KEEP_SECONDS,))
                self._last_prune = now
        self.stats.transactions += 1
        self.stats.messages += batch.stored
        return batch

    async def _insert(
        self, cursor: AsyncCursor[Any], rows: list[NewMessageRow], batch: _Batch
    ) -> None:
        """Insert new messages, their content, tags and queue rows; log their event."""
        if not rows:
            return
        await cursor.executemany(_INSERT_MESSAGE, [row.values for row in rows])
        inline = [(row.id, row.content) for row in rows if row.content is not None]
        if inline:
            await cursor.executemany(_INSERT_CONTENT, inline)
        for row in rows:
            if row.open_content is not None:
                await insert_parts(cursor, row.id, row.open_content)
        tags = [tag for row in rows for tag in row.tags]
        if tags:
            await cursor.executemany(_INSERT_TAG, tags)
        queued = [queued for row in rows for queued in row.queued]
        if queued:
            await insert_queued(cursor, queued)
        batch.stored += len(rows)
        batch.events.append(StoreEvent(StoreEventKind.STORED, tuple(row.id for row in rows)))


def _settle(future: asyncio.Future[object], result: object) -> None:
    with contextlib.suppress(asyncio.InvalidStateError):
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)
