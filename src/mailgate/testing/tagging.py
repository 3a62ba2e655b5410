"""Tags stored with new mail: the conformance checks of a ``ports.TaggableStore``'s commit.

Used like ``mailgate.testing.stores``, whose ``TAGGABLE_STORE_CHECKS`` hold a
store to the tags set on stored mail: a store's test module runs
``COMMITTED_TAG_CHECKS`` against a ``StoreUnderTest``.  Messages go in through
``delivery.Acceptor`` tagging as ``mailgate serve`` does (``X-Tags``, plus
addresses and a rule), so the checks cover the hand-over of tags from the
accept path to the transaction that stores the message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from mailgate.delivery import Acceptor, DeliverySettings
from mailgate.model import MessageId
from mailgate.ports import MessageStore, SearchableStore, TaggableStore
from mailgate.query import parse_query
from mailgate.tags import AutoTags, parse_tag_rule
from mailgate.testing.stores import SMALL_THRESHOLD_OCTETS, StoreUnderTest, make_envelope

__all__ = ["COMMITTED_TAG_CHECKS", "check_tags_committed_with_the_message"]

RULE = "invoices=subject:invoice"
"""The rule the checks' acceptor tags with."""


def _acceptor(subject: StoreUnderTest, store: MessageStore) -> Acceptor:
    settings = DeliverySettings(
        hostname="mx.test",
        spool_dir=subject.spool_dir,
        memory_threshold=SMALL_THRESHOLD_OCTETS,
        tags=AutoTags(rules=(parse_tag_rule(RULE),)),
    )
    return Acceptor(store, settings, clock=subject.clock)


async def _deliver(acceptor: Acceptor, number: int) -> MessageId:
    """Message ``number``: odd ones bring tags (``X-Tags``, a plus address, the rule's subject),
    and every third is large enough for a store to keep its body apart."""
    tagged = number % 2 == 1
    header = b"X-Tags: Billing, urgent ,bad:name\r\n" if tagged else b""
    subject = f"Invoice {number}" if tagged else f"Hello {number}"
    body = b"x" * (2 * SMALL_THRESHOLD_OCTETS) if number % 3 == 0 else b"Hi.\r\n"
    recipient = f"team+Ops{number}@mx.test" if tagged else f"team{number}@mx.test"
    spool = acceptor.begin(make_envelope(recipient))
    spool.write(header + b"From: a@client.test\r\nSubject: " + subject.encode() + b"\r\n\r\n")
    spool.write(body)
    return await acceptor.commit(spool)


def _expected(number: int) -> tuple[str, ...]:
    if number % 2 == 0:
        return ()
    return ("Billing", f"Ops{number}", "bad name", "invoices", "urgent")


async def check_tags_committed_with_the_message(subject: StoreUnderTest) -> None:
    """Tags a message arrives with are stored with it, whether it shares its commit with
    mail that has none or not: read back, listed, counted and searched for, by another
    store instance on the same data too."""
    async with subject.opened() as (store, _):
        assert isinstance(store, TaggableStore)
        acceptor = _acceptor(subject, store)
        try:
            ids = list(await asyncio.gather(*(_deliver(acceptor, n) for n in range(6))))
        finally:
            acceptor.close()
        for number, message_id in enumerate(ids):
            stored = await store.get(message_id)
            assert stored is not None
            assert stored.summary.tags == _expected(number), number
        listed = {m.id: m.tags for m in (await store.list()).messages}
        assert listed == {message_id: _expected(n) for n, message_id in enumerate(ids)}
        tagged = [ids[1], ids[3], ids[5]]
        counts = {"Billing": 3, "bad name": 3, "invoices": 3, "urgent": 3}
        assert await store.tags() == counts | {"Ops1": 1, "Ops3": 1, "Ops5": 1}
        if isinstance(store, SearchableStore):
            for search, found in (
                ("tag:billing", tagged),
                ("tag:ops3", [ids[3]]),
                ('tag:"bad name"', tagged),
                ("is:tagged", tagged),
                ("-is:tagged", [ids[0], ids[2], ids[4]]),
            ):
                page = await store.search(parse_query(search))
                assert sorted(m.id for m in page.messages) == sorted(found), search
    async with subject.opened() as (again, _):
        assert isinstance(again, TaggableStore)
        assert await again.tags() == counts | {"Ops1": 1, "Ops3": 1, "Ops5": 1}


COMMITTED_TAG_CHECKS: tuple[Callable[[StoreUnderTest], Awaitable[None]], ...] = (
    check_tags_committed_with_the_message,
)
"""The checks of the tags ``ports.TaggableStore.store`` commits with a new message."""
