"""Search and tags for the SQLite store: ``query.Query`` values as SQL.

Free words are looked up in ``message_search``, an FTS5 table with the
trigram tokenizer over each message's subject, addresses, Message-ID and
snippet, in lower case.  ``LIKE '%word%'`` on it is a substring match, the
same meaning ``query.matches`` gives a word, but answered from the trigram
index, so a search stays quick at 100,000 messages.  (``detail = 'none'``:
LIKE needs no positions, and the index is a fifth of the size.)  Words
shorter than three characters (too short for a trigram) and field terms
(``from:``, ``subject:``...) are filtered with ``instr`` on the row.  Every
value is a bound parameter.

Case: ``query`` lowers every value with Python's ``str.lower``; SQLite's
``lower`` and ``LIKE`` fold ASCII letters only, so "müller" would miss
"MÜLLER".  The indexed text is therefore lowered by Python: by the SMTP
process for new mail (``query.field_text``), and by ``mailgate_lower``, a
function ``register_functions`` gives each connection, when the index is built
anew; and so is the text a value that is not ASCII is looked for in.  (An
ASCII value is looked for in text lowered by SQLite's own ``lower``: quicker,
and the same for it.)

A new message is not indexed in the transaction that stores it: tokenizing
it would take two thirds of that transaction, which a client waits for.
It is listed in ``unindexed`` instead, with its text made by the SMTP
process (``query.field_text``, the very text ``query.matches`` looks in), and
``index_unindexed`` moves such messages into the index later, a chunk at a
time, in a transaction of their own.  Until then a free word is matched
against that text with ``instr``, so a search finds a message from the moment
it is stored.  The text SQL makes from a stored row (``_text``, for building
the index anew) is the same.  A trigger removes a deleted message from the
index.  ``columnsize = 0``: no search ranks, so FTS5 keeps no column sizes.

Searches and tag counts run on the read pool's connections (``_reads``); tag
changes are functions of the write connection, run by the store's writer
thread inside its transaction.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from mailgate.model import MessageId, MessagePage
from mailgate.query import Bound, BoundTerm, Field, Flag, FlagTerm, Query, Term, TextTerm
from mailgate.stores.sqlite._connection import write_transaction
from mailgate.stores.sqlite._records import NewMessageRecord
from mailgate.stores.sqlite._schema import SELECT_SUMMARY, millis, summary_from_row

__all__ = [
    "MERGE_PAGES",
    "SEARCH_SCHEMA",
    "delete_tag",
    "ensure_search_schema",
    "index_unindexed",
    "insert_tags",
    "rename_tag",
    "search_page",
    "set_tags",
    "tag_counts",
    "where_clause",
]

MIN_TRIGRAM_CHARS = 3


def _people(column: str, path: str = "$") -> str:
    """SQL for the names and addresses in a JSON column, as ``query.field_text`` joins them."""
    return (
        "coalesce((SELECT group_concat(value, ' ') FROM"  # noqa: S608 - constants only
        f" json_tree({column}, '{path}') WHERE type = 'text'), '')"
    )


def _text(row: str) -> str:
    """SQL for what free words are searched in, of the row named ``row`` (not yet lowered)."""
    return " || char(10) || ".join(
        (
            f"{row}.subject",
            _people(f"{row}.sender"),
            _people(f"{row}.recipients"),
            f"{row}.message_id",
            f"{row}.snippet",
        )
    )


SEARCH_SCHEMA = (  # constants only
    "CREATE VIRTUAL TABLE IF NOT EXISTS message_search"
    " USING fts5(text, tokenize = 'trigram', detail = 'none', columnsize = 0);\n"
    "CREATE TRIGGER IF NOT EXISTS message_search_deleted AFTER DELETE ON messages BEGIN\n"
    "    DELETE FROM message_search WHERE rowid = OLD.seq;\n"
    "END;\n"
)
_INDEX_EXISTING = (  # constants only
    "INSERT INTO message_search (rowid, text)"  # noqa: S608
    f" SELECT seq, mailgate_lower({_text('messages')}) FROM messages"
)
_INDEX_UNINDEXED = (
    "INSERT INTO message_search (rowid, text) SELECT seq, text FROM unindexed WHERE seq <= ?"
)
MERGE_PAGES = 16
"""Pages of merging, at most, that each transaction adding to the search index does.

