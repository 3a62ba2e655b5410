"""The PostgreSQL store's schema: created, and upgraded in place, by mailgate itself.

``mailgate_schema`` holds one row, the version of the schema the database
has.  ``open_schema`` runs when a store opens, in ONE transaction under a
transaction-level advisory lock (``SCHEMA_LOCK_KEY``), so that nodes
starting at once take turns: the first creates or upgrades, the others
then find the version current.  It applies ``MIGRATIONS[version:]`` to a
database of an older version and refuses one of a newer version
(``StoreError``, one line): an older mailgate must not write a schema it
does not know.

Versions: 1, the messages, their content, tags and the event log; 2, the
outbound queue (``_queue.QUEUE_SCHEMA``), which references ``messages``; 3,
``messages.inline_parts``, the summary's ``inline`` (0 for the messages stored
before); 4, ``content_parts``, the content of large messages in parts (the
messages stored before keep theirs in ``contents``, which reads still find).

Tables:
- ``messages``: one row per message, the summary's columns as the SQLite
  store keeps them (addresses as jsonb), the envelope as jsonb, and
  ``search``, the texts a search looks in (``_records``).  ``id`` sorts
  byte by byte (``COLLATE "C"``): ids are time-sortable, and newest first
  is ``ORDER BY id DESC``;
- ``contents``: the exact bytes of each message (``bytea``), apart, so that
  listing never reads them; a large message has none, but ``content_parts``:
  its bytes in numbered parts (``_contents``);
- ``tags``: one row per tag of a message, ``folded`` being the tag in lower
  case as Python lowers it (``tag:`` terms compare it);
- ``events``: every committed change, as the events ``subscribe`` reports
  (``_follow``).  ``xid`` is the writing transaction's id: readers take only
  the rows of transactions older than every one still running, so rows
  whose ids were drawn in one order and committed in another are never
  skipped.

The free-text search index is a trigram index (``pg_trgm``) over
``search ->> 'text'``; ``ensure_search_index`` makes it when it is missing.
When the extension cannot be created (not installed, or not allowed), the
store logs a warning and searches without it: the same answers, each search
reading every row.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg

from mailgate.ports import StoreError
from mailgate.stores.postgresql._queue import QUEUE_SCHEMA

__all__ = [
    "MIGRATIONS",
    "SCHEMA_LOCK_KEY",
    "SCHEMA_VERSION",
    "SEARCH_INDEX",
    "ensure_search_index",
    "open_schema",
]

log = logging.getLogger(__name__)

SCHEMA_LOCK_KEY = 0x6D61696C67617465
"""The advisory lock held while the schema is checked and changed ("mailgate" in ASCII)."""

_VERSION_1 = """
CREATE TABLE IF NOT EXISTS messages (
    id text COLLATE "C" PRIMARY KEY,
    received_at timestamptz NOT NULL,
    size bigint NOT NULL,
    read boolean NOT NULL DEFAULT false,
    sender jsonb,                  -- [name, address]
    recipients jsonb NOT NULL,     -- {"to": [[name, address], ...], "cc": ..., ...}
    subject text NOT NULL,
    date text,                     -- ISO 8601, from the Date header, its offset kept
    message_id text NOT NULL,
    attachments integer NOT NULL,
    snippet text NOT NULL,
    envelope jsonb NOT NULL,
    search jsonb NOT NULL          -- {field: lower-case text} (query.field_text)
);
CREATE TABLE IF NOT EXISTS contents (
    message_id text COLLATE "C" PRIMARY KEY REFERENCES messages (id) ON DELETE CASCADE,
    data bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS tags (
    message_id text COLLATE "C" NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    tag text NOT NULL,
    folded text NOT NULL,          -- the tag in lower case
    PRIMARY KEY (message_id, tag)
);
CREATE INDEX IF NOT EXISTS tags_by_tag ON tags (tag);
CREATE INDEX IF NOT EXISTS tags_by_folded ON tags (folded);
CREATE TABLE IF NOT EXISTS events (
    id bigserial PRIMARY KEY,
    xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    origin text NOT NULL,          -- the writing store's random token; '' for none
    kind text NOT NULL,            -- a StoreEventKind value
    message_ids text[] NOT NULL    -- {} for all messages
);
CREATE INDEX IF NOT EXISTS events_by_xid ON events (xid);
CREATE INDEX IF NOT EXISTS events_by_time ON events (at);
"""

_VERSION_3 = """
ALTER TABLE messages ADD COLUMN IF NOT EXISTS inline_parts integer NOT NULL DEFAULT 0;
"""

_VERSION_4 = """
CREATE TABLE IF NOT EXISTS content_parts (
    message_id text COLLATE "C" NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    part integer NOT NULL,         -- 0, 1, ...: the order of the message's octets
    data bytea NOT NULL,
    PRIMARY KEY (message_id, part)
);
"""

MIGRATIONS: tuple[str, ...] = (_VERSION_1, QUEUE_SCHEMA, _VERSION_3, _VERSION_4)
"""``MIGRATIONS[n]`` takes a database from version ``n`` to ``n + 1`` (0: an empty one)."""

SCHEMA_VERSION = len(MIGRATIONS)

SEARCH_INDEX = "messages_search_text"
_CREATE_SEARCH_INDEX = (
    f"CREATE INDEX IF NOT EXISTS {SEARCH_INDEX} ON messages"
    " USING gin ((search ->> 'text') gin_trgm_ops)"
)


def open_schema(connection: psycopg.Connection[Any], database: str) -> int:
    """Create or upgrade the schema in one transaction, under the advisory lock; return the
    version the database had (0: none).

    ``database`` names the database in messages.  Raises ``StoreError`` for a
    database of a newer schema; lets ``psycopg.Error`` through.
    """
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
        row = connection.execute("SELECT to_regclass('mailgate_schema') IS NOT NULL").fetchone()
        version = 0
        if row is not None and row[0]:
            found = connection.execute("SELECT max(version) FROM mailgate_schema").fetchone()
            version = int(found[0]) if found is not None and found[0] is not None else 0
        else:
            connection.execute("CREATE TABLE mailgate_schema (version integer NOT NULL)")
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the message store database {database} has schema version {version}, newer"
                f" than this mailgate's {SCHEMA_VERSION}: run a newer mailgate"
            )
        for migration in MIGRATIONS[version:]:
            connection.execute(migration)
        if version < SCHEMA_VERSION:
            connection.execute("DELETE FROM mailgate_schema")
            connection.execute(
                "INSERT INTO mailgate_schema (version) VALUES (%s)", (SCHEMA_VERSION,)
            )
        ensure_search_index(connection)
    return version


def ensure_search_index(connection: psycopg.Connection[Any]) -> bool:
    """Make the trigram index of free text unless it exists; return whether it does.

    Run inside a transaction: the extension is tried in a savepoint of its
    own, so that failing to create it leaves the transaction usable.
    """
    row = connection.execute("SELECT to_regclass(%s) IS NOT NULL", (SEARCH_INDEX,)).fetchone()
    if row is not None and row[0]:
        return True
    try:
        with connection.transaction():
            connection.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
            connection.execute(_CREATE_SEARCH_INDEX)
    except psycopg.Error as error:
        log.warning(
            "no trigram index for searches (pg_trgm: %s); each search reads every message",
            str(error).splitlines()[0] if str(error) else type(error).__name__,
        )
        return False
    return True
