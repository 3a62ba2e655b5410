"""Reading the PostgreSQL store: each read one statement on a pooled connection.

A page and its counts come from ONE statement (the counts and the page as
two common table expressions), and so from one snapshot: they agree.
Totals are counted on each listing (``count(*)``, an index-only scan when
the table is vacuumed), not kept in a row every writer would update: such a
row would make the writers of every node wait on each other.  Search
conditions are ``_search``'s; content is ``_contents``'.  Every read raises
``StoreError`` (one line) when the database cannot answer.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from mailgate.model import MessageId, MessagePage, StoredMessage
from mailgate.query import Query
from mailgate.stores.postgresql._connection import store_error
from mailgate.stores.postgresql._records import (
    SUMMARY_COLUMNS,
    stored_message,
    summary_from_row,
)
from mailgate.stores.postgresql._search import where_clause

__all__ = ["STORE_TABLES", "Reads"]

STORE_TABLES = (
    "messages",
    "contents",
    "content_parts",
    "tags",
    "events",
    "deliveries",
    "mailgate_schema",
)
"""Every table of the store (``_schema``, ``_queue``)."""

_PAGE = """
WITH counts AS (
    SELECT count(*) AS total, count(*) FILTER (WHERE NOT m.read) AS unread
    FROM messages AS m{where}
), page AS (
    SELECT {columns} FROM messages AS m{where} ORDER BY m.id DESC LIMIT %s OFFSET %s
)
SELECT counts.total, counts.unread, page.* FROM counts LEFT JOIN page ON true
ORDER BY page.id DESC
"""


class Reads:
    """The store's reads, on its pool."""

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self._pool = pool

    async def _fetch(self, query: str, parameters: list[Any] | tuple[Any, ...]) -> list[Any]:
        try:
            async with self._pool.connection() as connection:
                cursor = await connection.execute(query, parameters)
                rows: list[Any] = await cursor.fetchall()
        except psycopg.Error as error:
            raise store_error("read", error) from error
        return rows

    async def page(self, query: Query, *, offset: int, limit: int) -> MessagePage:
        """The messages matching ``query``, newest first, with how many match and are unread."""
        offset, limit = max(offset, 0), max(limit, 0)
        where, parameters = where_clause(query)
        rows = await self._fetch(
            _PAGE.format(where=where, columns=SUMMARY_COLUMNS),
            [*parameters, *parameters, limit, offset],
        )
        total, unread = rows[0][0], rows[0][1]
        return MessagePage(
            messages=tuple(summary_from_row(row[2:]) for row in rows if row[2] is not None),
            total=total,
            unread=unread,
            offset=offset,
        )

    async def get(self, message_id: MessageId) -> StoredMessage | None:
        """One message's summary and envelope, or ``None``."""
        rows = await self._fetch(
            f"SELECT {SUMMARY_COLUMNS}, m.envelope FROM messages AS m WHERE m.id = %s",  # noqa: S608
            (message_id,),
        )
        return stored_message(rows[0]) if rows else None

    async def tags(self) -> dict[str, int]:
        """Every tag in use, with how many messages carry it."""
        rows = await self._fetch("SELECT tag, count(*) FROM tags GROUP BY tag", ())
        return {tag: int(count) for tag, count in rows}

    async def disk_usage(self) -> int:
        """Octets the store's tables take, with their indexes and out-of-line values: not
        the whole database, which may hold more than the store."""
        rows = await self._fetch(
            "SELECT coalesce(sum(pg_total_relation_size(to_regclass(t))), 0)"
            " FROM unnest(%s::text[]) AS t",
            (list(STORE_TABLES),),
        )
        return int(rows[0][0])
