"""The mapping between the model and the PostgreSQL store's rows.

A new message becomes a ``NewMessageRow``: the values of its ``messages``
row in ``MESSAGE_COLUMNS`` order, its content (or, for large content, how to
read it: ``_contents``), its tags' rows, and its outbound queue rows.
Addresses are jsonb (``sender`` ``[name, address]``, ``recipients``
``{"to": [[name, address], ...], "cc": ..., "bcc": ..., "reply_to": ...}``),
as the SQLite store keeps them as JSON text; the envelope is jsonb.

``search`` holds, for each ``query.Field`` a substring term looks in, the
text ``query.field_text`` gives, computed here in Python when the message is
stored: so a search answers exactly as ``query.matches`` does, whatever the
database's collation makes of ``lower`` (``_search``).

PostgreSQL text cannot hold NUL characters: one in a header (a subject, a
display name) is kept as U+FFFD, and the summary a read returns says so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, BinaryIO, Final

from psycopg.types.json import Jsonb

from mailgate.model import (
    Address,
    Envelope,
    MessageId,
    MessageSummary,
    StoredMessage,
)
from mailgate.query import Field, field_text
from mailgate.stores._rows import (
    address_pairs,
    addresses_from_pairs,
    envelope_data,
    envelope_from_data,
)

__all__ = [
    "MESSAGE_COLUMNS",
    "SEARCH_FIELDS",
    "SELECT_SUMMARY",
    "SUMMARY_COLUMNS",
    "NewMessageRow",
    "new_message_row",
    "stored_message",
    "summary_from_row",
]

MESSAGE_COLUMNS = (
    "id, received_at, size, sender, recipients, subject, date, message_id,"
    " attachments, snippet, envelope, search, inline_parts"
)
"""The columns of a new message's row, in the order ``NewMessageRow.values`` lists them."""

SUMMARY_COLUMNS = (
    "m.id, m.received_at, m.size, m.read, m.sender, m.recipients, m.subject, m.date,"
    " m.message_id, m.attachments, m.snippet,"
    " (SELECT array_agg(t.tag) FROM tags AS t WHERE t.message_id = m.id), m.inline_parts"
)
"""What ``summary_from_row`` reads, of ``messages AS m``."""

SELECT_SUMMARY = f"SELECT {SUMMARY_COLUMNS} FROM messages AS m"  # noqa: S608 - constants

SEARCH_FIELDS: Final = tuple(field for field in Field if field is not Field.TAG)
"""The fields whose text ``search`` keeps, by ``Field`` value (tags are rows of their own)."""


@dataclasses.dataclass(frozen=True, slots=True)
class NewMessageRow:
    """A new message as one transaction stores it."""

    id: MessageId
    values: tuple[object, ...]
    """The ``messages`` row, in ``MESSAGE_COLUMNS`` order."""
    content: bytes | None
    """The ``contents`` row's data; ``None`` for content stored in parts."""
    queued: tuple[tuple[str, str, datetime, datetime], ...]
    """Outbound queue rows: (message id, recipient, queued at, due)."""
    tags: tuple[tuple[str, str, str], ...] = ()
    """``tags`` rows: (message id, tag, the tag in lower case)."""
    open_content: Callable[[], BinaryIO] | None = None
    """For content stored in parts: opens a reader over it (``_contents.insert_parts``)."""


def _clean(text: str) -> str:
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def _clean_address(address: Address) -> Address:
    return Address(_clean(address.name), _clean(address.address))


def _clean_summary(summary: MessageSummary) -> MessageSummary:
    """The summary with every NUL character replaced, which PostgreSQL text cannot hold."""
    people = (summary.sender, *summary.to, *summary.cc, *summary.bcc, *summary.reply_to)
    texts = (summary.subject, summary.message_id, summary.snippet)
    if not any("\x00" in text for text in texts) and not any(
        "\x00" in a.name or "\x00" in a.address for a in people if a is not None
    ):
        return summary
    return dataclasses.replace(
        summary,
        sender=_clean_address(summary.sender) if summary.sender else None,
        to=tuple(map(_clean_address, summary.to)),
        cc=tuple(map(_clean_address, summary.cc)),
        bcc=tuple(map(_clean_address, summary.bcc)),
        reply_to=tuple(map(_clean_address, summary.reply_to)),
        subject=_clean(summary.subject),
        message_id=_clean(summary.message_id),
        snippet=_clean(summary.snippet),
    )


def new_message_row(
    summary: MessageSummary,
    envelope: Envelope,
    content: bytes | None,
    open_content: Callable[[], BinaryIO] | None = None,
) -> NewMessageRow:
    """The rows that store a new message: its ``messages`` row, content, tags and queue rows.

    ``content`` is what its ``contents`` row holds, or ``None`` with
    ``open_content`` for content stored in parts.  Its outbound recipients are
    due at once: at the time it was received.
    """
    summary = _clean_summary(summary)
    sender = summary.sender
    recipients = {
        "to": address_pairs(summary.to),
        "cc": address_pairs(summary.cc),
        "bcc": address_pairs(summary.bcc),
        "reply_to": address_pairs(summary.reply_to),
    }
    search = {field.value: field_text(summary, field) for field in SEARCH_FIELDS}
    values = (
        summary.id,
        summary.received_at,
        summary.size,
        Jsonb([sender.name, sender.address]) if sender else None,
        Jsonb(recipients),
        summary.subject,
        summary.date.isoformat() if summary.date else None,
        summary.message_id,
        summary.attachments,
        summary.snippet,
        Jsonb(envelope_data(envelope)),
        Jsonb(search),
        summary.inline,
    )
    received = envelope.received_at
    queued = tuple(
        (summary.id, recipient, received, received)
        for recipient in dict.fromkeys(envelope.outbound)
    )
    tags = tuple((summary.id, tag, tag.lower()) for tag in summary.tags)
    return NewMessageRow(
        id=summary.id,
        values=values,
        content=content,
        queued=queued,
        tags=tags,
        open_content=open_content,
    )


def summary_from_row(row: Sequence[Any]) -> MessageSummary:
    """A summary from the ``SUMMARY_COLUMNS`` of a row."""
    (
        message_id,
        received_at,
        size,
        read,
        sender,
        recipients,
        subject,
        date,
        header_message_id,
        attachments,
        snippet,
        tags,
        inline_parts,
    ) = row[:13]
    return MessageSummary(
        id=MessageId(message_id),
        received_at=received_at.astimezone(UTC),
        size=size,
        sender=Address(*sender) if sender else None,
        to=addresses_from_pairs(recipients["to"]),
        cc=addresses_from_pairs(recipients["cc"]),
        bcc=addresses_from_pairs(recipients["bcc"]),
        reply_to=addresses_from_pairs(recipients["reply_to"]),
        subject=subject,
        date=datetime.fromisoformat(date) if date else None,
        message_id=header_message_id,
        attachments=attachments,
        snippet=snippet,
        read=read,
        tags=tuple(sorted(tags)) if tags else (),
        inline=inline_parts,
    )


def stored_message(row: Sequence[Any]) -> StoredMessage:
    """A stored message from a row of ``SUMMARY_COLUMNS`` followed by ``envelope``."""
    return StoredMessage(summary=summary_from_row(row), envelope=envelope_from_data(row[13]))
