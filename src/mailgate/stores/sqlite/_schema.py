"""The SQLite store's schema and the mapping between its rows and the model.

Layout: ``messages`` holds one row per message with its summary and
envelope; ``bodies`` holds the content of messages small enough to stay in
memory while received, keyed by the message's ``seq``, so listing never
pages through message content; larger bodies are files named by
``messages.body_file``.  ``counts`` keeps the totals a listing shows, up to
date through triggers, so a listing never counts rows.  ``inline_parts`` holds
the count of inline parts of each message that has any (few do).  ``changes`` logs
every committed change as the events ``subscribe`` reports, so that a store
sees the changes other processes make too (see ``_follow``).

New messages are inserted through the ``incoming`` view, whose trigger
writes the row and, for inline content, its ``bodies`` row under the
``seq`` SQLite just gave it, and, for a row that carries them, the
``changes`` row of the batch: so a batch of new mail is one statement.  A new
message arrives as a ``_records.NewMessageRecord``; ``incoming_values`` lists
its fields in the view's column order, which ``_INCOMING_COLUMNS`` names beside
it, and nothing else knows that order.

``unindexed`` lists the new messages not yet in the search index, each with
the text the index takes for it (``NewMessageRecord.search_text``, made by
the SMTP process): ``incoming`` adds each new row there, and the writer moves
them into the index in transactions of their own when it is idle
(``_search``), so that the commit a client waits for does not also tokenize
the message, and the writer does not build its text.

Versions: 1, the first; 2 added ``changes``; 3 added ``incoming``; 4 let
``incoming`` write the change log; 5 added ``unindexed``, in place of indexing
each new message in the transaction that stores it; 6 keeps the search index in
lower case beyond ASCII (``_search``), so an older one is rebuilt; 7 added the
outbound queue, ``deliveries`` (``_queue``); 8 added ``inline_parts``, the
summary's ``inline`` of each message that has any (none for the messages stored
before); 9 keeps each unindexed message's text in ``unindexed``, and the search
index without column sizes (``columnsize = 0``), so an older one is rebuilt.
Opening a database of an older version runs ``upgrade(version)``, then
``SCHEMA`` (every statement ``IF NOT EXISTS``), on it.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from mailgate.model import (
    Address,
    Envelope,
    MessageId,
    MessageSummary,
    StoredMessage,
    StoreEvent,
    StoreEventKind,
)
from mailgate.query import Field, field_text
from mailgate.stores._rows import (
    address_pairs,
    addresses_from_pairs,
    envelope_data,
    envelope_from_data,
)
from mailgate.stores._subscription import known_event
from mailgate.stores.sqlite._queue import QUEUE_SCHEMA
from mailgate.stores.sqlite._records import NewMessageRecord, QueuedRecipient

__all__ = [
    "INSERT_CHANGE",
    "MAX_ROWS_PER_INSERT",
    "SCHEMA",
    "SCHEMA_VERSION",
    "SELECT_SUMMARY",
    "change_row",
    "encode_ids",
    "envelope_from_json",
    "event_from_change",
    "incoming_values",
    "insert_messages",
    "json_encoder",
    "millis",
    "new_message_record",
    "stored_message",
    "summary_from_row",
    "upgrade",
]

SCHEMA_VERSION = 9

# The columns of a new message's row, in the order ``incoming_values`` lists them.
_INCOMING_COLUMNS = (
    "id, received_at, size, sender, recipients, subject, date, message_id,"
    " attachments, snippet, envelope, body_file"
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    received_at INTEGER NOT NULL,  -- milliseconds since the Unix epoch, UTC
    size INTEGER NOT NULL,
    read INTEGER NOT NULL DEFAULT 0,
    sender TEXT,                   -- JSON [name, address]
    recipients TEXT NOT NULL,      -- JSON {"to": [[name, address], ...], "cc": ..., ...}
    subject TEXT NOT NULL,
    date TEXT,                     -- ISO 8601, from the Date header
    message_id TEXT NOT NULL,
    attachments INTEGER NOT NULL,
    snippet TEXT NOT NULL,
    envelope TEXT NOT NULL,        -- JSON
    body_file TEXT                 -- a file in the bodies directory, or NULL: see bodies
);
CREATE TABLE IF NOT EXISTS bodies (
    seq INTEGER PRIMARY KEY,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS tags (
    seq INTEGER NOT NULL,
    tag TEXT NOT NULL,
    PRIMARY KEY (seq, tag)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tags_by_tag ON tags (tag, seq);
CREATE TABLE IF NOT EXISTS counts (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    total INTEGER NOT NULL,
    unread INTEGER NOT NULL
);
INSERT OR IGNORE INTO counts VALUES (1, 0, 0);
CREATE TABLE IF NOT EXISTS inline_parts (
    seq INTEGER PRIMARY KEY,       -- a message with inline parts: most have none, and no row
    count INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS unindexed (
    seq INTEGER PRIMARY KEY,       -- a message the search index lacks
    text TEXT NOT NULL             -- what the index takes for it, lowered
);
CREATE TRIGGER IF NOT EXISTS message_inserted AFTER INSERT ON messages BEGIN
    UPDATE counts SET total = total + 1, unread = unread + (NEW.read = 0);
END;
CREATE TRIGGER IF NOT EXISTS message_deleted AFTER DELETE ON messages BEGIN
    UPDATE counts SET total = total - 1, unread = unread - (OLD.read = 0);
    DELETE FROM bodies WHERE seq = OLD.seq;
    DELETE FROM inline_parts WHERE seq = OLD.seq;
    DELETE FROM tags WHERE seq = OLD.seq;
    DELETE FROM unindexed WHERE seq = OLD.seq;
    DELETE FROM deliveries WHERE message_id = OLD.id;
END;
CREATE TRIGGER IF NOT EXISTS message_read AFTER UPDATE OF read ON messages
WHEN OLD.read != NEW.read BEGIN
    UPDATE counts SET unread = unread + (NEW.read = 0) - (OLD.read = 0);
END;
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY,       -- consecutive: pruning removes only the oldest rows
    origin TEXT NOT NULL,          -- the writing store's random token
    kind TEXT NOT NULL,            -- a StoreEventKind value
    ids TEXT NOT NULL              -- JSON array of message ids; [] for all messages
);
"""
SCHEMA = QUEUE_SCHEMA + SCHEMA  # the message_deleted trigger names deliveries
_NEW_COLUMNS = ", ".join("NEW." + column.strip() for column in _INCOMING_COLUMNS.split(","))
SCHEMA += f"""
CREATE VIEW IF NOT EXISTS incoming AS
    SELECT {_INCOMING_COLUMNS}, NULL AS search_text, NULL AS inline_parts, NULL AS content,
        NULL AS change_origin, NULL AS change_ids
    FROM messages;
CREATE TRIGGER IF NOT EXISTS incoming_inserted INSTEAD OF INSERT ON incoming BEGIN
    INSERT INTO messages ({_INCOMING_COLUMNS}) VALUES ({_NEW_COLUMNS});
    INSERT INTO unindexed (seq, text) VALUES (last_insert_rowid(), NEW.search_text);
    INSERT INTO inline_parts (seq, count) SELECT last_insert_rowid(), NEW.inline_parts
    WHERE NEW.inline_parts > 0;
    INSERT INTO bodies (seq, data) SELECT last_insert_rowid(), NEW.content
    WHERE NEW.content IS NOT NULL;
    INSERT INTO changes (origin, kind, ids)
    SELECT NEW.change_origin, '{StoreEventKind.STORED.value}', NEW.change_ids
    WHERE NEW.change_ids IS NOT NULL;
END;
"""  # noqa: S608 - column names only


