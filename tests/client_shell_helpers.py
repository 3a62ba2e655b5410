"""Helpers for the SMTP client shell's tests: settings, raw loopback servers, content.

``raw_server`` runs a handler per connection on a free loopback port;
``scripted`` is a handler answering each command by its first word.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from mailgate.protocol import Envelope, Recipient
from mailgate.queue._smtp import SMTPClientSettings

FAST = 2.0  # seconds: every wait in these tests ends well before
MESSAGE = b"From: a@example.org\r\nSubject: hi\r\n\r\n.leading dot\r\nbody\r\n"
# Content given in chunks: its size is not known in advance, so no SIZE=.
ENVELOPE = Envelope(sender="a@example.org", recipients=(Recipient("b@example.com"),))
EHLO_PIPELINING = b"250-fake.test\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n"
EHLO_STARTTLS = b"250-fake.test\r\n250-STARTTLS\r\n250 AUTH CRAM-MD5\r\n"

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
