"""The SMTP client's asyncio shell against real servers on loopback.

mailgate itself (TLS with trustme certificates, AUTH, BDAT, RSET between
messages), aiosmtpd (a server written elsewhere, without PIPELINING), and
small raw asyncio servers for what real servers will not do on request:
mixed recipient replies, a 5xx after DATA, a 421, silence, a half-close.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import trustme
from aiosmtpd.smtp import SMTP, Session
from aiosmtpd.smtp import Envelope as ReceivedEnvelope

from mailgate.auth import UsersFile
from mailgate.config import Limits, Listen, Settings
from mailgate.protocol import Envelope, Recipient, Reply
from mailgate.queue._smtp import (
    DeliveryError,
    SMTPClient,
    SMTPClientSettings,
    Transaction,
    connect,
)
from mailgate.server._tls import server_context
from mailgate.testing import MailgateServer
from server_helpers import body_of

PASSWORD = "correct horse battery staple"
CHEAP = 4  # scrypt cost for tests: 2**4
FAST = 2.0  # seconds: every wait in these tests ends well before
# Content given in chunks: its size is not known in advance, so no SIZE=.
ENVELOPE = Envelope(sender="a@example.org", recipients=(Recipient("b@example.com"),))
MESSAGE = b"From: a@example.org\r\nSubject: hi\r\n\r\n.leading dot\r\nbody\r\n"

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def settings(**options: object) -> SMTPClientSettings:
    defaults: dict[str, object] = {
        "hostname": "client.test",
        "tls": "none",
        "connect_timeout": FAST,
        "command_timeout": FAST,
        "data_block_timeout": FAST,
        "data_timeout": FAST,
    }
    return SMTPClientSettings(**(defaults | options))  # type: ignore[arg-type]


# -------------------------------------------------------------------- fixtures


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


@contextlib.asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[int]:
    """A raw asyncio server on a free loopback port, running ``handler`` per connection."""
    tasks: list[asyncio.Task[None]] = []

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tasks.append(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(run, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()
        # A handler's own checks count; a client that went away does not.
        failed = [o for o in outcomes if isinstance(o, AssertionError)]
        if failed:
            raise failed[0]


EHLO_PIPELINING = b"250-fake.test\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n"


async def read_until(reader: asyncio.StreamReader, last: bytes) -> list[bytes]:
    """Command lines up to and including ``last``."""
    lines = []
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("client went away")
        lines.append(line)
        if line == last:
            return lines


async def read_data(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n.\r\n")


# -------------------------------------------------------------------- mailgate


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


# -------------------------------------------------------------------- aiosmtpd


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


# ---------------------------------------------------------------- raw servers


@pytest.mark.asyncio
async def test_pipelined_commands_arrive_before_any_reply() -> None:
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 fake.test\r\n")
        await reader.readline()
        writer.write(EHLO_PIPELINING)
        # Nothing is answered until DATA arrives: a client that waited would time out.
        seen.extend(await read_until(reader, b"DATA\r\n"))
        writer.write(
            b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n450 4.2.1 mailbox busy\r\n"
            b"550 5.1.1 unknown\r\n354 go\r\n"
        )
        seen.append(await read_data(reader))
        writer.write(b"554 5.7.1 rejected as spam\r\n")
        await read_until(reader, b"QUIT\r\n")
        writer.write(b"221 bye\r\n")

    async with raw_server(handler) as port, await connect("127.0.0.1", port, settings()) as client:
        result = await client.send(
            Transaction.of(
                MESSAGE,
                sender="a@example.org",
                recipients=["ok@example.com", "busy@example.com", "gone@example.com"],
            )
        )
    assert seen[:4] == [
        b"MAIL FROM:<a@example.org>\r\n",
        b"RCPT TO:<ok@example.com>\r\n",
        b"RCPT TO:<busy@example.com>\r\n",
        b"RCPT TO:<gone@example.com>\r\n",
    ]
    assert seen[5] == MESSAGE.replace(b"\n.lead", b"\n..lead") + b".\r\n"
    spam = Reply(554, "5.7.1", "rejected as spam")
    assert result.reply == spam
    assert result.recipients == (
        ("ok@example.com", spam),
        ("busy@example.com", Reply(450, "4.2.1", "mailbox busy")),
        ("gone@example.com", Reply(550, "5.1.1", "unknown")),
    )


@pytest.mark.asyncio
async def test_421_to_a_recipient_defers_the_message() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 fake.test\r\n")
        await reader.readline()
        writer.write(EHLO_PIPELINING)
        await read_until(reader, b"DATA\r\n")
        writer.write(b"250 2.1.0 ok\r\n421 4.7.0 too many connections\r\n")
        await writer.drain()

    async with raw_server(handler) as port:
        client: SMTPClient = await connect("127.0.0.1", port, settings())
        result = await client.send(
            Transaction.of(MESSAGE, sender="a@example.org", recipients=["b@example.com"])
        )
        await client.aclose()
    assert result.reply.code == 421
    assert result.recipients[0][1].code == 421
    with pytest.raises(DeliveryError) as raised:
        await client.send(
            Transaction.of(MESSAGE, sender="a@example.org", recipients=["b@example.com"])
        )
    assert raised.value.temporary


@pytest.mark.asyncio
async def test_silent_peer_times_out() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(3600)

    async with raw_server(silent) as port:
        with pytest.raises(DeliveryError) as raised:
            await connect("127.0.0.1", port, settings(connect_timeout=0.2))
    assert (raised.value.reply.code, raised.value.reply.enhanced) == (451, "4.4.2")
    assert raised.value.temporary


@pytest.mark.asyncio
async def test_peer_silent_after_mail_times_out() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 fake.test\r\n")
        await reader.readline()
        writer.write(b"250 fake.test\r\n")
        await asyncio.sleep(3600)

    async with raw_server(handler) as port:
        client = await connect("127.0.0.1", port, settings(command_timeout=0.2))
        with pytest.raises(DeliveryError) as raised:
            await client.send(
                Transaction.of(MESSAGE, sender="a@example.org", recipients=["b@example.com"])
            )
        await client.aclose()
    assert "timeout" in raised.value.reply.text
    assert raised.value.temporary


@pytest.mark.asyncio
async def test_half_closing_peer_is_a_lost_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 fake.test\r\n")
        await reader.readline()
        writer.write_eof()  # our side done, the socket still open
        await asyncio.sleep(3600)

    async with raw_server(handler) as port:
        with pytest.raises(DeliveryError) as raised:
            # A long timeout: the error must come from the half-close, at once.
            await connect("127.0.0.1", port, settings(command_timeout=30.0))
    assert (raised.value.reply.code, raised.value.reply.enhanced) == (451, "4.4.2")
    assert "lost" in raised.value.reply.text


@pytest.mark.asyncio
async def test_refused_connection() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, never listening: connecting is refused
        with pytest.raises(DeliveryError) as raised:
            await connect("127.0.0.1", port, settings())
    assert (raised.value.reply.code, raised.value.reply.enhanced) == (451, "4.4.1")
    assert str(raised.value).startswith("451 4.4.1 connection to 127.0.0.1 failed")


@pytest.mark.asyncio
async def test_refused_greeting_and_garbled_reply() -> None:
    async def refusing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"554 5.7.1 no service\r\n")
        await read_until(reader, b"QUIT\r\n")
        writer.write(b"221 bye\r\n")

    async with raw_server(refusing) as port:
        with pytest.raises(DeliveryError) as raised:
            await connect("127.0.0.1", port, settings())
    assert raised.value.reply.code == 554
    assert not raised.value.temporary

    async def garbling(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 fake.test\r\n")
        await reader.readline()
        writer.write(b"hello?\r\n")
        await asyncio.sleep(3600)

    async with raw_server(garbling) as port:
        with pytest.raises(DeliveryError) as raised:
            await connect("127.0.0.1", port, settings())
    assert (raised.value.reply.code, raised.value.reply.enhanced) == (451, "4.5.0")


@pytest.mark.asyncio
async def test_encrypt_without_starttls_fails() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 fake.test\r\n")
        await reader.readline()
        writer.write(EHLO_PIPELINING)
        await read_until(reader, b"QUIT\r\n")
        writer.write(b"221 bye\r\n")

    async with raw_server(handler) as port:
        with pytest.raises(DeliveryError) as raised:
            await connect("127.0.0.1", port, settings(tls="encrypt"))
    assert (raised.value.reply.code, raised.value.reply.enhanced) == (454, "4.7.0")
    assert raised.value.temporary


def test_settings_refuse_contradictions() -> None:
    with pytest.raises(ValueError, match="verify"):
        SMTPClientSettings(tls="verify")
    with pytest.raises(ValueError, match="implicit"):
        SMTPClientSettings(tls="none", implicit_tls=True)


def test_transaction_of_reads_the_content() -> None:
    t = Transaction.of(
        "Subject: é\r\n\r\nx".encode(), sender="a@b", recipients=[Recipient("c@d", notify="NEVER")]
    )
    assert (t.envelope.size, t.envelope.eight_bit, t.envelope.utf8_headers) == (16, True, True)
    t = Transaction.of("S: x\n\né".encode(), sender="a@b", recipients=["c@d"])
    assert (t.envelope.eight_bit, t.envelope.utf8_headers) == (True, False)


def scripted(ehlo: bytes, answers: dict[bytes, bytes]) -> Handler:
    """A server answering each command by its first word, ``250 OK`` by default."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 fake.test\r\n")
        while line := await reader.readline():
            verb = line.split()[0].upper() if line.split() else b""
            if verb == b"EHLO":
                writer.write(ehlo)
            elif verb == b"DATA":
                writer.write(answers.get(verb, b"354 go\r\n"))
                await read_data(reader)
                writer.write(answers.get(b".", b"250 2.0.0 queued\r\n"))
            else:
                writer.write(answers.get(verb, b"250 2.0.0 OK\r\n"))
            if verb == b"QUIT":
                break

    return handler


