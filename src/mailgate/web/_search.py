"""Searching whatever store the web inbox has: by the store when it can, else by a scan.

A ``ports.SearchableStore`` runs a query itself (the SQLite store does, with
indexes).  A store that keeps only the core ``ports.MessageStore`` is searched
by reading every summary, a page at a time, and filtering with
``query.matches``: the same answers, but linear in the size of the store.

``wait_for_match`` waits for a message a query matches without polling: it
listens to the store's events before it searches, so a message stored in
between is seen by one or the other, and then matches each new message's
summary as its ``stored`` event arrives.  ``GET /api/v1/wait`` and
``mailgate.testing.MailgateServer.wait_for`` both wait with it.
"""

from __future__ import annotations

import asyncio

from mailgate import MailgateError
from mailgate.model import MessageId, MessagePage, MessageSummary, StoreEventKind
from mailgate.ports import MessageStore, SearchableStore
from mailgate.query import Query, matches
from mailgate.web._events import EventHub

__all__ = ["EventsEndedError", "all_matching_ids", "search_page", "wait_for_match"]

SCAN_PAGE = 1000
"""Summaries (or matches) read at a time."""


async def _scan(store: MessageStore, query: Query) -> list[MessageSummary]:
    found: list[MessageSummary] = []
    offset = 0
    while True:
        page = await store.list(offset=offset, limit=SCAN_PAGE)
        found.extend(s for s in page.messages if matches(query, s))
        if len(page.messages) < SCAN_PAGE:
            return found
        offset += SCAN_PAGE


async def search_page(
    store: MessageStore, query: Query, *, offset: int = 0, limit: int = 50
) -> MessagePage:
    """A page of the messages matching ``query``, newest first, by the store if it can."""
    if not query:
        return await store.list(offset=offset, limit=limit)
    if isinstance(store, SearchableStore):
        return await store.search(query, offset=offset, limit=limit)
    found = await _scan(store, query)
    return MessagePage(
        messages=tuple(found[offset : offset + limit]),
        total=len(found),
        unread=sum(not s.read for s in found),
        offset=offset,
    )


async def all_matching_ids(store: MessageStore, query: Query) -> list[MessageId]:
    """The ids of every message matching a non-empty ``query``."""
    if not isinstance(store, SearchableStore):
        return [s.id for s in await _scan(store, query)]
    ids: list[MessageId] = []
    while True:
        page = await store.search(query, offset=len(ids), limit=SCAN_PAGE)
        ids.extend(s.id for s in page.messages)
        if len(page.messages) < SCAN_PAGE:
            return ids


class EventsEndedError(MailgateError):
    """The store's events ended during a wait: the server, or its store, is closing."""


_SEARCH_AGAIN = frozenset({StoreEventKind.OVERFLOW, StoreEventKind.READ, StoreEventKind.UNREAD})
"""Events after which a query may hold for a message already stored (``is:read``), or
after which stored messages may have been missed: search again."""


async def _newest_match(store: MessageStore, query: Query) -> MessageSummary | None:
    page = await search_page(store, query, limit=1)
    return page.messages[0] if page.messages else None


async def wait_for_match(
    store: MessageStore, hub: EventHub, query: Query, timeout: float
) -> MessageSummary | None:
    """The newest stored message ``query`` matches, else the first to match within
    ``timeout`` seconds; ``None`` when none did.

    ``hub`` carries ``store``'s events.  Nothing is marked read.  Raises
    ``EventsEndedError`` when the events end before the wait does, and
    ``StoreError`` when the store cannot be searched.
    """
    with hub.listen() as listener:
        found = await _newest_match(store, query)
        if found is not None:
            return found
        try:
            async with asyncio.timeout(timeout):
                async for event in listener:
                    if event.kind is StoreEventKind.STORED:
                        found = next((s for s in event.messages if matches(query, s)), None)
                    elif event.kind in _SEARCH_AGAIN:
                        found = await _newest_match(store, query)
                    if found is not None:
                        return found
        except TimeoutError:
            return None
    raise EventsEndedError("the server is shutting down")
