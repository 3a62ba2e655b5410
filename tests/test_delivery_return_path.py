"""Return-Path (RFC 5321 4.4): ours comes first, and the client's are removed."""

from __future__ import annotations

import itertools
import re
import smtplib

from hypothesis import given
from hypothesis import strategies as st

from mailgate.delivery._return_path import ReturnPathFilter, return_path_header
from mailgate.testing import MailgateServer

HEADER = (
    b"Return-Path: <forged@attacker.example>\r\n"
    b"From: Alice <alice@example.org>\r\n"
    b"return-path :\r\n"
    b"\t<folded@attacker.example>\r\n"
    b"Subject: Hello\r\n"
    b" continued\r\n"
    b"RETURN-PATH: <>\r\n"
)
BODY = b"\r\nReturn-Path: <in-the-body@example.org>\r\nstays, as body text.\r\n"
CLEAN = b"From: Alice <alice@example.org>\r\nSubject: Hello\r\n continued\r\n" + BODY


def filtered(chunks: list[bytes]) -> bytes:
    header_filter = ReturnPathFilter()
    out = b"".join(header_filter.feed(chunk) for chunk in chunks)
    return out + header_filter.flush()


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def test_every_return_path_field_of_the_header_goes_and_nothing_else() -> None:
    assert filtered([HEADER + BODY]) == CLEAN


@given(st.lists(st.integers(min_value=0), max_size=12))
def test_any_chunking_gives_the_same_content(cuts: list[int]) -> None:
    assert filtered(split(HEADER + BODY, cuts)) == CLEAN


@given(st.binary(max_size=300), st.lists(st.integers(min_value=0), max_size=8))
def test_content_without_a_return_path_passes_untouched(data: bytes, cuts: list[int]) -> None:
    data = re.sub(rb"(?i)return-path", b"x", data)
    assert filtered(split(data, cuts)) == data


def test_an_unfinished_last_line_is_kept_or_dropped_as_its_field_is() -> None:
    assert filtered([b"Subject: x\r\nReturn-Path: <a@b>"]) == b"Subject: x\r\n"
    assert filtered([b"Return-Path: <a@b>\r\nSubject: x"]) == b"Subject: x"
    assert filtered([b"Return-Path: <a@b>\r\n", b" folded"]) == b""


def test_the_header_line() -> None:
    assert return_path_header("alice@example.org") == b"Return-Path: <alice@example.org>\r\n"
    assert return_path_header("") == b"Return-Path: <>\r\n"
    assert return_path_header("δοκιμή@παράδειγμα.δοκιμή") == (
        "Return-Path: <δοκιμή@παράδειγμα.δοκιμή>\r\n".encode()
    )


def test_a_stored_message_begins_with_the_reverse_path_and_keeps_no_forged_one() -> None:
    with MailgateServer() as server, smtplib.SMTP(server.host, server.port) as client:
        client.sendmail("sender@example.org", ["rcpt@example.net"], HEADER + BODY)
        client.sendmail("", ["rcpt@example.net"], b"Subject: bounce\r\n\r\nnull sender\r\n")
        client.quit()
        stored = server.wait_for_messages(2)
        raws = [server.raw(summary.id) or b"" for summary in stored]
    bounce, first = raws  # newest first
    assert first.startswith(b"Return-Path: <sender@example.org>\r\nReceived: from ")
    assert first.endswith(b"\r\n" + CLEAN)
    assert first.lower().count(b"return-path") == 2  # ours, and the body's line
    assert bounce.startswith(b"Return-Path: <>\r\nReceived: from ")
