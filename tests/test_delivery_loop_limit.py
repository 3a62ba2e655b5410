"""The loop limit (RFC 5321 6.3): a message whose header already holds 100
``Received`` fields is refused at the end of its data, 554 5.4.6, and
nothing of it is stored.  The fields are counted as the header streams
through the spool, once, whatever the chunking; the body is never read."""

from __future__ import annotations

import itertools
import smtplib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailgate.delivery import MAX_RECEIVED_FIELDS
from mailgate.delivery._return_path import ReturnPathFilter
from mailgate.testing import MailgateServer
from test_server_sessions import Client

TOO_MANY_HOPS = b"554 5.4.6 Too many hops\r\n"


def received(count: int, *, folded: bool = False) -> bytes:
    """``count`` Received fields, as relays prepend them."""
    fields = []
    for hop in range(count):
        field = b"Received: from relay%d.example by relay%d.example; " % (hop, hop + 1)
        if folded:
            field += b"\r\n\tMon, 30 Nov 2026 10:00:00 +0000"
        else:
            field += b"Mon, 30 Nov 2026 10:00:00 +0000"
        fields.append(field + b"\r\n")
    return b"".join(fields)


def message(hops: int, *, folded: bool = False, body: bytes = b"body\r\n") -> bytes:
    return received(hops, folded=folded) + b"Subject: loop\r\n\r\n" + body


# ------------------------------------------------------------ the counting


def count(chunks: list[bytes]) -> int:
    header_filter = ReturnPathFilter()
    for chunk in chunks:
        header_filter.feed(chunk)
    header_filter.flush()
    return header_filter.received


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@given(
    st.integers(min_value=0, max_value=120),
    st.booleans(),
    st.booleans(),
    st.lists(st.integers(min_value=0), max_size=12),
)
def test_any_chunking_counts_each_header_field_once(
    hops: int, folded: bool, return_path: bool, cuts: list[int]
) -> None:
    # A Return-Path field sends the filter line by line; without one it searches.
    head = b"Return-Path: <forged@example.org>\r\n" if return_path else b""
    data = head + message(hops, folded=folded, body=received(7))
    assert count(split(data, cuts)) == hops


def test_only_fields_that_begin_a_line_of_the_header_count() -> None:
    assert count([b"X-Note: Received: no\r\nSubject: received:\r\n\r\nReceived: x\r\n"]) == 0
    assert count([b"received : a\r\nRECEIVED:\tb\r\n\r\n"]) == 2
    assert count([b"Received-SPF: pass\r\nReceivedx: no\r\n\r\n"]) == 0
    # A header without an end (no body, no last CRLF) is counted to its last line.
    assert count([b"Subject: x\r\nReceived: a"]) == 1
    assert count([b"Return-Path: <a@b>\r\nReceived: a"]) == 1
    # A message without a header has no Received field, whatever its body says.
    assert count([b"\r\nReceived: a\r\n"]) == 0


def test_the_limit_is_rfc_5321s() -> None:
    assert MAX_RECEIVED_FIELDS == 100  # RFC 5321 6.3: "normally at least 100"


# -------------------------------------------------------- through the server


def test_99_hops_are_accepted_and_100_refused_with_nothing_stored() -> None:
    with MailgateServer() as server, smtplib.SMTP(server.host, server.port) as client:
        client.sendmail("a@example.org", ["b@example.net"], message(99))
        (stored,) = server.messages()
        raw = server.raw(stored.id)
        assert raw is not None
        assert raw.count(b"\r\nReceived: ") == 100  # ours as well
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("a@example.org", ["b@example.net"], message(100))
        assert (refused.value.smtp_code, refused.value.smtp_error) == (554, b"5.4.6 Too many hops")
        # The session goes on; only the looping message is gone.
        client.sendmail("a@example.org", ["b@example.net"], message(3))
        assert len(server.messages()) == 2


def test_folded_fields_and_a_forged_return_path_change_nothing() -> None:
    forged = b"Return-Path: <x@example.org>\r\n"
    with MailgateServer() as server, smtplib.SMTP(server.host, server.port) as client:
        with pytest.raises(smtplib.SMTPDataError, match="Too many hops"):
            client.sendmail("a@example.org", ["b@example.net"], forged + message(150, folded=True))
        client.sendmail("a@example.org", ["b@example.net"], forged + message(99, folded=True))
        # Received lines in the body are text, not hops.
        client.sendmail("a@example.org", ["b@example.net"], message(60, body=received(60)))
        assert len(server.messages()) == 2


@pytest.mark.parametrize(("hops", "reply"), [(99, b"250 2.0.0 Ok"), (100, TOO_MANY_HOPS)])
def test_bdat_chunks_are_counted_across_their_boundaries(hops: int, reply: bytes) -> None:
    data = message(hops)
    with MailgateServer() as server:
        client = Client(server)
        try:
            client.send(
                b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n"
            )
            client.replies(3)
            # Chunks that cut lines (and "Received") in two.
            chunks = [data[i : i + 997] for i in range(0, len(data), 997)]
            for chunk in chunks[:-1]:
                client.send(b"BDAT %d\r\n" % len(chunk) + chunk)
                assert client.reply().startswith(b"250 ")
            client.send(b"BDAT %d LAST\r\n" % len(chunks[-1]) + chunks[-1])
            assert client.reply().startswith(reply)
            client.send(b"NOOP\r\n")
            assert client.reply().startswith(b"250 ")
        finally:
            client.close()
        assert len(server.messages()) == (hops < MAX_RECEIVED_FIELDS)
