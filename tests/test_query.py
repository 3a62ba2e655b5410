"""The search language: parsing, evaluation, and the SQLite store agreeing with it."""

from __future__ import annotations

import dataclasses
import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailgate.model import Address, MessageId, MessageSummary
from mailgate.query import (
    Bound,
    BoundTerm,
    Field,
    Flag,
    FlagTerm,
    Query,
    QueryError,
    TextTerm,
    matches,
    parse_query,
)
from mailgate.stores import open_store
from store_helpers import index_state, until
from web_helpers import deliver, email

# -- parsing ---------------------------------------------------------------------------------


def test_free_words_and_phrases() -> None:
    assert parse_query('Hello "Big World"  again').terms == (
        TextTerm(Field.TEXT, "hello"),
        TextTerm(Field.TEXT, "big world"),
        TextTerm(Field.TEXT, "again"),
    )


@pytest.mark.parametrize(
    ("text", "term"),
    [
        ("from:alice", TextTerm(Field.FROM, "alice")),
        ("TO:Bob@Example.org", TextTerm(Field.TO, "bob@example.org")),
        ("cc:carol", TextTerm(Field.CC, "carol")),
        ("bcc:dave", TextTerm(Field.BCC, "dave")),
        ("reply-to:eve", TextTerm(Field.REPLY_TO, "eve")),
        ("addressed:frank", TextTerm(Field.ADDRESSED, "frank")),
        ('subject:"quarterly report"', TextTerm(Field.SUBJECT, "quarterly report")),
        ("message-id:<abc@x>", TextTerm(Field.MESSAGE_ID, "abc@x")),
        ('tag:"Needs Review"', TextTerm(Field.TAG, "needs review")),
        ("is:read", FlagTerm(Flag.READ)),
        ("is:unread", FlagTerm(Flag.UNREAD)),
        ("is:tagged", FlagTerm(Flag.TAGGED)),
        ("has:attachment", FlagTerm(Flag.ATTACHMENT)),
        ("has:attachments", FlagTerm(Flag.ATTACHMENT)),
        ("has:inline", FlagTerm(Flag.INLINE)),
        ("-has:inline", FlagTerm(Flag.INLINE, negated=True)),
        ("-from:alice", TextTerm(Field.FROM, "alice", negated=True)),
        ("!is:read", FlagTerm(Flag.READ, negated=True)),
        ('-"two words"', TextTerm(Field.TEXT, "two words", negated=True)),
        ("larger:10K", BoundTerm(Bound.LARGER, octets=10 * 1024)),
        ("smaller:2MB", BoundTerm(Bound.SMALLER, octets=2 * 1024 * 1024)),
        ("larger:1.5m", BoundTerm(Bound.LARGER, octets=1572864)),
        ("smaller:500", BoundTerm(Bound.SMALLER, octets=500)),
        ("before:2024-03-01", BoundTerm(Bound.BEFORE, when=datetime(2024, 3, 1, tzinfo=UTC))),
        (
            "after:2024-03-01T12:00:00+02:00",
            BoundTerm(
                Bound.AFTER, when=datetime(2024, 3, 1, 12, tzinfo=timezone(timedelta(hours=2)))
            ),
        ),
        # Not a field of the language: plain text.
        ("http://example.com", TextTerm(Field.TEXT, "http://example.com")),
        ("-", TextTerm(Field.TEXT, "-")),
    ],
)
def test_terms(text: str, term: object) -> None:
    assert parse_query(text).terms == (term,)


def test_dates_without_a_zone_use_the_callers() -> None:
    paris = timezone(timedelta(hours=1))
    (term,) = parse_query("before:2024-03-01", tz=paris).terms
    assert term == BoundTerm(Bound.BEFORE, when=datetime(2024, 3, 1, tzinfo=paris))


@pytest.mark.parametrize(
    "text",
    [
        "before:soon",
        "after:2024-13-01",
        "larger:lots",
        "is:starred",
        "has:cats",
        "larger:9223372036854775808",  # past any store's 64-bit integers
        "larger:10000000000G",
        "smaller:" + "9" * 400,  # past a float, too
    ],
)
def test_what_cannot_be_read_is_refused(text: str) -> None:
    with pytest.raises(QueryError):
        parse_query(text)


