"""The message store conformance suite: what every ``ports.MessageStore`` must do.

Each ``check_*`` is a plain async function taking a ``StoreUnderTest``; a
store's test module runs them all, for instance::

    @pytest.mark.asyncio
    @pytest.mark.parametrize("check", STORE_CHECKS, ids=lambda c: c.__name__)
    async def test_conformance(check, tmp_path):
        await check(StoreUnderTest(open=lambda: SQLiteStore(tmp_path / "mail.db"),
                                   spool_dir=tmp_path / "spool"))

Messages go in the way they do in production, through
``delivery.Acceptor``, so the checks also cover the hand-over between
delivery and the store.  The checks use only the public API and no clock:
ids from one millisecond sort in no particular order, so ordering checks use
a ``StepClock``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from mailgate.delivery import Acceptor, DeliverySettings
from mailgate.model import Envelope, MessageId, StoreEvent, StoreEventKind
from mailgate.ports import MessageStore

__all__ = [
    "STORE_CHECKS",
    "StepClock",
    "StoreUnderTest",
    "check_commit_get_raw",
    "check_concurrent_commits",
    "check_delete",
    "check_delete_all",
    "check_events",
    "check_large_body",
    "check_list_newest_first_and_paging",
    "check_mark_read",
    "check_missing_ids",
    "check_reopen_keeps_everything",
    "make_envelope",
    "make_message",
]

EPOCH = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
SMALL_THRESHOLD_OCTETS = 4096
"""The spool's memory threshold in the checks, so a large body needs only a few KiB."""


@dataclass
class StepClock:
    """A ``ports.Clock`` that moves on by ``step`` each time it is read."""

    now_value: datetime = EPOCH
    step: timedelta = timedelta(milliseconds=1)

    def now(self) -> datetime:
        current = self.now_value
        self.now_value += self.step
        return current


@dataclass
class StoreUnderTest:
    """How the checks reach a store: ``open`` opens it, and opens it again on the same data."""

    open: Callable[[], MessageStore]
    spool_dir: Path
    clock: StepClock = field(default_factory=StepClock)

    def acceptor(self, store: MessageStore) -> Acceptor:
        settings = DeliverySettings(
            hostname="mx.test", spool_dir=self.spool_dir, memory_threshold=SMALL_THRESHOLD_OCTETS
        )
        return Acceptor(store, settings, clock=self.clock)

    @contextlib.asynccontextmanager
    async def opened(self) -> AsyncIterator[tuple[MessageStore, Acceptor]]:
        store = self.open()
        try:
            acceptor = self.acceptor(store)
            try:
                yield store, acceptor
            finally:
                acceptor.close()
        finally:
            await store.aclose()


def make_envelope(*recipients: str) -> Envelope:
    """An envelope from ``sender@client.test`` to these recipients (one by default)."""
    return Envelope(
        mail_from="sender@client.test",
        rcpt_to=recipients or ("rcpt@mx.test",),
        received_at=EPOCH,
        helo_name="client.test",
        client_address="192.0.2.7",
        client_port=40000,
    )


def make_message(subject: str = "Hello", body: bytes = b"Hi there.\r\n") -> bytes:
    """A small, well-formed message."""
    return (
        b"From: Sender <sender@client.test>\r\nTo: rcpt@mx.test\r\n"
        b"Subject: " + subject.encode() + b"\r\nMessage-ID: <" + subject.encode() + b"@client.test>"
        b"\r\nDate: Fri, 02 Jan 2026 03:04:05 +0000\r\n\r\n" + body
    )


async def _deliver(
    acceptor: Acceptor, content: bytes, envelope: Envelope | None = None
) -> MessageId:
    spool = acceptor.begin(envelope or make_envelope())
    for start in range(0, len(content), 1000):
        spool.write(content[start : start + 1000])
    return await acceptor.commit(spool)


