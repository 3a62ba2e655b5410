"""Searching whatever store the web inbox has: by the store when it can, else by a scan.

A ``ports.SearchableStore`` runs a query itself (the SQLite store does, with
indexes).  A store that keeps only the core ``ports.MessageStore`` is searched
by reading every summary, a page at a time, and filtering with
``query.matches``: the same answers, but linear in the size of the store.
"""

from __future__ import annotations

from mailgate.model import MessageId, MessagePage, MessageSummary
from mailgate.ports import MessageStore, SearchableStore
from mailgate.query import Query, matches

__all__ = ["all_matching_ids", "search_page"]

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