def test_empty_and_overlong() -> None:
    assert parse_query("   ") == Query()
    assert not parse_query('"" ""')
    with pytest.raises(QueryError, match="longer than"):
        parse_query("x" * 3000)


def test_an_unclosed_quote_runs_to_the_end() -> None:
    assert parse_query('subject:"half open').terms == (TextTerm(Field.SUBJECT, "half open"),)


@given(st.text(max_size=200))
def test_parsing_raises_nothing_but_query_error(text: str) -> None:
    try:
        query = parse_query(text)
    except QueryError:
        return
    for term in query.terms:
        if isinstance(term, TextTerm):
            assert term.value
            assert term.value == term.value.lower()


# -- evaluation ------------------------------------------------------------------------------

NOW = datetime(2024, 5, 1, 12, tzinfo=UTC)

SUMMARY = MessageSummary(
    id=MessageId("01HX0000000000000000000000"),
    received_at=NOW,
    size=4000,
    sender=Address("Alice Example", "alice@example.com"),
    to=(Address("Bob", "bob@example.org"),),
    cc=(Address("", "carol@example.net"),),
    subject="Quarterly report",
    message_id="report-1@example.com",
    attachments=1,
    snippet="Numbers are up this quarter",
    tags=("Finance",),
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("quarterly", True),
        ("QUARTER", True),
        ("numbers up", True),  # every word must appear, anywhere
        ('"numbers are up"', True),
        ('"numbers up"', False),
        ("from:alice", True),
        ("from:bob", False),
        ("to:bob@example.org", True),
        ("cc:carol", True),
        ("addressed:carol", True),
        ("subject:report", True),
        ("subject:numbers", False),
        ("message-id:<report-1@example.com>", True),
        ("message-id:report", False),
        ("tag:finance", True),
        ("tag:fin", False),
        ("is:unread", True),
        ("is:read", False),
        ("is:tagged", True),
        ("has:attachment", True),
        ("-has:attachment", False),
        ("has:inline", False),
        ("-has:inline", True),
        ("larger:4000", True),
        ("smaller:4000", False),
        ("before:2024-05-02", True),
        ("after:2024-05-02", False),
        ("after:2024-05-01T12:00:00Z", True),
        ("quarterly -from:alice", False),
        ("", True),
    ],
)
def test_matches(text: str, expected: bool) -> None:
    assert matches(parse_query(text), SUMMARY) is expected


def test_has_inline_is_about_inline_parts_not_attachments() -> None:
    with_image = dataclasses.replace(SUMMARY, inline=1, attachments=0)
    assert matches(parse_query("has:inline"), with_image)
    assert not matches(parse_query("has:attachment"), with_image)
    assert matches(parse_query("larger:9223372036854775807"), SUMMARY) is False


# -- the SQLite store answers as matches() does -------------------------------------------

CORPUS = [
    ("Quarterly report", "Alice Example <alice@example.com>", "Numbers are up", ()),
    ("Lunch?", "bob@example.org", "Pizza or sushi, 100% sure", ()),
    ("Invoice 42", "Billing <billing@shop.example>", "Your invoice_42 is attached", (1,)),
    ("Re: Quarterly report", "Carol <carol@example.net>", "Great numbers!", ()),
    ("Résumé für Dich", "Dörte <doerte@example.de>", "Grüße aus Köln", (1,)),
    # Capitals beyond ASCII: SQLite's own lower() and LIKE leave them as they are.
    ("ÄRGER MIT MÜLLER", "ÉLISE <elise@example.fr>", "ПРИВЕТ ИЗ МОСКВЫ", ()),
]

QUERIES = [
    "quarterly",
    "report -re:",
    '"quarterly report"',
    "numbers",
    "from:alice",
    "from:example",
    "-from:example.org",
    "to:bob",
    "subject:invoice",
    "100%",
    "invoice_42",
    "e_4",
    "is:unread",
    "is:read",
    "has:attachment",
    "-has:attachment",
    "larger:1",
    "smaller:100",
    "after:2000-01-01",
    "before:2000-01-01",
    "tag:urgent",
    "is:tagged",
    "-is:tagged quarterly",
    "köln",
    "re",
    "zz",
    "message-id:<lunch.@test.example>",
    "ärger",
    "MÜLLER",
    "привет",
    "ü",
    "-müller",
    "subject:müller",
    "from:élise",
    "tag:ärger",
]


