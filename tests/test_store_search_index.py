"""New mail reaches the SQLite store's search index after its commit, not in it.

The commit a client waits for only lists a new message in ``unindexed``; the
writer (or the commit service) adds it to the index when idle.  Searches
find it either way (``test_query`` checks they answer alike).
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
from pathlib import Path

import pytest

from mailgate.delivery import Acceptor, DeliverySettings
from mailgate.model import Address, MessageId, MessageSummary
from mailgate.query import Field, field_text, parse_query
from mailgate.stores import SQLiteStore
from mailgate.stores.sqlite import _transactions as transactions
from mailgate.stores.sqlite._bodies import BodyFiles
from mailgate.stores.sqlite._connection import connect
from mailgate.stores.sqlite._schema import new_message_record
from mailgate.stores.sqlite._search import MERGE_PAGES, _text
from mailgate.stores.sqlite._transactions import Operation, WriteConnection, WriteTurns
from mailgate.testing.stores import make_envelope, make_message
from store_helpers import index_state, record, summary, until
from test_store_sqlite import one_message_then, store_many


@pytest.mark.asyncio
async def test_new_mail_is_found_at_once_and_indexed_when_the_writer_is_idle(
    tmp_path: Path,
) -> None:
    path = tmp_path / "mail.db"
    store = SQLiteStore(path)
    try:
        ids = await store_many(store, tmp_path, 40)
        # Found whether or not the writer has indexed them yet.
        assert (await store.search(parse_query("m1"))).total == 11  # m1, m10 to m19
        await until(lambda: index_state(path) == (40, 0), "all 40 are indexed")
        await until(lambda: store.stats.indexed == 40, "the writer counted them")
        assert (await store.search(parse_query("m1"))).total == 11
        await store.delete([MessageId(i) for i in ids[:5]])
        assert index_state(path) == (35, 0)
    finally:
        await store.aclose()


async def fresh_connection(tmp_path: Path) -> tuple[Path, WriteConnection]:
    """A new, empty store in ``tmp_path``, and a write connection of its own to it."""
    path = tmp_path / "mail.db"
    await SQLiteStore(path).aclose()
    turns = WriteTurns(path.with_name(path.name + "-write-lock"))
    bodies = BodyFiles(path.with_name(path.name + "-bodies"))
    return path, WriteConnection(connect(path), bodies, "origin", turns)


def synchronous(c: WriteConnection) -> int:
    (level,) = c._connection.execute("PRAGMA synchronous").fetchone()
    return int(level)


@pytest.mark.asyncio
async def test_a_write_connection_indexes_a_chunk_at_a_time_unsynced_and_knows_when_done(
    tmp_path: Path,
) -> None:
    path, c = await fresh_connection(tmp_path)
    statements: list[str] = []
    try:
        assert c.unindexed == 1  # it does not know yet: it looks, after a pause
        assert c.index_wait() == transactions.INDEX_PAUSE_SECONDS
        assert c.index() == 0
        assert c.unindexed == 0
        assert c.index_wait() is None  # nothing to index: wait for work as long as it takes
        most = transactions.INDEX_MOST
        count = most + transactions.INDEX_CHUNK + 3
        records: list[Operation] = [record(n) for n in range(count)]
        with c.turns:
            outcome = c.commit(records)
        assert len(outcome.results) == count
        assert c.unindexed == count
        assert c.index_wait() == 0  # a chunk is waiting: index at the first idle moment
        assert index_state(path) == (0, count)
        c._connection.set_trace_callback(statements.append)
        assert c.index() == most  # all that wait, up to the most a transaction takes
        assert c.unindexed == count - most
        assert index_state(path) == (most, count - most)
        assert synchronous(c) == 2  # FULL again, for the commits that follow
        assert c.index_wait() == 0  # a chunk and 3 more wait
        assert c.index() == transactions.INDEX_CHUNK + 3
        assert c.unindexed == 1  # all it counted, but more may have come: it looks, later
        assert c.index_wait() == transactions.INDEX_PAUSE_SECONDS
        assert c.index() == 0
        assert c.index_wait() is None
        with c.turns:
            c.commit([record(n) for n in range(count, count + 3)])
        count += 3
        assert c.index_wait() == transactions.INDEX_PAUSE_SECONDS  # 3 left: after a pause
        assert c.index() == 3
        assert c.unindexed == 0
        assert index_state(path) == (count, 0)
        assert c.stats.indexed == count
        assert c.stats.transactions == 2  # indexing is not counted as a synced commit
    finally:
        c.close()
    # Each index transaction ran with synchronous = NORMAL: its COMMIT is not synced.
    assert statements[0] == "PRAGMA synchronous = NORMAL"
    assert statements[-1] == "PRAGMA synchronous = FULL"
    store = SQLiteStore(path)
    try:
        assert (await store.search(parse_query("ledger"))).total == count
        assert (await store.search(parse_query(f'"ledger {count - 1}"'))).total == 1
    finally:
        await store.aclose()


@pytest.mark.asyncio
async def test_a_failed_index_is_logged_and_leaves_commits_synced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, c = await fresh_connection(tmp_path)
    try:
        with c.turns:
            c.commit([record(1)])
        c._connection.execute("PRAGMA query_only = 1")
        with caplog.at_level(logging.WARNING):
            assert c.index() == 0
        assert "could not add new mail to the search index" in caplog.text
        assert c.unindexed == 0  # no retry until the next commit
        assert not c._connection.in_transaction
        assert synchronous(c) == 2
        assert index_state(path) == (0, 1)
        c._connection.execute("PRAGMA query_only = 0")
        c.unindexed = 1
        assert c.index() == 1
    finally:
        c.close()


@pytest.mark.asyncio
async def test_mail_deleted_before_it_was_indexed_is_forgotten(tmp_path: Path) -> None:
    path, c = await fresh_connection(tmp_path)
    try:
        with c.turns:
            c.commit([record(1), record(2)])
        assert index_state(path) == (0, 2)
        store = SQLiteStore(path)  # its writer indexes on its own when idle: delete at once
        try:
            await store.delete([summary(1).id])
            await until(lambda: index_state(path) == (1, 0), "the one left is indexed")
            page = await store.search(parse_query("ledger"))
            assert [m.id for m in page.messages] == [summary(2).id]
        finally:
            await store.aclose()
    finally:
        c.close()


_VERSION_4 = f"""
INSERT INTO message_search (rowid, text)
    SELECT seq, {_text("messages")} FROM messages WHERE seq IN (SELECT seq FROM unindexed);
