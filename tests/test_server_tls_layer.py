"""The session's own TLS layer: handshakes that stall, fail or end early.

Sessions run TLS over memory buffers (``server._tls.TLSLayer``) on their
plain transport, for STARTTLS and for implicit TLS alike, so that replies
are still written after a client's close_notify (see
test_server_half_close.py).  These tests hold the rest of what asyncio's
TLS transport used to do: a deadline for the handshake, and a failure that
costs only its own connection.
"""

from __future__ import annotations

import smtplib
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from mailgate.config import Limits, Listen, Settings
from mailgate.server._tls import server_context
from mailgate.testing import MailgateServer
from test_server_half_close import TLSClient, codes, read_all, read_until

HANDSHAKE_DEADLINE = 0.5  # the idle timeout, when shorter, bounds the handshake too


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailgateServer]:
    cert = ca.issue_cert("localhost", "127.0.0.1")
    directory = tmp_path_factory.mktemp("tls")
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    settings = Settings(
        smtps=Listen("127.0.0.1", 0),
        auth_accept_any=True,
        limits=Limits(idle_timeout=HANDSHAKE_DEADLINE),
    )
    with MailgateServer(
        settings=settings, tls_context=server_context(Path(cert_path), Path(key_path))
    ) as running:
        yield running


@pytest.fixture
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def closed_within(sock: socket.socket, seconds: float) -> float:
    """How long the server took to close ``sock`` (fails past ``seconds``)."""
    started = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    return time.monotonic() - started


@pytest.mark.parametrize("listener", ["smtp", "smtps"])
def test_a_stalled_handshake_is_closed_at_its_deadline(
    server: MailgateServer, listener: str
) -> None:
    with socket.create_connection((server.host, server.port_of(listener)), timeout=5) as sock:
        if listener == "smtp":
            assert read_until(sock, b"\r\n").startswith(b"220 ")
            sock.sendall(b"EHLO c\r\nSTARTTLS\r\n")
            read_until(sock, b"220 2.0.0 Ready to start TLS\r\n")
        # No ClientHello follows.
        assert closed_within(sock, 5) < 4


def test_implicit_tls_greets_inside_tls_and_takes_mail(
    server: MailgateServer, client_context: ssl.SSLContext
) -> None:
    before = len(server.messages())
    with smtplib.SMTP_SSL(
        server.host, server.port_of("smtps"), context=client_context, timeout=5
    ) as client:
        code, text = client.ehlo("client.example")
        assert code == 250
        assert b"STARTTLS" not in text
        client.login("anyone", "anything")
        client.sendmail("a@example.org", ["b@example.net"], b"Subject: smtps\r\n\r\nx\r\n")
    [newest, *_] = server.wait_for_messages(before + 1)
    raw = server.raw(newest.id)
    assert raw is not None
    assert b"with ESMTPSA" in raw


def test_commands_in_the_handshakes_last_flight_are_read(
    server: MailgateServer, client_context: ssl.SSLContext
) -> None:
    """Plaintext that arrives with the handshake's last records is not lost."""
    with socket.create_connection((server.host, server.port_of("smtps")), timeout=5) as sock:
        client = TLSClient(sock, client_context)  # TLS 1.3: the client speaks first
        client.send(b"EHLO client.example\r\nNOOP\r\nQUIT\r\n")
        client.half_close()
        replies = client.read_to_the_end()
    assert codes(replies) == [b"220", b"250", b"250", b"221"], replies


def test_a_connection_that_ends_mid_handshake_is_closed(server: MailgateServer) -> None:
    with socket.create_connection((server.host, server.port_of("smtps")), timeout=5) as sock:
        sock.sendall(b"\x16\x03\x01\x00")  # the start of a record, then the end
        sock.shutdown(socket.SHUT_WR)
        # At most a TLS alert record (content type 21), then the close: never a greeting.
        assert read_all(sock)[:1] in (b"", b"\x15")
    with smtplib.SMTP(server.host, server.port, timeout=5) as other:
        assert other.noop()[0] == 250
