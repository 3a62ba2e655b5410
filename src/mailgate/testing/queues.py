"""The outbound queue conformance suite: what every ``ports.QueueStore`` must do.

Used like ``mailgate.testing.stores``: a store's test module runs
``QUEUE_STORE_CHECKS`` against a ``StoreUnderTest`` whose store keeps a
queue.  Messages go in through ``delivery.Acceptor`` with an envelope whose
``outbound`` recipients are to be relayed, as the SMTP server gives it; time
is passed in, never read, so leases and due times are checked exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from datetime import timedelta

from mailgate.delivery import Acceptor
from mailgate.model import DeliveryOutcome, DeliveryState, MessageId, StoreEvent, StoreEventKind
from mailgate.ports import QueueStore
from mailgate.testing.stores import (
    EPOCH,
    StoreUnderTest,
    make_envelope,
    make_message,
    next_event,
)

__all__ = [
    "QUEUE_STORE_CHECKS",
    "check_claims_are_leased_and_fenced",
    "check_operator_actions_during_an_attempt_are_kept",
    "check_outcomes",
    "check_queue_events_from_another_store",
    "check_queue_rows_come_with_their_message",
    "check_queue_tools",
]

LEASE = timedelta(minutes=2)
FAR = "far@remote.test"
NEAR = "near@mx.test"
OTHER = "other@remote.test"


async def _relay(acceptor: Acceptor, *outbound: str, local: tuple[str, ...] = ()) -> MessageId:
    """Accept a message to ``local`` and ``outbound`` recipients, queueing the outbound ones."""
    envelope = dataclasses.replace(make_envelope(*local, *outbound), outbound=outbound)
    spool = acceptor.begin(envelope)
    spool.write(make_message("outbound"))
    return await acceptor.commit(spool)


def _queue_store(store: object) -> QueueStore:
    assert isinstance(store, QueueStore), f"{type(store).__name__} keeps no queue"
    return store


async def check_queue_rows_come_with_their_message(subject: StoreUnderTest) -> None:
    """A message's outbound recipients are queued with it, due at once; local ones are not;
    deleting the message deletes its rows."""
    async with subject.opened() as (opened, acceptor):
        store = _queue_store(opened)
        relayed = await _relay(acceptor, FAR, OTHER, local=(NEAR,))
        await _relay(acceptor)  # no outbound recipient: no row
        rows = await store.queued()
        assert [(r.message_id, r.recipient, r.state) for r in rows] == [
            (relayed, FAR, DeliveryState.QUEUED),
            (relayed, OTHER, DeliveryState.QUEUED),
        ]
        stored = await store.get(relayed)
        assert stored is not None
        row = rows[0]
        assert row.sender == "sender@client.test"
        assert row.queued_at == stored.envelope.received_at == row.next_attempt
        assert (row.attempts, row.last_reply, row.relay) == (0, "", "")
        assert await store.queued(relayed) == rows
        assert await store.delete([relayed]) == 1
        assert await store.queued(pending_only=False) == []


async def check_claims_are_leased_and_fenced(subject: StoreUnderTest) -> None:
    """A claim leases due rows to one owner; another gets them only once the lease ran out,
    and the first owner's late outcome is then dropped."""
    async with subject.opened() as (opened, acceptor):
        store = _queue_store(opened)
        first = await _relay(acceptor, FAR, OTHER)
        now = (await store.queued())[0].queued_at
        early = await store.claim("a", now=now - timedelta(seconds=1), lease=LEASE, limit=10)
        assert early == []  # not due yet
        claimed = await store.claim("a", now=now, lease=LEASE, limit=10)
        assert sorted(r.recipient for r in claimed) == [FAR, OTHER]
        assert await store.claim("b", now=now + LEASE / 2, lease=LEASE, limit=10) == []
        assert await store.renew_claims("a", now + 2 * LEASE) == 2  # a delivery runs long
        assert await store.claim("b", now=now + LEASE, lease=LEASE, limit=10) == []
        second = await _relay(acceptor, FAR)
        limited = await store.claim("b", now=now + LEASE / 2, lease=LEASE, limit=1)
        assert [(r.message_id, r.recipient) for r in limited] == [(second, FAR)]
        taken_over = await store.claim("b", now=now + 2 * LEASE, lease=LEASE, limit=10)
        assert sorted((r.message_id, r.recipient) for r in taken_over) == sorted(
            [(first, FAR), (first, OTHER), (second, FAR)]  # b's own lease ran out too
        )
        late = DeliveryOutcome(first, FAR, DeliveryState.DELIVERED, now + LEASE, "250 2.0.0 ok")
        assert await store.record("a", [late]) == 0  # fenced: "b" holds it now
        assert await store.record("b", [late]) == 1
        assert await store.record("b", [late]) == 0  # the lease went with the outcome
        assert await store.release_claims("b") == 2  # OTHER and the second message's FAR
        again = await store.claim("c", now=now + 2 * LEASE, lease=LEASE, limit=10)
        assert sorted((r.message_id, r.recipient) for r in again) == sorted(
            [(first, OTHER), (second, FAR)]
        )


