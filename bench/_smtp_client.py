"""The few SMTP client steps the asyncio load tools need (no pipelining, no TLS)."""

from __future__ import annotations

import asyncio
import os


class ReplyError(Exception):
    """The server answered with an unexpected code."""

    def __init__(self, expected: int, code: int, text: bytes) -> None:
        super().__init__(f"expected {expected}, got {code}: {text[:200]!r}")
        self.code = code


def use_uvloop() -> str:
    """Use uvloop when installed (like the servers), unless BENCH_EVENT_LOOP=asyncio."""
    if os.environ.get("BENCH_EVENT_LOOP", "auto") == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: PLC0415 - optional
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


async def read_reply(reader: asyncio.StreamReader, expected: int) -> bytes:
    """Read one (possibly multi-line) reply; raise ReplyError unless its code is ``expected``."""
    lines = []
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionResetError("server closed the connection")
        lines.append(line)
        if len(line) < 4 or line[3:4] != b"-":
            break
    text = b"".join(lines)
    try:
        code = int(lines[-1][:3])
    except ValueError:
        code = 0
    if code != expected:
        raise ReplyError(expected, code, text)
    return text


def message(size: int, *, subject: str = "bench", serial: int = 0) -> bytes:
    """A message of about ``size`` body octets, CRLF lines, ending with the final dot."""
    header = (
        "From: <bench@client.test>\r\n"
        "To: <sink@bench.test>\r\n"
        f"Subject: {subject}\r\n"
        f"Message-ID: <{serial}.{os.getpid()}@client.test>\r\n"
        "\r\n"
    ).encode()
    line = b"x" * 78 + b"\r\n"
    body = line * (size // len(line)) + b"y" * (size % len(line)) + b"\r\n"
    return header + body + b".\r\n"