def _trace_and(raw: bytes | None, content: bytes) -> bool:
    """Whether ``raw`` is Return-Path and a Received trace header, then exactly ``content``."""
    return (
        raw is not None
        and raw.startswith(b"Return-Path: <")
        and b"\r\nReceived: " in raw
        and raw.endswith(b"\r\n" + content)
    )


async def check_commit_get_raw(subject: StoreUnderTest) -> None:
    """A committed message reads back: its summary, its envelope, its exact bytes."""
    async with subject.opened() as (store, acceptor):
        content = make_message("First")
        envelope = make_envelope("rcpt@mx.test")
        message_id = await _deliver(acceptor, content, envelope)
        stored = await store.get(message_id)
        assert stored is not None
        assert stored.summary.id == message_id
        assert stored.summary.subject == "First"
        assert stored.summary.message_id == "First@client.test"
        assert stored.summary.sender is not None
        assert stored.summary.sender.address == "sender@client.test"
        assert [a.address for a in stored.summary.to] == ["rcpt@mx.test"]
        assert stored.summary.snippet == "Hi there."
        assert stored.summary.read is False
        assert stored.envelope == envelope
        raw = await store.raw(message_id)
        assert _trace_and(raw, content)
        assert raw is not None
        assert stored.summary.size == len(raw)
        assert f"id {message_id}".encode() in raw


async def check_missing_ids(subject: StoreUnderTest) -> None:
    """Unknown ids read as ``None`` and change nothing."""
    async with subject.opened() as (store, _):
        unknown = MessageId("0" * 26)
        assert await store.get(unknown) is None
        assert await store.raw(unknown) is None
        assert await store.delete([unknown]) == 0
        assert await store.mark_read([unknown], True) == 0
        page = await store.list()
        assert (page.messages, page.total, page.unread) == ((), 0, 0)


async def check_list_newest_first_and_paging(subject: StoreUnderTest) -> None:
    """``list`` pages newest first and counts them all."""
    async with subject.opened() as (store, acceptor):
        ids = [await _deliver(acceptor, make_message(f"m{i}")) for i in range(7)]
        newest_first = ids[::-1]
        page = await store.list(offset=0, limit=3)
        assert [m.id for m in page.messages] == newest_first[:3]
        assert (page.total, page.unread, page.offset) == (7, 7, 0)
        page = await store.list(offset=3, limit=3)
        assert [m.id for m in page.messages] == newest_first[3:6]
        page = await store.list(offset=6, limit=3)
        assert [m.id for m in page.messages] == newest_first[6:]
        assert (await store.list(offset=7, limit=3)).messages == ()


async def check_mark_read(subject: StoreUnderTest) -> None:
    """Read flags change, are counted, and only real changes count."""
    async with subject.opened() as (store, acceptor):
        ids = [await _deliver(acceptor, make_message(f"m{i}")) for i in range(4)]
        assert await store.mark_read(ids[:2], True) == 2
        assert await store.mark_read(ids[:2], True) == 0
        page = await store.list()
        assert (page.total, page.unread) == (4, 2)
        assert {m.id for m in page.messages if m.read} == set(ids[:2])
        stored = await store.get(ids[0])
        assert stored is not None
        assert stored.summary.read
        assert await store.mark_read(None, True) == 2
        assert (await store.list()).unread == 0
        assert await store.mark_read([ids[3]], False) == 1
        assert (await store.list()).unread == 1


async def check_delete(subject: StoreUnderTest) -> None:
    """Deleted messages are gone from every read; the rest stay."""
    async with subject.opened() as (store, acceptor):
        ids = [await _deliver(acceptor, make_message(f"m{i}")) for i in range(3)]
        await store.mark_read([ids[0]], True)
        assert await store.delete([ids[0], ids[1]]) == 2
        assert await store.get(ids[0]) is None
        assert await store.raw(ids[1]) is None
        page = await store.list()
        assert [m.id for m in page.messages] == [ids[2]]
        assert (page.total, page.unread) == (1, 1)


