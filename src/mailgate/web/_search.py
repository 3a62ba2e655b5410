"""What the web layer asks of a store beyond ``ports.MessageStore``: search and tags.

A store that can run a ``query.Query`` itself (the SQLite store does, with
indexes) implements ``SearchableStore``; one that can keep tags implements
``TaggableStore``.  For a store that cannot search, ``search_page`` falls
back to reading every summary and filtering with ``query.matches``: right,
but linear in the size of the store.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from mailgate.model import MessageId, MessagePage, MessageSummary
from mailgate.ports import MessageStore
from mailgate.query import Query, matches

__all__ = ["SearchableStore", "TaggableStore", "all_matching_ids", "search_page"]

SCAN_PAGE = 1000
"""Summaries read at a time by the fallback search."""


@runtime_checkable
class SearchableStore(Protocol):
    """A store that runs queries itself."""

    async def search(self, query: Query, *, offset: int = 0, limit: int = 50) -> MessagePage:
        """Matching messages, newest first; ``total`` and ``unread`` count the matches."""
        ...


@runtime_checkable
class TaggableStore(Protocol):
    """A store that keeps tags on messages."""

    async def tags(self) -> dict[str, int]:
        """Every tag in use, with how many messages carry it."""
        ...

    async def set_tags(self, message_ids: Sequence[MessageId], tags: Sequence[str]) -> int:
        """Replace the tags of these messages; return how many messages exist of them."""
        ...

    async def rename_tag(self, old: str, new: str) -> int:
        """Rename a tag on every message; return how many messages changed."""
        ...

    async def delete_tag(self, tag: str) -> int:
        """Remove a tag from every message; return how many messages changed."""
        ...


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
