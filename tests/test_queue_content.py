"""A stored message's content on its way out (``queue._content``): streamed when large.

The streamed content is what ``outgoing_content`` makes of the whole, however the
store cuts it in parts; the facts ``MAIL`` needs are those ``Transaction.of``
reads from the whole; a report about a large message returns its header only,
whatever ``RET`` says.  The store is a real SQLite store with its body files.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client_shell_helpers import FAST, raw_server
from client_shell_helpers import settings as client_settings
from mailgate.delivery import Acceptor, DeliverySettings
from mailgate.model import Envelope, MessageId
from mailgate.ports import StoreError
from mailgate.protocol import Ret
from mailgate.queue import (
    Action,
    OriginalMessage,
    RecipientStatus,
    Transaction,
    build_report,
    connect,
)
from mailgate.queue._content import (
    REPORT_HEAD_OCTETS,
    WHOLE_CONTENT_OCTETS,
    StoredContent,
    load_content,
    outgoing_content,
    strip_return_path,
)
from mailgate.stores import SQLiteStore

AT = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)
LARGE = WHOLE_CONTENT_OCTETS + 300_000

HEADS = [
    b"Return-Path: <a@b.test>\r\nX: y\r\n\r\nbody\r\n",
    b"Return-Path: <a@b.test>\r\n\tfolded\r\n more\r\nX: y\r\n\r\nbody",
    b"return-path:<>\r\n",
    b"Return-Path: <a@b.test>",  # no line end: kept as it is
    b"X-Return-Path: <a@b.test>\r\n\r\n",
    b"Retu",
    b"",
    b"Subject: \xc3\xa9t\xc3\xa9\r\n\r\nplain",
    b"Subject: plain\n\nbody \xff",
]


async def _parts(content: bytes, cuts: list[int]) -> AsyncIterator[bytes]:
    start = 0
    for cut in sorted(set(cuts)):
        if start < cut < len(content):
            yield content[start:cut]
            start = cut
    if start < len(content) or not content:
        yield content[start:]


async def _strip(content: bytes, cuts: list[int]) -> bytes:
    return b"".join([part async for part in strip_return_path(_parts(content, cuts))])


@given(
    head=st.sampled_from(HEADS),
    tail=st.binary(max_size=40),
    cuts=st.lists(st.integers(min_value=0, max_value=120), max_size=12),
)
@settings(max_examples=300, deadline=None)
def test_stripping_while_streaming_is_stripping_the_whole(
    head: bytes, tail: bytes, cuts: list[int]
) -> None:
    content = head + tail
    assert asyncio.run(_strip(content, cuts)) == outgoing_content(content)


def test_outgoing_content_leaves_out_the_return_path_only() -> None:
    assert outgoing_content(HEADS[0]) == b"X: y\r\n\r\nbody\r\n"
    assert outgoing_content(HEADS[1]) == b"X: y\r\n\r\nbody"
    assert outgoing_content(HEADS[3]) == HEADS[3]
    assert outgoing_content(HEADS[4]) == HEADS[4]


@contextlib.asynccontextmanager
async def stored(
    tmp_path: Path, *contents: bytes
) -> AsyncIterator[tuple[SQLiteStore, list[MessageId]]]:
    store = SQLiteStore(tmp_path / "mail.db")
    acceptor = Acceptor(store, DeliverySettings(hostname="mx.test", spool_dir=tmp_path / "spool"))
    try:
        ids = []
        for content in contents:
            spool = acceptor.begin(
                Envelope(
                    mail_from="a@here.test",
                    rcpt_to=("b@far.test",),
                    received_at=AT,
                    outbound=("b@far.test",),
                )
            )
            for start in range(0, len(content), 100_000):
                spool.write(content[start : start + 100_000])
            ids.append(await acceptor.commit(spool))
        yield store, ids
    finally:
        acceptor.close()
        await store.aclose()


def message(subject: bytes, body_line: bytes) -> bytes:
    header = b"From: a@here.test\r\nTo: b@far.test\r\nSubject: " + subject + b"\r\n\r\n"
    return header + body_line * (LARGE // len(body_line) + 1)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("subject", "line"),
    [
        (b"plain", b"x" * 76 + b"\r\n"),
        (b"plain", b"\xc3\xa9" * 38 + b"\r\n"),
        (b"\xc3\xa9t\xc3\xa9", b"y" * 76 + b"\r\n"),
    ],
    ids=["ascii", "8-bit body", "8-bit header"],
)
async def test_a_large_message_streams_what_the_whole_would_send(
    tmp_path: Path, subject: bytes, line: bytes
) -> None:
    async with stored(tmp_path, message(subject, line)) as (store, (message_id,)):
        raw = await store.raw(message_id)
        assert raw is not None
        assert len(raw) > WHOLE_CONTENT_OCTETS
        loaded = await load_content(store, message_id, len(raw))
        assert loaded is not None
        assert not loaded.whole
        assert loaded.original == raw[:REPORT_HEAD_OCTETS]
        streamed = loaded.outgoing
        assert isinstance(streamed, StoredContent)
        expected = Transaction.of(
            outgoing_content(raw), sender="a@here.test", recipients=["b@far.test"]
        )
        facts = Transaction.of(streamed, sender="a@here.test", recipients=["b@far.test"])
        assert facts.envelope == expected.envelope
        for _ in range(2):  # each iteration reads the store again, from the first octet
            parts = [part async for part in streamed]
            assert len(parts) > 1
            assert b"".join(parts) == outgoing_content(raw)
        assert await store.delete([message_id]) == 1
        assert await load_content(store, message_id, len(raw)) is None


@pytest.mark.asyncio
async def test_a_small_message_is_read_whole(tmp_path: Path) -> None:
    small = b"From: a@here.test\r\nSubject: small\r\n\r\nHi.\r\n"
    async with stored(tmp_path, small) as (store, (message_id,)):
        raw = await store.raw(message_id)
        assert raw is not None
        loaded = await load_content(store, message_id, len(raw))
        assert loaded is not None
        assert (loaded.outgoing, loaded.original, loaded.whole) == (
            outgoing_content(raw),
            raw,
            True,
        )


FAILED = [RecipientStatus(final_recipient="b@far.test", action=Action.FAILED, status="5.1.1")]


def test_a_report_about_part_of_a_message_returns_its_header_only() -> None:
    header = b"From: a@here.test\r\nSubject: big\r\n\r\n"
    head = header + b"z" * 1000  # as small as a whole message RET=FULL would return
    original = OriginalMessage(
        sender="a@here.test", content=head, arrival_date=AT, ret=Ret.FULL, whole=False
    )
    report = build_report(original, FAILED, reporting_mta="mx.here.test", report_id="r1", now=AT)
    assert b"Content-Type: text/rfc822-headers" in report.content
    assert b"Subject: big" in report.content
    assert b"z" * 100 not in report.content
    whole = OriginalMessage(sender="a@here.test", content=head, arrival_date=AT, ret=Ret.FULL)
    report = build_report(whole, FAILED, reporting_mta="mx.here.test", report_id="r1", now=AT)
    assert b"z" * 1000 in report.content


class FailingContent:
    """``SizedContent`` whose store fails after its first part."""

    size = 300_000
    eight_bit = False
    utf8_headers = False

    async def _parts(self) -> AsyncIterator[bytes]:
        yield b"Subject: cut short\r\n\r\n" + b"x" * 100_000
        raise StoreError("message 0 was deleted while it was read")

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._parts()


@pytest.mark.asyncio
async def test_a_store_failing_part_way_drops_the_connection_and_ends_no_message() -> None:
    ended: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 fake.test ESMTP\r\n")
        for command, reply in ((b"EHLO", b"250 fake.test"), (b"MAIL", b"250 2.1.0 Ok"),
                               (b"RCPT", b"250 2.1.5 Ok"), (b"DATA", b"354 Go ahead")):  # fmt: skip
            assert (await reader.readline()).startswith(command)
            writer.write(reply + b"\r\n")
        ended.set_result(await reader.read())  # all the client sends, up to its end

    async with raw_server(server) as port:
        client = await connect("127.0.0.1", port, client_settings())
        transaction = Transaction.of(
            FailingContent(), sender="a@here.test", recipients=["b@far.test"]
        )
        with pytest.raises(StoreError, match="deleted while it was read"):
            await client.send(transaction)
        # Dropped by the client, not closed by us: half a message, never the final dot.
        sent = await asyncio.wait_for(ended, FAST)
        await client.aclose()
    assert sent.startswith(b"Subject: cut short\r\n\r\nxxx")
    assert b"\r\n.\r\n" not in sent
