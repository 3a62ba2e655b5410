"""The engine's RFC 5321 conformance, played through a live server.

Each test checks on a real socket what the engine tests check on bytes in
memory: that hostile lines get syntax errors and never an internal error,
that recipients past the limit are flow control, that the policy matches
quoted local parts and drops source routes, and that a message sent by
Python's ``smtplib`` with LF line endings is stored with CRLF.
"""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from email.message import EmailMessage

import pytest

from mailgate.config import Domain, Settings
from mailgate.testing import MailgateServer
from test_server_sessions import Client as SessionClient


class Client(SessionClient):
    """The raw-socket client of the live session tests, sending and reading in one call."""

    def exchange(self, data: bytes, replies: int = 1) -> list[bytes]:
        self.send(data)
        return self.replies(replies)


@pytest.fixture(scope="module")
def server() -> Iterator[MailgateServer]:
    with MailgateServer(hostname="mx.test") as running:
        yield running


@pytest.fixture
def client(server: MailgateServer) -> Iterator[Client]:
    made = Client(server)
    yield made
    made.close()


NASTY = [
    b"EHLO a\x01b\r\n",
    b"HELO a\x7fb\r\n",
    "EHLO a\u0085b\r\n".encode(),
    b"EHLO c.example\r\n",
    b"MAIL FROM:<a@b.example> X\x01=1\r\n",
    b"MAIL FROM:<a@b.example> X=\x1b[31m\r\n",
    b"MAIL FROM:<a\x00b@b.example>\r\n",
    b"MAIL FROM:<a@b.example>\nRCPT TO:<c@d.example>\r\n",
    b"MAIL FROM:<a@b.example>\rRCPT TO:<c@d.example>\r\n",
    b"VRFY \x01\r\n",
    b"EXPN a\tb\r\n",
    b"NOOP\nQUIT\r\n",
]


def test_nasty_lines_get_syntax_errors_and_the_session_goes_on(client: Client) -> None:
    replies = [client.exchange(line)[0] for line in NASTY]
    codes = [int(reply[:3]) for reply in replies]
    assert codes == [501, 501, 501, 250, 501, 501, 500, 500, 500, 501, 501, 500], replies
    for reply in replies:
        assert all(0x20 <= byte < 0x7F for byte in reply.replace(b"\r\n", b"")), reply
    assert client.exchange(b"MAIL FROM:<a@b.example>\r\nNOOP\r\n", 2) == [
        b"250 2.1.0 Sender OK\r\n",
        b"250 2.0.0 OK\r\n",
    ]
    assert client.exchange(b"QUIT\r\n")[0].startswith(b"221 ")


def test_recipients_past_the_limit_are_flow_control(server: MailgateServer, client: Client) -> None:
    # 1,100 RCPTs pipelined with DATA at the default limit of 1,000: 1,000
    # accepted, 100 told 452, then DATA; no 421, as the 452s cost nothing.
    rcpts = b"".join(b"RCPT TO:<r%d@example.com>\r\n" % i for i in range(1100))
    flight = b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\n" + rcpts + b"DATA\r\n"
    replies = client.exchange(flight, 1103)
    assert [int(reply[:3]) for reply in replies[1:]] == [250] * 1001 + [452] * 100 + [354]
    assert replies[-2] == b"452 4.5.3 Too many recipients\r\n"
    [queued] = client.exchange(b"Subject: many\r\n\r\nhi\r\n.\r\n")
    assert queued.startswith(b"250 2.0.0 ")
    message_id = queued.split()[-1].decode()
    stored = server.get(message_id)
    assert stored is not None
    assert stored.envelope.rcpt_to == tuple(f"r{i}@example.com" for i in range(1000))


def test_an_lf_message_from_smtplib_is_stored_with_crlf(server: MailgateServer) -> None:
    message = EmailMessage()
    message["From"] = "sender@example.org"
    message["To"] = "rcpt@example.com"
    message["Subject"] = "sent by smtplib"
    message.set_content("first line\n.a line that starts with a dot\nlast line\n")
    sent = message.as_bytes()
    assert b"\r" not in sent  # as_bytes() ends its lines with LF alone
    with smtplib.SMTP(server.host, server.port, timeout=10) as smtp:
        refused = smtp.sendmail("sender@example.org", ["rcpt@example.com"], sent)
    assert refused == {}
    [summary] = [m for m in server.messages() if m.subject == "sent by smtplib"]
    raw = server.raw(summary.id)
    assert raw is not None
    assert raw.count(b"\n") == raw.count(b"\r\n")
    assert raw.count(b"\r") == raw.count(b"\r\n")
    # smtplib ends the last line with CRLF before the dot: one empty line more.
    assert raw.endswith(sent.replace(b"\n", b"\r\n") + b"\r\n")


@pytest.fixture(scope="module")
def local_server() -> Iterator[MailgateServer]:
    settings = Settings(
        domains=(Domain("example.org", mailboxes=("alice",), aliases={"team": ("alice",)}),),
        vrfy="on",
    )
    with MailgateServer(settings=settings) as running:
        yield running


def test_quoted_local_parts_and_source_routes(local_server: MailgateServer) -> None:
    client = Client(local_server)
    try:
        rcpts = [
            b'<"alice"@example.org>',
            b'<"al\\ice"@Example.ORG>',
            b'<"team"@example.org>',
            b'<"a b"@example.org>',
            b'<"|/bin/sh -c id"@example.org>',
            b"<@[127.0.0.1]:user@remote.example>",
            b"<@a.example,@b.example:user@c.example>",
            b"<@a.example:alice@example.org>",
        ]
        flight = b"EHLO c\r\nMAIL FROM:<x@remote.example>\r\n"
        flight += b"".join(b"RCPT TO:" + rcpt + b"\r\n" for rcpt in rcpts)
        replies = client.exchange(flight + b'VRFY "alice"\r\n', 2 + len(rcpts) + 1)
        assert [reply[:9] for reply in replies[2:-1]] == [
            b"250 2.1.5",
            b"250 2.1.5",
            b"250 2.1.5",
            b"550 5.1.1",
            b"550 5.1.1",
            b"550 5.7.1",
            b"550 5.7.1",
            b"250 2.1.5",
        ]
        assert replies[-1] == b"250 2.1.5 <alice@example.org>\r\n"
    finally:
        client.close()
