"""Stores sharing one SQLite file: each one's subscribers see every store's changes, once.

Real files, real threads, a real second process.  Nothing sleeps: every wait
is for an event, with a time-out.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import sqlite3
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mailgate.delivery import Acceptor, DeliverySettings
from mailgate.model import MessageId, StoreEvent, StoreEventKind
from mailgate.stores import SQLiteStore
from mailgate.stores.sqlite import _transactions as transactions
from mailgate.stores.sqlite._follow import ChangeReader
from mailgate.stores.sqlite._schema import MAX_ROWS_PER_INSERT
from mailgate.testing.stores import make_envelope, make_message

EVENT_TIMEOUT_SECONDS = 5
FOLLOWER_THREAD = "mailgate-sqlite-follower"

CHILD = """
import asyncio, sys
from pathlib import Path
from mailgate.delivery import Acceptor, DeliverySettings
from mailgate.stores import SQLiteStore
from mailgate.testing.stores import make_envelope, make_message

async def main(directory):
    store = SQLiteStore(directory / "mail.db")
    try:
        settings = DeliverySettings(hostname="mx.test", spool_dir=directory / "child-spool")
        acceptor = Acceptor(store, settings)
        spool = acceptor.begin(make_envelope())
        spool.write(make_message("from another process"))
        print(await acceptor.commit(spool))
    finally:
        await store.aclose()