FTS5's own merging (``automerge``) is turned off: it came in bursts, one index
transaction in about a thousand taking 15 to 40 ms, and every commit waiting behind it
paid for them.  Instead each index transaction merges a little, with FTS5's ``merge``
command, and only on levels that hold ``usermerge`` (4) segments or more: the index
keeps a few segments a level, and no transaction merges more than this."""
_MERGE = "INSERT INTO message_search (message_search, rank) VALUES ('merge', ?)"
_MERGE_BY_HAND = "INSERT INTO message_search (message_search, rank) VALUES ('automerge', 0)"
_AUTOMERGE = "SELECT v FROM message_search_config WHERE k = 'automerge'"
_MATCH_UNINDEXED = "SELECT seq FROM unindexed WHERE instr(text, ?) > 0"


def ensure_search_schema(connection: sqlite3.Connection) -> None:
    """Create the search index if the database lacks it, and index what is there; turn
    off FTS5's own merging in an index made before mailgate merged by hand (``MERGE_PAGES``).

    Takes the write lock for the time it takes; run it when opening, on the
    connection that writes.
    """
    exists = connection.execute(
        "SELECT 1 FROM sqlite_master WHERE name = 'message_search'"
    ).fetchone()
    if not exists:
        with write_transaction(connection):
            # Statement by statement: executescript would commit on its own.
            for statement in _statements(SEARCH_SCHEMA):
                connection.execute(statement)
            connection.execute(_MERGE_BY_HAND)
            connection.execute(_INDEX_EXISTING)
            connection.execute("DELETE FROM unindexed")
    elif connection.execute(_AUTOMERGE).fetchone() != (0,):
        with write_transaction(connection):
            connection.execute(_MERGE_BY_HAND)


def index_unindexed(connection: sqlite3.Connection, limit: int) -> int:
    """Index up to ``limit`` of the messages the index lacks, oldest first, then merge up
    to ``MERGE_PAGES`` pages of the index; return how many messages it indexed.

    Run it inside a write transaction.
    """
    seqs = connection.execute(
        "SELECT seq FROM unindexed ORDER BY seq LIMIT ?", (max(limit, 0),)
    ).fetchall()
    if not seqs:
        return 0
    (last,) = seqs[-1]
    connection.execute(_INDEX_UNINDEXED, (last,))
    connection.execute("DELETE FROM unindexed WHERE seq <= ?", (last,))
    connection.execute(_MERGE, (MERGE_PAGES,))
    return len(seqs)


def _statements(script: str) -> list[str]:
    """The statements of ``SEARCH_SCHEMA`` (triggers hold ``;`` inside ``BEGIN ... END``)."""
    statements: list[str] = []
    current = ""
    for line in script.strip().splitlines():
        current += line + "\n"
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    return statements


_FIELD_COLUMNS = {
    Field.FROM: _people("sender"),
    Field.TO: _people("recipients", "$.to"),
    Field.CC: _people("recipients", "$.cc"),
    Field.BCC: _people("recipients", "$.bcc"),
    Field.REPLY_TO: _people("recipients", "$.reply_to"),
    Field.ADDRESSED: _people("recipients"),
    Field.SUBJECT: "subject",
}


def _lowered(column: str, value: str) -> str:
    """SQL for ``column`` in lower case, as far as looking for ``value`` in it needs."""
    return f"lower({column})" if value.isascii() else f"mailgate_lower({column})"


def _text_matches(indexed: str) -> str:
    """A free-word condition: ``indexed`` on the search index, or, for the messages it
    lacks yet, their text containing the word (the last parameter)."""
    return (
        "seq IN (SELECT rowid FROM message_search"  # noqa: S608 - constants only
        f" WHERE {indexed} UNION ALL {_MATCH_UNINDEXED})"
    )


_HAS_TAG = "EXISTS (SELECT 1 FROM tags WHERE tags.seq = messages.seq{})"


def _condition(term: Term) -> tuple[str, list[Any]]:
    """One term as an SQL condition over ``messages`` (not yet negated)."""
    match term:
        case TextTerm(field=Field.TEXT, value=value) if len(value) >= MIN_TRIGRAM_CHARS:
            if "%" in value or "_" in value:
                # LIKE has no ESCAPE the index can use: its wildcards find a superset,
                # which instr narrows to the literal text.
                return (
                    _text_matches("text LIKE ? AND instr(text, ?) > 0"),
                    [f"%{value}%", value, value],
                )
            return _text_matches("text LIKE ?"), [f"%{value}%", value]
        case TextTerm(field=Field.TEXT, value=value):
            # Too short for a trigram: read the indexed text, not the rows it came from.
            return _text_matches("instr(text, ?) > 0"), [value, value]
        case TextTerm(field=Field.TAG, value=value):
            return _HAS_TAG.format(f" AND {_lowered('tags.tag', value)} = ?"), [value]
        case TextTerm(field=Field.MESSAGE_ID, value=value):
            return f"{_lowered('message_id', value)} = ?", [value]
        case TextTerm(field=field, value=value):
            return f"instr({_lowered(_FIELD_COLUMNS[field], value)}, ?) > 0", [value]
        case FlagTerm(flag=Flag.READ):
            return "read = 1", []
        case FlagTerm(flag=Flag.UNREAD):
            return "read = 0", []
        case FlagTerm(flag=Flag.TAGGED):
            return _HAS_TAG.format(""), []
        case FlagTerm(flag=Flag.ATTACHMENT):
            return "attachments > 0", []
        case FlagTerm(flag=Flag.INLINE):
            return "seq IN (SELECT seq FROM inline_parts)", []
        case BoundTerm(bound=Bound.BEFORE, when=when) if when is not None:
            return "received_at < ?", [millis(when)]
        case BoundTerm(bound=Bound.AFTER, when=when) if when is not None:
            return "received_at >= ?", [millis(when)]
        case BoundTerm(bound=Bound.LARGER, octets=octets):
            return "size >= ?", [octets]
        case BoundTerm(bound=Bound.SMALLER, octets=octets):
            return "size < ?", [octets]
    return "0", []  # a date bound without a date matches nothing, as query.matches says


def where_clause(query: Query) -> tuple[str, list[Any]]:
    """``WHERE ...`` (or ``""`` for no terms) and its parameters."""
    conditions: list[str] = []
    parameters: list[Any] = []
    for term in query.terms:
        condition, values = _condition(term)
        conditions.append(f"NOT ({condition})" if term.negated else f"({condition})")
        parameters.extend(values)
    if not conditions:
        return "", []
    return " WHERE " + " AND ".join(conditions), parameters


def search_page(
    connection: sqlite3.Connection, query: Query, *, offset: int, limit: int
) -> MessagePage:
    """The matching messages, newest first, counted: run on a read connection."""
    where, parameters = where_clause(query)
    connection.execute("BEGIN")  # one snapshot for the page and its counts
    try:
        # The clause is built from constants; values are parameters.
        count_sql = f"SELECT count(*), coalesce(sum(read = 0), 0) FROM messages{where}"  # noqa: S608
        total, unread = connection.execute(count_sql, parameters).fetchone()
        rows = connection.execute(
            f"{SELECT_SUMMARY}{where} ORDER BY id DESC LIMIT ? OFFSET ?",
            [*parameters, max(limit, 0), max(offset, 0)],
        ).fetchall()
    finally:
        connection.execute("COMMIT")
    return MessagePage(
        messages=tuple(summary_from_row(row) for row in rows),
        total=total,
        unread=unread,
        offset=offset,
    )


# -- tags ------------------------------------------------------------------------------------


def tag_counts(connection: sqlite3.Connection) -> dict[str, int]:
    """Every tag in use and how many messages carry it."""
    return dict(connection.execute("SELECT tag, count(*) FROM tags GROUP BY tag ORDER BY tag"))


def insert_tags(connection: sqlite3.Connection, records: Sequence[NewMessageRecord]) -> None:
    """Insert the tags the new messages carry, in the transaction that inserted them."""
    rows = [(tag, record.id) for record in records for tag in record.tags]
    if rows:
        connection.executemany(
            "INSERT OR IGNORE INTO tags (seq, tag) SELECT seq, ? FROM messages WHERE id = ?", rows
        )


def set_tags(
    connection: sqlite3.Connection, message_ids: Sequence[MessageId], tags: Sequence[str]
) -> int:
    """Replace the tags of these messages; return how many of them exist."""
    seqs = [
        seq
        for (seq,) in connection.execute(
            "SELECT seq FROM messages WHERE id IN (SELECT value FROM json_each(?))",
            (json.dumps(list(message_ids)),),
        )
    ]
    unique = sorted(set(tags))
    for seq in seqs:
        connection.execute("DELETE FROM tags WHERE seq = ?", (seq,))
        connection.executemany(
            "INSERT INTO tags (seq, tag) VALUES (?, ?)", [(seq, tag) for tag in unique]
        )
    return len(seqs)


def rename_tag(connection: sqlite3.Connection, old: str, new: str) -> int:
    """Rename a tag everywhere (merging into ``new`` where both are set)."""
    count: int = connection.execute("SELECT count(*) FROM tags WHERE tag = ?", (old,)).fetchone()[0]
    if old != new:
        connection.execute("UPDATE OR IGNORE tags SET tag = ? WHERE tag = ?", (new, old))
        connection.execute("DELETE FROM tags WHERE tag = ?", (old,))
    return count


def delete_tag(connection: sqlite3.Connection, tag: str) -> int:
    """Remove a tag from every message; return from how many."""
    return connection.execute("DELETE FROM tags WHERE tag = ?", (tag,)).rowcount
