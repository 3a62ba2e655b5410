"""The mapping between the model and the PostgreSQL store's rows.

A new message becomes a ``NewMessageRow``: the values of its ``messages``
row in ``MESSAGE_COLUMNS`` order, its content, and its outbound queue rows.
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
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from psycopg.types.json import Jsonb

from mailgate.model import (
    Address,
    Envelope,
    MessageId,
    MessageSummary,
    StoredMessage,
    TLSInfo,
)
from mailgate.query import Field, field_text

__all__ = [
    "MESSAGE_COLUMNS",
    "SEARCH_FIELDS",
    "SELECT_SUMMARY",
    "SUMMARY_COLUMNS",
    "NewMessageRow",
    "envelope_from_json",
    "envelope_json",
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
    content: bytes
    queued: tuple[tuple[str, str, datetime, datetime], ...]
    """Outbound queue rows: (message id, recipient, queued at, due)."""


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


def _pairs(addresses: Sequence[Address]) -> list[list[str]]:
    return [[a.name, a.address] for a in addresses]


def _addresses(pairs: Sequence[Sequence[str]]) -> tuple[Address, ...]:
    return tuple(Address(name, address) for name, address in pairs)


def envelope_json(envelope: Envelope) -> dict[str, object]:
    """The envelope as the ``envelope`` column keeps it."""
    return {
        "mail_from": envelope.mail_from,
        "rcpt_to": list(envelope.rcpt_to),
        "received_at": envelope.received_at.isoformat(),
        "helo_name": envelope.helo_name,
        "client_address": envelope.client_address,
        "client_hostname": envelope.client_hostname,
        "client_port": envelope.client_port,
        "protocol": envelope.protocol,
        "mail_params": dict(envelope.mail_params),
        "rcpt_params": [dict(p) for p in envelope.rcpt_params],
        "auth_user": envelope.auth_user,
        "tls": [envelope.tls.version, envelope.tls.cipher] if envelope.tls else None,
        "outbound": list(envelope.outbound),
    }


def envelope_from_json(data: Mapping[str, Any]) -> Envelope:
    """The envelope the ``envelope`` column holds."""
    tls = data["tls"]
    return Envelope(
        mail_from=data["mail_from"],
        rcpt_to=tuple(data["rcpt_to"]),
        received_at=datetime.fromisoformat(data["received_at"]),
        helo_name=data["helo_name"],
        client_address=data["client_address"],
        client_hostname=data["client_hostname"],
        client_port=data["client_port"],
        protocol=data["protocol"],
        mail_params=data["mail_params"],
        rcpt_params=tuple(data["rcpt_params"]),
        auth_user=data["auth_user"],
        tls=TLSInfo(tls[0], tls[1]) if tls else None,
        outbound=tuple(data["outbound"]),
    )


def new_message_row(summary: MessageSummary, envelope: Envelope, content: bytes) -> NewMessageRow:
    """The rows that store a new message: its ``messages`` row, content and queue rows.

    Its outbound recipients are due at once: at the time it was received.
    """
    summary = _clean_summary(summary)
    sender = summary.sender
    recipients = {
        "to": _pairs(summary.to),
        "cc": _pairs(summary.cc),
        "bcc": _pairs(summary.bcc),
        "reply_to": _pairs(summary.reply_to),
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
        Jsonb(envelope_json(envelope)),
        Jsonb(search),
        summary.inline,
    )
    received = envelope.received_at
    queued = tuple(
        (summary.id, recipient, received, received)
        for recipient in dict.fromkeys(envelope.outbound)
    )
    return NewMessageRow(id=summary.id, values=values, content=content, queued=queued)


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
        to=_addresses(recipients["to"]),
        cc=_addresses(recipients["cc"]),
        bcc=_addresses(recipients["bcc"]),
        reply_to=_addresses(recipients["reply_to"]),
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
    return StoredMessage(summary=summary_from_row(row), envelope=envelope_from_json(row[13]))
