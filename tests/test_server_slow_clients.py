"""Slow clients cannot hold the connection slots: the attack, on loopback, as a test.

A "slowloris" opens many connections and sends a byte now and then, never
finishing a line.  Here 1,000 of them come from 20 loopback addresses
(127.0.0.10 to .29; Linux routes all of 127/8 to the loopback), each
sending one byte every few seconds and reconnecting when cut off, against
a real ``mailgate serve`` with its default limits (1,000 connections, 100
from one address).  A real client from a 21st address then sends 100
messages, one connection each: every one must get through.

The smaller tests pin each deadline with short limits: a command line
must be whole within the idle timeout, a message's content must average
``--min-data-rate``, a session ends at ``--max-session-time``; each is cut
off with ``421 4.4.2`` and nothing partial is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import smtplib
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest

from mailgate.config import Limits
from mailgate.testing import MailgateServer
from process_helpers import Launcher
from server_helpers import read_reply

ATTACKERS = [f"127.0.0.{n}" for n in range(10, 30)]
REAL_CLIENT = "127.0.0.30"
SLOTS = 1000  # the default --max-connections
BYTE_EVERY = 5.0  # seconds between the attacker's bytes
SLOW_LINE = b"EHLO slow.example\r\n"


class SlowLoris:
    """``count`` connections from ``addresses``, one byte every ``every`` seconds, each
    reconnecting when the server closes it.  Runs on its own event loop, in a thread."""

    def __init__(self, port: int, addresses: list[str], count: int, every: float) -> None:
        self.port = port
        self.addresses = addresses
        self.count = count
        self.every = every
        self.greeted = 0
        """Connections that got a 220: slots the attack held, reconnections included."""
        self.replies: Counter[bytes] = Counter()
        self.holding = 0
        """Connections greeted and not yet closed by the server."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._run(),), daemon=True)

    def __enter__(self) -> SlowLoris:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def wait_holding(self, at_least: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.holding < at_least:
            assert time.monotonic() < deadline, f"only {self.holding} slow connections held"
            time.sleep(0.05)

    async def _run(self) -> None:
        tasks = [
            asyncio.create_task(self._connection(self.addresses[n % len(self.addresses)]))
            for n in range(self.count)
        ]
        while not self._stop.is_set():
            await asyncio.sleep(0.05)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _connection(self, source: str) -> None:
        while not self._stop.is_set():
            try:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", self.port, local_addr=(source, 0)
                )
            except OSError:
                await asyncio.sleep(0.1)
                continue
            try:
                await self._hold(reader, writer)
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        greeting = await reader.readline()
        self.replies[greeting[:9]] += 1
        if not greeting.startswith(b"220"):
            await asyncio.sleep(self.every)  # refused: try again a little later
            return
        self.greeted += 1
        self.holding += 1
        try:
            for n in range(len(SLOW_LINE) * 1000):
                writer.write(SLOW_LINE[n % len(SLOW_LINE) : n % len(SLOW_LINE) + 1])
                try:
                    line = await asyncio.wait_for(reader.readline(), self.every)
                except TimeoutError:
                    continue
                if not line:
                    return
                self.replies[line[:9]] += 1
        finally:
            self.holding -= 1


