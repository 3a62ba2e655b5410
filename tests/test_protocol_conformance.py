"""RFC 5321 MUSTs a black-box conformance run found failing, against the engine:
quoted local parts, address literals, lengths, source routes, the recipient
limit and the error budget, bare line endings in commands, control
characters.  Every case is fed whole, byte by byte and at random splits."""

from __future__ import annotations

import pytest

from mailgate.protocol import (
    ConnectionSettings,
    DataStart,
    Ehlo,
    MailFrom,
    RcptTo,
    State,
)
from protocol_helpers import HOSTNAME, Dialogue, assert_feeding_invariant

EHLO = b"EHLO client.example\r\n"
MAIL = b"MAIL FROM:<a@example.org>\r\n"
AUTH = ConnectionSettings(
    hostname=HOSTNAME, auth_mechanisms=("PLAIN", "LOGIN"), auth_requires_tls=False
)


def check(
    flights: list[bytes] | bytes, settings: ConnectionSettings | None = None, **kwargs: object
) -> Dialogue:
    return assert_feeding_invariant(flights, settings=settings, **kwargs)  # type: ignore[arg-type]


def last_reply(flights: list[bytes] | bytes, settings: ConnectionSettings | None = None) -> bytes:
    return check(flights, settings).reply_lines()[-1]


def rcpt(path: bytes) -> RcptTo | bytes:
    """The RcptTo event for ``RCPT TO:path``, or the reply line refusing it."""
    dialogue = check([EHLO + MAIL + b"RCPT TO:" + path + b"\r\n"])
    event = dialogue.events[-1]
    return event if isinstance(event, RcptTo) else dialogue.reply_lines()[-1]


def mail(path: bytes) -> MailFrom | bytes:
    """The MailFrom event for ``MAIL FROM:path``, or the reply line refusing it."""
    dialogue = check([EHLO + b"MAIL FROM:" + path + b"\r\n"])
    event = dialogue.events[-1]
    return event if isinstance(event, MailFrom) else dialogue.reply_lines()[-1]


# ------------------------------------------- bare line endings in commands (2.3.8)


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"NOOP\nNOOP\r\n", b"500 5.5.2 Bare LF received; end lines with CRLF (RFC 5321 2.3.8)"),
        (b"NOOP\rNOOP\r\n", b"500 5.5.2 Bare CR received; end lines with CRLF (RFC 5321 2.3.8)"),
        (b"\nQUIT\r\n", b"500 5.5.2 Bare LF received; end lines with CRLF (RFC 5321 2.3.8)"),
        (b"QUIT\r\rQUIT\r\n", b"500 5.5.2 Bare CR received; end lines with CRLF (RFC 5321 2.3.8)"),
        (b"QUIT\n\r\n", b"500 5.5.2 Bare LF received; end lines with CRLF (RFC 5321 2.3.8)"),
    ],
)
def test_a_bare_line_ending_makes_one_malformed_line(line: bytes, reply: bytes) -> None:
    dialogue = check([EHLO + line + b"NOOP\r\n"])
    assert dialogue.reply_lines()[-2:] == [reply, b"250 2.0.0 OK"]
    assert dialogue.conn.state is State.READY


def test_nothing_after_a_bare_lf_runs() -> None:
    # The desync that smuggling and pipelining confusion start from: a server
    # that ended the line at the LF would run the MAIL and the RCPT here.
    smuggled = b"RSET\nMAIL FROM:<evil@example.org>\nRCPT TO:<b@example.com>\r\n"
    dialogue = check([EHLO + MAIL + b"RCPT TO:<c@example.com>\r\n" + smuggled + b"DATA\r\n"])
    assert dialogue.codes[1:] == [250, 250, 250, 500, 354]
    assert [type(e) for e in dialogue.events] == [Ehlo, MailFrom, RcptTo, DataStart]


def test_an_lf_only_client_hears_at_once() -> None:
    # The reply comes at the bare LF, not at a CRLF that may never come.
    dialogue = check([b"EHLO client.example\nMAIL FROM:<a@example.org>\n"])
    assert dialogue.codes[1:] == [500]
    assert dialogue.conn.state is State.CONNECTED


def test_a_bare_line_ending_past_the_limit_is_a_long_line() -> None:
    dialogue = check([EHLO + b"NOOP " + b"x" * 600 + b"\nNOOP\r\nNOOP\r\n"])
    assert dialogue.reply_lines()[-2:] == [b"500 5.5.2 Line too long", b"250 2.0.0 OK"]


def test_a_cr_at_the_packet_end_waits_for_the_next() -> None:
    dialogue = check([EHLO + b"NOOP\r", b"\nNOOP\r", b"x\r\nNOOP\r\n"])
    assert dialogue.codes[1:] == [250, 250, 500, 250]
