"""The PostgreSQL store: the conformance suites, schema versions, group commit, events
across instances, and a database that is down.  Each test has a database of its own."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from mailgate.delivery import Acceptor, DeliverySettings
from mailgate.model import MessageId, StoreEvent, StoreEventKind
from mailgate.ports import StoreError
from mailgate.query import parse_query
from mailgate.stores import StoreURLError, open_store
from mailgate.stores.postgresql import SCHEMA_VERSION, PostgreSQLSettings, PostgreSQLStore
from mailgate.testing.pruning import PRUNABLE_STORE_CHECKS
from mailgate.testing.queues import QUEUE_STORE_CHECKS
from mailgate.testing.stores import (
    SEARCHABLE_STORE_CHECKS,
    STORE_CHECKS,
    TAGGABLE_STORE_CHECKS,
    StoreUnderTest,
    make_envelope,
    make_message,
    next_event,
)
from mailgate.testing.streams import STREAM_CHECKS
from mailgate.testing.tagging import COMMITTED_TAG_CHECKS
from postgresql_helpers import fresh_database
from store_helpers import until


@pytest.fixture
def database() -> Iterator[str]:
    with fresh_database() as url:
        yield url


def under_test(url: str, tmp_path: Path) -> StoreUnderTest:
    return StoreUnderTest(open=lambda: PostgreSQLStore(url), spool_dir=tmp_path / "spool")


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "check",
    STORE_CHECKS
    + SEARCHABLE_STORE_CHECKS
    + TAGGABLE_STORE_CHECKS
    + COMMITTED_TAG_CHECKS
    + QUEUE_STORE_CHECKS
    + PRUNABLE_STORE_CHECKS
    + STREAM_CHECKS,
    ids=lambda check: check.__name__,
)
async def test_conformance(
    check: Callable[[StoreUnderTest], Awaitable[None]], database: str, tmp_path: Path
) -> None:
    await check(under_test(database, tmp_path))


async def store_many(store: PostgreSQLStore, tmp_path: Path, count: int) -> list[MessageId]:
    acceptor = Acceptor(store, DeliverySettings(hostname="mx.test", spool_dir=tmp_path / "spool"))

    async def one(i: int) -> MessageId:
        spool = acceptor.begin(make_envelope())
        spool.write(make_message(f"m{i}"))
        return await acceptor.commit(spool)

    try:
        return list(await asyncio.gather(*(one(i) for i in range(count))))
    finally:
        acceptor.close()


def query(url: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True) as connection:
        cursor = connection.execute(sql.encode())
        return cursor.fetchall() if cursor.description else []


@pytest.mark.asyncio
async def test_open_creates_the_schema(database: str) -> None:
    store = await open_store(database)
    await store.aclose()
    assert isinstance(store, PostgreSQLStore)
    assert query(database, "SELECT version FROM mailgate_schema") == [(SCHEMA_VERSION,)]
    tables = {
        name
        for (name,) in query(
            database, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        )
    }
    assert {"mailgate_schema", "messages", "contents", "tags", "events", "deliveries"} <= tables
    assert query(database, "SELECT to_regclass('messages_search_text') IS NOT NULL") == [(True,)]


@pytest.mark.asyncio
async def test_a_newer_schema_is_refused_in_one_line(database: str) -> None:
    await (await open_store(database)).aclose()
    query(database, f"UPDATE mailgate_schema SET version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError) as raised:
        await open_store(database)
    message = str(raised.value)
    assert "\n" not in message
    assert f"schema version {SCHEMA_VERSION + 1}, newer than this mailgate's" in message


@pytest.mark.asyncio
async def test_a_version_1_database_is_upgraded_in_place(database: str, tmp_path: Path) -> None:
    store = PostgreSQLStore(database)
    try:
        (old,) = await store_many(store, tmp_path, 1)
    finally:
        await store.aclose()
    # As a mailgate of schema 1 left it: no outbound queue.
    query(database, "DROP TABLE deliveries; UPDATE mailgate_schema SET version = 1")
    store = PostgreSQLStore(database)
    try:
        assert query(database, "SELECT version FROM mailgate_schema") == [(SCHEMA_VERSION,)]
        assert await store.raw(old) is not None
        assert await store.queued() == []
        (new,) = await store_many(store, tmp_path, 1)
        assert (await store.list()).total == 2
        assert await store.get(new) is not None
    finally:
        await store.aclose()


@pytest.mark.asyncio
async def test_a_version_2_database_gains_inline_parts_and_a_size(
    database: str, tmp_path: Path
) -> None:
    store = PostgreSQLStore(database)
    try:
        (old,) = await store_many(store, tmp_path, 1)
    finally:
        await store.aclose()
    # As a mailgate of schema 2 left it: no inline part counts.
    query(database, "ALTER TABLE messages DROP COLUMN inline_parts")
    query(database, "UPDATE mailgate_schema SET version = 2")
    store = PostgreSQLStore(database)
    acceptor = Acceptor(store, DeliverySettings(hostname="mx.test", spool_dir=tmp_path / "spool"))
    try:
        assert query(database, "SELECT version FROM mailgate_schema") == [(SCHEMA_VERSION,)]
        empty = await store.disk_usage()
        assert empty > 0
        spool = acceptor.begin(make_envelope())
        spool.write(
            b'Subject: image\r\nContent-Type: multipart/related; boundary="r"\r\n\r\n'
            b"--r\r\nContent-Type: text/html\r\n\r\n<img src=cid:i@x>\r\n"
            b"--r\r\nContent-Type: image/gif\r\nContent-ID: <i@x>\r\n\r\n"
            + os.urandom(300_000).hex().encode()
            + b"\r\n--r--\r\n"
        )
        new = await acceptor.commit(spool)
        page = await store.search(parse_query("has:inline"))
        assert [(m.id, m.inline) for m in page.messages] == [(new, 1)]
        assert [m.inline for m in (await store.list()).messages if m.id == old] == [0]
        assert await store.disk_usage() > empty + 300_000  # 300,000 random octets
    finally:
        acceptor.close()
        await store.aclose()


@pytest.mark.asyncio
async def test_stores_opening_at_once_create_the_schema_once(database: str) -> None:
    stores = await asyncio.gather(*(PostgreSQLStore.open(database) for _ in range(4)))
    for store in stores:
        await store.aclose()
    assert query(database, "SELECT version FROM mailgate_schema") == [(SCHEMA_VERSION,)]


@pytest.mark.asyncio
async def test_concurrent_stores_share_transactions(database: str, tmp_path: Path) -> None:
    store = PostgreSQLStore(database)
    try:
        ids = await store_many(store, tmp_path, 200)
        stats = store.stats
        assert stats.messages == 200
        assert len(set(ids)) == 200
        # 200 stores at once cannot all have waited for a commit of their own.
        assert stats.transactions < 100
    finally:
        await store.aclose()
    logged = query(database, "SELECT count(*), sum(cardinality(message_ids)) FROM events")
    assert logged == [(stats.transactions, 200)]


@pytest.mark.asyncio
async def test_another_instance_sees_every_change_once(database: str, tmp_path: Path) -> None:
    first, second = PostgreSQLStore(database), PostgreSQLStore(database)
    try:
        events = second.subscribe()
        stored = await store_many(first, tmp_path, 3)
        seen = await next_event(events)
        assert seen.kind is StoreEventKind.STORED
        while len(seen.message_ids) < 3:  # perhaps more than one transaction
            more = await next_event(events)
            seen = StoreEvent(StoreEventKind.STORED, seen.message_ids + more.message_ids)
        assert sorted(seen.message_ids) == sorted(stored)
        assert await first.mark_read(stored[:1], True) == 1
        assert await next_event(events) == StoreEvent(StoreEventKind.READ, (stored[0],))
        assert await first.delete(None) == 3
        assert await next_event(events) == StoreEvent(StoreEventKind.DELETED)
        # Nothing twice: the next event is the next change.
        (last,) = await store_many(first, tmp_path, 1)
        assert await next_event(events) == StoreEvent(StoreEventKind.STORED, (last,))
    finally:
        await first.aclose()
        await second.aclose()


@pytest.mark.asyncio
async def test_an_event_committed_after_a_later_one_is_not_skipped(
    database: str, tmp_path: Path
) -> None:
    """A transaction that drew its event id first but commits last is still followed."""
    store, other = PostgreSQLStore(database), PostgreSQLStore(database)
    events = store.subscribe()
    try:
        with psycopg.connect(database) as slow:
            slow.execute(
                "INSERT INTO events (origin, kind, message_ids) VALUES ('slow', 'deleted', '{A}')"
            )
            (fast,) = await store_many(other, tmp_path, 1)
            # The follower reads the log twice more meanwhile; it must not pass "slow".
            reads = store._follower._reader.reads
            await until(lambda: store._follower._reader.reads >= reads + 2, "the log is read")
            slow.commit()
        received = {await next_event(events), await next_event(events)}
        assert received == {
            StoreEvent(StoreEventKind.DELETED, (MessageId("A"),)),
            StoreEvent(StoreEventKind.STORED, (fast,)),
        }
    finally:
        await store.aclose()
        await other.aclose()


@pytest.mark.asyncio
async def test_a_database_that_is_down_is_a_quick_one_line_error() -> None:
    with socket_closed_port() as port:
        started = time.monotonic()
        with pytest.raises(StoreError) as raised:
            await open_store(f"postgresql://postgres@127.0.0.1:{port}/mail")
        assert time.monotonic() - started < 3
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("cannot open the message store postgresql://postgres@127.0.0.1")


def terminate_backends(server: str, name: str) -> None:
    """End every connection to database ``name``, and wait until none is left: one the
    store's pool was opening as connections were forbidden would outlive a single round."""
    deadline = time.monotonic() + 10
    while query(
        server,
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'",
    ):
        assert time.monotonic() < deadline, f"connections to {name} do not end"
        time.sleep(0.05)