def upgrade(version: int) -> str:
    """What runs before ``SCHEMA`` on a database of an older ``version``: views and triggers
    are created anew (``DROP VIEW`` drops the view's triggers too).

    Up to version 4 a trigger, ``message_search_inserted``, indexed each new
    message as it was stored.  Below version 9 the search index and
    ``unindexed`` are dropped, and the index built again when the store opens
    (``ensure_search_schema``): up to version 5 it folded case for ASCII letters
    only, up to version 8 it kept column sizes and ``unindexed`` no text.
    """
    statements = (
        "DROP VIEW IF EXISTS incoming;"
        " DROP TRIGGER IF EXISTS message_inserted;"
        " DROP TRIGGER IF EXISTS message_deleted;"
    )
    if version < 9:
        statements += (
            " DROP TRIGGER IF EXISTS message_search_inserted;"
            " DROP TRIGGER IF EXISTS message_search_deleted;"
            " DROP TABLE IF EXISTS message_search;"
            " DROP TABLE IF EXISTS unindexed;"
        )
    return statements


MAX_ROWS_PER_INSERT = 256
"""Rows one INSERT statement carries at most (17 variables each; SQLite allows 32766)."""


@functools.lru_cache(maxsize=MAX_ROWS_PER_INSERT)
def insert_messages(rows: int) -> str:
    """An INSERT of ``rows`` new messages, with the values ``incoming_values`` lists.

    It goes through the ``incoming`` view,
    whose trigger stores each row, its content and the change: one statement
    for many messages is one step of the SQLite engine, so the writer thread
    gives up the GIL once for all of them, or, outside a transaction, once
    for the whole commit.
    """
    values = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"] * rows)
    columns = f"{_INCOMING_COLUMNS}, search_text, inline_parts, content, change_origin, change_ids"
    return f"INSERT INTO incoming ({columns}) VALUES {values}"  # noqa: S608


