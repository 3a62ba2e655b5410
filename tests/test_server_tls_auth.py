"""TLS, authentication, the submission and smtps ports, and relay control.

Real TLS with certificates from a throwaway CA (trustme), real sockets,
real clients: smtplib, aiosmtplib, swaks, and raw sockets for the attacks.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import smtplib
import socket
import ssl
import subprocess
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import aiosmtplib
import pytest
import trustme

from loopback import DnsZone
from mailgate.auth import UsersFile
from mailgate.config import Domain, Limits, Listen, Outbound, Settings
from mailgate.server import ServerConfigError, SMTPServer
from mailgate.server._tls import TLSConfigError, ensure_self_signed, server_context
from mailgate.testing import MailgateServer
from server_helpers import require_tool

PASSWORD = "correct horse battery staple"
CHEAP = 4  # scrypt cost for tests: 2**4, so tests stay fast


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def tls_files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    cert = ca.issue_cert("mailgate.test", "localhost", "127.0.0.1")
    directory = tmp_path_factory.mktemp("tls")
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    return cert_path, key_path


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture
def users(tmp_path: Path) -> UsersFile:
    users = UsersFile(tmp_path / "users")
    users.set_password("alice", PASSWORD, log2_n=CHEAP)
    return users


def make_server(
    tls_files: tuple[Path, Path],
    users: UsersFile | None,
    *,
    domains: tuple[Domain, ...] = (Domain("example.org"),),
    relay_networks: tuple[str, ...] = (),
    limits: Limits | None = None,
    resolver: str | None = None,
) -> MailgateServer:
    settings = Settings(
        outbound=Outbound(resolver=resolver),
        domains=domains,
        submission=Listen("127.0.0.1", 0) if users is not None else None,
        smtps=Listen("127.0.0.1", 0) if users is not None else None,
        relay_networks=relay_networks,
        limits=limits or Limits(auth_failure_delay=0.0),
    )
    return MailgateServer(
        settings=settings, tls_context=server_context(*tls_files), authenticator=users
    )


@pytest.fixture
def unroutable(dns_zone: Callable[[], DnsZone]) -> str:
    """A DNS server that fails (SERVFAIL) for remote.example: mail relayed there is deferred,
    never delivered nor bounced, and no test reaches the internet."""
    zone = dns_zone()
    zone.fail("remote.example")
    return zone.nameserver


@pytest.fixture
def server(
    tls_files: tuple[Path, Path], users: UsersFile, unroutable: str
) -> Iterator[MailgateServer]:
    with make_server(tls_files, users, resolver=unroutable) as running:
        yield running


class Raw:
    """A raw SMTP client whose socket can be wrapped in TLS mid-session."""

    def __init__(self, port: int) -> None:
        self.sock: socket.socket = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> bytes:
        lines = []
        while True:
            while b"\r\n" not in self.buffer:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError(b"".join(lines) + self.buffer)
                self.buffer += chunk
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            lines.append(line + b"\r\n")
            if line[3:4] != b"-":
                return b"".join(lines)

    def starttls(self, context: ssl.SSLContext) -> None:
        assert self.buffer == b"", "plaintext left over before the handshake"
        self.sock = context.wrap_socket(self.sock, server_hostname="localhost")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw() -> Iterator[list[Raw]]:
    made: list[Raw] = []
    yield made
    for client in made:
        client.close()


def connect(made: list[Raw], port: int) -> Raw:
    client = Raw(port)
    made.append(client)
    assert client.reply().startswith(b"220 ")
    return client


def b64(text: bytes) -> bytes:
    return base64.b64encode(text)


class TestStartTLS:
    def test_smtplib_starttls_then_mail(
        self, server: MailgateServer, client_context: ssl.SSLContext
    ) -> None:
        with smtplib.SMTP(server.host, server.port) as client:
            client.ehlo()
            assert client.has_extn("starttls")
            assert not client.has_extn("auth")  # never before TLS
            client.starttls(context=client_context)
            client.ehlo()
            assert not client.has_extn("starttls")
            assert client.has_extn("auth")
            client.sendmail("a@remote.example", ["bob@example.org"], b"Subject: tls\r\n\r\nhi\r\n")
        [stored] = server.messages()
        full = server.get(stored.id)
        assert full is not None
        assert full.envelope.protocol == "ESMTPS"
        assert full.envelope.tls is not None
        assert full.envelope.tls.version in ("TLSv1.2", "TLSv1.3")
        raw = server.raw(stored.id)
        assert raw is not None
        header = raw.split(b"\r\n\r\n", 1)[0]
        assert b"with ESMTPS" in header
        assert full.envelope.tls.version.encode() in header

    def test_plaintext_pipelined_behind_starttls_is_discarded(
        self, server: MailgateServer, client_context: ssl.SSLContext, raw: list[Raw]
    ) -> None:
        client = connect(raw, server.port)
        client.send(b"EHLO c.example\r\n")
        assert client.reply().startswith(b"250-")
        # An attacker in the middle appends commands after STARTTLS (CVE-2011-0411).
        client.send(
            b"STARTTLS\r\nMAIL FROM:<evil@attacker.example>\r\nRCPT TO:<bob@example.org>\r\n"
        )
        assert client.reply().startswith(b"220 ")
        client.buffer = b""
        client.starttls(client_context)
        client.send(b"RCPT TO:<bob@example.org>\r\n")
        # The injected MAIL never ran, and EHLO is needed again: 503 either way.
        assert client.reply().startswith(b"503 ")
        client.send(b"EHLO c.example\r\nMAIL FROM:<a@x.example>\r\n")
        ehlo = client.reply()
        assert b"STARTTLS" not in ehlo
        assert b"AUTH PLAIN LOGIN" in ehlo
        assert client.reply().startswith(b"250 ")

    def test_starttls_with_a_parameter_is_refused(
        self, server: MailgateServer, raw: list[Raw]
    ) -> None:
        client = connect(raw, server.port)
        client.send(b"EHLO c\r\nSTARTTLS now\r\nNOOP\r\n")
        client.reply()
        assert client.reply().startswith(b"501 ")
        assert client.reply().startswith(b"250 ")

    def test_a_failed_handshake_closes_only_that_connection(
        self, server: MailgateServer, raw: list[Raw]
    ) -> None:
        client = connect(raw, server.port)
        client.send(b"EHLO c\r\nSTARTTLS\r\n")
        client.reply()
        assert client.reply().startswith(b"220 ")
        client.send(b"this is not a TLS ClientHello\r\n" * 4)
        client.sock.settimeout(10)
        try:
            while client.sock.recv(4096):  # perhaps a TLS alert, then the close
                pass
        except ConnectionResetError:
            pass
        with smtplib.SMTP(server.host, server.port) as other:
            assert other.noop()[0] == 250

    def test_aiosmtplib_starttls_and_login(
        self, server: MailgateServer, client_context: ssl.SSLContext
    ) -> None:
        async def send() -> None:
            client = aiosmtplib.SMTP(
                hostname=server.host,
                port=server.port_of("submission"),
                tls_context=client_context,
                start_tls=True,
            )
            await client.connect()
            await client.login("alice", PASSWORD)
            await client.sendmail(
                "alice@example.org", ["friend@remote.example"], b"Subject: relayed\r\n\r\nx\r\n"
            )
            await client.quit()

        asyncio.run(send())
        # aiosmtplib's STARTTLS can leave the plain transport under the TLS one to the
        # garbage collector when the loop ends before the TLS shutdown does: collect it
        # here, not in whichever later test the collector happens to run.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
        [stored] = server.messages()
        full = server.get(stored.id)
        assert full is not None
        assert full.envelope.auth_user == "alice"
        assert full.envelope.protocol == "ESMTPSA"
        assert full.envelope.outbound == ("friend@remote.example",)


class TestSubmissionAndSmtps:
    def test_submission_requires_auth_before_mail(
        self, server: MailgateServer, client_context: ssl.SSLContext
    ) -> None:
        with smtplib.SMTP(server.host, server.port_of("submission")) as client:
            client.ehlo()
            assert not client.has_extn("auth")
            assert client.mail("a@example.org")[0] == 530
            assert client.docmd("AUTH PLAIN")[0] == 538
            client.starttls(context=client_context)
            client.ehlo()
            assert client.mail("a@example.org")[0] == 530
            client.login("alice", PASSWORD)
            assert client.mail("alice@example.org")[0] == 250

    def test_smtps_is_tls_from_the_first_byte(
        self, server: MailgateServer, client_context: ssl.SSLContext
    ) -> None:
        port = server.port_of("smtps")
        with smtplib.SMTP_SSL(server.host, port, context=client_context) as client:
            client.ehlo()
            assert not client.has_extn("starttls")
            client.login("alice", PASSWORD)
            client.sendmail("alice@example.org", ["x@remote.example"], b"Subject: s\r\n\r\nx\r\n")
        [stored] = server.messages()
        full = server.get(stored.id)
        assert full is not None
        assert full.envelope.protocol == "ESMTPSA"

    def test_login_mechanism(self, server: MailgateServer, client_context: ssl.SSLContext) -> None:
        with smtplib.SMTP(server.host, server.port_of("submission")) as client:
            client.starttls(context=client_context)
            client.ehlo()
            client.user, client.password = "alice", PASSWORD
            code, _ = client.auth("LOGIN", client.auth_login)
            assert code == 235

    def test_submission_needs_tls_and_users(self, users: UsersFile) -> None:
        settings = Settings(submission=Listen("127.0.0.1", 0))

        class NullSink:
            def begin(self, envelope: object) -> object:  # pragma: no cover - never called
                raise AssertionError

            async def commit(self, spool: object) -> object:  # pragma: no cover
                raise AssertionError

        with pytest.raises(ServerConfigError, match="--submission needs TLS"):
            SMTPServer(settings, sink=NullSink(), authenticator=users)  # type: ignore[arg-type]


class TestAuthErrors:
    @pytest.fixture
    def session(
        self, server: MailgateServer, client_context: ssl.SSLContext, raw: list[Raw]
    ) -> Raw:
        client = connect(raw, server.port)
        client.send(b"EHLO c\r\nSTARTTLS\r\n")
        client.reply()
        assert client.reply().startswith(b"220")
        client.starttls(client_context)
        client.send(b"EHLO c\r\n")
        assert b"AUTH PLAIN LOGIN" in client.reply()
        return client

    def test_initial_response_success(self, session: Raw) -> None:
        session.send(b"AUTH PLAIN " + b64(b"\0alice\0" + PASSWORD.encode()) + b"\r\n")
        assert session.reply().startswith(b"235 2.7.0")
        session.send(b"AUTH PLAIN " + b64(b"\0alice\0" + PASSWORD.encode()) + b"\r\n")
        assert session.reply().startswith(b"503 ")

    def test_challenge_then_response(self, session: Raw) -> None:
        session.send(b"AUTH PLAIN\r\n")
        assert session.reply() == b"334 \r\n"
        session.send(b64(b"\0alice\0" + PASSWORD.encode()) + b"\r\n")
        assert session.reply().startswith(b"235 ")

    def test_login_challenges_are_base64(self, session: Raw) -> None:
        session.send(b"AUTH LOGIN\r\n")
        assert session.reply() == b"334 " + b64(b"Username:") + b"\r\n"
        session.send(b64(b"alice") + b"\r\n")
        assert session.reply() == b"334 " + b64(b"Password:") + b"\r\n"
        session.send(b64(PASSWORD.encode()) + b"\r\n")
        assert session.reply().startswith(b"235 ")

    def test_cancel(self, session: Raw) -> None:
        session.send(b"AUTH LOGIN\r\n*\r\nNOOP\r\n")
        session.reply()
        assert session.reply().startswith(b"501 ")
        assert session.reply().startswith(b"250 ")

    def test_bad_base64(self, session: Raw) -> None:
        session.send(b"AUTH PLAIN !!!notbase64\r\n")
        assert session.reply().startswith(b"501 5.5.2")

    def test_empty_initial_response(self, session: Raw) -> None:
        session.send(b"AUTH PLAIN =\r\n")
        assert session.reply().startswith(b"501 ")

    def test_unknown_mechanism(self, session: Raw) -> None:
        session.send(b"AUTH CRAM-MD5\r\n")
        assert session.reply().startswith(b"504 5.5.4")

    def test_inside_a_transaction(self, session: Raw) -> None:
        session.send(b"MAIL FROM:<a@example.org>\r\nAUTH PLAIN\r\n")
        assert session.reply().startswith(b"250 ")
        assert session.reply().startswith(b"503 ")

    def test_wrong_password_then_disconnect_after_the_third(self, session: Raw) -> None:
        for attempt in range(3):
            session.send(b"AUTH PLAIN " + b64(b"\0alice\0wrong") + b"\r\n")
            assert session.reply().startswith(b"535 5.7.8"), attempt
        assert session.reply().startswith(b"421 4.7.0")

    def test_unknown_user_fails_alike(self, session: Raw) -> None:
        session.send(b"AUTH PLAIN " + b64(b"\0mallory\0" + PASSWORD.encode()) + b"\r\n")
        assert session.reply().startswith(b"535 5.7.8")


RELAY_ATTEMPTS = [
    b"<victim@remote.example>",
    b"<victim%remote.example@example.org>",
    b"<remote.example!victim@example.org>",
    b'<"victim@remote.example"@example.org>',
    b"<@example.org:victim@remote.example>",
]


class TestRelayControl:
    @pytest.mark.parametrize("recipient", RELAY_ATTEMPTS)
    def test_unauthenticated_relay_is_refused_on_every_listener(
        self,
        server: MailgateServer,
        client_context: ssl.SSLContext,
        raw: list[Raw],
        recipient: bytes,
    ) -> None:
        client = connect(raw, server.port)
        client.send(
            b"EHLO c\r\nMAIL FROM:<spammer@remote.example>\r\nRCPT TO:" + recipient + b"\r\n"
        )
        client.reply()
        assert client.reply().startswith(b"250 ")
        assert client.reply().startswith(b"550 5.7.1")
        # Submission and smtps do not even take MAIL without AUTH.
        for port in (server.port_of("submission"),):
            other = connect(raw, port)
            other.send(b"EHLO c\r\nMAIL FROM:<spammer@remote.example>\r\n")
            other.reply()
            assert other.reply().startswith(b"530 5.7.0")
        with smtplib.SMTP_SSL(server.host, server.port_of("smtps"), context=client_context) as s:
            s.ehlo()
            assert s.mail("spammer@remote.example")[0] == 530

    def test_local_mail_needs_no_auth(self, server: MailgateServer, raw: list[Raw]) -> None:
        client = connect(raw, server.port)
        client.send(b"EHLO c\r\nMAIL FROM:<x@remote.example>\r\nRCPT TO:<bob@example.org>\r\n")
        client.reply()
        client.reply()
        assert client.reply().startswith(b"250 ")

    def test_trusted_network_may_relay(self, tls_files: tuple[Path, Path]) -> None:
        with (
            make_server(tls_files, None, relay_networks=("127.0.0.0/8",)) as server,
            smtplib.SMTP(server.host, server.port) as client,
        ):
            client.sendmail("app@example.org", ["out@remote.example"], b"Subject: r\r\n\r\nx\r\n")
            [stored] = server.messages()
            full = server.get(stored.id)
            assert full is not None
            assert full.envelope.outbound == ("out@remote.example",)


def run_swaks(port: int, *args: str) -> str:
    """Send one message with swaks as alice; return its transcript, failing on an error."""
    swaks = require_tool("swaks")
    result = subprocess.run(
        [
            swaks,
            "--server",
            f"127.0.0.1:{port}",
            "--auth-user",
            "alice",
            "--auth-password",
            PASSWORD,
            "--from",
            "alice@example.org",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


class TestSwaks:
    def test_starttls_and_auth(self, server: MailgateServer, ca_file: Path) -> None:
        for mechanism in ("PLAIN", "LOGIN"):
            transcript = run_swaks(
                server.port_of("submission"),
                *("--tls", "--tls-ca-path", str(ca_file), "--tls-verify"),
                *("--auth", mechanism, "--to", "someone@remote.example"),
            )
            assert "235 2.7.0" in transcript
        assert len(server.messages()) == 2

    def test_tls_on_connect(self, server: MailgateServer, ca_file: Path) -> None:
        run_swaks(
            server.port_of("smtps"),
            *("--tls-on-connect", "--tls-ca-path", str(ca_file)),
            *("--auth", "PLAIN", "--to", "bob@example.org"),
        )
        assert len(server.messages()) == 1

    def test_openssl_s_client_starttls(self, server: MailgateServer, ca_file: Path) -> None:
        openssl = require_tool("openssl")
        result = subprocess.run(
            [
                openssl,
                "s_client",
                "-starttls",
                "smtp",
                "-connect",
                f"127.0.0.1:{server.port}",
                "-CAfile",
                str(ca_file),
                "-quiet",
                "-verify_return_error",
            ],
            input="EHLO openssl.example\r\nQUIT\r\n",
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert "250-" in result.stdout
        assert "221 " in result.stdout


class TestCertificates:
    def test_missing_files_are_named(self, tmp_path: Path) -> None:
        with pytest.raises(TLSConfigError, match=r"--tls-cert: .*no such file"):
            server_context(tmp_path / "nope.pem", tmp_path / "nope.key")

    def test_mismatched_key(self, tls_files: tuple[Path, Path], tmp_path: Path) -> None:
        bogus = tmp_path / "bogus.key"
        bogus.write_text("not a key")
        with pytest.raises(TLSConfigError, match="not a matching PEM"):
            server_context(tls_files[0], bogus)

    def test_self_signed_is_made_once_and_kept(self, tmp_path: Path) -> None:
        cert, key = ensure_self_signed(tmp_path, "mx.example")
        first = cert.read_bytes()
        assert ensure_self_signed(tmp_path, "mx.example") == (cert, key)
        assert cert.read_bytes() == first
        assert key.stat().st_mode & 0o077 == 0
        server_context(cert, key)