# New mail waits in ``unindexed`` until the writer is idle: searches must not tell.
UNINDEXED = {
    "all indexed": "",
    "some not yet indexed": "WHERE seq % 2 = 1",
    "none indexed yet": "WHERE 1",
}


@pytest.mark.asyncio
@pytest.mark.parametrize("unindexed", UNINDEXED.values(), ids=UNINDEXED.keys())
async def test_the_sqlite_store_searches_as_matches_says(tmp_path: Path, unindexed: str) -> None:
    store = await open_store(f"sqlite://{tmp_path}/mail.db")
    try:
        ids = []
        for subject, sender, text, attachments in CORPUS:
            parts = tuple(("a.bin", "application/octet-stream", b"x") for _ in attachments)
            content = email(subject, sender=sender, text=text, attachments=parts)
            ids.append(await deliver(store, content, spool_dir=tmp_path / "spool"))
        await store.mark_read([ids[1]], True)
        await store.set_tags([ids[0], ids[2]], ["urgent", "Finance"])
        await store.set_tags([ids[-1]], ["Ärger"])
        await until(lambda: index_state(tmp_path / "mail.db") == (len(CORPUS), 0), "indexed")
        if unindexed:  # the writer, idle, leaves them so until the next new message
            connection = sqlite3.connect(tmp_path / "mail.db", isolation_level=None)
            try:
                connection.executescript(
                    "BEGIN; INSERT INTO unindexed SELECT rowid, text FROM message_search"
                    f" WHERE rowid IN (SELECT seq FROM messages {unindexed});"
                    " DELETE FROM message_search WHERE rowid IN (SELECT seq FROM unindexed);"
                    " COMMIT;"
                )
            finally:
                connection.close()
        everything = (await store.list(limit=100)).messages
        for text in QUERIES:
            query = parse_query(text)
            page = await store.search(query, limit=100)
            expected = [s.id for s in everything if matches(query, s)]
            assert [s.id for s in page.messages] == expected, text
            assert page.total == len(expected), text
            unread = sum(1 for s in everything if matches(query, s) and not s.read)
            assert page.unread == unread, text
    finally:
        await store.aclose()


@pytest.mark.asyncio
async def test_tags_in_the_sqlite_store(tmp_path: Path) -> None:
    store = await open_store(f"sqlite://{tmp_path}/mail.db")
    try:
        first = await deliver(store, email("one"), spool_dir=tmp_path / "spool")
        second = await deliver(store, email("two"), spool_dir=tmp_path / "spool")
        assert await store.set_tags([first, second, MessageId("nope")], ["a", "b", "a"]) == 2
        assert await store.tags() == {"a": 2, "b": 2}
        assert await store.set_tags([second], ["c"]) == 1
        assert await store.tags() == {"a": 1, "b": 1, "c": 1}
        assert await store.rename_tag("a", "c") == 1
        assert await store.tags() == {"b": 1, "c": 2}
        assert await store.delete_tag("c") == 2
        assert await store.tags() == {"b": 1}
        stored = await store.get(first)
        assert stored is not None
        assert stored.summary.tags == ("b",)
        await store.delete([first])
        assert await store.tags() == {}
        page = await store.search(parse_query("two"))
        assert [s.id for s in page.messages] == [second]
    finally:
        await store.aclose()


@pytest.mark.asyncio
async def test_a_store_made_before_search_existed_is_indexed_when_opened(tmp_path: Path) -> None:
    store = await open_store(f"sqlite://{tmp_path}/mail.db")
    await deliver(store, email("older message"), spool_dir=tmp_path / "spool")
    await store.aclose()
    connection = sqlite3.connect(tmp_path / "mail.db")
    connection.executescript("DROP TRIGGER message_search_deleted; DROP TABLE message_search;")
    connection.close()
    store = await open_store(f"sqlite://{tmp_path}/mail.db")
    try:
        page = await store.search(parse_query("older"))
        assert page.total == 1
    finally:
        await store.aclose()