INSERT_CHANGE = "INSERT INTO changes (origin, kind, ids) VALUES (?, ?, ?)"

SELECT_SUMMARY = """
SELECT id, received_at, size, read, sender, recipients, subject, date, message_id,
       attachments, snippet,
       coalesce((SELECT count FROM inline_parts WHERE inline_parts.seq = messages.seq), 0),
       (SELECT group_concat(tag, char(31)) FROM tags WHERE tags.seq = messages.seq)
FROM messages
"""

_NO_CHANGE: tuple[None, None] = (None, None)


def incoming_values(
    records: Sequence[NewMessageRecord], change_logs: Mapping[int, tuple[str, str]]
) -> list[object]:
    """The values of ``insert_messages(len(records))``, in the ``incoming`` view's order.

    ``change_logs`` maps the index of a record that logs a change to that
    change's origin and ids (``encode_ids``); the other records log none.
    """
    values: list[object] = []
    for index, record in enumerate(records):
        change_origin, change_ids = change_logs.get(index, _NO_CHANGE)
        values += (
            record.id,
            record.received_at_ms,
            record.size,
            record.sender_json,
            record.recipients_json,
            record.subject,
            record.date_iso,
            record.header_message_id,
            record.attachments,
            record.snippet,
            record.envelope_json,
            record.body_file,
            record.search_text,
            record.inline_parts,
            record.content,
            change_origin,
            change_ids,
        )
    return values