EHLO_STARTTLS = b"250-fake.test\r\n250-STARTTLS\r\n250 AUTH CRAM-MD5\r\n"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("ehlo", "policy", "code"),
    [
        (EHLO_PIPELINING, "may", None),  # nothing offered: plaintext is what "may" allows
        (EHLO_STARTTLS, "may", None),  # refused: likewise
        (EHLO_STARTTLS, "encrypt", 454),
    ],
)
async def test_starttls_policy_when_tls_is_missing(
    ehlo: bytes, policy: str, code: int | None
) -> None:
    answers = {b"STARTTLS": b"454 4.7.0 TLS not available\r\n"}
    async with raw_server(scripted(ehlo, answers)) as port:
        if code is None:
            async with await connect("127.0.0.1", port, settings(tls=policy)) as client:
                assert not client.tls_active
                result = await client.send(
                    Transaction.of(MESSAGE, sender="a@example.org", recipients=["b@example.com"])
                )
                assert result.reply.code == 250
        else:
            with pytest.raises(DeliveryError) as raised:
                await connect("127.0.0.1", port, settings(tls=policy))
            assert raised.value.reply.code == code
            assert raised.value.temporary


@pytest.mark.asyncio
async def test_refusals_of_ehlo_rset_and_auth() -> None:
    async with raw_server(scripted(b"451 4.3.2 try later\r\n", {})) as port:
        with pytest.raises(DeliveryError) as raised:
            await connect("127.0.0.1", port, settings())
        assert raised.value.reply.code == 451
    answers = {b"RSET": b"500 5.5.1 what?\r\n"}
    async with (
        raw_server(scripted(EHLO_PIPELINING, answers)) as port,
        await connect("127.0.0.1", port, settings()) as client,
    ):
        with pytest.raises(DeliveryError) as raised:
            await client.reset()
        assert raised.value.reply.code == 500


