"""The live server over raw sockets: what hand-typed and hostile clients see.

These tests speak bytes on a real TCP connection, so they check what no
polite client library would send: pipelined groups in one packet, BDAT,
smuggling attempts, limits, time-outs and shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mailgate.config import Domain, Limits, Settings
from mailgate.testing import MailgateServer
from server_helpers import HAND_TYPED, HAND_TYPED_BODY, body_of


class Client:
    """A line-level SMTP client over a plain socket."""

    def __init__(self, server: MailgateServer, *, greet: bool = True) -> None:
        self.sock = socket.create_connection((server.host, server.port), timeout=10)
        self.buffer = b""
        if greet:
            assert self.reply().startswith(b"220 ")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> bytes:
        """One whole (possibly multi-line) reply."""
        lines = []
        while True:
            while b"\r\n" not in self.buffer:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError(f"closed; got {b''.join(lines)!r} {self.buffer!r}")
                self.buffer += chunk
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            lines.append(line + b"\r\n")
            if line[3:4] != b"-":
                return b"".join(lines)

    def replies(self, count: int) -> list[bytes]:
        return [self.reply() for _ in range(count)]

    def codes(self, count: int) -> list[int]:
        return [int(r[:3]) for r in self.replies(count)]

    def closed_by_server(self) -> bool:
        self.sock.settimeout(5)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server() -> Iterator[MailgateServer]:
    with MailgateServer() as running:
        yield running


@pytest.fixture
def connect() -> Iterator[Callable[..., Client]]:
    """A factory of clients that are all closed when the test ends."""
    made: list[Client] = []

    def factory(server: MailgateServer, *, greet: bool = True) -> Client:
        client = Client(server, greet=greet)
        made.append(client)
        return client

    yield factory
    for client in made:
        client.close()


def test_hand_typed_session_with_two_messages(
    server: MailgateServer, connect: Callable[..., Client]
) -> None:
    client = connect(server)
    client.send(HAND_TYPED)
    assert client.codes(5) == [250, 250, 250, 250, 354]
    client.send(HAND_TYPED_BODY + b".\r\n")
    first = client.reply()
    assert re.match(rb"250 2\.0\.0 Ok: queued as [0-9A-Z]{26}\r\n", first)
    client.send(b"MAIL From:<second@mydomain.com>\r\nRCPT To:<fred@somedomain.com>\r\nDATA\r\n")
    assert client.codes(3) == [250, 250, 354]
    client.send(b"Subject: second\r\n\r\nAgain.\r\n.\r\nQUIT\r\n")
    assert client.codes(2) == [250, 221]
    assert client.closed_by_server()
    stored = server.messages()
    assert sorted(m.subject for m in stored) == ["I need the sales figures", "second"]
    first_id = first.split()[-1].decode()
    full = server.get(first_id)
    assert full is not None
    assert full.envelope.mail_from == "myaddress@mydomain.com"
    assert full.envelope.rcpt_to == ("fred@somedomain.com", "freds_boss@somedomain.com")
    assert full.envelope.helo_name == "localhost.localdomain"
    assert full.envelope.protocol == "SMTP"
    raw = server.raw(first_id)
    assert raw is not None
    assert body_of(raw) == HAND_TYPED_BODY
    assert [a.address for a in full.summary.cc] == ["freds_boss@somedomain.com"]


def test_whole_pipelined_transaction_in_one_packet(
    server: MailgateServer, connect: Callable[..., Client]
) -> None:
    client = connect(server)
    client.send(
        b"EHLO client.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n"
        b"RCPT TO:<c@example.net>\r\nRSET\r\nMAIL FROM:<d@example.org>\r\n"
        b"RCPT TO:<e@example.net>\r\nDATA\r\n"
    )
    replies = client.replies(8)
    assert [int(r[:3]) for r in replies] == [250, 250, 250, 250, 250, 250, 250, 354]
    assert b"PIPELINING" in replies[0]
    client.send(b"Subject: piped\r\n\r\nbody\r\n.\r\nQUIT\r\n")
    assert client.codes(2) == [250, 221]
    [stored] = server.messages()
    full = server.get(stored.id)
    assert full is not None
    assert full.envelope.mail_from == "d@example.org"
    assert full.envelope.rcpt_to == ("e@example.net",)


def test_bdat_chunks_are_stored_exactly(
    server: MailgateServer, connect: Callable[..., Client]
) -> None:
    client = connect(server)
    part1 = b"Subject: chunked\r\n\r\n.not stuffed\r\n"
    part2 = b"\r\n.\r\nstill the same message\r\n"
    client.send(b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n")
    assert client.codes(3) == [250, 250, 250]
    client.send(b"BDAT %d\r\n" % len(part1) + part1 + b"BDAT %d LAST\r\n" % len(part2) + part2)
    replies = client.replies(2)
    assert replies[0].startswith(b"250 2.0.0 %d octets" % len(part1))
    assert b"queued as" in replies[1]
    [stored] = server.messages()
    raw = server.raw(stored.id)
    assert raw is not None
    assert body_of(raw) == part1 + part2


def test_bdat_without_transaction_is_consumed_and_refused(
    server: MailgateServer, connect: Callable[..., Client]
) -> None:
    client = connect(server)
    client.send(b"EHLO c.example\r\nBDAT 12 LAST\r\nQUIT\r\nQUIT\r\nNOOP\r\n")
    # The twelve octets "QUIT\r\nQUIT\r\n" are chunk data, never commands.
    assert client.codes(3) == [250, 503, 250]
    assert server.messages() == []


@pytest.mark.parametrize(
    "smuggled",
    [b"\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\n", b"\r\n.\r", b"\n.\r"],
)
def test_smuggling_never_splits_a_message(
    server: MailgateServer, smuggled: bytes, connect: Callable[..., Client]
) -> None:
    client = connect(server)
    client.send(
        b"EHLO attacker.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"
    )
    assert client.codes(4) == [250, 250, 250, 354]
    client.send(
        b"Subject: outer\r\n\r\nhello"
        + smuggled
        + b"MAIL FROM:<admin@example.org>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\n"
        b"Subject: smuggled\r\n\r\nevil\r\n.\r\n"
    )
    reply = client.reply()
    client.send(b"QUIT\r\n")
    assert client.codes(1) == [221]
    # Either refused whole (bare CR/LF) or stored whole: never two messages.
    stored = server.messages()
    assert int(reply[:3]) in (250, 554)
    assert len(stored) == (1 if reply.startswith(b"250") else 0)
    assert all(m.subject == "outer" for m in stored)


def test_bare_lf_is_normalised_when_configured(connect: Callable[..., Client]) -> None:
    with MailgateServer(settings=Settings(bare_line_endings="normalise")) as server:
        client = connect(server)
        client.send(b"EHLO c\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\n")
        assert client.codes(4) == [250, 250, 250, 354]
        client.send(b"Subject: lf\n\nline one\nline two\r\n.\r\n")
        assert client.codes(1) == [250]
        [stored] = server.messages()
        raw = server.raw(stored.id)
        assert raw is not None
        assert body_of(raw) == b"Subject: lf\r\n\r\nline one\r\nline two\r\n"


def test_over_long_command_line_keeps_the_session_in_step(
    server: MailgateServer, connect: Callable[..., Client]
) -> None:
    client = connect(server)
    client.send(b"EHLO c.example\r\nMAIL FROM:<" + b"a" * 2000 + b"@x.example>\r\nNOOP\r\n")
    assert client.codes(3) == [250, 500, 250]


def test_error_budget_ends_the_session(connect: Callable[..., Client]) -> None:
    with MailgateServer(limits=Limits(error_budget=3)) as server:
        client = connect(server)
        client.send(b"BOGUS\r\nBOGUS\r\nBOGUS\r\nNOOP\r\n")
        replies = client.replies(4)
        assert [int(r[:3]) for r in replies] == [500, 500, 500, 421]
        assert client.closed_by_server()


def test_connection_limits(connect: Callable[..., Client]) -> None:
    with MailgateServer(limits=Limits(max_connections=2)) as server:
        first, second = connect(server), connect(server)
        third = connect(server, greet=False)
        assert third.reply().startswith(b"421 4.7.0")
        assert third.closed_by_server()
        first.send(b"QUIT\r\n")
        assert first.codes(1) == [221]
        assert first.closed_by_server()
        deadline = time.monotonic() + 5
        while server.server is not None and server.server.session_count > 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        fourth = connect(server)
        fourth.close()
        second.close()


def test_per_address_connection_limit(connect: Callable[..., Client]) -> None:
    with MailgateServer(limits=Limits(max_connections_per_ip=1)) as server:
        first = connect(server)
        second = connect(server, greet=False)
        assert second.reply().startswith(b"421 4.7.0")
        first.close()


def test_idle_timeout_says_421(connect: Callable[..., Client]) -> None:
    with MailgateServer(limits=Limits(idle_timeout=0.3)) as server:
        client = connect(server)
        client.send(b"EHLO c.example\r\n")
        assert client.codes(1) == [250]
        assert client.reply().startswith(b"421 4.4.2")
        assert client.closed_by_server()


def test_graceful_shutdown_finishes_the_open_transaction(connect: Callable[..., Client]) -> None:
    server = MailgateServer().start()
    idle = connect(server)
    busy = connect(server)
    busy.send(b"EHLO c\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\n")
    assert busy.codes(4) == [250, 250, 250, 354]
    busy.send(b"Subject: in flight\r\n\r\n")
    assert server.server is not None
    assert server._loop is not None
    closing = asyncio.run_coroutine_threadsafe(server.server.aclose(), server._loop)
    # The idle session is told at once; the busy one may finish its message.
    assert idle.reply().startswith(b"421 4.3.2")
    busy.send(b"finished\r\n.\r\n")
    assert busy.reply().startswith(b"250 2.0.0")
    assert busy.reply().startswith(b"421 4.3.2")
    closing.result(10)
    assert [m.subject for m in server.messages()] == ["in flight"]
    server.stop()


class TestLocalDomains:
    @pytest.fixture
    def server(self) -> Iterator[MailgateServer]:
        settings = Settings(
            domains=(
                Domain(
                    "example.org", mailboxes=("alice", "bob"), aliases={"team": ("alice", "bob")}
                ),
                Domain("open.example"),
            ),
            vrfy="on",
            expn="on",
        )
        with MailgateServer(settings=settings) as running:
            yield running

    def test_recipients(self, server: MailgateServer, connect: Callable[..., Client]) -> None:
        client = connect(server)
        client.send(
            b"EHLO c\r\nMAIL FROM:<x@remote.example>\r\n"
            b"RCPT TO:<alice@example.org>\r\n"
            b"RCPT TO:<ALICE@EXAMPLE.ORG>\r\n"
            b"RCPT TO:<mallory@example.org>\r\n"
            b"RCPT TO:<anyone@open.example>\r\n"
            b"RCPT TO:<victim@elsewhere.example>\r\n"
            b"RCPT TO:<postmaster>\r\n"
            b"RCPT TO:<Postmaster@example.org>\r\n"
            b"RCPT TO:<user%elsewhere.example@example.org>\r\n"
        )
        replies = client.replies(10)
        assert [int(r[:3]) for r in replies] == [250, 250, 250, 250, 550, 250, 550, 250, 250, 550]
        assert replies[4].startswith(b"550 5.1.1")
        assert replies[6].startswith(b"550 5.7.1")

    def test_vrfy_and_expn_when_on(
        self, server: MailgateServer, connect: Callable[..., Client]
    ) -> None:
        client = connect(server)
        client.send(b"VRFY alice\r\nVRFY mallory@example.org\r\nEXPN team\r\nEXPN nothing\r\n")
        replies = client.replies(4)
        assert replies[0] == b"250 2.1.5 <alice@example.org>\r\n"
        assert replies[1].startswith(b"550 5.1.1")
        assert replies[2] == b"250-2.1.5 <alice@example.org>\r\n250 2.1.5 <bob@example.org>\r\n"
        assert replies[3].startswith(b"550")


def test_a_store_that_fails_the_commit_gets_451_and_the_session_goes_on(
    tmp_path: Path, connect: Callable[..., Client]
) -> None:
    with MailgateServer(data_dir=tmp_path) as server:
        client = connect(server)
        client.send(b"EHLO c\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\n")
        assert client.codes(4) == [250, 250, 250, 354]
        # Another program breaks the database under the running store: the writer's
        # transaction fails, and the message is refused for now, not lost silently.
        database = sqlite3.connect(tmp_path / "mail.db")
        database.execute("DROP VIEW incoming")
        database.close()
        client.send(b"Subject: refused\r\n\r\nBody\r\n.\r\n")
        assert client.reply().startswith(b"451 4.3.0")
        client.send(b"RSET\r\nNOOP\r\n")
        assert client.codes(2) == [250, 250]
        assert server.messages() == []


def test_a_closed_store_gets_451_and_the_session_goes_on(
    server: MailgateServer, connect: Callable[..., Client], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mailgate.smtp")
    client = connect(server)
    client.send(b"EHLO c\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\n")
    assert client.codes(4) == [250, 250, 250, 354]
    assert server._loop is not None
    # The store refuses at once, before any waiting: the reply still comes, and in order.
    asyncio.run_coroutine_threadsafe(server.store.aclose(), server._loop).result(10)
    client.send(b"Subject: refused\r\n\r\nBody\r\n.\r\nNOOP\r\n")
    assert client.codes(2) == [451, 250]
    # The store's own failure is one line, not a traceback a message (a restart under
    # load would otherwise flood the log).
    [failure] = [r for r in caplog.records if "could not store" in r.getMessage()]
    assert failure.exc_info is None
    assert "closed" in failure.getMessage()
    client.send(b"QUIT\r\n")
    assert client.reply().startswith(b"221 ")
