"""Clients that send their last commands and half-close.

Exim, Debian's default MTA, writes the end of the message (the final dot or
``BDAT n LAST``) and ``QUIT`` in one go and then shuts down its sending
side.  Every reply is still owed: a server that closes on end-of-file
before writing the ``250`` has stored a message the client will send
again.  These tests do what Exim does, in plaintext and inside TLS.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator

import pytest
import trustme

from mailgate.server._tls import server_context
from mailgate.testing import MailgateServer

BODY = b"Subject: half-closed\r\n\r\nSent and shut.\r\n"
TRANSACTION = b"MAIL FROM:<exim@example.org>\r\nRCPT TO:<fred@example.net>\r\n"
DATA = TRANSACTION + b"DATA\r\n" + BODY + b".\r\n"
BDAT = TRANSACTION + b"BDAT %d LAST\r\n" % len(BODY) + BODY

# What follows the greeting and EHLO, for each way of ending the message.
ENDINGS = {
    "DATA": (DATA, [b"250", b"250", b"354", b"250"]),
    "BDAT LAST": (BDAT, [b"250", b"250", b"250"]),
}


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def tls_server(
    ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MailgateServer]:
    cert = ca.issue_cert("localhost")
    directory = tmp_path_factory.mktemp("tls")
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    with MailgateServer(tls_context=server_context(cert_path, key_path)) as running:
        yield running


@pytest.fixture
def server() -> Iterator[MailgateServer]:
    with MailgateServer() as running:
        yield running


def read_all(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def codes(replies: bytes) -> list[bytes]:
    """The code of each reply line that ends a reply."""
    return [line[:3] for line in replies.split(b"\r\n") if line and line[3:4] != b"-"]


def read_until(sock: socket.socket, end: bytes) -> bytes:
    received = b""
    while not received.endswith(end):
        chunk = sock.recv(65536)
        assert chunk, received
        received += chunk
    return received


def greet(sock: socket.socket) -> None:
    assert read_until(sock, b"\r\n").startswith(b"220 ")
    sock.sendall(b"EHLO exim.example.org\r\n")
    read_until(sock, b"\r\n250 HELP\r\n")


@pytest.mark.parametrize("ending", list(ENDINGS))
@pytest.mark.parametrize("quit", [True, False], ids=["QUIT", "no QUIT"])
def test_every_reply_is_written_after_a_half_close(
    server: MailgateServer, ending: str, quit: bool
) -> None:
    sent, expected = ENDINGS[ending]
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        greet(sock)
        sock.sendall(sent + (b"QUIT\r\n" if quit else b""))
        sock.shutdown(socket.SHUT_WR)
        replies = read_all(sock)
    assert codes(replies) == [*expected, *([b"221"] if quit else [])], replies
    [stored] = server.wait_for_messages(1)
    raw = server.raw(stored.id)
    assert raw is not None
    assert raw.endswith(BODY)


def test_a_half_close_inside_a_message_stores_nothing(server: MailgateServer) -> None:
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        greet(sock)
        sock.sendall(TRANSACTION + b"DATA\r\n" + BODY)  # no final dot
        sock.shutdown(socket.SHUT_WR)
        assert codes(read_all(sock)) == [b"250", b"250", b"354"]
    assert server.messages() == []


class TLSClient:
    """A client whose TLS runs over memory buffers, so it can half-close as Exim does:
    a close_notify, then a shutdown of its sending side, then read to the end."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        self.sock = sock
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()
        self._flush()

    def _flush(self) -> None:
        if pending := self.outgoing.read():
            self.sock.sendall(pending)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        if chunk:
            self.incoming.write(chunk)
        else:
            self.incoming.write_eof()
        return bool(chunk)

    def send(self, data: bytes) -> None:
        self.tls.write(data)
        self._flush()

    def read_until(self, end: bytes) -> bytes:
        received = b""
        while not received.endswith(end):
            try:
                received += self.tls.read(65536)
            except ssl.SSLWantReadError:
                assert self._fill(), received
        return received

    def half_close(self) -> None:
        try:
            self.tls.unwrap()
        except ssl.SSLWantReadError:
            pass  # our close_notify is written; the server's comes later
        self._flush()
        self.sock.shutdown(socket.SHUT_WR)

    def read_to_the_end(self) -> bytes:
        received = b""
        while True:
            try:
                received += self.tls.read(65536)
            except ssl.SSLWantReadError:
                if not self._fill():
                    return received
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return received


@pytest.mark.parametrize("ending", list(ENDINGS))
def test_every_reply_is_written_after_a_half_close_inside_tls(
    tls_server: MailgateServer, ca: trustme.CA, ending: str
) -> None:
    sent, expected = ENDINGS[ending]
    before = len(tls_server.messages())
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with socket.create_connection((tls_server.host, tls_server.port), timeout=10) as sock:
        greet(sock)
        sock.sendall(b"STARTTLS\r\n")
        assert sock.recv(1024).startswith(b"220 ")
        client = TLSClient(sock, context)
        client.send(b"EHLO exim.example.org\r\n")
        client.read_until(b"\r\n250 HELP\r\n")
        client.send(sent + b"QUIT\r\n")
        client.half_close()
        replies = client.read_to_the_end()
    assert codes(replies) == [*expected, b"221"], replies
    assert len(tls_server.wait_for_messages(before + 1)) == before + 1


def test_an_end_pipelined_behind_starttls_closes_the_connection(
    tls_server: MailgateServer,
) -> None:
    # The client's end arrives while the message before STARTTLS is being stored, so
    # before the 220: no handshake can follow, and the server closes at once rather
    # than at the handshake's time-out (30 s; the socket's 10 s time-out fails first).
    with socket.create_connection((tls_server.host, tls_server.port), timeout=10) as sock:
        greet(sock)
        sock.sendall(DATA + b"STARTTLS\r\n")
        sock.shutdown(socket.SHUT_WR)
        received = read_all(sock)
    # After the 220 the server speaks TLS (an alert, as the handshake failed).
    replies, ready, _ = received.partition(b"220 2.0.0 Ready to start TLS\r\n")
    assert ready, received
    assert codes(replies) == [b"250", b"250", b"354", b"250"], received


def test_after_its_221_the_server_lingers_for_the_clients_end(server: MailgateServer) -> None:
    """Octets that arrive after the server's close (a close_notify, say) draw no reset.

    A reset can destroy replies still on their way to the client, so the
    server ends its side and reads on until the client ends too.
    """
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        greet(sock)
        sock.sendall(b"QUIT\r\n")
        assert read_until(sock, b"\r\n").startswith(b"221 ")
        sock.sendall(b"late octets\r\n")
        time.sleep(0.2)  # time for a reset to come back, if one would
        sock.shutdown(socket.SHUT_WR)  # raises ENOTCONN after a reset
        assert read_all(sock) == b""
