"""The JSON shapes of Mailpit's v1 API, built from the model.

Field names and formats follow ``mailpit-api-v1.swagger.json``: times are
RFC 3339 with milliseconds, absent address lists are ``[]``, an absent
sender is an empty address (``{"Name": "", "Address": ""}``), as Mailpit
sends it.  A few fields older Mailpit versions sent (``count`` in a
listing, ``Read`` in a message) are kept, because client libraries written
against them still read them.  ``Bcc`` is what the summary holds: the
``Bcc`` header and the envelope's recipients no header names.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from mailgate.model import Address, MessagePage, MessageSummary, StoredMessage, parse_date
from mailgate.web._mime import ParsedMessage, Part

__all__ = [
    "address_list",
    "message_json",
    "messages_json",
    "rfc3339",
    "sender_json",
    "summary_json",
]

JSON = dict[str, Any]


def rfc3339(when: datetime) -> str:
    """``2024-05-01T09:30:00.123Z`` for UTC; other zones keep their offset."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    text = when.isoformat(timespec="milliseconds")
    return text.removesuffix("+00:00") + "Z" if text.endswith("+00:00") else text


def address_json(address: Address) -> JSON:
    return {"Name": address.name, "Address": address.address}


def address_list(addresses: tuple[Address, ...]) -> list[JSON]:
    return [address_json(a) for a in addresses]


_NO_ADDRESS = Address(name="", address="")


def sender_json(sender: Address | None) -> JSON:
    """``From``: the sender, or an empty address for a message without one."""
    return address_json(sender or _NO_ADDRESS)


def summary_json(summary: MessageSummary, username: str = "") -> JSON:
    """A ``MessageSummary`` of the API."""
    return {
        "ID": summary.id,
        "MessageID": summary.message_id,
        "Read": summary.read,
        "From": sender_json(summary.sender),
        "To": address_list(summary.to),
        "Cc": address_list(summary.cc),
        "Bcc": address_list(summary.bcc),
        "ReplyTo": address_list(summary.reply_to),
        "Subject": summary.subject,
        "Created": rfc3339(summary.received_at),
        "Username": username,
        "Tags": list(summary.tags),
        "Size": summary.size,
        "Attachments": summary.attachments,
        "Snippet": summary.snippet,
    }


def messages_json(
    page: MessagePage, *, total: int, unread: int, tags: list[str], start: int
) -> JSON:
    """A ``MessagesSummary``: ``page`` is the matches, ``total``/``unread`` the mailbox's."""
    return {
        "total": total,
        "unread": unread,
        "count": len(page.messages),
        "messages_count": page.total,
        "messages_unread": page.unread,
        "start": start,
        "tags": tags,
        "messages": [summary_json(s) for s in page.messages],
    }


def _part_json(part: Part) -> JSON:
    return {
        "PartID": part.part_id,
        "FileName": part.filename,
        "ContentType": part.content_type,
        "ContentID": part.content_id,
        "Size": len(part.data),
        "Checksums": part.checksums(),
    }


def _date(parsed: ParsedMessage, received_at: datetime) -> str:
    value = parsed.header("Date")
    date = parse_date(value) if value else None
    return rfc3339(date or received_at)


def message_json(stored: StoredMessage, parsed: ParsedMessage) -> JSON:
    """A ``Message`` of the API; ``Read`` as ``stored`` says."""
    summary, envelope = stored.summary, stored.envelope
    unsubscribe = parsed.header("List-Unsubscribe")
    links = [link.strip() for link in unsubscribe.replace(" ", "").strip("<>").split(">,<") if link]
    return {
        "ID": summary.id,
        "MessageID": summary.message_id,
        "Read": summary.read,
        "From": sender_json(summary.sender),
        "To": address_list(summary.to),
        "Cc": address_list(summary.cc),
        "Bcc": address_list(summary.bcc),
        "ReplyTo": address_list(summary.reply_to),
        "ReturnPath": envelope.mail_from,
        "Subject": summary.subject,
        "Date": _date(parsed, summary.received_at),
        "Created": rfc3339(summary.received_at),
        "Username": envelope.auth_user or "",
        "Tags": list(summary.tags),
        "Size": summary.size,
        "Text": parsed.text,
        "HTML": parsed.html,
        "Inline": [_part_json(p) for p in parsed.parts if p.inline],
        "Attachments": [_part_json(p) for p in parsed.parts if not p.inline],
        "ListUnsubscribe": {
            "Header": unsubscribe,
            "HeaderPost": parsed.header("List-Unsubscribe-Post"),
            "Links": links if unsubscribe else [],
            "Errors": "",
        },
    }