async def check_outcomes(subject: StoreUnderTest) -> None:
    """Delivered, deferred and bounced outcomes are kept per recipient; a deferred recipient
    is due again at its next attempt; done recipients leave the pending list."""
    async with subject.opened() as (opened, acceptor):
        store = _queue_store(opened)
        message = await _relay(acceptor, FAR, OTHER, "third@remote.test")
        now = (await store.queued())[0].queued_at
        await store.claim("a", now=now, lease=LEASE, limit=10)
        later = now + timedelta(minutes=5)
        relay = "mx.remote.test[127.0.0.2]:25"
        outcomes = [
            DeliveryOutcome(message, FAR, DeliveryState.DELIVERED, now, "250 2.0.0 ok", relay),
            DeliveryOutcome(
                message, OTHER, DeliveryState.DEFERRED, now, "450 4.2.1 busy", relay, later
            ),
            DeliveryOutcome(
                message, "third@remote.test", DeliveryState.BOUNCED, now, "550 5.1.1 no", relay
            ),
        ]
        assert await store.record("a", outcomes) == 3
        pending = await store.queued()
        assert [(r.recipient, r.state, r.attempts) for r in pending] == [
            (OTHER, DeliveryState.DEFERRED, 1)
        ]
        assert (pending[0].next_attempt, pending[0].last_attempt) == (later, now)
        assert (pending[0].last_reply, pending[0].relay) == ("450 4.2.1 busy", relay)
        every = {r.recipient: r for r in await store.queued(pending_only=False)}
        assert every[FAR].state is DeliveryState.DELIVERED
        assert every[FAR].next_attempt is None
        assert every["third@remote.test"].last_reply == "550 5.1.1 no"
        assert await store.claim("a", now=later - timedelta(seconds=1), lease=LEASE, limit=9) == []
        assert [r.recipient for r in await store.claim("a", now=later, lease=LEASE, limit=9)] == [
            OTHER
        ]


async def check_queue_tools(subject: StoreUnderTest) -> None:
    """Hold, release, retry, bounce on request, dequeue and enqueue, as an operator uses them."""
    async with subject.opened() as (opened, acceptor):
        store = _queue_store(opened)
        message = await _relay(acceptor, FAR)
        now = (await store.queued())[0].queued_at
        assert await store.hold(message) == 1
        assert (await store.queued())[0].state is DeliveryState.HELD
        assert await store.claim("a", now=now + LEASE, lease=LEASE, limit=9) == []
        assert await store.retry(None, now) == 0  # held is not pending for retry
        later = now + timedelta(hours=1)
        assert await store.release(message, later) == 1
        row = (await store.queued())[0]
        assert (row.state, row.next_attempt) == (DeliveryState.QUEUED, later)
        assert await store.retry(message, now) == 1
        assert (await store.queued())[0].next_attempt == now
        assert await store.request_bounce(message, now) == 1
        claimed = await store.claim("a", now=now, lease=LEASE, limit=9)
        assert [r.bounce_requested for r in claimed] == [True]
        bounced = DeliveryOutcome(
            message, FAR, DeliveryState.BOUNCED, now, "554 5.0.0 bounced", attempted=False
        )
        assert await store.record("a", [bounced]) == 1
        done = (await store.queued(pending_only=False))[0]
        assert (done.state, done.attempts, done.bounce_requested) == (
            DeliveryState.BOUNCED,
            0,
            False,
        )
        # A release to new recipients (and to a done one, again) queues them.
        assert await store.enqueue(message, [FAR, OTHER], later) == 2
        assert [(r.recipient, r.next_attempt) for r in await store.queued(message)] == [
            (FAR, later),
            (OTHER, later),
        ]
        assert await store.enqueue(message, [OTHER], now) == 0  # already pending
        assert await store.enqueue(MessageId("0" * 26), [FAR], now) == 0  # no such message
        assert await store.dequeue(message) == 2
        assert await store.queued() == []


