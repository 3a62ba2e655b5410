"""Messages part-way through DATA cost a ``mailgate serve`` process bounded memory.

A spool holds a message in memory until it passes its threshold (256 KiB).
Without a limit over all spools, every connection part-way through DATA held
its own share, and the engine held the last packet each had read.  The spool
budget (``--spool-memory``, 64 MiB by default) bounds the sum: past it a
spool goes to a file at once.  Here 900 connections from nine loopback
addresses (each under the default limit of 100 per address) send 250 or 300
KiB of a message each and stop short of the final dot; the serving
process's RSS may grow by the budget and a fixed allowance per connection,
no more.  Then a few connections finish their messages, the rest go away,
and a client still gets its message stored, byte for byte.

RSS added by the 900 connections on the development machine (2 CPUs,
uvloop, pure Python build): 199 to 212 MiB before the budget (227 to 241
KiB each); 139 to 164 MiB with the budget alone; 72 to 74 MiB with the
budget and the engine letting go of what it has read (64 MiB of spools and
about 10 KiB a connection).  With every connection at 250 KiB it was 311
MiB before; at 300 KiB, 109 MiB.
"""

from __future__ import annotations

import asyncio
import resource
import smtplib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from process_helpers import TIMEOUT, Launcher, Serving
from server_helpers import body_of

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads a process's memory and sockets in /proc"
)

KIB = 1024
MIB = 1024 * KIB
CONNECTIONS = 900
SOURCES = [f"127.0.90.{n}" for n in range(1, 10)]  # 100 a source is the default limit
SENT = (250 * KIB, 300 * KIB)
"""Content a connection sends before it stops: in turn under and past one spool's
threshold, so that without the budget a spool stays in memory or goes to a file."""
BUDGET = 64 * MIB
"""The default ``--spool-memory``."""
ALLOWANCE = 32 * KIB
"""What a connection part-way through DATA may cost beyond the budget (measured: about
10 KiB, and 227 KiB or more before the budget)."""
FINISHED = 8
"""Connections that send the final dot; the rest go away with their message unfinished."""
FILES = 4096
"""Descriptors the server needs at most here: a socket a connection, a file a spool."""


@pytest.fixture
def descriptors() -> Iterator[None]:
    """Let this process and the server it starts open ``FILES`` descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < FILES:
        pytest.fail(f"the hard limit of open files is {hard}; this test needs {FILES}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, FILES), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def message(number: int, size: int) -> bytes:
    """A message of about ``size`` octets in 78-octet lines; ``number`` makes each its own."""
    header = f"From: a@example.com\r\nSubject: part way {number}\r\n\r\n".encode()
    line = b"x" * 76 + b"\r\n"
    return header + line * (size // len(line))


def rss(pid: int) -> int:
    """The resident set size of process ``pid``, in octets."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * KIB
    raise AssertionError(f"no VmRSS for process {pid}")


_LOOPBACK = "0100007F"  # 127.0.0.1 as /proc/net/tcp writes it


def connections_to(port: int) -> tuple[int, int]:
    """Established IPv4 connections to 127.0.0.1 ``port``, and the octets still queued in
    them (sent and not yet read, either way, at either end).  Both ends are matched by
    address too: other tests' clients bound to other loopback addresses may have the
    same port number."""
    server = f"{_LOOPBACK}:{port:04X}"
    count = queued = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "01" and server in fields[1:3]:  # 01: established
            count += fields[1] == server
            queued += sum(int(n, 16) for n in fields[4].split(":"))
    return count, queued


def wait_until_read(port: int, connections: int) -> None:
    """Wait until ``connections`` are established and the server has read all they sent."""
    deadline = time.monotonic() + TIMEOUT
    while connections_to(port) != (connections, 0):
        assert time.monotonic() < deadline, f"connections, octets unread: {connections_to(port)}"
        time.sleep(0.02)


def spool_files(data: Path) -> list[Path]:
    return list((data / "spool").glob("*.spool"))


async def read_reply(reader: asyncio.StreamReader) -> bytes:
    """One reply, every line of it; its last line."""
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("the server closed the connection")
        if line[3:4] != b"-":
            return line


