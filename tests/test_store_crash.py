"""Crash safety: SIGKILL a process committing mail, then check what a reopen finds.

Every id the child printed was acknowledged (its commit returned), so it must
be found again with its exact bytes; nothing else may be half there.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from mailgate.model import MessageId
from mailgate.stores import SQLiteStore

ACKNOWLEDGED_BEFORE_KILL = 300
THRESHOLD_OCTETS = 64 * 1024

CHILD = """
import asyncio, itertools, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_store_crash import THRESHOLD_OCTETS, body
from mailgate.delivery import Acceptor, DeliverySettings
from mailgate.stores import SQLiteStore
from mailgate.testing.stores import make_envelope

async def main(directory, start):
    store = SQLiteStore(directory / "mail.db")
    settings = DeliverySettings(
        hostname="mx.test", spool_dir=directory / "spool", memory_threshold=THRESHOLD_OCTETS
    )
    sink = Acceptor(store, settings)
    numbers = itertools.count(start)

    async def sender():
        while True:
            n = next(numbers)
            content = body(n)
            spool = sink.begin(make_envelope())
            for i in range(0, len(content), 8192):
                spool.write(content[i : i + 8192])
            message_id = await sink.commit(spool)
            sys.stdout.write(f"{{message_id}} {{n}}\\n")
            sys.stdout.flush()

    await asyncio.gather(*(sender() for _ in range(20)))

asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2])))
"""


def body(n: int) -> bytes:
    """Message ``n``: every seventh is large enough to be stored as a file."""
    size = 5 * THRESHOLD_OCTETS if n % 7 == 0 else 1000
    return f"Subject: message {n}\r\n\r\n".encode() + f"{n:08d}\r\n".encode() * (size // 10)


def run_and_kill(directory: Path, start: int) -> dict[MessageId, int]:
    """Run the child until it acknowledged enough, SIGKILL it, return what it acknowledged."""
    script = CHILD.format(tests=str(Path(__file__).parent))
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(directory), str(start)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    acknowledged: dict[MessageId, int] = {}
    try:
        assert child.stdout is not None
        while len(acknowledged) < ACKNOWLEDGED_BEFORE_KILL:
            line = child.stdout.readline()
            if not line:
                assert child.stderr is not None
                pytest.fail("the child ended early:\n" + child.stderr.read().decode())
            message_id, n = line.split()
            acknowledged[MessageId(message_id.decode())] = int(n)
        os.kill(child.pid, signal.SIGKILL)
        # Acknowledgements printed before the kill landed count too.
        for line in child.stdout.read().splitlines():
            parts = line.split()
            if len(parts) == 2 and len(parts[0]) == 26 and parts[1].isdigit():
                acknowledged[MessageId(parts[0].decode())] = int(parts[1])
    finally:
        child.kill()
        child.wait()
        if child.stdout:
            child.stdout.close()
        if child.stderr:
            child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    return acknowledged


async def verify(directory: Path, acknowledged: dict[MessageId, int]) -> None:
    store = SQLiteStore(directory / "mail.db")  # reopening sweeps what the crash left
    try:
        for message_id, n in acknowledged.items():
            raw = await store.raw(message_id)
            assert raw is not None, f"acknowledged {message_id} is missing"
            assert raw.startswith(
                b"Return-Path: <sender@client.test>\r\nReceived: from client.test"
            )
            assert raw.endswith(b"\r\n" + body(n))
        page = await store.list(limit=100_000)
        assert page.total == len(page.messages) >= len(acknowledged)
        for summary in page.messages:  # no row without its whole body
            raw = await store.raw(summary.id)
            assert raw is not None
            assert len(raw) == summary.size
        named = {f"{summary.id}.eml" for summary in page.messages}
        assert {path.name for path in store.bodies.iterdir()} <= named
    finally:
        await store.aclose()
    connection = sqlite3.connect(directory / "mail.db")
    try:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        connection.close()


@pytest.mark.slow
def test_sigkill_loses_no_acknowledged_message(tmp_path: Path) -> None:
    first = run_and_kill(tmp_path, 0)
    asyncio.run(verify(tmp_path, first))
    second = run_and_kill(tmp_path, 1_000_000)
    asyncio.run(verify(tmp_path, first | second))
