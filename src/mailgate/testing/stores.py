"""The message store conformance suite: what every ``ports.MessageStore`` must do.

Each ``check_*`` is a plain async function taking a ``StoreUnderTest``; a
store's test module runs those of the capabilities it claims, for instance::

    CHECKS = STORE_CHECKS + SEARCHABLE_STORE_CHECKS + TAGGABLE_STORE_CHECKS

    @pytest.mark.asyncio
    @pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
    async def test_conformance(check, tmp_path):
        await check(StoreUnderTest(open=lambda: SQLiteStore(tmp_path / "mail.db"),
                                   spool_dir=tmp_path / "spool"))

``STORE_CHECKS`` hold every store to the core (``ports.MessageStore``),
including that a subscriber sees the changes another store instance on the
same data commits; ``SEARCHABLE_STORE_CHECKS`` to ``ports.SearchableStore``
(the query language's forms, each answered as ``query.matches`` answers it);
``TAGGABLE_STORE_CHECKS`` to ``ports.TaggableStore``.

Messages go in the way they do in production, through
``delivery.Acceptor``, so the checks also cover the hand-over between
delivery and the store.  The checks use only the public API and no clock:
ids from one millisecond sort in no particular order, so ordering checks use
a ``StepClock``.  Waits for events from another store have a time-out.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from mailgate.delivery import Acceptor, DeliverySettings
from mailgate.model import Envelope, MessageId, StoreEvent, StoreEventKind
from mailgate.ports import MessageStore, SearchableStore, TaggableStore
from mailgate.query import matches, parse_query

__all__ = [
    "EPOCH",
    "SEARCHABLE_STORE_CHECKS",
    "STORE_CHECKS",
    "TAGGABLE_STORE_CHECKS",
    "StepClock",
    "StoreUnderTest",
    "check_concurrent_stores",
    "check_delete",
    "check_delete_all",
    "check_events",
    "check_events_from_another_store",
    "check_large_body",
    "check_list_newest_first_and_paging",
    "check_mark_read",
    "check_missing_ids",
    "check_reopen_keeps_everything",
    "check_search",
    "check_search_paging",
    "check_store_get_raw",
    "check_tags",
    "make_envelope",
    "make_message",
    "next_event",
]

EPOCH = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
SMALL_THRESHOLD_OCTETS = 4096
"""The spool's memory threshold in the checks, so a large body needs only a few KiB."""
EVENT_TIMEOUT_SECONDS = 10.0
"""How long a check waits for an event another store instance committed."""


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


async def check_store_get_raw(subject: StoreUnderTest) -> None:
    """A stored message reads back: its summary, its envelope, its exact bytes."""
    async with subject.opened() as (store, acceptor):
        content = make_message("First")
        # The accepting node is kept too (a shared store's nodes tell their mail by it).
        envelope = replace(make_envelope("rcpt@mx.test"), node="node-a")
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


async def check_concurrent_stores(subject: StoreUnderTest) -> None:
    """Many messages stored at once all land, each with its own content."""
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


async def next_event(events: AsyncIterator[StoreEvent]) -> StoreEvent:
    """The next event, waited for up to ``EVENT_TIMEOUT_SECONDS``."""
    async with asyncio.timeout(EVENT_TIMEOUT_SECONDS):
        return await anext(events)


async def check_events_from_another_store(subject: StoreUnderTest) -> None:
    """A subscriber sees what another store instance on the same data commits, each once.

    Another instance stands for another process or another node sharing the
    store.  Its changes may reach the subscriber later than this instance's
    own, so each is awaited before the next change is made.
    """
    async with subject.opened() as (store, acceptor), subject.opened() as (other, elsewhere):
        events = store.subscribe()
        theirs = await _deliver(elsewhere, make_message("theirs"))
        assert await next_event(events) == StoreEvent(StoreEventKind.STORED, (theirs,))
        ours = await _deliver(acceptor, make_message("ours"))
        assert await next_event(events) == StoreEvent(StoreEventKind.STORED, (ours,))
        assert await other.mark_read([theirs, ours], True) == 2
        event = await next_event(events)
        assert event.kind == StoreEventKind.READ
        assert sorted(event.message_ids) == sorted([theirs, ours])
        assert await other.delete([theirs]) == 1
        assert await next_event(events) == StoreEvent(StoreEventKind.DELETED, (theirs,))
        # A second event of any change above would come before this one.
        last = await _deliver(elsewhere, make_message("last"))
        assert await next_event(events) == StoreEvent(StoreEventKind.STORED, (last,))
        assert [m.id for m in (await store.list()).messages] == [last, ours]


# -- search ----------------------------------------------------------------------------------