async def check_delete_all(subject: StoreUnderTest) -> None:
    """``delete(None)`` empties the store, large bodies included."""
    async with subject.opened() as (store, acceptor):
        await _deliver(acceptor, make_message("small"))
        large = await _deliver(acceptor, make_message("large", b"x" * 10 * SMALL_THRESHOLD_OCTETS))
        assert await store.delete(None) == 2
        page = await store.list()
        assert (page.messages, page.total, page.unread) == ((), 0, 0)
        assert await store.raw(large) is None
        assert await store.delete(None) == 0


async def check_large_body(subject: StoreUnderTest) -> None:
    """A message that rolled over to a spool file is stored whole, and the spool is empty after."""
    async with subject.opened() as (store, acceptor):
        body = b"".join(b"line %06d of a large message\r\n" % i for i in range(2000))
        content = make_message("Large", body)
        message_id = await _deliver(acceptor, content)
        assert _trace_and(await store.raw(message_id), content)
        assert list(subject.spool_dir.glob("*.spool")) == []


async def check_concurrent_commits(subject: StoreUnderTest) -> None:
    """Many commits at once all land, each with its own content."""
    async with subject.opened() as (store, acceptor):
        contents = [make_message(f"c{i}") for i in range(100)]
        ids = await asyncio.gather(*(_deliver(acceptor, c) for c in contents))
        assert len(set(ids)) == 100
        assert (await store.list(limit=0)).total == 100
        for message_id, content in zip(ids, contents, strict=True):
            assert _trace_and(await store.raw(message_id), content)


async def check_reopen_keeps_everything(subject: StoreUnderTest) -> None:
    """After ``aclose``, opening again finds every message, flag and body as they were."""
    async with subject.opened() as (store, acceptor):
        small = make_message("small")
        large = make_message("large", b"y" * 10 * SMALL_THRESHOLD_OCTETS)
        small_id = await _deliver(acceptor, small)
        large_id = await _deliver(acceptor, large)
        deleted_id = await _deliver(acceptor, make_message("gone"))
        await store.mark_read([small_id], True)
        await store.delete([deleted_id])
        before = await store.list()
    async with subject.opened() as (store, _):
        after = await store.list()
        assert after == before
        assert _trace_and(await store.raw(small_id), small)
        assert _trace_and(await store.raw(large_id), large)
        assert await store.get(deleted_id) is None


async def _next_events(events: AsyncIterator[StoreEvent], count: int) -> list[StoreEvent]:
    return [await anext(events) for _ in range(count)]


async def check_events(subject: StoreUnderTest) -> None:
    """Subscribers see stored, read, unread and deleted events, and the end at close."""
    store = subject.open()
    try:
        acceptor = subject.acceptor(store)
        events = store.subscribe()
        first = await _deliver(acceptor, make_message("one"))
        await store.mark_read([first], True)
        await store.mark_read([first], False)
        await store.delete([first])
        await store.mark_read(None, True)  # nothing to change: no event
        await _deliver(acceptor, make_message("two"))
        await store.delete(None)
        seen = await _next_events(events, 6)
        expected: Sequence[tuple[StoreEventKind, tuple[MessageId, ...] | None]] = [
            (StoreEventKind.STORED, (first,)),
            (StoreEventKind.READ, (first,)),
            (StoreEventKind.UNREAD, (first,)),
            (StoreEventKind.DELETED, (first,)),
            (StoreEventKind.STORED, None),
            (StoreEventKind.DELETED, ()),
        ]
        for event, (kind, ids) in zip(seen, expected, strict=True):
            assert event.kind == kind
            if ids is not None:
                assert event.message_ids == ids
    finally:
        await store.aclose()
    assert [event async for event in events] == []


STORE_CHECKS: tuple[Callable[[StoreUnderTest], Awaitable[None]], ...] = (
    check_commit_get_raw,
    check_concurrent_commits,
    check_delete,
    check_delete_all,
    check_events,
    check_large_body,
    check_list_newest_first_and_paging,
    check_mark_read,
    check_missing_ids,
    check_reopen_keeps_everything,
)
"""Every check, for ``pytest.mark.parametrize``."""
