"""Password guessing over real sockets: SMTP AUTH and HTTP basic auth, one throttle.

A crowd of connections from 127.0.0.1 guesses while a real user comes from
127.0.0.2 (Linux routes all of 127/8 to the loopback).  The users file
counts the checks it actually makes; delays are a few hundredths of a
second, so every test ends within seconds.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import logging
import ssl
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import trustme

from mailgate.auth import PasswordChecks, UsersFile
from mailgate.config import Limits, Settings
from mailgate.server import server_context
from mailgate.testing import MailgateServer

PASSWORD = "correct horse battery staple"
CHEAP = 4  # scrypt cost for tests: 2**4, so tests stay fast
ATTACKER = "127.0.0.1"
USER = "127.0.0.2"
FIRST_DELAY = 0.05
BLOCK_AFTER = 4
LIMITS = Limits(auth_failure_delay=FIRST_DELAY, auth_block_after=BLOCK_AFTER, auth_block_time=60)


class CountingUsers(UsersFile):
    """A users file that counts the checks it makes, and how many run at once."""

    def __init__(self, path: Path, *, slow: float = 0.0, checks: PasswordChecks | None = None):
        super().__init__(path, checks=checks)
        self.slow = slow
        self.checked = 0
        self.running = 0
        self.most_at_once = 0
        self.started = threading.Event()
        self._lock = threading.Lock()

    def check(self, name: str, password: str) -> bool:
        with self._lock:
            self.checked += 1
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        self.started.set()
        try:
            time.sleep(self.slow)  # stands in for a costly hash without taking a shared CPU
            return super().check(name, password)
        finally:
            with self._lock:
                self.running -= 1


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    cert = trustme.CA().issue_cert("localhost", "127.0.0.1")
    directory = tmp_path_factory.mktemp("tls")
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    return cert_path, key_path


def users_file(
    tmp_path: Path, *, slow: float = 0.0, checks: PasswordChecks | None = None
) -> CountingUsers:
    users = CountingUsers(tmp_path / "users", slow=slow, checks=checks)
    users.set_password("alice", PASSWORD, log2_n=CHEAP)
    return users


def smtp_server(
    tls_files: tuple[Path, Path], users: UsersFile, *, http_auth: bool = False
) -> MailgateServer:
    settings = Settings(limits=LIMITS, http_auth=("alice", PASSWORD) if http_auth else None)
    return MailgateServer(
        settings=settings,
        tls_context=server_context(*tls_files),
        authenticator=users,
        http=http_auth,
    )


def client_tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def reply(reader: asyncio.StreamReader) -> bytes:
    lines = b""
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError(lines)
        lines += line
        if line[3:4] != b"-":
            return lines


class Smtp:
    """An SMTP client from ``source``, over TLS, ready for AUTH."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int, source: str) -> Smtp:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        client = cls(reader, writer)
        assert (await reply(reader)).startswith(b"220")
        for command in (b"EHLO c\r\n", b"STARTTLS\r\n"):
            writer.write(command)
            await reply(reader)
        await writer.start_tls(client_tls(), server_hostname="localhost")
        writer.write(b"EHLO c\r\n")
        assert b"AUTH PLAIN" in await reply(reader)
        return client

    async def auth(self, user: str, password: str) -> tuple[bytes, float]:
        """AUTH PLAIN's reply, and how long it took."""
        token = base64.b64encode(f"\0{user}\0{password}".encode())
        start = time.monotonic()
        self.writer.write(b"AUTH PLAIN " + token + b"\r\n")
        answer = await reply(self.reader)
        return answer, time.monotonic() - start

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError, ssl.SSLError, TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), 5)


async def guess_over_smtp(port: int, source: str, replies: Counter[str]) -> None:
    """Guess until the address is blocked, reconnecting whenever the server ends a connection."""
    client: Smtp | None = None
    deadline = time.monotonic() + 20
    try:
        for n in itertools.count():
            assert time.monotonic() < deadline, "never blocked"
            if client is None:
                client = await Smtp.connect(port, source)
            try:
                answer, took = await client.auth("alice", f"guess {n}")
            except (ConnectionError, OSError):
                await client.close()
                client = None
                continue
            replies[answer[:9].decode()] += 1
            if answer.startswith(b"535"):
                assert took >= FIRST_DELAY, "a failure is answered only after a delay"
            elif answer.startswith(b"454 4.7.0 Too many authentication failures"):
                return
            elif answer.startswith(b"421"):  # the session ended after too many refusals
                await client.close()
                client = None
    finally:
        if client is not None:
            await client.close()


def auth_lines(caplog: pytest.LogCaptureFixture, start: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "mailgate.auth" and r.getMessage().startswith(start)
    ]


@pytest.fixture
def auth_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING, logger="mailgate.auth")
    return caplog


