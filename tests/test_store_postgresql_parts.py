"""The PostgreSQL store's content: one row up to a limit, numbered parts past it.

A message of up to ``MAX_INLINE_CONTENT_OCTETS`` is one ``contents`` row; a larger
one, from the spool's file or from memory, is ``content_parts`` rows of
``PART_OCTETS``, which deletes and retention take with their message.  A database
of schema 3 gains the table and keeps reading what it held.  Each test has a
database of its own.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from mailgate.delivery import Acceptor, DeliverySettings
from mailgate.model import MessageId
from mailgate.stores.postgresql import SCHEMA_VERSION, PostgreSQLStore
from mailgate.stores.postgresql._contents import MAX_INLINE_CONTENT_OCTETS, PART_OCTETS
from mailgate.testing.stores import make_envelope, make_message
from postgresql_helpers import fresh_database


@pytest.fixture
def database() -> Iterator[str]:
    with fresh_database() as url:
        yield url


def query(url: str, sql: str, *parameters: object) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True) as connection:
        cursor = connection.execute(sql.encode(), parameters or None)
        return cursor.fetchall() if cursor.description else []


def rows_of(url: str, message_id: MessageId) -> tuple[int, list[int]]:
    """How many ``contents`` rows a message has, and the sizes of its parts in order."""
    (inline,) = query(url, "SELECT count(*) FROM contents WHERE message_id = %s", message_id)
    parts = query(
        url,
        "SELECT length(data) FROM content_parts WHERE message_id = %s ORDER BY part",
        message_id,
    )
    return int(str(inline[0])), [int(str(size)) for (size,) in parts]


async def deliver(acceptor: Acceptor, body: bytes) -> MessageId:
    spool = acceptor.begin(make_envelope())
    spool.write(make_message("sized", body))
    return await acceptor.commit(spool)


def body(octets: int) -> bytes:
    """Varied content (hex of random octets, in lines), so a part out of place shows."""
    lines = os.urandom(octets // 2).hex().encode()
    return (b"\r\n".join(lines[i : i + 76] for i in range(0, len(lines), 76)))[:octets]


@pytest.mark.asyncio
@pytest.mark.parametrize("threshold", [256 * 1024, 8 * 1024 * 1024], ids=["file", "memory"])
async def test_content_past_the_limit_is_stored_in_parts(
    database: str, tmp_path: Path, threshold: int
) -> None:
    """Past the limit, from the spool's file or from memory alike: parts in order, the last
    holding the rest; up to it, one row as before."""
    store = PostgreSQLStore(database)
    settings = DeliverySettings(
        hostname="mx.test", spool_dir=tmp_path / "spool", memory_threshold=threshold
    )
    acceptor = Acceptor(store, settings)
    try:
        large = body(3 * MAX_INLINE_CONTENT_OCTETS + 1000)
        under = await deliver(acceptor, body(MAX_INLINE_CONTENT_OCTETS - 4096))
        over = await deliver(acceptor, large)
        raw_under, raw_over = await store.raw(under), await store.raw(over)
        assert raw_under is not None
        assert raw_over is not None
        assert len(raw_under) <= MAX_INLINE_CONTENT_OCTETS < len(raw_over)
        assert rows_of(database, under) == (1, [])
        inline, parts = rows_of(database, over)
        assert inline == 0
        assert sum(parts) == len(raw_over)
        assert parts[:-1] == [PART_OCTETS] * (len(parts) - 1)
        assert 0 < parts[-1] <= PART_OCTETS
        assert raw_over.endswith(b"\r\n" + make_message("sized", large))
        assert await store.disk_usage() > len(raw_over)
        assert list((tmp_path / "spool").glob("*.spool")) == []
    finally:
        acceptor.close()
        await store.aclose()


@pytest.mark.asyncio
async def test_deletes_and_retention_take_the_parts(database: str, tmp_path: Path) -> None:
    store = PostgreSQLStore(database)
    acceptor = Acceptor(store, DeliverySettings(hostname="mx.test", spool_dir=tmp_path / "spool"))
    try:
        first, second, third = [
            await deliver(acceptor, body(2 * MAX_INLINE_CONTENT_OCTETS)) for _ in range(3)
        ]
        assert all(rows_of(database, m)[1] for m in (first, second, third))
        assert await store.delete([first]) == 1
        assert rows_of(database, first) == (0, [])
        assert await store.prune(keep_newest=1, limit=10) == 1
        assert rows_of(database, second) == (0, [])
        assert rows_of(database, third)[1]
        assert await store.delete(None) == 1
        assert query(database, "SELECT count(*) FROM content_parts") == [(0,)]
    finally:
        acceptor.close()
        await store.aclose()


@pytest.mark.asyncio
async def test_a_version_3_database_gains_content_parts(database: str, tmp_path: Path) -> None:
    store = PostgreSQLStore(database)
    acceptor = Acceptor(store, DeliverySettings(hostname="mx.test", spool_dir=tmp_path / "spool"))
    try:
        old = await deliver(acceptor, b"Hi.\r\n")
    finally:
        acceptor.close()
        await store.aclose()
    # As a mailgate of schema 3 left it, a large message in one row besides.
    query(database, "DROP TABLE content_parts")
    query(database, "UPDATE mailgate_schema SET version = 3")
    large = b"x" * (2 * MAX_INLINE_CONTENT_OCTETS)
    query(
        database,
        "INSERT INTO messages SELECT 'OLDLARGE', received_at, %s, read, sender, recipients,"
        " subject, date, message_id, attachments, snippet, envelope, search, inline_parts"
        " FROM messages WHERE id = %s",
        len(large),
        old,
    )
    query(database, "INSERT INTO contents VALUES ('OLDLARGE', %s)", large)
    store = PostgreSQLStore(database)
    acceptor = Acceptor(store, DeliverySettings(hostname="mx.test", spool_dir=tmp_path / "spool"))
    try:
        assert query(database, "SELECT version FROM mailgate_schema") == [(SCHEMA_VERSION,)]
        assert (await store.raw(old) or b"").endswith(b"Hi.\r\n")
        stream = await store.stream_raw(MessageId("OLDLARGE"))
        assert stream is not None
        assert b"".join([part async for part in stream]) == large
        new = await deliver(acceptor, body(2 * MAX_INLINE_CONTENT_OCTETS))
        assert rows_of(database, new)[1]
        assert (await store.list()).total == 3
    finally:
        acceptor.close()
        await store.aclose()