@pytest.mark.asyncio
async def test_no_usable_auth_mechanism(mailgate: MailgateServer) -> None:
    config = settings(tls="encrypt")
    async with await connect(mailgate.host, mailgate.port_of("submission"), config) as client:
        with pytest.raises(DeliveryError) as raised:
            await client.login("alice", PASSWORD, mechanism="CRAM-MD5")
    assert raised.value.temporary


@pytest.mark.asyncio
async def test_idle_421_is_reported_on_the_next_command() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 fake.test\r\n")
        await reader.readline()
        writer.write(EHLO_PIPELINING + b"421 4.4.2 idle timeout\r\n")
        await writer.drain()
        await asyncio.sleep(3600)

    async with raw_server(handler) as port:
        client = await connect("127.0.0.1", port, settings())
        await asyncio.sleep(0.05)  # let the 421 arrive before the next command
        with pytest.raises(DeliveryError) as raised:
            await client.reset()
        await client.aclose()
    assert raised.value.reply.code == 421
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


@pytest.mark.asyncio
async def test_peer_gone_while_content_is_sent() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 fake.test\r\n")
        await reader.readline()
        writer.write(EHLO_PIPELINING)
        await read_until(reader, b"DATA\r\n")
        writer.write(b"250 ok\r\n250 ok\r\n354 go\r\n")
        await writer.drain()
        writer.transport.abort()

    def endless() -> Iterator[bytes]:
        while True:
            yield b"y" * 65536

    async with raw_server(handler) as port:
        client = await connect("127.0.0.1", port, settings())
        with pytest.raises(DeliveryError) as raised:
            await client.send(Transaction(ENVELOPE, endless()))
        await client.aclose()
    assert (raised.value.reply.code, raised.value.reply.enhanced) == (451, "4.4.2")