def send_messages(port: int, count: int, pause: float) -> tuple[list[float], list[str]]:
    """``count`` messages from the real client, one connection each, ``pause`` seconds
    apart: the seconds each stored message took, and the failures."""
    took: list[float] = []
    failures: list[str] = []
    for n in range(count):
        time.sleep(pause)
        started = time.monotonic()
        message = EmailMessage()
        message["From"] = "app@example.org"
        message["To"] = "user@example.org"
        message["Subject"] = f"real {n}"
        message.set_content("A message from a client that is not slow.\n")
        try:
            with smtplib.SMTP(
                "127.0.0.1", port, source_address=(REAL_CLIENT, 0), timeout=30
            ) as client:
                client.send_message(message)
            took.append(time.monotonic() - started)
        except (smtplib.SMTPException, OSError) as error:
            failures.append(str(error))
    return took, failures


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(") ")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_real_client_gets_through_a_thousand_slow_connections(launcher: Launcher) -> None:
    serving = launcher.serve("--smtp", "127.0.0.1:0", "--http", "127.0.0.1:0")
    with SlowLoris(serving.port, ATTACKERS, SLOTS, BYTE_EVERY) as attack:
        attack.wait_holding(SLOTS * 9 // 10, timeout=60)
        cpu, started = cpu_seconds(serving.process.pid), time.monotonic()
        # Spread over 15 s: through the stress timeout's cuts and the crowd's reconnecting.
        took, failures = send_messages(serving.port, 100, pause=0.15)
        cpu = (cpu_seconds(serving.process.pid) - cpu) / (time.monotonic() - started)
    took.sort()
    figures = f"median {took[len(took) // 2]:.3f} s, slowest {took[-1]:.3f} s" if took else ""
    assert (len(took), failures[:3]) == (100, []), f"{figures}; attack {attack.replies}"
    # The crowd kept trying: it was greeted again and again, past the 1,000 slots.
    assert attack.greeted > SLOTS, attack.replies
    print(
        f"real client: {figures}; server {cpu:.2f} CPUs; greeted {attack.greeted}: {attack.replies}"
    )
    listed = httpx.get(serving.http_url + "api/v1/messages?limit=1", timeout=30).json()
    assert listed["total"] == 100
    log = serving.stop_cleanly()
    assert "Traceback" not in log


@contextlib.contextmanager
def connected(server: MailgateServer) -> Iterator[socket.socket]:
    assert server.port is not None
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        assert read_reply(sock).startswith(b"220 ")
        yield sock
    finally:
        sock.close()


def dribble(sock: socket.socket, data: bytes, every: float) -> bytes:
    """Send ``data`` a byte at a time; what the server said meanwhile, once it closed."""
    sock.settimeout(every)
    heard = b""
    for byte in data:
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            break
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            continue
        if not chunk:
            break
        heard += chunk
    return heard


def test_a_command_line_must_be_whole_within_the_idle_timeout() -> None:
    with MailgateServer(limits=Limits(idle_timeout=0.5)) as server, connected(server) as sock:
        # A byte every 0.1 s is activity, but no line is ever finished in time.
        heard = dribble(sock, b"EHLO slow.example\r\n" * 10, every=0.1)
        assert heard == b"421 4.4.2 mailgate.test Idle timeout, closing\r\n"


def test_content_slower_than_the_minimum_rate_is_cut_off() -> None:
    limits = Limits(idle_timeout=5, min_data_rate=1000, data_rate_grace=0.5)
    with MailgateServer(limits=limits) as server, connected(server) as sock:
        sock.sendall(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
        assert read_reply(sock).startswith(b"250-")
        time.sleep(0.2)
        # Each byte is progress, but a byte every 0.1 s is far below 1,000 a second.
        heard = dribble(sock, b"Subject: slow\r\n\r\n" + b"x" * 100, every=0.1)
        assert heard.endswith(b"421 4.4.2 mailgate.test Transfer too slow, closing\r\n")
        assert server.messages() == []


def test_content_at_a_good_rate_outlives_the_idle_timeout() -> None:
    limits = Limits(idle_timeout=0.8, min_data_rate=10, data_rate_grace=0.2)
    with MailgateServer(limits=limits) as server, connected(server) as sock:
        sock.sendall(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
        time.sleep(0.1)
        assert read_reply(sock).startswith(b"250-")
        content = b"Subject: s\r\n\r\n" + b"yy\r\n" * 8
        # Each line whole within the idle timeout, at about 25 octets a second: 1.8 s
        # in all, longer than the idle timeout.
        assert dribble(sock, content, every=0.04) == b""
        sock.settimeout(10)
        sock.sendall(b".\r\n")
        assert read_reply(sock).startswith(b"250 2.0.0 Ok: queued")
        assert [m.subject for m in server.messages()] == ["s"]


def test_a_session_ends_at_the_most_time_it_may_take() -> None:
    limits = Limits(max_session_time=0.6)
    with MailgateServer(limits=limits) as server, connected(server) as sock:
        sock.sendall(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
        heard = b""
        with contextlib.suppress(OSError):  # cut off on the way
            for _ in range(20):  # a busy client: a line every 0.1 s, but the session runs long
                time.sleep(0.1)
                sock.sendall(b"more content\r\n")
        sock.settimeout(5)
        while chunk := sock.recv(4096):
            heard += chunk
        assert heard.endswith(b"421 4.4.2 mailgate.test Session too long, closing\r\n")
        assert server.messages() == []


def test_a_newcomer_takes_the_slot_of_a_stalled_session_when_all_are_taken() -> None:
    with MailgateServer(limits=Limits(max_connections=4)) as server:
        assert server.port is not None
        stalled = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
        for sock in stalled:
            assert read_reply(sock).startswith(b"220 ")
        time.sleep(1.5)  # stalled long enough to give way
        with connected(server) as busy:
            busy.sendall(b"EHLO busy\r\n")
            assert read_reply(busy).startswith(b"250-")
            # Four of four slots taken: the next newcomer is admitted in place of the
            # session that has gone longest without progress, not the busy one.
            with connected(server) as newcomer:
                newcomer.sendall(b"NOOP\r\n")
                assert read_reply(newcomer).startswith(b"250 ")
            busy.sendall(b"NOOP\r\n")
            assert read_reply(busy).startswith(b"250 ")
        # The first to connect had gone longest without progress: it alone gave way.
        assert read_reply(stalled[0]) == b"421 4.4.2 mailgate.test Idle timeout, closing\r\n"
        for sock in stalled[1:]:
            sock.settimeout(0.2)
            with pytest.raises(TimeoutError):
                sock.recv(100)
        for sock in stalled:
            sock.close()


def connect_from(server: MailgateServer, source: str) -> socket.socket:
    assert server.port is not None
    sock = socket.create_connection(
        ("127.0.0.1", server.port), timeout=10, source_address=(source, 0)
    )
    sock.settimeout(10)
    return sock


def test_under_stress_the_idle_timeout_is_short() -> None:
    limits = Limits(max_connections=4, idle_timeout=60, stress_timeout=0.3)
    with MailgateServer(limits=limits) as server, contextlib.ExitStack() as closing:
        two = [closing.enter_context(connect_from(server, "127.0.0.1")) for _ in range(2)]
        for sock in two:
            assert read_reply(sock).startswith(b"220 ")
        time.sleep(0.8)
        # Two of four slots: no stress, the idle timeout is a minute.
        for sock in two:
            sock.sendall(b"NOOP\r\n")
            assert read_reply(sock).startswith(b"250 ")
        third = closing.enter_context(connect_from(server, "127.0.0.1"))
        assert read_reply(third).startswith(b"220 ")
        # Three of four, three quarters: each idle session has 0.3 s.
        for sock in [*two, third]:
            assert read_reply(sock) == b"421 4.4.2 mailgate.test Idle timeout, closing\r\n"


def test_a_newcomer_from_a_quiet_address_takes_a_slot_from_the_crowd() -> None:
    with (
        MailgateServer(limits=Limits(max_connections=4)) as server,
        contextlib.ExitStack() as closing,
    ):
        crowd = [closing.enter_context(connect_from(server, "127.0.0.2")) for _ in range(4)]
        for sock in crowd:
            assert read_reply(sock).startswith(b"220 ")
        # None has stalled a second yet; one more from the crowd's address is refused...
        refused = connect_from(server, "127.0.0.2")
        assert read_reply(refused).startswith(b"421 4.7.0 mailgate.test Too many connections")
        refused.close()
        # ...but another address is owed a slot: the crowd's most stalled gives way.
        with contextlib.closing(connect_from(server, "127.0.0.3")) as newcomer:
            assert read_reply(newcomer).startswith(b"220 ")
            newcomer.sendall(b"NOOP\r\n")
            assert read_reply(newcomer).startswith(b"250 ")
        assert read_reply(crowd[0]) == b"421 4.4.2 mailgate.test Idle timeout, closing\r\n"


def test_every_smtp_process_holds_its_sessions_to_the_deadlines(launcher: Launcher) -> None:
    serving = launcher.serve(
        "--smtp", "127.0.0.1:0", "--no-http", "--workers", "2", "--idle-timeout", "0.5"
    )
    assert serving.smtp_processes == 2
    # Enough connections that the kernel gives some to each process.
    socks = [socket.create_connection(("127.0.0.1", serving.port), timeout=10) for _ in range(8)]
    with contextlib.ExitStack() as closing:
        for sock in socks:
            closing.enter_context(sock)
            assert read_reply(sock).startswith(b"220 ")
        heard = [dribble(sock, b"EHLO slow.example\r\n", every=0.1) for sock in socks[:2]]
        for sock in socks[2:]:
            sock.settimeout(10)
            heard.append(read_reply(sock))
    assert all(reply.endswith(b"Idle timeout, closing\r\n") for reply in heard), heard
    serving.stop_cleanly()
