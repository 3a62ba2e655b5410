"""The accept path of a 1 KiB message, in process: CPU a message, two builds in turns.

    .venv/bin/python bench/accept_path.py HEAD~1 HEAD
    .venv/bin/python bench/accept_path.py /tmp/before /tmp/after --rounds 15

Each build (a git revision, or a directory holding ``src/mailgate``) runs in
a process of its own, its pure-Python source first on ``PYTHONPATH``, and
drives real sessions (``server.Session``: the engine, the policy, the
spool, ``delivery.Acceptor``'s summary and commit) over an in-memory
transport, one connection a message as ``smtp-source`` opens them: the
greeting, ``EHLO``, ``MAIL``, ``RCPT`` and ``DATA`` pipelined, 1 KiB of
content, the ``250``, ``QUIT``.  The store answers at once and logging is
off, so what is timed is mailgate's own work for a message, without the
kernel, the disk, the commit service or the log line: where a change to the
hot path shows most.  The builds run in turns (A, B, B, A...) so that a busy
spell of a shared machine falls on both; the medians of CPU microseconds a
message are printed, with each round.  ``bench/ab.py`` measures the same
under real load, end to end.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _turns import in_turns

CONTENT = (
    b"From: bench@client.test\r\nTo: sink@bench.test\r\nSubject: a kibibyte\r\n\r\n"
    + (b"x" * 78 + b"\r\n") * 12
    + b".\r\n"
)  # 1,032 octets with the final dot: about what smtp-source -l 1024 sends
ENVELOPE = b"MAIL FROM:<bench@client.test>\r\nRCPT TO:<sink@bench.test>\r\nDATA\r\n"


class _NullStore:
    """A store that answers at once: the accept path without the disk."""

    async def store(self, message: Any) -> Any:
        return message.id


class _MemoryTransport(asyncio.Transport):
    """The server end of a connection, in memory: what the session writes is kept."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.protocol: asyncio.Protocol | None = None
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed and self.protocol is not None:
            self.closed = True
            self.protocol.connection_lost(None)


async def _one(context: Any, session_class: Any) -> None:
    transport = _MemoryTransport()
    session = session_class(context)
    transport.protocol = session
    session.connection_made(transport)
    session.data_received(b"EHLO client.test\r\n")
    session.data_received(ENVELOPE)
    session.data_received(CONTENT)
    while b"queued as" not in transport.written[-80:]:
        await asyncio.sleep(0)
    session.data_received(b"QUIT\r\n")
    session.eof_received()
    assert transport.closed, bytes(transport.written)


async def _measure(messages: int) -> float:
    """CPU microseconds a message, after a warm-up."""
    from mailgate.config import Settings  # noqa: PLC0415 - the build under test, from PYTHONPATH
    from mailgate.delivery import Acceptor, DeliverySettings  # noqa: PLC0415
    from mailgate.server import Session, SMTPServer  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="mailgate-accept-") as tmp:
        sink = Acceptor(_NullStore(), DeliverySettings(hostname="bench.test", spool_dir=Path(tmp)))
        server = SMTPServer(Settings(hostname="bench.test"), sink=sink)
        context = server.session_context(server.listeners[0])
        for _ in range(max(messages // 10, 100)):
            await _one(context, Session)
        started = time.process_time()
        for _ in range(messages):
            await _one(context, Session)
        spent = time.process_time() - started
        sink.close()
    assert sink.counts.accepted >= messages
    return spent / messages * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("a", help="the build before: a git revision or a directory")
    parser.add_argument("b", help="the build after")
    parser.add_argument("--rounds", type=int, default=9, help="rounds of each (default 9)")
    parser.add_argument("--messages", type=int, default=3000, help="a round (default 3000)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(f"{asyncio.run(_measure(args.messages)):.2f}")
        return 0
    results: dict[str, list[float]] = {"A": [], "B": []}
    with tempfile.TemporaryDirectory(prefix="mailgate-accept-") as tmp:
        child = ["--messages", str(args.messages)]
        turns = in_turns(__file__, args.a, args.b, rounds=args.rounds, child=child, work=Path(tmp))
        for round_number, name, printed in turns:
            results[name].append(float(printed))
            print(f"round {round_number} {name}: {results[name][-1]:.2f} µs a message")
    a, b = (statistics.median(results[name]) for name in ("A", "B"))
    print(f"A {args.a}: median {a:.2f} µs of CPU a message ({args.rounds} rounds)")
    print(f"B {args.b}: median {b:.2f} µs of CPU a message ({args.rounds} rounds)")
    print(f"B - A: {b - a:+.2f} µs ({(b - a) / a:+.1%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