@pytest.mark.asyncio
async def test_a_database_that_goes_away_is_a_prompt_error_and_then_back(
    database: str, tmp_path: Path
) -> None:
    store = PostgreSQLStore(database, settings=PostgreSQLSettings(connect_timeout=1))
    server, name = database.rsplit("/", 1)
    try:
        await store_many(store, tmp_path, 1)
        query(f"{server}/postgres", f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        terminate_backends(f"{server}/postgres", name)
        started = time.monotonic()
        with pytest.raises(StoreError) as raised:
            await store_many(store, tmp_path, 5)
        assert time.monotonic() - started < 5
        assert "\n" not in str(raised.value)
        with pytest.raises(StoreError):
            await store.list()
        query(f"{server}/postgres", f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        deadline = time.monotonic() + 20
        while True:  # the pool connects again, backing off meanwhile
            try:
                assert (await store.list()).total == 1
                break
            except StoreError:
                assert time.monotonic() < deadline, "the store did not come back"
                await asyncio.sleep(0.2)
        await store_many(store, tmp_path, 1)
    finally:
        await store.aclose()


@pytest.mark.asyncio
async def test_a_password_is_not_shown() -> None:
    with socket_closed_port() as port, pytest.raises(StoreError) as raised:
        await open_store(f"postgresql://mail:secret@127.0.0.1:{port}/mail")
    assert "secret" not in str(raised.value)
    assert "mail:***@127.0.0.1" in str(raised.value)


@pytest.mark.asyncio
@pytest.mark.parametrize("url", ["postgresql://db.test", "postgres://db.test/"])
async def test_a_url_without_a_database_is_refused(url: str) -> None:
    with pytest.raises(StoreURLError, match="names no database"):
        await open_store(url)


@pytest.mark.asyncio
async def test_a_closed_store_refuses_work(database: str) -> None:
    store = PostgreSQLStore(database)
    await store.aclose()
    await store.aclose()  # harmless twice
    with pytest.raises(StoreError):
        await store.list()
    with pytest.raises(StoreError):
        await store.delete(None)


@contextlib.contextmanager
def socket_closed_port() -> Iterator[int]:
    """A local TCP port nothing listens on, for as long as the block runs."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        yield bound.getsockname()[1]


@pytest.mark.asyncio
async def test_nodes_pruning_at_once_delete_each_message_once(
    database: str, tmp_path: Path
) -> None:
    """Three stores on one database (three nodes) prune together: one at a time holds the
    prune lock, and between them every message over the limit goes exactly once."""
    stores = [await PostgreSQLStore.open(database) for _ in range(3)]
    try:
        ids = await store_many(stores[0], tmp_path, 60)
        events = stores[0].subscribe()

        async def prune_all(store: PostgreSQLStore) -> int:
            pruned = 0
            while True:
                count = await store.prune(keep_newest=10, limit=7)
                pruned += count
                if not count and (await store.list(limit=0)).total <= 10:
                    return pruned
                await asyncio.sleep(0)

        counts = await asyncio.gather(*(prune_all(store) for store in stores))
        assert sum(counts) == 50
        assert sorted(m.id for m in (await stores[1].list(limit=100)).messages) == sorted(ids)[50:]
        deleted: list[MessageId] = []
        while len(deleted) < 50:
            event = await asyncio.wait_for(anext(events), timeout=10)
            if event.kind is StoreEventKind.DELETED:
                deleted += event.message_ids
        assert sorted(deleted) == sorted(ids)[:50]
    finally:
        for store in stores:
            await store.aclose()
