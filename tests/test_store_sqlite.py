"""The SQLite store: the conformance suite, group commit, opening by URL, sweeping, upgrades."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from mailgate import MailgateError
from mailgate.delivery import Acceptor, DeliverySettings
from mailgate.model import MessageId
from mailgate.ports import StoreError
from mailgate.query import parse_query
from mailgate.stores import SQLiteStore, StoreURLError, open_store
from mailgate.stores.sqlite._schema import (
    _INCOMING_COLUMNS,
    _NEW_COLUMNS,
    SCHEMA_VERSION,
    new_message_record,
)
from mailgate.testing.pruning import PRUNABLE_STORE_CHECKS
from mailgate.testing.queues import QUEUE_STORE_CHECKS
from mailgate.testing.stores import (
    SEARCHABLE_STORE_CHECKS,
    STORE_CHECKS,
    TAGGABLE_STORE_CHECKS,
    StoreUnderTest,
    make_envelope,
    make_message,
)
from mailgate.testing.streams import STREAM_CHECKS
from mailgate.testing.tagging import COMMITTED_TAG_CHECKS
from store_helpers import until


def under_test(tmp_path: Path) -> StoreUnderTest:
    return StoreUnderTest(
        open=lambda: SQLiteStore(tmp_path / "mail.db"), spool_dir=tmp_path / "spool"
    )


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "check",
    STORE_CHECKS
    + SEARCHABLE_STORE_CHECKS
    + TAGGABLE_STORE_CHECKS
    + COMMITTED_TAG_CHECKS
    + PRUNABLE_STORE_CHECKS
    + STREAM_CHECKS,
    ids=lambda check: check.__name__,
)
async def test_conformance(
    check: Callable[[StoreUnderTest], Awaitable[None]], tmp_path: Path
) -> None:
    await check(under_test(tmp_path))


async def store_many(store: SQLiteStore, tmp_path: Path, count: int) -> list[str]:
    acceptor = Acceptor(store, DeliverySettings(hostname="mx.test", spool_dir=tmp_path / "spool"))

    async def one(i: int) -> str:
        spool = acceptor.begin(make_envelope())
        spool.write(make_message(f"m{i}"))
        return await acceptor.commit(spool)

    return await asyncio.gather(*(one(i) for i in range(count)))


@pytest.mark.asyncio
async def test_concurrent_commits_share_transactions(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "mail.db")
    try:
        ids = await store_many(store, tmp_path, 200)
        stats = store.stats
        assert stats.messages == 200
        assert len(set(ids)) == 200
        # 200 commits queued at once cannot all have waited for their own fsync.
        assert stats.transactions < 200
    finally:
        await store.aclose()


@pytest.mark.asyncio
async def test_database_is_wal_with_full_sync(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "mail.db")
    await store.aclose()
    connection = sqlite3.connect(tmp_path / "mail.db")
    try:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        connection.close()


@pytest.mark.asyncio
async def test_open_store_by_url(tmp_path: Path) -> None:
    store = await open_store(f"sqlite://{tmp_path}/sub/dir/mail.db")
    try:
        assert isinstance(store, SQLiteStore)
        assert (tmp_path / "sub" / "dir" / "mail.db").exists()
    finally:
        await store.aclose()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "url",
    [
        "mysql://localhost/mail",
        "maildir:///var/mail",
        "sqlite://remote.host/mail.db",
        "sqlite:///some/dir/",
        "sqlite://",
        "no scheme at all",
    ],
)
async def test_open_store_rejects_bad_urls(url: str) -> None:
    with pytest.raises(StoreURLError) as raised:
        await open_store(url)
    assert isinstance(raised.value, MailgateError)
    assert "\n" not in str(raised.value)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("maildir:///var/mail", "maildir message stores are not supported yet"),
        ("mysql://localhost/mail", "unknown message store URL 'mysql://localhost/mail'"),
    ],
)
async def test_stores_to_come_are_refused_as_not_yet_others_as_unknown(url: str, says: str) -> None:
    with pytest.raises(StoreURLError, match=says):
        await open_store(url)


@pytest.mark.asyncio
async def test_open_store_reports_bad_paths_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(StoreError) as raised:
        await open_store(f"sqlite://{tmp_path}/file/mail.db")
    assert "\n" not in str(raised.value)
    (tmp_path / "junk.db").write_bytes(b"this is not a database, not even close" * 100)
    with pytest.raises(StoreError) as raised:
        await open_store(f"sqlite://{tmp_path}/junk.db")
    assert "\n" not in str(raised.value)


@pytest.mark.asyncio
async def test_open_sweeps_body_files_without_rows(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "mail.db")
    await store.aclose()
    orphan = store.bodies / "01ORPHAN00000000000000000.eml"
    orphan.write_bytes(b"left by a crash between moving the file in and committing its row")
    partial = store.bodies / "01PARTIAL0000000000000000.eml.partial"
    partial.write_bytes(b"half a copy")
    store = SQLiteStore(tmp_path / "mail.db")
    await store.aclose()
    assert list(store.bodies.iterdir()) == []


@pytest.mark.asyncio
async def test_a_second_open_store_does_not_sweep(tmp_path: Path) -> None:
    first = SQLiteStore(tmp_path / "mail.db")
    try:
        in_flight = first.bodies / "01INFLIGHT000000000000000.eml"
        in_flight.write_bytes(b"moved in, row not yet committed by the first store")
        second = SQLiteStore(tmp_path / "mail.db")
        await second.aclose()
        assert in_flight.exists()
    finally:
        await first.aclose()


@pytest.mark.asyncio
async def test_no_store_sweeps_while_another_is_open(tmp_path: Path) -> None:
    first = SQLiteStore(tmp_path / "mail.db")
    second = SQLiteStore(tmp_path / "mail.db")
    try:
        in_flight = second.bodies / "01INFLIGHT000000000000000.eml"
        in_flight.write_bytes(b"moved in, row not yet committed by the second store")
        await first.aclose()  # the store that opened first goes; the second stays open
        third = SQLiteStore(tmp_path / "mail.db")
        await third.aclose()
        assert in_flight.exists()
    finally:
        await first.aclose()
        await second.aclose()


@pytest.mark.asyncio
async def test_closed_store_refuses_work(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "mail.db")
    await store.aclose()
    await store.aclose()  # harmless twice
    with pytest.raises(StoreError):
        await store.list()
    with pytest.raises(StoreError):
        await store.delete(None)


@pytest.mark.asyncio
async def test_list_uses_the_id_index_and_keeps_counts(tmp_path: Path) -> None:
    """Listing never scans or counts the whole table (so 100k messages list in milliseconds)."""
    store = SQLiteStore(tmp_path / "mail.db")
    await store.aclose()
    connection = sqlite3.connect(tmp_path / "mail.db")
    try:
        plan = " ".join(
            row[-1]
            for row in connection.execute(
                "EXPLAIN QUERY PLAN SELECT id FROM messages ORDER BY id DESC LIMIT 50"
            )
        )
        assert "USING INDEX" in plan or "USING COVERING INDEX" in plan, plan
        assert "TEMP B-TREE" not in plan, plan
    finally:
        connection.close()


@pytest.mark.asyncio
async def test_a_batch_of_new_mail_alone_is_one_statement_that_logs_itself(
    tmp_path: Path,
) -> None:
    store = SQLiteStore(tmp_path / "mail.db")
    statements: list[str] = []
    try:
        await store_many(store, tmp_path, 1)  # the first transaction also prunes the log
        await until(lambda: store.stats.indexed == 1, "the writer is idle")
        store._writer._connection._connection.set_trace_callback(statements.append)
        before = store.stats.transactions
        ids = await store_many(store, tmp_path, 50)
        transactions = store.stats.transactions - before
    finally:
        await store.aclose()
    # No BEGIN and no COMMIT: SQLite commits the INSERT on its own.  (The trace repeats a
    # statement, values expanded, for each program its triggers run, and shows what the
    # search index runs inside as comments.)  Adding the mail to the search index comes
    # later, in unsynced transactions of its own.
    committed: list[str] = []
    indexing = False
    for statement in statements:
        if statement == "PRAGMA synchronous = NORMAL":
            indexing = True
        elif statement == "PRAGMA synchronous = FULL":
            indexing = False
        elif not indexing and not statement.startswith("-- "):
            committed.append(statement)
    assert len(set(committed)) == transactions
    assert all(s.startswith("INSERT INTO incoming (") for s in committed), committed
    connection = sqlite3.connect(tmp_path / "mail.db")
    try:
        rows = connection.execute("SELECT origin, kind, ids FROM changes ORDER BY seq").fetchall()
        (stored,) = connection.execute("SELECT count(*) FROM messages").fetchone()
    finally:
        connection.close()
    assert stored == 51
    assert len(rows) == 1 + transactions
    logged = [i for _, kind, text in rows[1:] for i in json.loads(text) if kind == "stored"]
    assert sorted(logged) == sorted(ids)
    assert {origin for origin, _, _ in rows} == {store._origin}


async def one_message_then(path: Path, tmp_path: Path, script: str) -> str:
    """Store one message at ``path``, close the store, then run ``script`` on the database."""
    store = SQLiteStore(path)
    try:
        (message_id,) = await store_many(store, tmp_path, 1)
    finally:
        await store.aclose()
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.executescript(script)
    finally:
        connection.close()
    return message_id


_VERSION_3_INCOMING = f"""
DROP VIEW incoming;
CREATE VIEW incoming AS SELECT {_INCOMING_COLUMNS}, NULL AS content FROM messages;
CREATE TRIGGER incoming_inserted INSTEAD OF INSERT ON incoming BEGIN
    INSERT INTO messages ({_INCOMING_COLUMNS}) VALUES ({_NEW_COLUMNS});
    INSERT INTO bodies (seq, data) SELECT last_insert_rowid(), NEW.content
    WHERE NEW.content IS NOT NULL;