DROP TRIGGER message_inserted;
DROP TRIGGER message_deleted;
DROP TABLE unindexed;
CREATE TRIGGER message_inserted AFTER INSERT ON messages BEGIN
    UPDATE counts SET total = total + 1, unread = unread + (NEW.read = 0);
END;
CREATE TRIGGER message_deleted AFTER DELETE ON messages BEGIN
    UPDATE counts SET total = total - 1, unread = unread - (OLD.read = 0);
    DELETE FROM bodies WHERE seq = OLD.seq;
    DELETE FROM tags WHERE seq = OLD.seq;
END;
CREATE TRIGGER message_search_inserted AFTER INSERT ON messages BEGIN
    INSERT INTO message_search (rowid, text) VALUES (NEW.seq, {_text("NEW")});
END;
PRAGMA user_version = 4;
"""


@pytest.mark.asyncio
async def test_a_write_connection_behind_the_backlog_catches_up_after_each_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transactions, "INDEX_BACKLOG", 40)
    monkeypatch.setattr(transactions, "INDEX_CHUNK", 4)
    path, c = await fresh_connection(tmp_path)
    numbers = iter(range(1000))

    def commit(count: int) -> None:
        with c.turns:
            c.commit([record(next(numbers)) for _ in range(count)])

    try:
        c.index()  # it looks first: nothing yet
        commit(30)
        c.catch_up()  # 30 waiting: not behind, idle moments will do
        assert index_state(path) == (0, 30)
        commit(20)
        c.catch_up()  # 50 waiting: the 20 just stored and a chunk more
        assert index_state(path) == (24, 26)
        commit(20)
        c.catch_up()  # 46
        assert index_state(path) == (48, 22)
        commit(5)
        c.catch_up()  # 27: no longer behind
        assert index_state(path) == (48, 27)
    finally:
        c.close()


@pytest.mark.asyncio
async def test_a_version_5_index_is_built_again_in_lower_case(tmp_path: Path) -> None:
    path = tmp_path / "mail.db"
    store = SQLiteStore(path)
    try:
        acceptor = Acceptor(store, DeliverySettings(hostname="mx.test", spool_dir=tmp_path))
        spool = acceptor.begin(make_envelope())
        spool.write(make_message("ÄRGER MIT MÜLLER"))
        await acceptor.commit(spool)
    finally:
        await store.aclose()
    connection = sqlite3.connect(path, isolation_level=None)
    try:  # as mailgate with schema 5 left it: the text as it was, SQLite folding ASCII only
        connection.executescript(
            "DELETE FROM unindexed; DELETE FROM message_search;"
            f" INSERT INTO message_search (rowid, text) SELECT seq, {_text('messages')}"
            " FROM messages; PRAGMA user_version = 5;"
        )
    finally:
        connection.close()
    store = SQLiteStore(path)
    try:
        assert (await store.search(parse_query("müller"))).total == 1
    finally:
        await store.aclose()
    connection = sqlite3.connect(path)
    try:
        (text,) = connection.execute("SELECT text FROM message_search").fetchone()
    finally:
        connection.close()
    assert "ärger mit müller" in text


def automerge(connection: sqlite3.Connection) -> object:
    row = connection.execute("SELECT v FROM message_search_config WHERE k = 'automerge'").fetchone()
    return None if row is None else row[0]


def segments(connection: sqlite3.Connection) -> int:
    (count,) = connection.execute("SELECT count(DISTINCT segid) FROM message_search_idx").fetchone()
    return int(count)


@pytest.mark.asyncio
async def test_the_index_merges_a_little_in_each_transaction_and_never_by_itself(
    tmp_path: Path,
) -> None:
    path, c = await fresh_connection(tmp_path)
    statements: list[str] = []
    most = 0
    try:
        assert automerge(c._connection) == 0  # FTS5 merges nothing of its own accord
        chunk = transactions.INDEX_CHUNK
        for n in range(0, 64 * chunk, chunk):
            with c.turns:
                c.commit([record(n + k) for k in range(chunk)])
            c._connection.set_trace_callback(statements.append)
            assert c.index() == chunk
            c._connection.set_trace_callback(None)
            most = max(most, segments(c._connection))
        assert index_state(path) == (64 * chunk, 0)
    finally:
        c.close()
    merges = [s for s in statements if "'merge'" in s]
    assert len(merges) == 64  # one in each index transaction, with its budget
    assert all(str(MERGE_PAGES) in s for s in merges)
    # Each chunk makes a segment; merged, they stay few (unmerged, FTS5 lets a level
    # reach 16 before it merges all of it in one transaction: up to 26 here).
    assert most <= 12
    store = SQLiteStore(path)
    try:
        assert (await store.search(parse_query("ledger"))).total == 64 * chunk
        assert (await store.search(parse_query('"ledger 1000"'))).total == 1
    finally:
        await store.aclose()


@pytest.mark.asyncio
async def test_an_index_that_merged_by_itself_is_merged_by_hand_once_opened(
    tmp_path: Path,
) -> None:
    path = tmp_path / "mail.db"
    await SQLiteStore(path).aclose()
    connection = sqlite3.connect(path, isolation_level=None)
    try:  # as an earlier mailgate left it: FTS5's default, merging by itself
        connection.execute("DELETE FROM message_search_config WHERE k = 'automerge'")
        assert automerge(connection) is None
    finally:
        connection.close()
    await SQLiteStore(path).aclose()
    connection = sqlite3.connect(path)
    try:
        assert automerge(connection) == 0
    finally:
        connection.close()


def _people_summary(number: int) -> MessageSummary:
    """A summary with names, case beyond ASCII and every kind of recipient (or no sender)."""
    return dataclasses.replace(
        summary(number),
        sender=None if number % 2 else Address("Élise MÜLLER", f"Elise{number}@Example.COM"),
        to=(Address("Ärger Ödön", "to@x.test"), Address("", "TO2@x.test")),
        cc=(Address("Çelik", "cc@x.test"),),
        bcc=(Address("", "bcc@x.test"),),
        reply_to=(Address("Reply Ω", "reply@x.test"),),
        subject=f"Straße {number} ÜBER",
        snippet="Grüße, WORLD",
    )


@pytest.mark.asyncio
async def test_the_text_new_mail_is_indexed_with_is_the_text_sql_makes_of_its_row(
    tmp_path: Path,
) -> None:
    # New mail comes with its text made in Python (query.field_text); an index built
    # anew makes it in SQL from the stored row.  Searches rely on the two agreeing.
    _, c = await fresh_connection(tmp_path)
    try:
        records = [
            new_message_record(
                _people_summary(n), make_envelope(), body_file=None, content=b"x", origin="o"
            )
            for n in range(4)
        ]
        with c.turns:
            c.commit(list(records))
        assert c.index() == 4
        connection = c._connection
        indexed = connection.execute("SELECT rowid, text FROM message_search ORDER BY rowid")
        from_rows = connection.execute(
            f"SELECT seq, mailgate_lower({_text('messages')}) FROM messages ORDER BY seq"
        )
        assert indexed.fetchall() == from_rows.fetchall()
        texts = [r.search_text for r in records]
        assert texts == [field_text(_people_summary(n), Field.TEXT) for n in range(4)]
        assert "élise müller elise0@example.com" in texts[0]
        assert "\närger ödön to@x.test  to2@x.test çelik cc@x.test  bcc" in texts[1]
    finally:
        c.close()


_VERSION_8_SEARCH = """
DROP TRIGGER message_search_deleted;
DROP TABLE message_search;
CREATE VIRTUAL TABLE message_search USING fts5(text, tokenize = 'trigram', detail = 'none');
DROP TABLE unindexed;
CREATE TABLE unindexed (seq INTEGER PRIMARY KEY);
INSERT INTO unindexed SELECT seq FROM messages;
PRAGMA user_version = 8;
"""


@pytest.mark.asyncio
@pytest.mark.parametrize("script", [_VERSION_4, _VERSION_8_SEARCH], ids=["4", "8"])
async def test_an_older_database_is_indexed_again_and_indexes_new_mail_later(
    tmp_path: Path, script: str
) -> None:
    path = tmp_path / "mail.db"
    # As mailgate with schema 4 left it (each message indexed as it was stored), or with
    # schema 8 (column sizes kept, no text in unindexed), its one message not yet indexed.
    await one_message_then(path, tmp_path, script)
    store = SQLiteStore(path)
    try:
        assert index_state(path) == (1, 0)  # built anew as the store opened
        await store_many(store, tmp_path, 3)
        assert (await store.search(parse_query("sender@client.test"))).total == 4
        await until(lambda: index_state(path) == (4, 0), "the new mail is indexed")
    finally:
        await store.aclose()
    connection = sqlite3.connect(path)
    try:
        names = {name for (name,) in connection.execute("SELECT name FROM sqlite_master")}
        columns = [row[1] for row in connection.execute("PRAGMA table_info(unindexed)")]
    finally:
        connection.close()
    assert "message_search_inserted" not in names
    assert "message_search_docsize" not in names
    assert columns == ["seq", "text"]