_ATTACHED = (
    b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
    b"--b\r\nContent-Type: text/plain\r\n\r\nThe numbers are attached.\r\n"
    b"--b\r\nContent-Type: application/pdf\r\n"
    b'Content-Disposition: attachment; filename="q3.pdf"\r\n\r\n%PDF-1.4\r\n--b--\r\n'
)
_INLINE_IMAGE = (
    b'MIME-Version: 1.0\r\nContent-Type: multipart/related; boundary="r"\r\n\r\n'
    b'--r\r\nContent-Type: text/html\r\n\r\n<p>Looks fine.</p><img src="cid:ok@x">\r\n'
    b"--r\r\nContent-Type: image/gif\r\nContent-ID: <ok@x>\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\nR0lGODlhAQABAAAAACw=\r\n--r--\r\n"
)


def _mail(subject: str, sender: str, to: str, body: bytes, *, cc: str = "") -> bytes:
    """A message with these headers; ``body`` may open with MIME headers of its own."""
    headers = [
        f"From: {sender}",
        f"To: {to}",
        *([f"Cc: {cc}"] if cc else []),
        f"Subject: {subject}",
        f"Message-ID: <{subject.lower().replace(' ', '.')}@client.test>",
        "Date: Fri, 02 Jan 2026 03:04:05 +0000",
    ]
    head = "\r\n".join(headers).encode()
    return head + (b"\r\n" if body.startswith(b"MIME-Version:") else b"\r\n\r\n") + body


async def _search_corpus(subject: StoreUnderTest, acceptor: Acceptor) -> dict[str, MessageId]:
    """Six messages, received on two days, that the query language tells apart."""
    clock = subject.clock
    clock.now_value = datetime(2026, 1, 1, 9, tzinfo=UTC)
    ids = {
        "report": await _deliver(
            acceptor,
            _mail(
                "Quarterly report",
                "Alice Example <alice@example.com>",
                "bob@example.org",
                _ATTACHED,
                cc="Carol <carol@example.net>",
            ),
        ),
        "lunch": await _deliver(
            acceptor,
            _mail("Lunch on Friday", "Bob <bob@example.org>", "alice@example.com", b"Pizza?\r\n"),
        ),
    }
    clock.now_value = datetime(2026, 1, 3, 9, tzinfo=UTC)
    invoice = "Rechnung von Jörg Müller".encode()
    ids["invoice"] = await _deliver(
        acceptor,
        _mail(
            "Ärger mit der Rechnung",
            "=?utf-8?q?J=C3=B6rg_M=C3=BCller?= <jm@example.de>",
            "alice@example.com",
            invoice + b"\r\n" + b"Posten 17 und folgende.\r\n" * 300,
        ),
    )
    ids["reply"] = await _deliver(
        acceptor,
        _mail(
            "Re: Quarterly report",
            "Carol <carol@example.net>",
            "Alice Example <alice@example.com>",
            _INLINE_IMAGE,
        ),
    )
    ids["sale"] = await _deliver(
        acceptor,
        _mail("50% off everything", "Shop <shop@example.com>", "bob@example.org", b"Buy!\r\n"),
    )
    ids["plain"] = await _deliver(acceptor, make_message("Hello"))
    return ids


SEARCHES = (
    "quarterly",
    "QUARTERLY",
    "re",
    '"lunch on"',
    "müller",
    "MÜLLER",
    "ärger",
    "50%",
    "example.org",
    "from:alice",
    "from:carol",
    "to:alice@example.com",
    "cc:carol",
    "addressed:carol",
    "subject:report",
    'subject:"re: quarterly"',
    "message-id:<lunch.on.friday@client.test>",
    "message-id:lunch.on.friday@client.test",
    "is:read",
    "is:unread",
    "has:attachment",
    "has:inline",
    "-has:inline",
    "before:2026-01-02",
    "after:2026-01-02",
    "larger:4K",
    "smaller:4K",
    "-quarterly",
    "!is:read",
    "-from:alice -from:carol",
    "quarterly is:unread",
    "from:carol after:2026-01-02 smaller:4K",
    "no-such-text-anywhere",
)
"""Queries of each form of the language, alone and together, negated and not."""


async def check_search(subject: StoreUnderTest) -> None:
    """Each form of the query language finds what ``query.matches`` says it should."""
    async with subject.opened() as (store, acceptor):
        assert isinstance(store, SearchableStore)
        ids = await _search_corpus(subject, acceptor)
        await store.mark_read([ids["reply"], ids["sale"]], True)
        everything = (await store.list(limit=100)).messages
        assert len(everything) == len(ids)

        async def found(text: str) -> list[MessageId]:
            query = parse_query(text)
            expected = [s for s in everything if matches(query, s)]
            page = await store.search(query, limit=100)
            assert [m.id for m in page.messages] == [s.id for s in expected], text
            assert (page.total, page.unread) == (
                len(expected),
                sum(not s.read for s in expected),
            ), text
            assert page.messages == tuple(expected), text  # the same summaries as listed
            return [m.id for m in page.messages]

        for text in SEARCHES:
            await found(text)
        # The reference agrees with what the messages are, so the checks above are not idle.
        assert await found("quarterly") == [ids["reply"], ids["report"]]
        assert await found("müller") == [ids["invoice"]]
        assert await found("has:attachment") == [ids["report"]]
        assert await found("has:inline") == [ids["reply"]]
        assert await found("before:2026-01-02") == [ids["lunch"], ids["report"]]
        assert await found("larger:4K") == [ids["invoice"]]
        assert await found("is:read") == [ids["sale"], ids["reply"]]
        assert await found("50%") == [ids["sale"]]
        assert await found("message-id:<lunch.on.friday@client.test>") == [ids["lunch"]]
        assert await found("no-such-text-anywhere") == []