def json_encoder(encoder: json.JSONEncoder) -> Callable[[object], str]:
    """``encoder.encode``, less the set-up that method repeats on every call.

    ``json.dumps`` with any option makes a new ``JSONEncoder`` for every call,
    and ``JSONEncoder.encode`` a new C encoder (``c_make_encoder``) for every
    call, in interpreted Python: a new message's row is three JSON texts. Here
    the C encoder is made once, as ``encode`` would make it (``encoder``'s
    separators, ``ensure_ascii`` and ``check_circular`` off, no indent). Where
    the C encoder is missing this is ``encoder.encode`` itself.
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    indent = getattr(encoder, "indent", None)  # None, which its annotation leaves out
    if make is None or encoder.ensure_ascii or encoder.check_circular or indent is not None:
        return encoder.encode
    iterencode = make(
        None,  # markers: no check for circular references
        encoder.default,
        json.encoder.encode_basestring,
        None,  # indent
        encoder.key_separator,
        encoder.item_separator,
        encoder.sort_keys,
        encoder.skipkeys,
        encoder.allow_nan,
    )

    def encode(value: object) -> str:
        return "".join(iterencode(value, 0))

    return encode


_COMPACT = json_encoder(
    json.JSONEncoder(ensure_ascii=False, check_circular=False, separators=(",", ":"))
)
_SPACED = json_encoder(json.JSONEncoder(ensure_ascii=False, check_circular=False))


def millis(when: datetime) -> int:
    """A time as the store keeps it: whole milliseconds since the epoch."""
    return int(when.timestamp() * 1000)


def _envelope_json(envelope: Envelope) -> str:
    return _COMPACT(envelope_data(envelope))


def envelope_from_json(text: str) -> Envelope:
    """The envelope stored as ``text``."""
    return envelope_from_data(json.loads(text))


def new_message_record(
    summary: MessageSummary,
    envelope: Envelope,
    *,
    body_file: str | None,
    content: bytes | None,
    origin: str,
    queued: tuple[QueuedRecipient, ...] = (),
) -> NewMessageRecord:
    """The record that stores a new message: its ``messages`` row but ``seq`` and ``read``,
    its content or body file, the text the search index takes for it, the origin its
    change is logged under, its tags (the summary's) and queue rows."""
    recipients = _COMPACT(
        {
            "to": address_pairs(summary.to),
            "cc": address_pairs(summary.cc),
            "bcc": address_pairs(summary.bcc),
            "reply_to": address_pairs(summary.reply_to),
        }
    )
    sender = summary.sender
    return NewMessageRecord(
        id=summary.id,
        received_at_ms=millis(summary.received_at),
        size=summary.size,
        sender_json=_SPACED([sender.name, sender.address]) if sender else None,
        recipients_json=recipients,
        subject=summary.subject,
        date_iso=summary.date.isoformat() if summary.date else None,
        header_message_id=summary.message_id,
        attachments=summary.attachments,
        inline_parts=summary.inline,
        snippet=summary.snippet,
        envelope_json=_envelope_json(envelope),
        search_text=field_text(summary, Field.TEXT),
        body_file=body_file,
        content=content,
        origin=origin,
        tags=summary.tags,
        queued=queued,
    )


def summary_from_row(row: Sequence[Any]) -> MessageSummary:
    """A summary from a row of ``SELECT_SUMMARY``."""
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
        inline_parts,
        tags,
    ) = row
    people = json.loads(recipients)
    sender_pair = json.loads(sender) if sender else None
    return MessageSummary(
        id=MessageId(message_id),
        received_at=datetime.fromtimestamp(received_at / 1000, UTC),
        size=size,
        sender=Address(*sender_pair) if sender_pair else None,
        to=addresses_from_pairs(people["to"]),
        cc=addresses_from_pairs(people["cc"]),
        bcc=addresses_from_pairs(people["bcc"]),
        reply_to=addresses_from_pairs(people["reply_to"]),
        subject=subject,
        date=datetime.fromisoformat(date) if date else None,
        message_id=header_message_id,
        attachments=attachments,
        snippet=snippet,
        read=bool(read),
        tags=tuple(sorted(tags.split("\x1f"))) if tags else (),
        inline=inline_parts,
    )


def stored_message(row: Sequence[Any], envelope_json: str) -> StoredMessage:
    """A stored message from a row of ``SELECT_SUMMARY`` and its envelope column."""
    return StoredMessage(summary=summary_from_row(row), envelope=envelope_from_json(envelope_json))


def encode_ids(ids: Sequence[MessageId]) -> str:
    """The ``ids`` column of a ``changes`` row."""
    return _COMPACT(ids)


def change_row(origin: str, event: StoreEvent) -> tuple[str, str, str]:
    """The ``changes`` row of ``event``, for ``INSERT_CHANGE``."""
    return (origin, event.kind.value, encode_ids(event.message_ids))


def event_from_change(kind: str, ids: str) -> StoreEvent | None:
    """The event a ``changes`` row records, or ``None`` for a kind this mailgate does not know."""
    return known_event(kind, json.loads(ids))