def test_smtp_guessing_from_many_connections_is_delayed_then_blocked(
    tls_files: tuple[Path, Path], tmp_path: Path, auth_log: pytest.LogCaptureFixture
) -> None:
    users = users_file(tmp_path)

    async def attack(port: int) -> tuple[Counter[str], bytes, float]:
        replies: Counter[str] = Counter()
        crowd = [guess_over_smtp(port, ATTACKER, replies) for _ in range(30)]
        guessing = asyncio.gather(*crowd)
        await asyncio.sleep(0.1)  # the crowd is at it: now the real user, from elsewhere
        real = await Smtp.connect(port, USER)
        answer, took = await real.auth("alice", PASSWORD)
        await real.close()
        await asyncio.wait_for(guessing, 30)
        return replies, answer, took

    with smtp_server(tls_files, users) as server:
        replies, answer, took = asyncio.run(attack(server.port))
        assert answer.startswith(b"235 2.7.0")
        assert took < 2.0  # a TLS handshake and a cheap hash: milliseconds, on a shared machine
        # Guesses until every connection was told of the block, but only as many checks
        # as it took to block the address.
        assert users.checked == BLOCK_AFTER + 1, replies  # the guesses, and the real user's
        assert replies["535 5.7.8"] == BLOCK_AFTER
        assert replies["454 4.7.0"] >= 30  # the rest: refused unchecked
        assert len(auth_lines(auth_log, "auth failed user=alice client=[127.0.0.1]")) == 4
        assert auth_lines(auth_log, "auth blocked") == ["auth blocked client=[127.0.0.1] for 60s"]

        async def blocked(port: int) -> tuple[bytes, bytes]:
            client = await Smtp.connect(port, ATTACKER)
            answer, _ = await client.auth("alice", PASSWORD)  # even the right password
            closing = await reply(client.reader)
            await client.close()
            return answer, closing

        answer, closing = asyncio.run(blocked(server.port))
        assert answer.startswith(b"454 4.7.0 Too many authentication failures, try again in")
        assert closing.startswith(b"421 4.7.0")
        assert users.checked == BLOCK_AFTER + 1


def test_checks_run_on_their_own_threads_so_the_inbox_stays_fast(
    tls_files: tuple[Path, Path], tmp_path: Path
) -> None:
    # Each check holds a thread for 0.5 s; 40 addresses guess at once.  On the loop's
    # default executor (6 threads with 2 CPUs) they would hold every thread for over 3 s,
    # and a store read would wait behind them.  On two threads of their own with 8
    # waiting, the rest are refused at once and the inbox does not notice: its answer
    # takes milliseconds, 1.5 s leaves room for a busy shared machine.
    users = users_file(tmp_path, slow=0.5, checks=PasswordChecks(threads=2, waiting=8))

    async def load(server: MailgateServer) -> tuple[Counter[str], float]:
        replies: Counter[str] = Counter()
        clients = [await Smtp.connect(server.port, f"127.0.1.{n}") for n in range(1, 41)]
        guessing = asyncio.gather(*(c.auth("alice", "guess") for c in clients))
        await asyncio.to_thread(users.started.wait, 10)
        async with httpx.AsyncClient(auth=("alice", PASSWORD)) as http:
            start = time.monotonic()
            response = await http.get(f"{server.http_url}/api/v1/messages")
            took = time.monotonic() - start
            assert response.status_code == 200
        for answer, _ in await asyncio.wait_for(guessing, 30):
            replies[answer[:9].decode()] += 1
        for client in clients:
            await client.close()
        return replies, took

    with smtp_server(tls_files, users, http_auth=True) as server:
        replies, took = asyncio.run(load(server))
    assert took < 1.5, f"GET /api/v1/messages took {took:.2f}s under the guessing load"
    assert users.most_at_once <= 2
    assert replies["535 5.7.8"] == users.checked, replies
    assert users.checked <= 10, replies
    assert replies["454 4.7.0"] == 40 - users.checked  # beyond the queue: try again later


def test_http_guessing_is_delayed_then_refused_and_logged(
    tmp_path: Path, auth_log: pytest.LogCaptureFixture
) -> None:
    settings = Settings(limits=LIMITS, http_auth=("admin", "s3cret"))

    async def attack(url: str) -> tuple[Counter[int], set[str]]:
        statuses: Counter[int] = Counter()
        retry_after: set[str] = set()
        transport = httpx.AsyncHTTPTransport(local_address=ATTACKER)
        async with httpx.AsyncClient(transport=transport) as client:

            async def guess(n: int) -> None:
                start = time.monotonic()
                response = await client.get(url, auth=("admin", f"guess {n}"))
                statuses[response.status_code] += 1
                if response.status_code == 401:
                    assert time.monotonic() - start >= FIRST_DELAY
                if response.status_code == 429:
                    retry_after.add(response.headers["retry-after"])

            for _ in range(5):
                await asyncio.gather(*(guess(n) for n in range(20)))
        return statuses, retry_after

    with MailgateServer(settings=settings, http=True) as server:
        url = f"{server.http_url}/api/v1/messages"
        statuses, retry_after = asyncio.run(attack(url))
        assert statuses[401] == BLOCK_AFTER
        assert statuses[429] == 100 - BLOCK_AFTER
        assert all(int(seconds) >= 1 for seconds in retry_after)
        failed = auth_lines(auth_log, "auth failed user=admin client=[127.0.0.1] failures=")
        assert len(failed) == BLOCK_AFTER
        assert all(line.endswith(" service=http") for line in failed)
        assert auth_lines(auth_log, "auth blocked") == ["auth blocked client=[127.0.0.1] for 60s"]

        blocked = httpx.get(url, auth=("admin", "s3cret"))  # from 127.0.0.1: still blocked
        assert blocked.status_code == 429
        assert 55 <= int(blocked.headers["retry-after"]) <= 61
        other = httpx.Client(transport=httpx.HTTPTransport(local_address=USER))
        with other:
            start = time.monotonic()
            allowed = other.get(url, auth=("admin", "s3cret"))
            assert allowed.status_code == 200
            assert time.monotonic() - start < 1.0
            assert other.get(url).status_code == 401  # no credentials: asked, not counted
        assert len(auth_lines(auth_log, "auth failed")) == BLOCK_AFTER
