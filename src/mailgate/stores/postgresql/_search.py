"""Search and tags for the PostgreSQL store: ``query.Query`` values as SQL.

Every text term of the language is a substring match ("quarterl" finds
"Quarterly"), so PostgreSQL's full-text search, which matches whole words
after stemming them, cannot answer one, not even as a first filter: it is
not used.  A text term is instead ``LIKE '%value%'`` on the lower-case text
``_records`` computed for its field when the message was stored, with
``query.field_text``: Python lowered both sides, so a term matches exactly
when ``query.matches`` says it does, "MÜLLER" finding "müller" whatever the
database's collation.  Free words look in ``search ->> 'text'``, which the
trigram index (``pg_trgm``, see ``_schema``) answers for values of three
characters and more; field terms (``from:``, ``subject:``...) read the rows
they are asked about.  ``%``, ``_`` and ``\\`` in a value are escaped, so
"50%" means those three characters.  ``message-id:`` and ``tag:`` compare
whole values.  Every value is a bound parameter.

Tag changes are ``_writer.Change`` work, run in the writer's transaction;
they publish no event, as with the SQLite store.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg import AsyncCursor

from mailgate.model import MessageId, StoreEvent
from mailgate.query import Bound, BoundTerm, Field, Flag, FlagTerm, Query, Term, TextTerm

__all__ = ["delete_tag", "like_pattern", "rename_tag", "set_tags", "where_clause"]

_HAS_TAG = "EXISTS (SELECT 1 FROM tags AS t WHERE t.message_id = m.id{})"


def like_pattern(value: str) -> str:
    """``LIKE`` pattern for text containing ``value`` (backslash is ``LIKE``'s escape)."""
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _condition(term: Term) -> tuple[str, list[Any]]:
    """One term as an SQL condition over ``messages AS m`` (not yet negated)."""
    match term:
        case TextTerm(field=Field.TAG, value=value):
            return _HAS_TAG.format(" AND t.folded = %s"), [value]
        case TextTerm(field=Field.TEXT, value=value):
            # The very expression the trigram index is on, so that the planner can use it.
            return "(m.search ->> 'text') LIKE %s", [like_pattern(value)]
        case TextTerm(field=Field.MESSAGE_ID, value=value):
            return "(m.search ->> 'message-id') = %s", [value]
        case TextTerm(field=field, value=value):
            return "(m.search ->> %s) LIKE %s", [field.value, like_pattern(value)]
        case FlagTerm(flag=Flag.READ):
            return "m.read", []
        case FlagTerm(flag=Flag.UNREAD):
            return "NOT m.read", []
        case FlagTerm(flag=Flag.TAGGED):
            return _HAS_TAG.format(""), []
        case FlagTerm(flag=Flag.ATTACHMENT):
            return "m.attachments > 0", []
        case FlagTerm(flag=Flag.INLINE):
            return "m.inline_parts > 0", []
        case BoundTerm(bound=Bound.BEFORE, when=when) if when is not None:
            return "m.received_at < %s", [when]
        case BoundTerm(bound=Bound.AFTER, when=when) if when is not None:
            return "m.received_at >= %s", [when]
        case BoundTerm(bound=Bound.LARGER, octets=octets):
            return "m.size >= %s", [octets]
        case BoundTerm(bound=Bound.SMALLER, octets=octets):
            return "m.size < %s", [octets]
    return "false", []  # a date bound without a date matches nothing, as query.matches says


def where_clause(query: Query) -> tuple[str, list[Any]]:
    """`` WHERE ...`` (or ``""`` for no terms) over ``messages AS m``, and its parameters."""
    conditions: list[str] = []
    parameters: list[Any] = []
    for term in query.terms:
        condition, values = _condition(term)
        conditions.append(f"NOT ({condition})" if term.negated else f"({condition})")
        parameters.extend(values)
    if not conditions:
        return "", []
    return " WHERE " + " AND ".join(conditions), parameters


# -- tags: work for the writer's transaction ----------------------------------------------


async def set_tags(
    cursor: AsyncCursor[Any], message_ids: Sequence[MessageId], tags: Sequence[str]
) -> tuple[object, Sequence[StoreEvent]]:
    """Replace the tags of these messages; the result is how many of them exist."""
    await cursor.execute(
        "SELECT id FROM messages WHERE id = ANY(%s) FOR UPDATE", (list(message_ids),)
    )
    existing = [row[0] for row in await cursor.fetchall()]
    if existing:
        await cursor.execute("DELETE FROM tags WHERE message_id = ANY(%s)", (existing,))
        unique = sorted(set(tags))
        if unique:
            await cursor.executemany(
                "INSERT INTO tags (message_id, tag, folded) VALUES (%s, %s, %s)",
                [(message_id, tag, tag.lower()) for message_id in existing for tag in unique],
            )
    return len(existing), ()


async def rename_tag(
    cursor: AsyncCursor[Any], old: str, new: str
) -> tuple[object, Sequence[StoreEvent]]:
    """Rename a tag everywhere, merging into ``new`` where both are set; the result is on
    how many messages it was."""
    await cursor.execute("SELECT count(*) FROM tags WHERE tag = %s", (old,))
    row = await cursor.fetchone()
    count = int(row[0]) if row is not None else 0
    if count and old != new:
        await cursor.execute(
            "INSERT INTO tags (message_id, tag, folded) SELECT message_id, %s, %s FROM tags"
            " WHERE tag = %s ON CONFLICT DO NOTHING",
            (new, new.lower(), old),
        )
        await cursor.execute("DELETE FROM tags WHERE tag = %s", (old,))
    return count, ()


async def delete_tag(cursor: AsyncCursor[Any], tag: str) -> tuple[object, Sequence[StoreEvent]]:
    """Remove a tag from every message; the result is from how many."""
    await cursor.execute("DELETE FROM tags WHERE tag = %s", (tag,))
    return cursor.rowcount, ()