class PartWay:
    """A client that opened DATA and sent part of a message."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, source: str, content: bytes) -> PartWay:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        assert (await read_reply(reader)).startswith(b"220 ")
        writer.write(b"EHLO client.test\r\n")
        assert (await read_reply(reader)).startswith(b"250 ")
        writer.write(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
        assert (await read_reply(reader)).startswith(b"250 ")
        assert (await read_reply(reader)).startswith(b"250 ")
        assert (await read_reply(reader)).startswith(b"354 ")
        writer.write(content)
        await writer.drain()
        return cls(reader, writer)

    async def finish(self) -> bytes:
        """Send the final dot and QUIT; the reply to the message."""
        self.writer.write(b".\r\nQUIT\r\n")
        reply = await read_reply(self.reader)
        self.writer.close()
        return reply


def inbox(served: Serving) -> list[dict[str, Any]]:
    """The stored messages, newest first, as the JSON API lists them."""
    page = httpx.get(f"{served.http_url}api/v1/messages", timeout=TIMEOUT)
    assert page.status_code == 200, page.text
    messages: list[dict[str, Any]] = page.json()["messages"]
    return messages


def raw(served: Serving, message_id: str) -> bytes:
    page = httpx.get(f"{served.http_url}api/v1/message/{message_id}/raw", timeout=TIMEOUT)
    assert page.status_code == 200, page.text
    return page.content


def stored_bodies(served: Serving) -> dict[str, bytes]:
    """Each stored message's body as the client sent it, by subject."""
    return {m["Subject"]: body_of(raw(served, m["ID"])) for m in inbox(served)}


def send(served: Serving, content: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", served.port, timeout=TIMEOUT) as client:
        client.sendmail("a@example.com", ["b@example.org"], content)


def serve(launcher: Launcher, data: Path, *flags: str) -> Serving:
    return launcher.serve(
        "--smtp", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data", str(data), *flags
    )


@pytest.mark.slow
@pytest.mark.usefixtures("descriptors")
def test_connections_part_way_through_data_cost_the_budget_and_little_more(
    launcher: Launcher, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    # The connections stand idle once they have sent their part, for as long as a busy
    # machine takes to open them all: the deadlines that would cut them off (those of a
    # server under stress, and the data rate's) are not what is measured here.
    served = serve(launcher, data, "--stress-timeout", "300", "--data-rate-grace", "300")
    # The paths the connections take, in memory and on file, are warmed up first.
    send(served, message(-1, 8 * KIB))
    send(served, message(-2, 300 * KIB))
    before = rss(served.process.pid)
    sent = [message(n, SENT[n % len(SENT)]) for n in range(CONNECTIONS)]

    async def part_way() -> list[bytes]:
        limit = asyncio.Semaphore(64)  # connecting, under the listen backlog

        async def one(number: int) -> PartWay:
            async with limit:
                source = SOURCES[number % len(SOURCES)]
                return await PartWay.open(served.port, source, sent[number])

        clients = await asyncio.gather(*(one(n) for n in range(CONNECTIONS)))
        await asyncio.to_thread(wait_until_read, served.port, CONNECTIONS)
        added = rss(served.process.pid) - before
        assert added <= BUDGET + CONNECTIONS * ALLOWANCE, (
            f"{CONNECTIONS} connections part-way through DATA added {added / MIB:.1f} MiB "
            f"({added / CONNECTIONS / KIB:.0f} KiB each)"
        )
        replies = await asyncio.gather(*(c.finish() for c in clients[:FINISHED]))
        for client in clients[FINISHED:]:
            client.writer.transport.abort()
        return replies

    replies = asyncio.run(part_way())
    assert all(reply.startswith(b"250 2.0.0 ") for reply in replies), replies
    after = b"From: a@example.com\r\nSubject: after\r\n\r\nStill here.\r\n"
    send(served, after)
    bodies = stored_bodies(served)
    assert len(bodies) == 2 + FINISHED + 1
    assert bodies["after"] == after
    for number in range(FINISHED):
        assert bodies[f"part way {number}"] == sent[number]
    deadline = time.monotonic() + TIMEOUT
    while spool_files(data):  # what the unfinished ones spooled is thrown away
        assert time.monotonic() < deadline, f"spool files left: {spool_files(data)}"
        time.sleep(0.02)
    served.stop_cleanly()


def test_spool_memory_sends_what_is_past_it_to_a_file(launcher: Launcher, tmp_path: Path) -> None:
    data = tmp_path / "data"
    served = serve(launcher, data, "--spool-memory", "16K")
    sent = [message(n, 10 * KIB) for n in range(2)]

    async def part_way() -> list[bytes]:
        first = await PartWay.open(served.port, "127.0.0.1", sent[0])
        await asyncio.to_thread(wait_until_read, served.port, 1)
        assert spool_files(data) == []  # 10 KiB of 16: in memory
        second = await PartWay.open(served.port, "127.0.0.1", sent[1])
        await asyncio.to_thread(wait_until_read, served.port, 2)
        assert len(spool_files(data)) == 1  # 10 more would pass 16: to a file
        return [await first.finish(), await second.finish()]

    replies = asyncio.run(part_way())
    assert all(reply.startswith(b"250 2.0.0 ") for reply in replies), replies
    bodies = stored_bodies(served)
    assert [bodies[f"part way {n}"] for n in range(2)] == sent
    assert spool_files(data) == []
    served.stop_cleanly()
