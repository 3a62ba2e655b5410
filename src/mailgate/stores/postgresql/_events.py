"""The event log's rows, and a store's subscribers.

Every transaction that changes messages appends its events to ``events``
(``insert_events``), each row under the ``origin`` of the store whose
subscribers have been told of it already, and wakes every listener with one
``NOTIFY`` (``EVENTS_CHANNEL``), delivered when it commits.  The writing
store publishes its own events to its subscribers right after the commit,
in commit order; every other store reads them from the log (``_follow``).
Rows written with the empty origin (``NO_ORIGIN``: the outbound queue's
changes, made outside the store's writer) are told by every store's
follower, the writing store's own included.

A subscriber is a ``Subscription``, a queue on the store's event loop; one
that falls ``MAX_SUBSCRIBER_BACKLOG`` events behind gets a single
``OVERFLOW`` in their place.  Closing the store ends every subscription.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg import AsyncCursor

from mailgate.model import StoreEvent
from mailgate.stores._subscription import MAX_SUBSCRIBER_BACKLOG, Subscription, known_event

__all__ = [
    "EVENTS_CHANNEL",
    "MAX_SUBSCRIBER_BACKLOG",
    "NO_ORIGIN",
    "Subscription",
    "Subscriptions",
    "event_from_row",
    "insert_events",
]

EVENTS_CHANNEL = "mailgate_events"
"""The ``LISTEN``/``NOTIFY`` channel: a hint that ``events`` has new rows, nothing more."""
NO_ORIGIN = ""
"""The origin of rows no store has told its subscribers of: every follower tells them."""


async def insert_events(
    cursor: AsyncCursor[Any], origin: str, events: Sequence[StoreEvent]
) -> None:
    """Append the events to the log with the cursor's transaction, and notify on commit."""
    if not events:
        return
    await cursor.executemany(
        "INSERT INTO events (origin, kind, message_ids) VALUES (%s, %s, %s)",
        [(origin, event.kind.value, list(event.message_ids)) for event in events],
    )
    await cursor.execute(f"NOTIFY {EVENTS_CHANNEL}")


def event_from_row(kind: str, message_ids: Sequence[str]) -> StoreEvent | None:
    """The event a log row records, or ``None`` for a kind this mailgate does not know."""
    return known_event(kind, message_ids)


class Subscriptions:
    """Every subscriber of one store, all on the store's event loop."""

    def __init__(self) -> None:
        self._subscriptions: set[Subscription] = set()
        self.closed = False

    def subscribe(self) -> Subscription:
        """A new subscription: it sees what is published from now on."""
        subscription = Subscription(self)
        if self.closed:
            subscription.push([None])
        else:
            self._subscriptions.add(subscription)
        return subscription

    def remove(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)

    def publish(self, events: Sequence[StoreEvent]) -> None:
        """Hand events to every subscriber."""
        if events:
            for subscription in list(self._subscriptions):
                subscription.push(events)

    def end(self) -> None:
        """End every subscription, and any made later."""
        self.closed = True
        subscriptions, self._subscriptions = self._subscriptions, set()
        for subscription in subscriptions:
            subscription.push([None])
