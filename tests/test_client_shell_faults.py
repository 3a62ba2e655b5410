"""The SMTP client's asyncio shell against small raw servers on loopback.

For what real servers will not do on request: mixed recipient replies, a
5xx after DATA, a 421, a failed BDAT chunk, silence, a half-close, a
refused connection or greeting, a garbled reply.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator

import pytest

from client_shell_helpers import (
    EHLO_PIPELINING,
    EHLO_STARTTLS,
    ENVELOPE,
    FAST,
    MESSAGE,
    raw_server,
    read_data,
    read_until,
    scripted,
    settings,
)
from mailgate.protocol import Recipient, Reply
from mailgate.queue._smtp import (
    DeliveryError,
    SMTPClient,
    SMTPClientSettings,
    Transaction,
    connect,
)


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
