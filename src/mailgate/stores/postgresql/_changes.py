"""Changes to stored messages, as work for the writer's transaction (``_writer.Change``).

Each returns its result (a count) and the events it makes: only real
changes count and are told, so marking read what is read already tells
nothing.  An empty id list in an event means every message.  Deleting a
message deletes its content, tags and queue rows with it (``ON DELETE
CASCADE``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg import AsyncCursor

from mailgate.model import MessageId, StoreEvent, StoreEventKind

__all__ = ["delete", "mark_read"]


async def delete(
    cursor: AsyncCursor[Any], message_ids: Sequence[MessageId] | None
) -> tuple[object, Sequence[StoreEvent]]:
    """Delete these messages, or all of them for ``None``; the result is how many."""
    if message_ids is None:
        await cursor.execute("DELETE FROM messages")
        count = cursor.rowcount
        return count, [StoreEvent(StoreEventKind.DELETED)] if count else []
    await cursor.execute(
        "DELETE FROM messages WHERE id = ANY(%s) RETURNING id", (list(message_ids),)
    )
    deleted = tuple(MessageId(row[0]) for row in await cursor.fetchall())
    return len(deleted), [StoreEvent(StoreEventKind.DELETED, deleted)] if deleted else []


async def mark_read(
    cursor: AsyncCursor[Any], message_ids: Sequence[MessageId] | None, read: bool
) -> tuple[object, Sequence[StoreEvent]]:
    """Set the read flag of these messages, or all for ``None``; the result is how many
    changed."""
    kind = StoreEventKind.READ if read else StoreEventKind.UNREAD
    if message_ids is None:
        await cursor.execute("UPDATE messages SET read = %s WHERE read <> %s", (read, read))
        count = cursor.rowcount
        return count, [StoreEvent(kind)] if count else []
    await cursor.execute(
        "UPDATE messages SET read = %s WHERE read <> %s AND id = ANY(%s) RETURNING id",
        (read, read, list(message_ids)),
    )
    changed = tuple(MessageId(row[0]) for row in await cursor.fetchall())
    return len(changed), [StoreEvent(kind, changed)] if changed else []
