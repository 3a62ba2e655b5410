"""New mail stored by the commit service: real sockets, real threads, real SQLite.

A store told ``connect_commit_service`` sends each new message to a server
store's ``serve_commit_service`` loop and hears back once it is committed;
while it cannot reach the service it refuses new mail, and it reconnects in
the background.  Nothing sleeps but to look again at the search index or the
link, which have no event: every wait has a time-out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import marshal
import socket
import sqlite3
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mailgate.delivery import Acceptor, DeliverySettings
from mailgate.model import MessageId, StoreEvent, StoreEventKind
from mailgate.ports import StoreError
from mailgate.query import parse_query
from mailgate.stores import SQLiteStore
from mailgate.stores.sqlite import _commit_service as commit_service
from mailgate.stores.sqlite import _store as store_module
from mailgate.stores.sqlite._records import NewMessageRecord, QueuedRecipient
from mailgate.testing.stores import make_envelope, make_message
from store_helpers import index_state, record, until

TIMEOUT = 10.0


class Served:
    """A server store's ``serve_commit_service`` on a thread, listening on a Unix socket."""

    def __init__(self, database: Path, socket_path: str) -> None:
        self.store = SQLiteStore(database)
        self.socket_path = socket_path
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(socket_path)
        self.listener.listen()
        self._stop_reader, self._stop_writer = socket.socketpair()
        self.failure: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            self.store.serve_commit_service(self.listener, self._stop_reader.fileno())
        except BaseException as error:
            self.failure = error

    async def stop(self) -> None:
        self._stop_writer.send(b"x")
        await asyncio.to_thread(self._thread.join, TIMEOUT)
        assert not self._thread.is_alive(), "serve_commit_service did not stop"
        self.listener.close()
        Path(self.socket_path).unlink()
        self._stop_reader.close()
        self._stop_writer.close()
        await self.store.aclose()
        if self.failure is not None:
            raise self.failure


@pytest.fixture
def socket_path() -> Iterator[str]:
    """A path short enough for a Unix socket, in a directory of its own."""
    with tempfile.TemporaryDirectory(prefix="mg-") as directory:
        yield str(Path(directory) / "commit.sock")


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, socket_path: str) -> AsyncIterator[Served]:
    served = Served(tmp_path / "mail.db", socket_path)
    try:
        yield served
    finally:
        await served.stop()


@contextlib.asynccontextmanager
async def client_store(tmp_path: Path, socket_path: str | None) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "mail.db")
    try:
        if socket_path is not None:
            await store.connect_commit_service(socket_path)
        yield store
    finally:
        await store.aclose()