asyncio.run(main(Path(sys.argv[1])))
"""


@contextlib.asynccontextmanager
async def two_stores(tmp_path: Path) -> AsyncIterator[tuple[SQLiteStore, SQLiteStore]]:
    """Two stores on one file: separate writers, separate origins, as two processes have."""
    first = SQLiteStore(tmp_path / "mail.db")
    try:
        second = SQLiteStore(tmp_path / "mail.db")
        try:
            yield first, second
        finally:
            await second.aclose()
    finally:
        await first.aclose()


async def deliver(store: SQLiteStore, tmp_path: Path, subject: str) -> MessageId:
    acceptor = Acceptor(store, DeliverySettings(hostname="mx.test", spool_dir=tmp_path / "spool"))
    spool = acceptor.begin(make_envelope())
    spool.write(make_message(subject))
    return await acceptor.commit(spool)


async def next_event(events: AsyncIterator[StoreEvent]) -> StoreEvent:
    return await asyncio.wait_for(anext(events), timeout=EVENT_TIMEOUT_SECONDS)


def followers() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == FOLLOWER_THREAD}


def stored(*ids: MessageId) -> StoreEvent:
    return StoreEvent(StoreEventKind.STORED, ids)


@pytest.mark.asyncio
async def test_another_stores_commit_is_seen_and_own_commits_only_once(tmp_path: Path) -> None:
    async with two_stores(tmp_path) as (a, b):
        events = a.subscribe()
        b1 = await deliver(b, tmp_path, "b1")
        assert await next_event(events) == stored(b1)
        a1 = await deliver(a, tmp_path, "a1")
        assert await next_event(events) == stored(a1)
        # The follower reads a1's row before b2's: a second a1 would come first.
        b2 = await deliver(b, tmp_path, "b2")
        assert await next_event(events) == stored(b2)


@pytest.mark.asyncio
async def test_read_unread_and_deleted_from_another_store_are_seen(tmp_path: Path) -> None:
    async with two_stores(tmp_path) as (a, b):
        events = a.subscribe()
        x = await deliver(b, tmp_path, "x")
        y = await deliver(b, tmp_path, "y")
        assert [await next_event(events) for _ in range(2)] == [stored(x), stored(y)]
        await b.mark_read([x], True)
        await b.mark_read([x], False)
        await b.delete([x])
        await b.mark_read(None, True)
        await b.delete(None)
        assert [await next_event(events) for _ in range(5)] == [
            StoreEvent(StoreEventKind.READ, (x,)),
            StoreEvent(StoreEventKind.UNREAD, (x,)),
            StoreEvent(StoreEventKind.DELETED, (x,)),
            StoreEvent(StoreEventKind.READ),
            StoreEvent(StoreEventKind.DELETED),
        ]


@pytest.mark.asyncio
async def test_a_commit_by_another_process_is_seen(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "mail.db")
    try:
        events = store.subscribe()
        child = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", CHILD, str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert child.returncode == 0, child.stderr
        message_id = MessageId(child.stdout.strip())
        assert await next_event(events) == stored(message_id)
        page = await store.list()
        assert [m.id for m in page.messages] == [message_id]
    finally:
        await store.aclose()


@pytest.mark.asyncio
async def test_the_change_log_stays_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keep = 20
    monkeypatch.setattr(transactions, "CHANGE_LOG_KEEP", keep)
    async with two_stores(tmp_path) as (a, b):
        for i in range(3 * keep):
            await deliver(a if i % 2 else b, tmp_path, f"m{i}")
        await a.mark_read(None, True)
    connection = sqlite3.connect(tmp_path / "mail.db")
    try:
        count, oldest, newest = connection.execute(
            "SELECT count(*), min(seq), max(seq) FROM changes"
        ).fetchone()
    finally:
        connection.close()
    assert newest == 3 * keep + 1  # one row a transaction, none lost before pruning
    assert count == newest - oldest + 1  # pruned from the oldest only
    assert keep <= count <= keep + keep // 10


@pytest.mark.asyncio
async def test_a_reader_behind_the_pruned_log_gets_overflow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keep = 5
    monkeypatch.setattr(transactions, "CHANGE_LOG_KEEP", keep)
    store = SQLiteStore(tmp_path / "mail.db")
    connection = sqlite3.connect(tmp_path / "mail.db", isolation_level=None)
    try:
        reader = ChangeReader(connection, origin="another store")
        reader.start()
        assert reader.read() == []
        first = await deliver(store, tmp_path, "first")
        assert reader.read() == [stored(first)]
        for i in range(3 * keep):
            await deliver(store, tmp_path, f"m{i}")
        assert reader.read() == [StoreEvent(StoreEventKind.OVERFLOW)]
        assert reader.read() == []
        last = await deliver(store, tmp_path, "last")
        assert reader.read() == [stored(last)]  # caught up again
    finally:
        connection.close()
        await store.aclose()


@pytest.mark.asyncio
async def test_a_reader_skips_its_own_origin(tmp_path: Path) -> None:
    async with two_stores(tmp_path) as (a, b):
        connection = sqlite3.connect(tmp_path / "mail.db", isolation_level=None)
        try:
            reader = ChangeReader(connection, origin=a._origin)
            reader.start()
            await deliver(a, tmp_path, "own")
            theirs = await deliver(b, tmp_path, "theirs")
            await a.delete(None)
            assert reader.read() == [stored(theirs)]
        finally:
            connection.close()


@pytest.mark.asyncio
async def test_closing_the_store_ends_the_follower(tmp_path: Path) -> None:
    others = followers()
    store = SQLiteStore(tmp_path / "mail.db")
    events = store.subscribe()
    [thread] = followers() - others
    await store.aclose()
    assert not thread.is_alive()
    assert [event async for event in events] == []


@pytest.mark.asyncio
async def test_the_follower_runs_only_while_there_are_subscribers(tmp_path: Path) -> None:
    async with two_stores(tmp_path) as (a, b):
        others = followers()
        first, second = a.subscribe(), a.subscribe()
        [thread] = followers() - others
        await first.aclose()  # type: ignore[attr-defined]
        assert thread.is_alive()
        await second.aclose()  # type: ignore[attr-defined]
        await asyncio.to_thread(thread.join, EVENT_TIMEOUT_SECONDS)
        assert not thread.is_alive()
        again = a.subscribe()
        assert len(followers() - others) == 1
        message_id = await deliver(b, tmp_path, "after a restart")
        assert await next_event(again) == stored(message_id)


@pytest.mark.asyncio
async def test_writers_take_turns_on_the_write_lock(tmp_path: Path) -> None:
    async with contextlib.AsyncExitStack() as stack:
        store = SQLiteStore(tmp_path / "mail.db")
        stack.push_async_callback(store.aclose)
        lock = tmp_path / "mail.db-write-lock"
        assert lock.exists()
        # Another process's writer, holding its turn: this store's commit waits for it.
        with open(lock, "rb") as other:
            fcntl.flock(other, fcntl.LOCK_EX)
            pending = asyncio.ensure_future(deliver(store, tmp_path, "waits its turn"))
            done, _ = await asyncio.wait([pending], timeout=0.3)
            assert not done
            fcntl.flock(other, fcntl.LOCK_UN)
            message_id = await asyncio.wait_for(pending, timeout=5)
        assert await store.get(message_id) is not None


@pytest.mark.asyncio
async def test_what_queues_while_another_writer_has_its_turn_shares_one_transaction(
    tmp_path: Path,
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        store = SQLiteStore(tmp_path / "mail.db")
        stack.push_async_callback(store.aclose)
        before = store.stats.transactions
        # More than one INSERT statement carries, so the batch takes several.
        count = MAX_ROWS_PER_INSERT + 44
        with open(tmp_path / "mail.db-write-lock", "rb") as other:
            fcntl.flock(other, fcntl.LOCK_EX)
            first = asyncio.ensure_future(deliver(store, tmp_path, "first"))
            done, _ = await asyncio.wait([first], timeout=0.3)
            assert not done  # the writer took it and waits for its turn
            rest = [
                asyncio.ensure_future(deliver(store, tmp_path, f"queued {i}"))
                for i in range(count - 1)
            ]
            await asyncio.sleep(0)  # every commit is queued before the turn comes
            fcntl.flock(other, fcntl.LOCK_UN)
            ids = await asyncio.wait_for(asyncio.gather(first, *rest), timeout=10)
        assert store.stats.transactions == before + 1
        assert store.stats.messages == count
        # Each row got its own content, though one statement wrote many.
        # One row of the change log for the whole batch, though it took two statements.
        with contextlib.closing(sqlite3.connect(tmp_path / "mail.db")) as connection:
            logged = connection.execute("SELECT kind, ids FROM changes").fetchall()
        assert [(kind, json.loads(ids)) for kind, ids in logged] == [("stored", list(ids))]
        subjects = ["first"] + [f"queued {i}" for i in range(count - 1)]
        for message_id, subject in zip(ids, subjects, strict=True):
            raw = await store.raw(message_id)
            assert raw is not None
            assert f"Subject: {subject}\r\n".encode() in raw