async def check_search_paging(subject: StoreUnderTest) -> None:
    """A search pages its matches newest first, counting them all; a deleted match is gone."""
    async with subject.opened() as (store, acceptor):
        assert isinstance(store, SearchableStore)
        matching = [await _deliver(acceptor, make_message(f"ledger {n}")) for n in range(5)]
        await _deliver(acceptor, make_message("other"))
        query = parse_query("ledger")
        newest_first = matching[::-1]
        page = await store.search(query, offset=1, limit=3)
        assert [m.id for m in page.messages] == newest_first[1:4]
        assert (page.total, page.unread, page.offset) == (5, 5, 1)
        assert (await store.search(query, offset=5, limit=3)).messages == ()
        await store.delete([matching[0]])
        await store.mark_read([matching[1]], True)
        page = await store.search(query)
        assert [m.id for m in page.messages] == newest_first[:4]
        assert (page.total, page.unread) == (4, 3)


# -- tags ------------------------------------------------------------------------------------


async def _tags_of(store: MessageStore, message_id: MessageId) -> tuple[str, ...]:
    stored = await store.get(message_id)
    assert stored is not None
    return stored.summary.tags


async def check_tags(subject: StoreUnderTest) -> None:
    """Tags are set, replaced, counted, renamed (merging), deleted, and searched for."""
    async with subject.opened() as (store, acceptor):
        assert isinstance(store, TaggableStore)
        a, b, c = [await _deliver(acceptor, make_message(f"m{n}")) for n in range(3)]
        assert await store.tags() == {}
        unknown = MessageId("0" * 26)
        assert await store.set_tags([a, b, unknown], ["work", "urgent", "work"]) == 2
        assert await store.tags() == {"urgent": 2, "work": 2}
        assert await _tags_of(store, a) == ("urgent", "work")
        listed = {m.id: m.tags for m in (await store.list()).messages}
        assert listed == {a: ("urgent", "work"), b: ("urgent", "work"), c: ()}
        assert await store.set_tags([b], ["home"]) == 1  # replaces, not adds
        assert await store.tags() == {"home": 1, "urgent": 1, "work": 1}
        # Renamed onto a tag the message has too: the two merge.
        assert await store.set_tags([c], ["later", "home"]) == 1
        assert await store.rename_tag("later", "home") == 1
        assert await _tags_of(store, c) == ("home",)
        assert await store.rename_tag("urgent", "Urgent") == 1
        assert await store.tags() == {"Urgent": 1, "home": 2, "work": 1}
        assert await store.rename_tag("absent", "anything") == 0
        assert await store.delete_tag("work") == 1
        assert await store.delete_tag("work") == 0
        assert await _tags_of(store, a) == ("Urgent",)
        if isinstance(store, SearchableStore):
            page = await store.search(parse_query("tag:urgent"))
            assert [m.id for m in page.messages] == [a]
            page = await store.search(parse_query("is:tagged -tag:home"))
            assert [m.id for m in page.messages] == [a]
            page = await store.search(parse_query("tag:hom"))  # whole tags only
            assert page.messages == ()
        assert await store.set_tags([a], []) == 1
        await store.delete([c])  # its tags go with it
        assert await store.tags() == {"home": 1}
        assert await store.set_tags([c], ["gone"]) == 0


STORE_CHECKS: tuple[Callable[[StoreUnderTest], Awaitable[None]], ...] = (
    check_concurrent_stores,
    check_delete,
    check_delete_all,
    check_events,
    check_events_from_another_store,
    check_large_body,
    check_list_newest_first_and_paging,
    check_mark_read,
    check_missing_ids,
    check_reopen_keeps_everything,
    check_store_get_raw,
)
"""The checks of the core, ``ports.MessageStore``, for ``pytest.mark.parametrize``."""

SEARCHABLE_STORE_CHECKS: tuple[Callable[[StoreUnderTest], Awaitable[None]], ...] = (
    check_search,
    check_search_paging,
)
"""The checks of ``ports.SearchableStore``."""

TAGGABLE_STORE_CHECKS: tuple[Callable[[StoreUnderTest], Awaitable[None]], ...] = (check_tags,)
"""The checks of ``ports.TaggableStore`` (with searches for tags if the store is searchable)."""