async def check_operator_actions_during_an_attempt_are_kept(subject: StoreUnderTest) -> None:
    """A hold or a bounce asked for while an attempt runs outlives its deferral; a delivery
    made meanwhile is final all the same."""
    async with subject.opened() as (opened, acceptor):
        store = _queue_store(opened)
        message = await _relay(acceptor, FAR, OTHER, "third@remote.test")
        now = (await store.queued())[0].queued_at
        assert len(await store.claim("a", now=now, lease=LEASE, limit=9)) == 3
        assert await store.hold(message) == 3  # while the attempt runs
        later = now + timedelta(minutes=5)
        deferred = [
            DeliveryOutcome(message, r, DeliveryState.DEFERRED, now, "451 4.4.1 no", "", later)
            for r in (FAR, OTHER)
        ]
        delivered = DeliveryOutcome(
            message, "third@remote.test", DeliveryState.DELIVERED, now, "250 ok"
        )
        assert await store.record("a", [*deferred, delivered]) == 3
        rows = {r.recipient: r for r in await store.queued(pending_only=False)}
        assert (rows[FAR].state, rows[FAR].next_attempt, rows[FAR].attempts) == (
            DeliveryState.HELD,
            None,
            1,
        )
        assert rows[FAR].last_reply == "451 4.4.1 no"
        assert rows["third@remote.test"].state is DeliveryState.DELIVERED
        # A bounce asked for during the next attempt: the deferral leaves it due at once.
        assert await store.release(message, now) == 2
        assert len(await store.claim("a", now=now, lease=LEASE, limit=9)) == 2
        assert await store.request_bounce(message, now) == 2
        assert await store.record("a", deferred) == 2
        again = await store.claim("b", now=now, lease=LEASE, limit=9)
        assert {(r.recipient, r.bounce_requested) for r in again} == {(FAR, True), (OTHER, True)}
        assert all(r.last_attempt == now for r in again)


async def check_queue_events_from_another_store(subject: StoreUnderTest) -> None:
    """A change to a message's queue rows is a ``QUEUE`` event, seen by another instance."""
    async with subject.opened() as (opened, acceptor), subject.opened() as (other, _):
        store = _queue_store(opened)
        events = _queue_store(other).subscribe()
        message = await _relay(acceptor, FAR)
        assert await next_event(events) == StoreEvent(StoreEventKind.STORED, (message,))
        await store.claim("a", now=EPOCH + LEASE, lease=LEASE, limit=9)
        outcome = DeliveryOutcome(
            message, FAR, DeliveryState.DEFERRED, EPOCH, "421 4.4.2 gone", next_attempt=EPOCH
        )
        assert await store.record("a", [outcome]) == 1
        assert await next_event(events) == StoreEvent(StoreEventKind.QUEUE, (message,))
        assert await store.hold(message) == 1
        assert await next_event(events) == StoreEvent(StoreEventKind.QUEUE, (message,))


QUEUE_STORE_CHECKS: tuple[Callable[[StoreUnderTest], Awaitable[None]], ...] = (
    check_claims_are_leased_and_fenced,
    check_operator_actions_during_an_attempt_are_kept,
    check_outcomes,
    check_queue_events_from_another_store,
    check_queue_rows_come_with_their_message,
    check_queue_tools,
)
"""The checks of ``ports.QueueStore``, for ``pytest.mark.parametrize``."""
