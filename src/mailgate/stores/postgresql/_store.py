"""``PostgreSQLStore``: the store's public face, handing each job to the part that owns it.

Opening (the schema, where the event log starts) is blocking work done by the
constructor, or in a worker thread by ``PostgreSQLStore.open``; after that the
store lives on one event loop.  Changes go to the ``_writer.Writer`` task;
reads to ``_reads``; subscribers are ``_events``'; the ``_follow.Follower``
task brings other stores' events; content, one row or parts, is ``_contents``';
the outbound queue's operations are
``_queue.QueueOperations``', on the same pool, which write their events
through ``_queue_events``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any, BinaryIO

import psycopg
from psycopg import AsyncCursor

from mailgate.model import MessageId, MessagePage, StoredMessage, StoreEvent, StoreEventKind
from mailgate.ports import HealthCheck, NewMessage, RawStream, StoreError
from mailgate.query import Query
from mailgate.stores.postgresql import _changes, _prune, _search
from mailgate.stores.postgresql._connection import (
    PostgreSQLSettings,
    StorePool,
    connection_options,
    describe,
    first_line,
)
from mailgate.stores.postgresql._contents import MAX_INLINE_CONTENT_OCTETS, read_whole, stream
from mailgate.stores.postgresql._events import NO_ORIGIN, Subscriptions, insert_events
from mailgate.stores.postgresql._follow import EventReader, Follower
from mailgate.stores.postgresql._queue import QueueOperations
from mailgate.stores.postgresql._reads import Reads
from mailgate.stores.postgresql._records import new_message_row
from mailgate.stores.postgresql._schema import open_schema
from mailgate.stores.postgresql._writer import (
    EVENTS_KEEP_SECONDS,
    Change,
    ChangeWork,
    Writer,
    WriterStats,
)

__all__ = ["PostgreSQLStore"]

_EMPTY = Query()


def _read_all(message: NewMessage) -> bytes:
    reader: BinaryIO = message.open()
    with reader:
        return reader.read()


class PostgreSQLStore(QueueOperations):
    """A ``ports.SearchableStore``, ``ports.TaggableStore``, ``ports.QueueStore``,
    ``ports.PrunableStore``, ``ports.SizedStore`` and ``ports.HealthReporter`` in a
    PostgreSQL database that any number of mailgate nodes may share.

    Use it from one event loop: the one it was opened on, or, for a store
    made outside any loop, the first that uses it.
    """

    def __init__(self, url: str, *, settings: PostgreSQLSettings | None = None) -> None:
        """Open the store the URL names, creating or upgrading its schema; this blocks.

        Raises ``StoreError`` (one line) when the database cannot be reached
        or has a schema from a newer mailgate.
        """
        settings = settings or PostgreSQLSettings()
        self.url = url
        self._name = describe(url)
        options = connection_options(url, settings)
        try:
            with psycopg.connect(url, **options) as connection:
                open_schema(connection, self._name)
                low, snapshot = EventReader.starting(connection)
        except psycopg.Error as error:
            raise StoreError(
                f"cannot open the message store {self._name}: {first_line(error)}"
            ) from error
        self._origin = os.urandom(8).hex()
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool = StorePool(url, settings)
        self._subscriptions = Subscriptions()
        self._writer = Writer(self._pool, self._origin, self._subscriptions.publish)
        self._reads = Reads(self._pool)
        reader = EventReader(self._origin, low, snapshot, lost_after=EVENTS_KEEP_SECONDS / 2)
        self._follower = Follower(
            url,
            reader,
            self._subscriptions.publish,
            connect_timeout=settings.connect_timeout,
        )
        super().__init__(self._pool, self._queue_events, check_open=self._start)
        with contextlib.suppress(RuntimeError):  # no loop yet: the first use starts it
            asyncio.get_running_loop()
            self._start()

    @classmethod
    async def open(cls, url: str, *, settings: PostgreSQLSettings | None = None) -> PostgreSQLStore:
        """Open the store without blocking the event loop (see the constructor)."""
        store = await asyncio.to_thread(lambda: cls(url, settings=settings))
        store._start()
        return store

    @property
    def stats(self) -> WriterStats:
        """A snapshot of what the store's writer has done since it opened."""
        return WriterStats(self._writer.stats.transactions, self._writer.stats.messages)

    def health(self) -> list[HealthCheck]:
        """``commits``: whether this store's writer commits (``ports.HealthReporter``)."""
        return [HealthCheck("commits", self._writer.health.problem())]

    def _start(self) -> None:
        """Check the store is open and on its loop; start the follower on the first call."""
        if self._closed:
            raise StoreError(f"message store {self._name} is closed")
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            self._follower.start()
        elif loop is not self._loop:
            raise StoreError(f"message store {self._name} is used from another event loop")

    async def _submit_change(self, work: ChangeWork) -> int:
        self._start()
        count = await self._writer.submit(Change(work))
        assert isinstance(count, int)
        return count

    async def _queue_events(
        self, cursor: AsyncCursor[Any], message_ids: Sequence[MessageId]
    ) -> None:
        """Log a ``QUEUE`` event with the queue's transaction.

        Its origin is no store's: this store's subscribers hear of it from its
        follower too, once it has committed.
        """
        await insert_events(
            cursor, NO_ORIGIN, [StoreEvent(StoreEventKind.QUEUE, tuple(message_ids))]
        )

    # ports.MessageStore

    async def store(self, message: NewMessage) -> MessageId:
        """Store the message, its content and its outbound queue rows in one transaction;
        return its id once that has committed.

        Raises ``StoreError`` when it cannot be stored (then nothing of it is).
        """
        self._start()
        content = message.content
        if content is not None and len(content) > MAX_INLINE_CONTENT_OCTETS:
            large = content  # held in memory all the same: stored in parts from it
            row = new_message_row(
                message.summary, message.envelope, None, lambda: io.BytesIO(large)
            )
        elif content is None and message.size > MAX_INLINE_CONTENT_OCTETS:
            # From the spool's file, a part at a time, in the writer's transaction.
            row = new_message_row(message.summary, message.envelope, None, message.open)
        else:
            if content is None:
                try:
                    content = await asyncio.to_thread(_read_all, message)
                except OSError as error:
                    raise StoreError(f"could not read the spooled {message.id}: {error}") from error
            row = new_message_row(message.summary, message.envelope, content)
        stored = await self._writer.submit(row)
        return MessageId(str(stored))

    async def list(self, *, offset: int = 0, limit: int = 50) -> MessagePage:
        """Newest first, with the store's totals."""
        self._start()
        return await self._reads.page(_EMPTY, offset=offset, limit=limit)

    async def get(self, message_id: MessageId) -> StoredMessage | None:
        """One message's summary and envelope, or ``None``."""
        self._start()
        return await self._reads.get(message_id)

    async def raw(self, message_id: MessageId) -> bytes | None:
        """The exact stored bytes (trace header included), or ``None``."""
        self._start()
        return await read_whole(self._pool, message_id)

    async def stream_raw(self, message_id: MessageId) -> RawStream | None:
        """The exact stored bytes a part at a time (``_contents.stream``), or ``None``."""
        self._start()
        return await stream(self._pool, message_id)

    async def delete(self, message_ids: Sequence[MessageId] | None = None) -> int:
        """Delete these messages, or all of them for ``None``; return how many."""
        ids = None if message_ids is None else list(message_ids)
        return await self._submit_change(lambda cursor: _changes.delete(cursor, ids))

    async def mark_read(self, message_ids: Sequence[MessageId] | None, read: bool) -> int:
        """Set the read flag on these messages, or all for ``None``; return how many changed."""
        ids = None if message_ids is None else list(message_ids)
        return await self._submit_change(lambda cursor: _changes.mark_read(cursor, ids, read))

    def subscribe(self) -> AsyncIterator[StoreEvent]:
        """Live events of this store and of every other sharing the database, each once."""
        self._start()
        return self._subscriptions.subscribe()

    async def aclose(self) -> None:
        """Commit pending writes, stop following, end subscriptions, close the pool."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._writer.stop()
        finally:
            await self._follower.stop()
            self._subscriptions.end()
            await self._pool.close()

    # ports.SearchableStore

    async def search(self, query: Query, *, offset: int = 0, limit: int = 50) -> MessagePage:
        """Messages matching ``query``, newest first; ``total`` and ``unread`` count matches."""
        self._start()
        return await self._reads.page(query, offset=offset, limit=limit)

    # ports.PrunableStore

    async def prune(
        self,
        *,
        keep_newest: int | None = None,
        older_than: datetime | None = None,
        limit: int,
    ) -> int:
        """Delete up to ``limit`` of the oldest messages over these limits, none still queued
        for delivery, unless another node is pruning; return how many (``_prune``).

        A read finds out first whether any is over them, so a check that finds
        none writes nothing.
        """
        self._start()
        if not await _prune.anything_to_prune(self._pool, keep_newest, older_than):
            return 0
        return await self._submit_change(
            lambda cursor: _prune.prune(cursor, keep_newest, older_than, limit)
        )

    # ports.SizedStore

    async def disk_usage(self) -> int:
        """Octets the store's tables take, their indexes included."""
        self._start()
        return await self._reads.disk_usage()

    # ports.TaggableStore

    async def tags(self) -> dict[str, int]:
        """Every tag in use, with how many messages carry it."""
        self._start()
        return await self._reads.tags()

    async def set_tags(self, message_ids: Sequence[MessageId], tags: Sequence[str]) -> int:
        """Replace the tags of these messages; return how many of them exist."""
        ids, wanted = list(message_ids), list(tags)
        return await self._submit_change(lambda cursor: _search.set_tags(cursor, ids, wanted))

    async def rename_tag(self, old: str, new: str) -> int:
        """Rename a tag on every message (merging where both are set); return on how many."""
        return await self._submit_change(lambda cursor: _search.rename_tag(cursor, old, new))

    async def delete_tag(self, tag: str) -> int:
        """Remove a tag from every message; return from how many."""
        return await self._submit_change(lambda cursor: _search.delete_tag(cursor, tag))
