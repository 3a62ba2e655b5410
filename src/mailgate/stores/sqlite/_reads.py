"""Reading the store: a pool of read connections in worker threads, and the queries.

WAL lets reads run alongside the writer, each on a snapshot of its own.
Every read runs in a worker thread (``asyncio.to_thread``), off the event
loop, on a ``query_only`` connection taken from the pool and put back after;
the pool closes them with the store.  A page and its counts are read in one
snapshot (``BEGIN`` ... ``COMMIT``), so they agree.  Search and tag queries
are ``_search``'s.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import TypeVar

from mailgate.model import MessageId, MessagePage, StoredMessage
from mailgate.ports import StoreError
from mailgate.query import Query
from mailgate.stores.sqlite._bodies import BodyFiles
from mailgate.stores.sqlite._connection import connect
from mailgate.stores.sqlite._schema import SELECT_SUMMARY, stored_message, summary_from_row
from mailgate.stores.sqlite._search import search_page, tag_counts

__all__ = ["ReaderPool", "Reads"]

T = TypeVar("T")


class ReaderPool:
    """Read connections for worker threads, reused, closed with the store."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._idle: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work`` on an idle connection, or a new one; on the calling thread."""
        with self._lock:
            connection = self._idle.pop() if self._idle else None
        if connection is None:
            connection = connect(self._path, query_only=True)
        try:
            return work(connection)
        finally:
            with self._lock:
                if self._closed:
                    connection.close()
                else:
                    self._idle.append(connection)

    def close(self) -> None:
        """Close the idle connections, and the busy ones once their work ends."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


class Reads:
    """The store's reads, each in a worker thread; every one raises ``StoreError`` on failure."""

    def __init__(self, path: Path, bodies: BodyFiles) -> None:
        self._pool = ReaderPool(path)
        self._bodies = bodies

    def close(self) -> None:
        """Close the read connections."""
        self._pool.close()

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work`` on a read connection in a worker thread."""
        try:
            return await asyncio.to_thread(self._pool.run, work)
        except sqlite3.Error as error:
            raise StoreError(f"could not read the message store: {error}") from error

    async def list(self, *, offset: int, limit: int) -> MessagePage:
        """A page of summaries, newest first, with the store's totals."""
        offset, limit = max(offset, 0), max(limit, 0)

        def work(connection: sqlite3.Connection) -> MessagePage:
            connection.execute("BEGIN")  # one snapshot for the page and the totals
            try:
                total, unread = connection.execute("SELECT total, unread FROM counts").fetchone()
                rows = connection.execute(
                    SELECT_SUMMARY + " ORDER BY id DESC LIMIT ? OFFSET ?", (limit, offset)
                ).fetchall()
            finally:
                connection.execute("COMMIT")
            return MessagePage(
                messages=tuple(summary_from_row(row) for row in rows),
                total=total,
                unread=unread,
                offset=offset,
            )

        return await self.run(work)

    async def get(self, message_id: MessageId) -> StoredMessage | None:
        """One message's summary and envelope, or ``None``."""

        def work(connection: sqlite3.Connection) -> StoredMessage | None:
            row = connection.execute(
                SELECT_SUMMARY.replace("FROM messages", ", envelope FROM messages")
                + " WHERE id = ?",
                (message_id,),
            ).fetchone()
            if row is None:
                return None
            *summary, envelope_json = row
            return stored_message(summary, envelope_json)

        return await self.run(work)

    async def raw(self, message_id: MessageId) -> bytes | None:
        """The exact stored bytes (trace header included), or ``None``."""

        def work(connection: sqlite3.Connection) -> bytes | None:
            row = connection.execute(
                "SELECT messages.body_file, bodies.data FROM messages"
                " LEFT JOIN bodies ON bodies.seq = messages.seq WHERE messages.id = ?",
                (message_id,),
            ).fetchone()
            if row is None:
                return None
            body_file, data = row
            if body_file is None:
                return bytes(data)
            return self._bodies.read(str(body_file))  # None: deleted since the row was read

        return await self.run(work)

    async def stream(self, message_id: MessageId) -> AsyncGenerator[bytes, None] | None:
        """The exact stored bytes a part at a time, or ``None``: a small message's row in
        one part, a large one's body file ``_bodies.READ_OCTETS`` at a time."""

        def work(connection: sqlite3.Connection) -> bytes | str | None:
            row = connection.execute(
                "SELECT messages.body_file, bodies.data FROM messages"
                " LEFT JOIN bodies ON bodies.seq = messages.seq WHERE messages.id = ?",
                (message_id,),
            ).fetchone()
            if row is None:
                return None
            body_file, data = row
            if body_file is None:
                return bytes(data)
            name = str(body_file)
            return name if self._bodies.exists(name) else None  # None: deleted since

        found = await self.run(work)
        if found is None:
            return None
        if isinstance(found, bytes):
            return _one(found)
        return self._bodies.stream(found, message_id)

    async def search(self, query: Query, *, offset: int, limit: int) -> MessagePage:
        """Messages matching ``query``, newest first; ``total`` and ``unread`` count matches."""
        return await self.run(
            lambda connection: search_page(connection, query, offset=offset, limit=limit)
        )

    async def tags(self) -> dict[str, int]:
        """Every tag in use, with how many messages carry it."""
        return await self.run(tag_counts)


async def _one(data: bytes) -> AsyncGenerator[bytes, None]:
    yield data