@pytest.mark.asyncio
async def test_cancelled_connect_drops_the_connection() -> None:
    connected, closed = asyncio.Event(), asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connected.set()
        assert await reader.read() == b"", "the client closes without a word"
        closed.set()

    async with raw_server(silent) as port:
        attempt = asyncio.create_task(connect("127.0.0.1", port, settings(connect_timeout=30.0)))
        await connected.wait()
        attempt.cancel()
        with pytest.raises(asyncio.CancelledError):
            await attempt
        await asyncio.wait_for(closed.wait(), FAST)


@pytest.mark.asyncio
async def test_a_failed_bdat_chunk_stops_the_rest() -> None:
    replied = asyncio.Event()
    after: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 fake.test\r\n")
        await reader.readline()
        writer.write(b"250-fake.test\r\n250-PIPELINING\r\n250 CHUNKING\r\n")
        await read_until(reader, b"RCPT TO:<b@example.com>\r\n")
        writer.write(b"250 ok\r\n250 ok\r\n")
        size = int((await reader.readline()).split()[1])
        await reader.readexactly(size)
        writer.write(b"552 5.3.4 too big\r\n")
        await writer.drain()
        replied.set()
        after.extend(await read_until(reader, b"QUIT\r\n"))
        writer.write(b"250 reset\r\n221 bye\r\n")

    async def chunks() -> AsyncIterator[bytes]:
        yield b"one\r\n"
        yield b"two\r\n"  # BDAT one leaves; two is held back
        await replied.wait()
        await asyncio.sleep(0.05)  # the 552 reaches the client
        for _ in range(10):
            yield b"more\r\n"

    async with raw_server(handler) as port, await connect("127.0.0.1", port, settings()) as client:
        result = await client.send(Transaction(ENVELOPE, chunks()))
    assert result.reply == Reply(552, None, "5.3.4 too big")
    assert after == [b"RSET\r\n", b"QUIT\r\n"], "RFC 3030 2: no chunk after a failed one"
