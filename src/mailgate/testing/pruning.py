"""The retention conformance suite: what every ``ports.PrunableStore`` must do.

Used like ``mailgate.testing.stores``: a store's test module runs
``PRUNABLE_STORE_CHECKS`` against a ``StoreUnderTest`` whose store prunes.
Received times come from the ``StepClock``, set by each check, so ages are
exact; messages go in through ``delivery.Acceptor`` as in production.  A
store that keeps a queue is also held to sparing what is still queued.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta

from mailgate.delivery import Acceptor
from mailgate.model import DeliveryOutcome, DeliveryState, MessageId, StoreEvent, StoreEventKind
from mailgate.ports import PrunableStore, QueueStore, SearchableStore, TaggableStore
from mailgate.query import parse_query
from mailgate.testing.stores import (
    EPOCH,
    SMALL_THRESHOLD_OCTETS,
    StoreUnderTest,
    make_envelope,
    make_message,
    next_event,
)

__all__ = [
    "PRUNABLE_STORE_CHECKS",
    "check_prune_by_age",
    "check_prune_keeps_the_newest",
    "check_prune_spares_queued_mail",
    "check_pruning_is_seen_by_another_store",
]

HOUR = timedelta(hours=1)


def _prunable(store: object) -> PrunableStore:
    assert isinstance(store, PrunableStore), f"{type(store).__name__} does not prune"
    return store


async def _deliver(
    subject: StoreUnderTest,
    acceptor: Acceptor,
    subject_line: str,
    *,
    body: bytes = b"Hi there.\r\n",
    outbound: tuple[str, ...] = (),
) -> MessageId:
    """Accept a message (queueing ``outbound`` recipients), received an hour after the last."""
    envelope = make_envelope(*outbound) if outbound else make_envelope()
    envelope = dataclasses.replace(envelope, outbound=outbound)
    subject.clock.step = HOUR
    spool = acceptor.begin(envelope)
    spool.write(make_message(subject_line, body))
    return await acceptor.commit(spool)


async def _next_deletion(events: AsyncIterator[StoreEvent]) -> StoreEvent:
    """The next ``DELETED`` event, past those of changes made before (stored, read)."""
    event = await next_event(events)
    while event.kind is not StoreEventKind.DELETED:
        event = await next_event(events)
    return event


async def check_prune_keeps_the_newest(subject: StoreUnderTest) -> None:
    """``keep_newest`` prunes the oldest first, at most ``limit`` a call, with their
    bodies, tags and search entries; subscribers are told; the totals follow."""
    async with subject.opened() as (opened, acceptor):
        store = _prunable(opened)
        large = b"z" * 10 * SMALL_THRESHOLD_OCTETS  # kept apart from the row by some stores
        ids = [
            await _deliver(subject, acceptor, f"ledger {n}", body=large if n == 1 else b"x\r\n")
            for n in range(7)
        ]
        if isinstance(store, TaggableStore):
            await store.set_tags([ids[0], ids[5]], ["kept"])
        await store.mark_read([ids[2], ids[6]], True)
        events = store.subscribe()
        assert await store.prune(keep_newest=None, older_than=None, limit=10) == 0
        assert await store.prune(keep_newest=7, limit=10) == 0
        assert await store.prune(keep_newest=3, limit=2) == 2  # a bounded batch
        assert await _next_deletion(events) == StoreEvent(StoreEventKind.DELETED, tuple(ids[:2]))
        assert await store.prune(keep_newest=3, limit=10) == 2
        assert await next_event(events) == StoreEvent(StoreEventKind.DELETED, tuple(ids[2:4]))
        assert await store.prune(keep_newest=3, limit=10) == 0
        page = await store.list()
        assert [m.id for m in page.messages] == ids[:3:-1]
        assert (page.total, page.unread) == (3, 2)
        for gone in ids[:4]:
            assert await store.get(gone) is None
            assert await store.raw(gone) is None
        if isinstance(store, TaggableStore):
            assert await store.tags() == {"kept": 1}
        if isinstance(store, SearchableStore):
            found = await store.search(parse_query("ledger"))
            assert [m.id for m in found.messages] == ids[:3:-1]
        assert await store.prune(keep_newest=0, limit=10) == 3  # none kept: all go
        assert (await store.list()).total == 0


async def check_prune_by_age(subject: StoreUnderTest) -> None:
    """``older_than`` prunes what was received before it; with ``keep_newest`` too, a
    message goes when it is over either."""
    async with subject.opened() as (opened, acceptor):
        store = _prunable(opened)
        subject.clock.now_value = EPOCH
        ids = [await _deliver(subject, acceptor, f"m{n}") for n in range(6)]  # hourly from EPOCH
        assert await store.prune(older_than=EPOCH, limit=10) == 0
        assert await store.prune(older_than=EPOCH + HOUR, limit=10) == 1  # EPOCH itself goes
        assert await store.prune(older_than=EPOCH + 2.5 * HOUR, limit=10) == 2
        assert [m.id for m in (await store.list()).messages] == ids[:2:-1]
        assert await store.prune(keep_newest=1, older_than=EPOCH, limit=10) == 2
        assert [m.id for m in (await store.list()).messages] == [ids[5]]


async def check_prune_spares_queued_mail(subject: StoreUnderTest) -> None:
    """A message with a queued, deferred or held recipient is not pruned, however old; once
    its delivery is done it is."""
    async with subject.opened() as (opened, acceptor):
        store = _prunable(opened)
        if not isinstance(store, QueueStore):
            return  # keeps no queue: nothing to spare
        queued = await _deliver(subject, acceptor, "queued", outbound=("a@remote.test",))
        held = await _deliver(subject, acceptor, "held", outbound=("b@remote.test",))
        deferred = await _deliver(subject, acceptor, "deferred", outbound=("c@remote.test",))
        done = await _deliver(subject, acceptor, "done", outbound=("d@remote.test",))
        local = [await _deliver(subject, acceptor, f"local {n}") for n in range(3)]
        assert await store.hold(held) == 1
        now = subject.clock.now_value  # after every message was received
        claimed = await store.claim("a", now=now, lease=HOUR, limit=10)
        assert sorted(r.message_id for r in claimed) == sorted([queued, deferred, done])
        outcomes = [
            DeliveryOutcome(
                deferred, "c@remote.test", DeliveryState.DEFERRED, now, "450 busy", "", now + HOUR
            ),
            DeliveryOutcome(done, "d@remote.test", DeliveryState.DELIVERED, now, "250 ok"),
        ]
        assert await store.record("a", outcomes) == 2
        assert await store.release_claims("a") == 1  # the queued one's lease
        assert await store.prune(keep_newest=1, limit=10) == 3  # done, and the two oldest local
        remaining = [m.id for m in (await store.list()).messages]
        assert remaining == [local[2], deferred, held, queued]
        assert await store.prune(older_than=now, limit=10) == 1  # all are older; one is done
        assert await store.dequeue(held) == 1
        assert len(await store.claim("b", now=now + HOUR, lease=HOUR, limit=10)) == 2
        bounced = DeliveryOutcome(
            deferred, "c@remote.test", DeliveryState.BOUNCED, now, "550 no", attempted=False
        )
        assert await store.record("b", [bounced]) == 1
        assert await store.prune(older_than=now, limit=10) == 2  # held and deferred are done
        assert [m.id for m in (await store.list()).messages] == [queued]  # claimed, pending


async def check_pruning_is_seen_by_another_store(subject: StoreUnderTest) -> None:
    """Another instance on the same data (another process, another node) is told of what
    was pruned, and prunes nothing more when asked after."""
    async with subject.opened() as (opened, acceptor), subject.opened() as (other, _):
        store, elsewhere = _prunable(opened), _prunable(other)
        events = elsewhere.subscribe()
        ids = [await _deliver(subject, acceptor, f"m{n}") for n in range(4)]
        assert await store.prune(keep_newest=2, limit=10) == 2
        assert await _next_deletion(events) == StoreEvent(StoreEventKind.DELETED, tuple(ids[:2]))
        assert await elsewhere.prune(keep_newest=2, limit=10) == 0
        assert [m.id for m in (await elsewhere.list()).messages] == ids[:1:-1]


PRUNABLE_STORE_CHECKS: tuple[Callable[[StoreUnderTest], Awaitable[None]], ...] = (
    check_prune_by_age,
    check_prune_keeps_the_newest,
    check_prune_spares_queued_mail,
    check_pruning_is_seen_by_another_store,
)
"""The checks of ``ports.PrunableStore``, for ``pytest.mark.parametrize``."""
