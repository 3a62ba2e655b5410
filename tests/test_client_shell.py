"""The SMTP client's asyncio shell against real servers on loopback.

mailgate itself (TLS with trustme certificates, AUTH, BDAT, RSET between
messages) and aiosmtpd (a server written elsewhere, without PIPELINING).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trustme
from aiosmtpd.smtp import SMTP, Session
from aiosmtpd.smtp import Envelope as ReceivedEnvelope

from client_shell_helpers import (
    ENVELOPE,
    MESSAGE,
    settings,
)
from mailgate.auth import UsersFile
from mailgate.config import Limits, Listen, Settings
from mailgate.queue._smtp import (
    DeliveryError,
    Transaction,
    connect,
)
from mailgate.server._tls import server_context
from mailgate.testing import MailgateServer
from server_helpers import body_of

PASSWORD = "correct horse battery staple"


CHEAP = 4  # scrypt cost for tests: 2**4


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


@pytest.fixture
def trusting(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture
def mailgate(tls_files: tuple[Path, Path], tmp_path: Path) -> Iterator[MailgateServer]:
    users = UsersFile(tmp_path / "users")
    users.set_password("alice", PASSWORD, log2_n=CHEAP)
    config = Settings(
        submission=Listen("127.0.0.1", 0),
        smtps=Listen("127.0.0.1", 0),
        limits=Limits(auth_failure_delay=0.0),
    )
    with MailgateServer(
        settings=config, tls_context=server_context(*tls_files), authenticator=users
    ) as server:
        yield server


@pytest.mark.asyncio
async def test_mailgate_plain_delivery_with_pipelining_and_bdat(mailgate: MailgateServer) -> None:
    lines: list[tuple[str, str]] = []
    config = settings(transcript=lambda d, line: lines.append((d, line)))
    async with await connect(mailgate.host, mailgate.port, config) as client:
        assert client.greeting is not None
        assert client.greeting.code == 220
        assert "PIPELINING" in client.extensions
        assert not client.tls_active
        transaction = Transaction.of(
            MESSAGE, sender="a@example.org", recipients=["b@example.com", "c@example.net"]
        )
        result = await client.send(transaction)
    assert result.reply.code == 250
    assert [(r, reply.code) for r, reply in result.recipients] == [
        ("b@example.com", 250),
        ("c@example.net", 250),
    ]
    [stored] = mailgate.messages()
    raw = mailgate.raw(stored.id)
    assert raw is not None
    assert body_of(raw) == MESSAGE
    # PIPELINING: MAIL and both RCPTs leave before any reply is read.
    start = lines.index(("C", f"MAIL FROM:<a@example.org> SIZE={len(MESSAGE)}"))
    assert [d for d, _ in lines[start : start + 3]] == ["C", "C", "C"]
    assert lines[start + 1 : start + 3] == [
        ("C", "RCPT TO:<b@example.com>"),
        ("C", "RCPT TO:<c@example.net>"),
    ]
    assert ("C", f"BDAT {len(MESSAGE)} LAST") in lines
    assert lines[-1][0] == "S"
    assert lines[-1][1].startswith("221")


@pytest.mark.asyncio
async def test_mailgate_reuses_a_connection_with_rset(mailgate: MailgateServer) -> None:
    async with await connect(mailgate.host, mailgate.port, settings(chunking=False)) as client:
        for n in range(2):
            content = [b"Subject: %d\r\n" % n, b"\r\n", b"chunked ", b"body"]
            result = await client.send(Transaction(ENVELOPE, iter(content)))
            assert result.reply.code == 250
            assert (await client.reset()).code == 250
    stored = mailgate.messages()
    assert len(stored) == 2
    bodies = sorted(body_of(mailgate.raw(m.id) or b"") for m in stored)
    assert bodies == [b"Subject: 0\r\n\r\nchunked body\r\n", b"Subject: 1\r\n\r\nchunked body\r\n"]


@pytest.mark.asyncio
async def test_mailgate_starttls_verify_and_auth(
    mailgate: MailgateServer, trusting: ssl.SSLContext
) -> None:
    lines: list[tuple[str, str]] = []
    config = settings(
        tls="verify",
        tls_context=trusting,
        tls_server_name="localhost",
        transcript=lambda d, line: lines.append((d, line)),
    )
    port = mailgate.port_of("submission")
    for mechanism in ("PLAIN", "LOGIN"):
        async with await connect(mailgate.host, port, config) as client:
            assert client.tls_active
            assert "STARTTLS" not in client.extensions
            assert (await client.login("alice", PASSWORD, mechanism=mechanism)).code == 235
            result = await client.send(
                Transaction.of(MESSAGE, sender="alice@example.org", recipients=["x@example.com"])
            )
            assert result.reply.code == 250
    assert len(mailgate.messages()) == 2
    sent = "\n".join(line for _, line in lines)
    assert PASSWORD not in sent
    assert "AUTH PLAIN ****" in sent
    assert "YWxpY2U" not in sent  # base64 of "alice", as LOGIN sends it


@pytest.mark.asyncio
async def test_mailgate_wrong_password_is_a_temporary_error(
    mailgate: MailgateServer, trusting: ssl.SSLContext
) -> None:
    config = settings(tls="encrypt")
    async with await connect(mailgate.host, mailgate.port_of("submission"), config) as client:
        assert client.tls_active
        with pytest.raises(DeliveryError) as raised:
            await client.login("alice", "wrong")
    assert raised.value.reply.code == 535
    assert raised.value.temporary


@pytest.mark.asyncio
async def test_mailgate_implicit_tls(mailgate: MailgateServer, trusting: ssl.SSLContext) -> None:
    config = settings(tls="verify", tls_context=trusting, implicit_tls=True)
    async with await connect(mailgate.host, mailgate.port_of("smtps"), config) as client:
        assert client.tls_active
        assert (await client.login("alice", PASSWORD)).code == 235


@pytest.mark.asyncio
async def test_may_accepts_an_untrusted_certificate(mailgate: MailgateServer) -> None:
    async with await connect(mailgate.host, mailgate.port, settings(tls="may")) as client:
        assert client.tls_active
        result = await client.send(
            Transaction.of(MESSAGE, sender="a@example.org", recipients=["b@example.com"])
        )
        assert result.reply.code == 250


@pytest.mark.asyncio
async def test_verify_with_the_wrong_ca_fails_temporarily(mailgate: MailgateServer) -> None:
    other = ssl.create_default_context()
    trustme.CA().configure_trust(other)
    with pytest.raises(DeliveryError) as raised:
        await connect(mailgate.host, mailgate.port, settings(tls="verify", tls_context=other))
    assert (raised.value.reply.code, raised.value.reply.enhanced) == (454, "4.7.0")
    assert raised.value.temporary


@pytest.mark.asyncio
async def test_auth_refused_without_tls(mailgate: MailgateServer) -> None:
    async with await connect(mailgate.host, mailgate.port, settings()) as client:
        with pytest.raises(DeliveryError) as raised:
            await client.login("alice", PASSWORD)
        assert raised.value.temporary


@pytest.mark.asyncio
async def test_too_large_for_the_peer_is_refused_before_sending() -> None:
    with MailgateServer(limits=Limits(max_message_size=100)) as server:
        async with await connect(server.host, server.port, settings()) as client:
            big = Transaction.of(b"x" * 200, sender="a@example.org", recipients=["b@example.com"])
            with pytest.raises(DeliveryError) as raised:
                await client.send(big)
            assert (raised.value.reply.code, raised.value.reply.enhanced) == (552, "5.3.4")
            assert not raised.value.temporary
            # Nothing was sent: the session goes on.
            small = Transaction.of(b"hi\r\n", sender="a@example.org", recipients=["b@example.com"])
            assert (await client.send(small)).reply.code == 250


class Recorder:
    def __init__(self) -> None:
        self.envelopes: list[ReceivedEnvelope] = []

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: ReceivedEnvelope,
        address: str,
        options: list[str],
    ) -> str:
        if address.startswith("nobody@"):
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: ReceivedEnvelope) -> str:
        self.envelopes.append(envelope)
        return "250 2.0.0 accepted"


@pytest.mark.asyncio
async def test_aiosmtpd_one_command_at_a_time_and_starttls(
    ca: trustme.CA, tls_files: tuple[Path, Path]
) -> None:
    recorder = Recorder()
    context = server_context(*tls_files)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(recorder, hostname="aiosmtpd.test", tls_context=context, enable_SMTPUTF8=True),
        "127.0.0.1",
        0,
    )
    port = server.sockets[0].getsockname()[1]
    try:
        async with await connect("127.0.0.1", port, settings(tls="may")) as client:
            assert client.tls_active
            assert "PIPELINING" not in client.extensions
            transaction = Transaction.of(
                "Subject: café\r\n\r\nnaïve\r\n".encode(),
                sender="a@example.org",
                recipients=["b@example.com", "nobody@example.com"],
            )
            result = await client.send(transaction)
    finally:
        server.close()
        await server.wait_closed()
    assert result.reply.code == 250
    assert [reply.code for _, reply in result.recipients] == [250, 550]
    [envelope] = recorder.envelopes
    assert envelope.rcpt_tos == ["b@example.com"]
    assert envelope.mail_options == [
        f"SIZE={transaction.envelope.size}",
        "BODY=8BITMIME",
        "SMTPUTF8",
    ]
    assert envelope.original_content == "Subject: café\r\n\r\nnaïve\r\n".encode()


@pytest.mark.asyncio
async def test_no_usable_auth_mechanism(mailgate: MailgateServer) -> None:
    config = settings(tls="encrypt")
    async with await connect(mailgate.host, mailgate.port_of("submission"), config) as client:
        with pytest.raises(DeliveryError) as raised:
            await client.login("alice", PASSWORD, mechanism="CRAM-MD5")
    assert raised.value.temporary


@pytest.mark.asyncio
async def test_implicit_tls_with_the_wrong_ca_fails(mailgate: MailgateServer) -> None:
    other = ssl.create_default_context()
    trustme.CA().configure_trust(other)
    config = settings(tls="verify", tls_context=other, implicit_tls=True)
    with pytest.raises(DeliveryError) as raised:
        await connect(mailgate.host, mailgate.port_of("smtps"), config)
    assert (raised.value.reply.code, raised.value.reply.enhanced) == (454, "4.7.0")


@pytest.mark.asyncio
async def test_large_message_from_an_async_iterable(mailgate: MailgateServer) -> None:
    line = b"x" * 998 + b"\r\n"
    count = 4000  # 4 MB: more than the socket buffers hold, so writing must wait

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(count // 100):
            yield line * 100

    async with await connect(mailgate.host, mailgate.port, settings(data_timeout=30.0)) as client:
        result = await client.send(Transaction(ENVELOPE, chunks()))
    assert result.reply.code == 250
    [stored] = mailgate.messages()
    assert body_of(mailgate.raw(stored.id) or b"") == line * count
