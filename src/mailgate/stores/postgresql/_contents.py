"""A message's content in the PostgreSQL store: one row when small, numbered parts when large.

Content of up to ``MAX_INLINE_CONTENT_OCTETS`` is one ``contents`` row, inserted
with the rest of its batch by one ``executemany`` (``_writer``): the path of
nearly all mail, unchanged.  Larger content is ``content_parts`` rows of
``PART_OCTETS`` each, numbered from 0, inserted one statement a part in the same
transaction as the message's row (``insert_parts``), read a part at a time from
the spool's file in a worker thread: the writer holds one part of a message,
never the whole of it.  Both tables reference ``messages`` with ``ON DELETE
CASCADE``, so deleting a message (``_changes``, ``_prune``) deletes its parts.

The limit is where parts stop costing much more than a row: a durable commit of
one message took 12 ms as a row and 15 ms as 256 KiB parts at 1 MiB, 23 and 25
ms at 2 MiB, but 3 and 6 ms at 64 KiB; while a row makes the process hold the
whole content (twice: the bytes and the driver's buffer) until its batch
commits (docs/log/2026-12-06-streaming-bodies.md).

Reads: ``read_whole`` reads a message's rows in one statement (for the callers
that need every octet at once: MIME parsing); ``stream`` reads a part a
statement, each on a pooled connection taken for that statement only, so a slow
reader (a download) holds no connection between parts.  Content never changes
once stored, so parts read one by one are the parts stored; a message deleted
part-way through a stream raises ``StoreError`` at the first part found
missing, never ending short in silence.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from typing import Any, BinaryIO

import psycopg
from psycopg import AsyncCursor
from psycopg_pool import AsyncConnectionPool

from mailgate.model import MessageId
from mailgate.ports import StoreError
from mailgate.stores.postgresql._connection import store_error

__all__ = [
    "MAX_INLINE_CONTENT_OCTETS",
    "PART_OCTETS",
    "ContentOpener",
    "insert_parts",
    "read_whole",
    "stream",
]

MAX_INLINE_CONTENT_OCTETS = 1024 * 1024
"""Larger content is stored as ``content_parts`` rows, not as one ``contents`` row."""
PART_OCTETS = 256 * 1024
"""Octets of content in one ``content_parts`` row (the last part of a message may hold fewer)."""

ContentOpener = Callable[[], BinaryIO]
"""Opens a fresh reader over a new message's content, from its first octet (blocking)."""

_INSERT_PART = "INSERT INTO content_parts (message_id, part, data) VALUES (%s, %s, %b)"
_INLINE = "SELECT data FROM contents WHERE message_id = %s"
_ALL_PARTS = "SELECT data FROM content_parts WHERE message_id = %s ORDER BY part"
_FIRST = (
    "SELECT c.data, (SELECT count(*) FROM content_parts AS p WHERE p.message_id = m.id)"
    " FROM messages AS m LEFT JOIN contents AS c ON c.message_id = m.id WHERE m.id = %s"
)
_PART = "SELECT data FROM content_parts WHERE message_id = %s AND part = %s"


async def insert_parts(
    cursor: AsyncCursor[Any], message_id: MessageId, open_content: ContentOpener
) -> None:
    """Insert a message's content as parts, read one at a time in a worker thread.

    Raises ``OSError`` when the content cannot be read, and ``psycopg.Error``.
    """
    reader = await asyncio.to_thread(open_content)
    try:
        part = 0
        while chunk := await asyncio.to_thread(reader.read, PART_OCTETS):
            await cursor.execute(_INSERT_PART, (message_id, part, chunk))
            part += 1
    finally:
        reader.close()


async def _fetch(
    pool: AsyncConnectionPool[Any], query: str, parameters: tuple[Any, ...]
) -> list[Any]:
    try:
        async with pool.connection() as connection:
            cursor = await connection.execute(query, parameters)
            rows: list[Any] = await cursor.fetchall()
    except psycopg.Error as error:
        raise store_error("read", error) from error
    return rows


async def read_whole(pool: AsyncConnectionPool[Any], message_id: MessageId) -> bytes | None:
    """A message's exact content, or ``None`` when there is no such message."""
    rows = await _fetch(pool, _INLINE, (message_id,))
    if rows:
        return bytes(rows[0][0])
    rows = await _fetch(pool, _ALL_PARTS, (message_id,))
    return b"".join(row[0] for row in rows) if rows else None


async def stream(
    pool: AsyncConnectionPool[Any], message_id: MessageId
) -> AsyncGenerator[bytes, None] | None:
    """A message's exact content a part at a time, or ``None`` when there is no such message.

    The generator raises ``StoreError`` when the database cannot answer, or when
    the message is deleted before its last part was read.
    """
    rows = await _fetch(pool, _FIRST, (message_id,))
    if not rows:
        return None
    data, parts = rows[0]
    if data is not None:
        return _one(bytes(data))
    if not parts:
        return None  # cannot be: a message's content is stored with it
    return _parts(pool, message_id, int(parts))


async def _one(data: bytes) -> AsyncGenerator[bytes, None]:
    yield data


async def _parts(
    pool: AsyncConnectionPool[Any], message_id: MessageId, parts: int
) -> AsyncGenerator[bytes, None]:
    for part in range(parts):
        rows = await _fetch(pool, _PART, (message_id, part))
        if not rows:
            raise StoreError(f"message {message_id} was deleted while it was read")
        yield bytes(rows[0][0])