END;
PRAGMA user_version = 3;
"""


@pytest.mark.asyncio
async def test_a_version_3_database_is_upgraded_and_logs_new_mail(tmp_path: Path) -> None:
    path = tmp_path / "mail.db"
    # As mailgate with schema 3 left it: incoming wrote no change log.
    old = await one_message_then(path, tmp_path, _VERSION_3_INCOMING)
    connection = sqlite3.connect(path)
    try:
        with pytest.raises(sqlite3.OperationalError, match="change_ids"):
            connection.execute("SELECT change_ids FROM incoming")
    finally:
        connection.close()
    store = SQLiteStore(path)
    try:
        await store_many(store, tmp_path, 1)  # prunes the log: a transaction of its own
        new = await store_many(store, tmp_path, 2)
        assert (await store.list()).total == 4
        assert await store.raw(MessageId(old)) is not None
    finally:
        await store.aclose()
    connection = sqlite3.connect(path)
    try:
        assert connection.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        logged = [
            i
            for (text,) in connection.execute("SELECT ids FROM changes WHERE kind = 'stored'")
            for i in json.loads(text)
        ]
        assert set(new) <= set(logged)
    finally:
        connection.close()


@pytest.mark.asyncio
async def test_a_version_2_database_is_upgraded_and_stores_new_mail(tmp_path: Path) -> None:
    path = tmp_path / "mail.db"
    # As mailgate with schema 2 left it: new rows were inserted into messages directly.
    old = await one_message_then(path, tmp_path, "DROP VIEW incoming; PRAGMA user_version = 2;")
    store = SQLiteStore(path)
    try:
        new = await store_many(store, tmp_path, 2)
        for message_id, subject in [(old, b"m0"), (new[0], b"m0"), (new[1], b"m1")]:
            raw = await store.raw(MessageId(message_id))
            assert raw is not None
            assert b"Subject: " + subject + b"\r\n" in raw
        assert (await store.list()).total == 3
    finally:
        await store.aclose()


_INLINE = (
    b'MIME-Version: 1.0\r\nContent-Type: multipart/related; boundary="r"\r\n\r\n'
    b"--r\r\nContent-Type: text/html\r\n\r\n<img src=cid:i@x>\r\n"
    b"--r\r\nContent-Type: image/gif\r\nContent-ID: <i@x>\r\n\r\nGIF\r\n--r--\r\n"
)


@pytest.mark.asyncio
async def test_a_version_7_database_is_upgraded_and_counts_inline_parts(tmp_path: Path) -> None:
    path = tmp_path / "mail.db"
    # As mailgate with schema 7 left it: no inline part counts.
    old = await one_message_then(
        path, tmp_path, "DROP VIEW incoming; DROP TABLE inline_parts; PRAGMA user_version = 7;"
    )
    store = SQLiteStore(path)
    acceptor = Acceptor(store, DeliverySettings(hostname="mx.test", spool_dir=tmp_path / "spool"))
    try:
        spool = acceptor.begin(make_envelope())
        spool.write(b"Subject: image\r\n" + _INLINE)
        new = await acceptor.commit(spool)
        page = await store.search(parse_query("has:inline"))
        assert [m.id for m in page.messages] == [new]
        assert page.messages[0].inline == 1
        assert [m.inline for m in (await store.list()).messages if m.id == old] == [0]
        await store.delete([new])
        assert (await store.search(parse_query("has:inline"))).total == 0
    finally:
        acceptor.close()
        await store.aclose()
    connection = sqlite3.connect(path)
    try:
        assert connection.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert connection.execute("SELECT count(*) FROM inline_parts").fetchone() == (0,)
    finally:
        connection.close()


@pytest.mark.asyncio
async def test_a_version_1_database_is_upgraded_and_keeps_its_messages(tmp_path: Path) -> None:
    path = tmp_path / "mail.db"
    store = SQLiteStore(path)
    try:
        ids = await store_many(store, tmp_path, 3)
        await store.mark_read(ids[:1], True)
    finally:
        await store.aclose()
    connection = sqlite3.connect(path, isolation_level=None)
    try:  # as mailgate with schema 1 left it
        connection.executescript("DROP TABLE changes; DROP VIEW incoming; PRAGMA user_version = 1;")
    finally:
        connection.close()
    store = SQLiteStore(path)
    try:
        page = await store.list()
        assert sorted(m.id for m in page.messages) == sorted(ids)
        assert (page.total, page.unread) == (3, 2)
        await store.delete(ids[:1])
    finally:
        await store.aclose()
    connection = sqlite3.connect(path)
    try:
        assert connection.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert connection.execute("SELECT kind, ids FROM changes").fetchall() == [
            ("deleted", f'["{ids[0]}"]')
        ]
    finally:
        connection.close()


@pytest.mark.asyncio
async def test_each_field_of_a_new_message_record_lands_in_its_column(tmp_path: Path) -> None:
    """``incoming_values`` and the view agree by name, whatever the order of either."""
    store = SQLiteStore(tmp_path / "mail.db")
    try:
        (message_id,) = await store_many(store, tmp_path, 1)
        stored = await store.get(MessageId(message_id))
    finally:
        await store.aclose()
    assert stored is not None
    expected = new_message_record(
        stored.summary, stored.envelope, body_file=None, content=None, origin="o"
    )
    connection = sqlite3.connect(tmp_path / "mail.db")
    connection.row_factory = sqlite3.Row
    try:
        row = connection.execute("SELECT * FROM messages").fetchone()
    finally:
        connection.close()
    assert dict(row) == {
        "seq": 1,
        "id": expected.id,
        "received_at": expected.received_at_ms,
        "size": expected.size,
        "read": 0,
        "sender": expected.sender_json,
        "recipients": expected.recipients_json,
        "subject": expected.subject,
        "date": expected.date_iso,
        "message_id": expected.header_message_id,
        "attachments": expected.attachments,
        "snippet": expected.snippet,
        "envelope": expected.envelope_json,
        "body_file": None,
    }


@pytest.mark.asyncio
@pytest.mark.parametrize("check", QUEUE_STORE_CHECKS, ids=lambda check: check.__name__)
async def test_queue_conformance(
    check: Callable[[StoreUnderTest], Awaitable[None]], tmp_path: Path
) -> None:
    await check(under_test(tmp_path))