async def deliver(store: SQLiteStore, tmp_path: Path, subject: str, size: int = 0) -> MessageId:
    acceptor = Acceptor(store, DeliverySettings(hostname="mx.test", spool_dir=tmp_path / "spool"))
    spool = acceptor.begin(make_envelope())
    spool.write(make_message(subject, body=(b"x" * 76 + b"\r\n") * (size // 78)))
    return await acceptor.commit(spool)


def change_log(tmp_path: Path) -> list[tuple[str, str, list[str]]]:
    connection = sqlite3.connect(tmp_path / "mail.db")
    try:
        rows = connection.execute("SELECT origin, kind, ids FROM changes ORDER BY seq").fetchall()
    finally:
        connection.close()
    return [(origin, kind, json.loads(ids)) for origin, kind, ids in rows]


async def next_event(events: AsyncIterator[StoreEvent]) -> StoreEvent:
    return await asyncio.wait_for(anext(events), timeout=TIMEOUT)


@pytest.mark.asyncio
async def test_new_mail_is_stored_by_the_commit_service(tmp_path: Path, socket_path: str) -> None:
    async with (
        serving(tmp_path, socket_path) as served,
        client_store(tmp_path, socket_path) as store,
    ):
        before = store.stats.transactions
        small = await deliver(store, tmp_path, "small")
        large = await deliver(store, tmp_path, "large", size=3_000_000)  # a body file
        # Committed by the server's connection, not the client's writer.
        assert store.stats.transactions == before
        assert served.store.stats.transactions == 0  # nor by the server store's own writer
        assert [m.id for m in (await store.list()).messages] == [large, small]
        raw = await store.raw(large)
        assert raw is not None
        assert raw.count(b"x" * 76) >= 30_000
        assert (store.bodies / f"{large}.eml").exists()
        # Logged under the client's origin, so its follower leaves them to it.
        origins = {origin for origin, kind, _ in change_log(tmp_path) if kind == "stored"}
        assert origins == {store._origin}


@pytest.mark.asyncio
async def test_larger_content_held_in_memory_goes_to_the_commit_service_in_a_body_file(
    tmp_path: Path, socket_path: str
) -> None:
    async with serving(tmp_path, socket_path), client_store(tmp_path, socket_path) as store:
        before = store.stats.transactions
        # Up to the accept path's memory threshold (256 KiB) content stays in memory.
        limit = store_module.MAX_INLINE_CONTENT_OCTETS
        sizes = (1_000, limit - 1_000, limit + 1_000, 100 * 1024, 250 * 1024)
        ids = [await deliver(store, tmp_path, f"{size} octets", size=size) for size in sizes]
        assert store.stats.transactions == before  # all by the commit service
        assert {path.name for path in store.bodies.iterdir()} == {f"{i}.eml" for i in ids[2:]}
        assert [m.id for m in (await store.list()).messages] == ids[::-1]
        for message_id, size in zip(ids, sizes, strict=True):
            raw = await store.raw(message_id)
            assert raw is not None
            assert raw.count(b"x" * 76) == size // 78


@pytest.mark.asyncio
async def test_the_route_of_new_mail(tmp_path: Path, socket_path: str) -> None:
    async with client_store(tmp_path, None) as alone:
        assert alone._route() is None  # its own writer
    async with serving(tmp_path, socket_path), client_store(tmp_path, socket_path) as store:
        client = store._route()
        assert client is not None
        assert client.connected

        def elsewhere() -> None:  # another event loop than the one that connected
            asyncio.run(_route_on_this_loop(store))

        with pytest.raises(StoreError, match="another event loop"):
            await asyncio.to_thread(elsewhere)
        client.close()
        link = store._link
        assert link is not None
        await until(lambda: not link.connected, "the connection ends")
        with pytest.raises(StoreError, match="cannot be reached"):
            store._route()


async def _route_on_this_loop(store: SQLiteStore) -> None:
    store._route()


@pytest.mark.asyncio
async def test_subscribers_hear_of_new_mail_once_here_and_once_elsewhere(
    tmp_path: Path, socket_path: str
) -> None:
    async with (
        serving(tmp_path, socket_path),
        client_store(tmp_path, socket_path) as store,
        client_store(tmp_path, None) as other,
    ):
        here, elsewhere = store.subscribe(), other.subscribe()
        first = await deliver(store, tmp_path, "first")
        assert await next_event(here) == StoreEvent(StoreEventKind.STORED, (first,))
        assert await next_event(elsewhere) == StoreEvent(StoreEventKind.STORED, (first,))
        # A second event of the first message would come before this one.
        second = await deliver(other, tmp_path, "second")
        assert await next_event(here) == StoreEvent(StoreEventKind.STORED, (second,))
        assert await next_event(elsewhere) == StoreEvent(StoreEventKind.STORED, (second,))


@pytest.mark.asyncio
async def test_concurrent_commits_from_two_clients_each_get_their_own_id(
    tmp_path: Path, socket_path: str
) -> None:
    async with (
        serving(tmp_path, socket_path) as served,
        client_store(tmp_path, socket_path) as one,
        client_store(tmp_path, socket_path) as two,
    ):
        sent = [(store, f"message {n}") for n in range(60) for store in (one, two)]
        ids = await asyncio.gather(*(deliver(store, tmp_path, subject) for store, subject in sent))
        assert len(set(ids)) == len(sent)
        for message_id, (_, subject) in zip(ids, sent, strict=True):
            found = await one.get(message_id)
            assert found is not None
            assert found.summary.subject == subject
        # Group commit: a transaction logs one change a client, and there were fewer.
        logged = [ids for _, kind, ids in change_log(tmp_path) if kind == "stored"]
        assert sorted(i for ids in logged for i in ids) == sorted(ids)
        assert len(logged) < len(sent)
        assert served.store.stats.transactions == 0


@pytest.mark.asyncio
async def test_the_commit_service_indexes_new_mail_when_idle(
    tmp_path: Path, socket_path: str
) -> None:
    async with (
        serving(tmp_path, socket_path) as served,
        client_store(tmp_path, socket_path) as store,
    ):
        writers = [s._writer._connection for s in (store, served.store)]
        await until(lambda: not any(w.unindexed for w in writers), "both writers looked")
        ids = await asyncio.gather(*(deliver(store, tmp_path, f"ledger {n}") for n in range(50)))
        assert (await store.search(parse_query("ledger"))).total == len(ids)
        await until(lambda: index_state(tmp_path / "mail.db") == (50, 0), "all are indexed")
        # By the commit service: neither store's own writer knew of this mail.
        assert store.stats.indexed == served.store.stats.indexed == 0
        assert (await store.search(parse_query('"ledger 7"'))).total == 1


@pytest.mark.asyncio
async def test_a_failed_message_fails_alone(
    tmp_path: Path, socket_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[NewMessageRecord] = []
    frame = commit_service.frame

    def recording(record: NewMessageRecord) -> tuple[bytes, bytes]:
        sent.append(record)
        return frame(record)

    monkeypatch.setattr(commit_service, "frame", recording)
    async with serving(tmp_path, socket_path), client_store(tmp_path, socket_path) as store:
        first = await deliver(store, tmp_path, "first")
        client = store._route()
        assert client is not None
        # The same message again breaks the unique id; sent with a good one, in one batch.
        again = client.submit(sent[0])
        good = asyncio.ensure_future(deliver(store, tmp_path, "good"))
        results = await asyncio.gather(again, good, return_exceptions=True)
        assert isinstance(results[0], StoreError)
        assert [m.id for m in (await store.list()).messages] == [results[1], first]


@pytest.mark.asyncio
async def test_a_message_its_queue_rows_and_tags_commit_together_in_the_commit_service(
    tmp_path: Path, socket_path: str
) -> None:
    """The record carries its queue rows and tags to the commit service, which stores them
    with the message at once."""
    async with serving(tmp_path, socket_path), client_store(tmp_path, socket_path) as store:
        client = store._route()
        assert client is not None
        queued = record(
            7,
            origin=store._origin,
            queued=(QueuedRecipient("someone@elsewhere.test", 1_767_323_045_000),),
        )
        plain = record(8, origin=store._origin)
        tagged = record(9, origin=store._origin, tags=("Billing", "urgent"))
        results = await asyncio.gather(
            client.submit(queued), client.submit(plain), client.submit(tagged)
        )
        assert results == [queued.id, plain.id, tagged.id]
        assert await store.tags() == {"Billing": 1, "urgent": 1}
        stored = await store.get(tagged.id)
        assert stored is not None
        assert stored.summary.tags == ("Billing", "urgent")
        rows = await store.queued()
        assert [(r.message_id, r.recipient) for r in rows] == [
            (queued.id, "someone@elsewhere.test")
        ]
        assert rows[0].next_attempt == datetime.fromtimestamp(1_767_323_045, UTC)


def nothing_left(tmp_path: Path, store: SQLiteStore) -> bool:
    """No body file and no spool file: what a refused message leaves."""
    return not list(store.bodies.iterdir()) and not list((tmp_path / "spool").glob("*.spool"))


@pytest.mark.asyncio
async def test_an_unreachable_commit_service_means_451_until_it_is_reached(
    tmp_path: Path, socket_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(commit_service, "RECONNECT_SECONDS", 0.01)
    async with client_store(tmp_path, None) as store:
        with pytest.raises(StoreError, match="cannot reach the commit service"):
            await store.connect_commit_service(socket_path)
        before = store.stats.transactions
        for subject, size in (("small", 0), ("in memory", 100_000), ("spooled", 3_000_000)):
            with pytest.raises(StoreError, match="cannot be reached"):
                await deliver(store, tmp_path, subject, size=size)
        # Refused, not stored here: the SMTP client is told 451 and sends it again.
        assert store.stats.transactions == before
        assert (await store.list()).total == 0
        assert nothing_left(tmp_path, store)
        async with serving(tmp_path, socket_path):
            link = store._link
            assert link is not None
            await until(lambda: link.connected, "the link reconnects by itself")
            small = await deliver(store, tmp_path, "small, again")
            large = await deliver(store, tmp_path, "a body file, again", size=3_000_000)
            assert store.stats.transactions == before  # by the commit service
        assert [m.id for m in (await store.list()).messages] == [large, small]


@pytest.mark.asyncio
async def test_a_commit_service_started_again_is_used_again(
    tmp_path: Path, socket_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(commit_service, "RECONNECT_SECONDS", 0.01)
    async with client_store(tmp_path, None) as store:
        async with serving(tmp_path, socket_path):
            await store.connect_commit_service(socket_path)
            first = await deliver(store, tmp_path, "first")
        link = store._link
        assert link is not None
        await until(lambda: not link.connected, "the link sees the service go")
        with pytest.raises(StoreError, match="cannot be reached"):
            await deliver(store, tmp_path, "while it is away")
        async with serving(tmp_path, socket_path):
            await until(lambda: link.connected, "the link reconnects by itself")
            second = await deliver(store, tmp_path, "second")
        assert store.stats.transactions == 0
        assert [m.id for m in (await store.list()).messages] == [second, first]


@pytest.mark.asyncio
async def test_a_commit_service_that_ends_unanswered_fails_those_messages(
    tmp_path: Path, socket_path: str
) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    listener.listen()
    accepted: list[socket.socket] = []

    def accept_then_hang_up() -> None:
        peer, _ = listener.accept()
        accepted.append(peer)
        peer.recv(1)  # a frame has started to arrive
        peer.close()

    thread = threading.Thread(target=accept_then_hang_up, daemon=True)
    thread.start()
    try:
        async with client_store(tmp_path, socket_path) as store:
            with pytest.raises(StoreError, match="ended before confirming"):
                await deliver(store, tmp_path, "lost in flight")
            assert store._link is not None
            assert not store._link.connected
            # The next one is refused too, until the link reaches a service again.
            with pytest.raises(StoreError, match="cannot be reached"):
                await deliver(store, tmp_path, "refused")
            assert (await store.list()).total == 0
    finally:
        thread.join(TIMEOUT)
        listener.close()


@pytest.mark.asyncio
async def test_a_garbled_frame_drops_that_client_only(tmp_path: Path, socket_path: str) -> None:
    async with serving(tmp_path, socket_path), client_store(tmp_path, socket_path) as store:
        reader, writer = await asyncio.open_unix_connection(socket_path)
        writer.write(b"\x00\x00\x00\x05junk!")
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""  # hung up on
        writer.close()
        message_id = await deliver(store, tmp_path, "still served")
        assert await store.get(message_id) is not None


@pytest.mark.asyncio
async def test_frames_in_pieces_and_larger_than_a_read_are_each_answered_once(
    tmp_path: Path, socket_path: str
) -> None:
    big = record(1, content=b"y" * (commit_service._READ_BYTES + 4096))
    small = [record(n) for n in (2, 3)]
    wire = b"".join(b"".join(commit_service.frame(r)) for r in (small[0], big, small[1]))
    async with serving(tmp_path, socket_path):
        reader, writer = await asyncio.open_unix_connection(socket_path)
        for piece in (wire[:3], wire[3:9], wire[9:]):  # a header, and a frame, split
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.01)
        answers = await asyncio.wait_for(reader.readexactly(3), TIMEOUT)
        writer.close()
    assert answers == bytes([commit_service.COMMITTED] * 3)
    connection = sqlite3.connect(tmp_path / "mail.db")
    try:
        stored = connection.execute(
            "SELECT m.id, length(b.data) FROM messages AS m JOIN bodies AS b USING (seq)"
            " ORDER BY seq"
        ).fetchall()
    finally:
        connection.close()
    assert stored == [(small[0].id, 1), (big.id, len(big.content or b"")), (small[1].id, 1)]


def test_a_record_round_trips_and_a_garbled_one_is_refused() -> None:
    sent = record(
        1,
        queued=(QueuedRecipient("a@b.test", 5), QueuedRecipient("c@d.test", 6)),
        tags=("Billing", "urgent"),
    )
    header, payload = commit_service.frame(sent)
    assert int.from_bytes(header, "big") == len(payload)
    assert NewMessageRecord.from_wire(memoryview(payload)) == sent
    assert NewMessageRecord.from_wire(record(2, origin="o").to_wire()) == record(2, origin="o")
    fields = marshal.loads(payload)
    garbled = [
        b"",
        b"\x00",
        marshal.dumps(fields[:-1]),  # a field short
        marshal.dumps((fields[0] + 1, *fields[1:])),  # another wire version
        marshal.dumps((*fields[:1], 7, *fields[2:])),  # an id that is not text
        marshal.dumps((*fields[:-1], (("a@b.test",),))),  # a queue row without its due time
        marshal.dumps((*fields[:-2], (7,), fields[-1])),  # a tag that is not text
    ]
    for bad in garbled:
        with pytest.raises(ValueError, match="frame"):
            NewMessageRecord.from_wire(bad)
