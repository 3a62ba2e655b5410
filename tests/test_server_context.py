"""What a session is given: a ``SessionContext``, never the ``SMTPServer`` itself.

A session works with what its context holds, and with nothing else: no
import of the server module (no cycle, not even for type checking), and no
clock but the context's, so that a message has one received time.
"""

from __future__ import annotations

import ast
import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mailgate.config import Listen, Settings
from mailgate.model import Envelope
from mailgate.server import SMTPServer

SESSION = Path(__file__).resolve().parents[1] / "src" / "mailgate" / "server" / "_session.py"
WHEN = datetime(2001, 2, 3, 4, 5, 6, tzinfo=UTC)


class FixedClock:
    def now(self) -> datetime:
        return WHEN


class Spool:
    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)

    def discard(self) -> None:  # pragma: no cover - no transaction is abandoned here
        raise AssertionError


class RecordingSink:
    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []

    def has_room(self, size: int = 0) -> bool:
        return True

    def begin(self, envelope: Envelope) -> Spool:
        self.envelopes.append(envelope)
        return Spool()

    async def commit(self, spool: Spool) -> str:
        return "m1"


async def converse(port: int, lines: list[bytes]) -> list[bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    replies = [await reader.readline()]
    for line in lines:
        writer.write(line)
        await writer.drain()
        reply = await reader.readline()
        while reply[3:4] == b"-":
            reply = await reader.readline()
        replies.append(reply)
    writer.close()
    await writer.wait_closed()
    return replies


@pytest.mark.asyncio
async def test_a_message_is_stamped_by_the_injected_clock() -> None:
    sink = RecordingSink()
    settings = Settings(smtp=Listen("127.0.0.1", 0), http=None, hostname="mx.test")
    server = SMTPServer(settings, sink=sink, clock=FixedClock())  # type: ignore[arg-type]
    await server.start()
    try:
        (address,) = server.addresses
        replies = await converse(
            address[1],
            [
                b"EHLO c.example\r\n",
                b"MAIL FROM:<a@example.org>\r\n",
                b"RCPT TO:<b@example.org>\r\n",
                b"DATA\r\n",
                b"Subject: hi\r\n\r\nhello\r\n.\r\n",
                b"QUIT\r\n",
            ],
        )
    finally:
        await server.aclose()
    assert replies[-2] == b"250 2.0.0 Ok: queued as m1\r\n"
    (envelope,) = sink.envelopes
    assert envelope.received_at == WHEN


def test_the_session_takes_nothing_from_the_server_module() -> None:
    tree = ast.parse(SESSION.read_text(encoding="utf-8"))
    imported = {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert "mailgate.server._server" not in imported  # no cycle, not even for type checking
    assert "mailgate.server._context" in imported
    clocks = [
        ast.unparse(node.func.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("now", "utcnow", "today")
    ]
    assert clocks == ["self._clock"]  # the context's clock, and no other
