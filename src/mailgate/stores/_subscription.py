"""A store subscriber's queue of events, shared by every store.

A ``Subscription`` is an async iterator over a queue on the event loop it
was made on.  One that falls ``MAX_SUBSCRIBER_BACKLOG`` events behind gets a
single ``OVERFLOW`` in their place; ``None`` pushed ends the iteration.  How
events reach it (a writer thread, a follower, a commit) is each store's own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

from mailgate.model import MessageId, StoreEvent, StoreEventKind

__all__ = ["MAX_SUBSCRIBER_BACKLOG", "Subscription", "known_event"]

MAX_SUBSCRIBER_BACKLOG = 10_000
"""Events a subscriber may fall behind by before it gets ``OVERFLOW`` instead."""


class _Subscriptions(Protocol):
    def remove(self, subscription: Subscription) -> None: ...


class Subscription:
    """One subscriber's events, delivered on its event loop; an async iterator."""

    def __init__(self, subscriptions: _Subscriptions) -> None:
        self._subscriptions = subscriptions
        self.loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[StoreEvent | None] = asyncio.Queue()

    def push(self, events: Sequence[StoreEvent | None]) -> None:
        """Called on the subscriber's loop; ``None`` ends the iteration."""
        queue = self._queue
        for event in events:
            if event is not None and queue.qsize() >= MAX_SUBSCRIBER_BACKLOG:
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(StoreEvent(StoreEventKind.OVERFLOW))
            else:
                queue.put_nowait(event)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> StoreEvent:
        event = await self._queue.get()
        if event is None:
            self._subscriptions.remove(self)
            raise StopAsyncIteration
        return event

    async def aclose(self) -> None:
        """Stop receiving events."""
        self._subscriptions.remove(self)


def known_event(kind: str, message_ids: Sequence[str]) -> StoreEvent | None:
    """The event a log row records, or ``None`` for a kind this mailgate does not know
    (a newer one's, sharing the store)."""
    try:
        event_kind = StoreEventKind(kind)
    except ValueError:
        return None
    return StoreEvent(event_kind, tuple(MessageId(i) for i in message_ids))
