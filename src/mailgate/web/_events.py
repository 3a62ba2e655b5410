"""Live events for browsers and tests: one store subscription fanned out to listeners.

The hub subscribes to the store when the first listener arrives and stays
subscribed; a ``stored`` event is enriched with the new messages'
summaries, so a page can show them without asking again.  A listener that
falls ``MAX_BACKLOG`` events behind gets one ``overflow`` event instead (and
should list again), so a stalled browser never holds memory.

The wire format of ``GET /api/v1/events`` (server-sent events) is
versioned: every ``data:`` line is a JSON object with ``"v": EVENTS_VERSION``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

from mailgate.model import MessageId, MessageSummary, StoreEventKind
from mailgate.ports import MessageStore, StoreError

__all__ = ["EVENTS_VERSION", "EventHub", "InboxEvent", "Listener"]

log = logging.getLogger(__name__)

EVENTS_VERSION = 1
MAX_BACKLOG = 1000
"""Events a listener may fall behind by before it gets ``overflow`` instead."""


@dataclass(frozen=True, slots=True)
class InboxEvent:
    """A change, as listeners see it; ``messages`` is filled for ``STORED``."""

    kind: StoreEventKind
    message_ids: tuple[MessageId, ...] = ()
    messages: tuple[MessageSummary, ...] = ()


class Listener:
    """One listener's events: ``async for event in listener``; ends when the hub closes."""

    def __init__(self, hub: EventHub) -> None:
        self._hub = hub
        self._queue: asyncio.Queue[InboxEvent | None] = asyncio.Queue()

    def push(self, event: InboxEvent | None) -> None:
        if event is not None and self._queue.qsize() >= MAX_BACKLOG:
            while not self._queue.empty():
                self._queue.get_nowait()
            event = InboxEvent(StoreEventKind.OVERFLOW)
        self._queue.put_nowait(event)

    def __aiter__(self) -> AsyncIterator[InboxEvent]:
        return self

    async def __anext__(self) -> InboxEvent:
        event = await self._queue.get()
        if event is None:
            self._queue.put_nowait(None)  # stay ended
            raise StopAsyncIteration
        return event

    def close(self) -> None:
        """Stop receiving events."""
        self._hub.remove(self)


class EventHub:
    """The store's events for any number of listeners, on one event loop."""

    def __init__(self, store: MessageStore) -> None:
        self._store = store
        self._listeners: set[Listener] = set()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @contextlib.contextmanager
    def listen(self) -> Iterator[Listener]:
        """Listen from now on: every change committed after this call is seen.

        Raises ``StoreError`` when the store is closed.
        """
        listener = Listener(self)
        if self._closed:
            listener.push(None)
        else:
            if self._task is None:
                subscription = self._store.subscribe()
                self._task = asyncio.create_task(self._pump(subscription))
            self._listeners.add(listener)
        try:
            yield listener
        finally:
            listener.close()

    def remove(self, listener: Listener) -> None:
        self._listeners.discard(listener)

    async def _pump(self, subscription: AsyncIterator[object]) -> None:
        try:
            async for event in subscription:
                kind = getattr(event, "kind", None)
                ids: tuple[MessageId, ...] = getattr(event, "message_ids", ())
                if not isinstance(kind, StoreEventKind):
                    continue
                messages: tuple[MessageSummary, ...] = ()
                if kind is StoreEventKind.STORED:
                    messages = await self._summaries(ids)
                self._broadcast(InboxEvent(kind, ids, messages))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the store's event stream failed")
        finally:
            with contextlib.suppress(Exception):
                await getattr(subscription, "aclose", _nothing)()
            self._closed = True
            self._broadcast(None)

    async def _summaries(self, ids: tuple[MessageId, ...]) -> tuple[MessageSummary, ...]:
        found: list[MessageSummary] = []
        for message_id in ids:
            try:
                stored = await self._store.get(message_id)
            except StoreError:
                continue
            if stored is not None:
                found.append(stored.summary)
        return tuple(found)

    def _broadcast(self, event: InboxEvent | None) -> None:
        for listener in list(self._listeners):
            listener.push(event)

    async def aclose(self) -> None:
        """End every listener's events and stop listening to the store."""
        self._closed = True
        self._broadcast(None)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def _nothing() -> None:
    return None
