"""``mailgate serve --workers N``: SMTP worker processes sharing the ports and the store.

Real processes, real sockets: the kernel's SO_REUSEPORT spreads connections
among the processes, which this module checks by finding, in ``/proc``, the
process that holds the server end of each connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import select
import signal
import smtplib
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mailgate.config import Listen, Settings
from mailgate.delivery import Acceptor, DeliverySettings
from mailgate.runtime import ChildStartError
from mailgate.runtime._workers import WorkerPool
from mailgate.server import SMTPServer
from mailgate.stores import SQLiteStore
from mailgate.testing import MailgateServer
from server_helpers import COMMIT_SERVICE, WORKER, children

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc to see which process serves"
)

TIMEOUT = 30.0
LISTENING = re.compile(
    r"mailgate \S+ listening: smtp 127\.0\.0\.1:(\d+), (\d+) SMTP processes, "
    r"http (http://127\.0\.0\.1:\d+/), .*\n"
)


class Served:
    """``mailgate serve --workers N`` in a child process."""

    def __init__(self, tmp_path: Path, workers: int) -> None:
        argv = ["serve", "--smtp", "127.0.0.1:0", "--http", "127.0.0.1:0"]
        argv += ["--data", str(tmp_path / "data"), "--workers", str(workers)]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mailgate", *argv, "--hostname", "mx.test"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], TIMEOUT)
        line = self.process.stdout.readline() if ready else ""
        match = LISTENING.fullmatch(line)
        if match is None:
            self.process.kill()
            _, err = self.process.communicate()
            pytest.fail(f"mailgate serve did not start: {line!r}\n{err}")
        self.port = int(match[1])
        assert int(match[2]) == workers
        self.http_url = match[3]

    def workers(self) -> list[int]:
        """The pids of the SMTP worker processes (the server's children but one)."""
        return children(self.process.pid, WORKER)

    def commit_services(self) -> list[int]:
        """The pids of the commit service (the server's other child): one, or none a while."""
        return children(self.process.pid, COMMIT_SERVICE)

    def commit_service(self) -> int:
        (pid,) = self.commit_services()
        return pid

    def total(self) -> int:
        total: int = httpx.get(f"{self.http_url}api/v1/messages?limit=1").json()["total"]
        return total

    def stop(self) -> tuple[int, str]:
        self.process.send_signal(signal.SIGTERM)
        _, err = self.process.communicate(timeout=TIMEOUT)
        return self.process.returncode, err


def wait_until(condition: object, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not callable(condition) or not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie (not yet reaped by its parent) has exited too.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except FileNotFoundError:  # reaped meanwhile
        return True


def server_pid_of(client: smtplib.SMTP, pids: list[int]) -> int:
    """The process that holds the server end of ``client``'s connection."""
    assert client.sock is not None
    port = client.sock.getsockname()[1]
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[2].split(":")[1], 16) == port:  # the remote end is our client
            inodes.add(fields[9])
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except FileNotFoundError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                return pid
    raise AssertionError(f"no process holds the server end of client port {port}")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    server = Served(tmp_path, workers=3)
    yield server
    if server.process.poll() is None:
        server.process.kill()
        server.process.communicate()


def test_workers_share_the_port_and_the_store(served: Served) -> None:
    workers = served.workers()
    assert len(workers) == 2
    processes = [served.process.pid, *workers]
    clients = [smtplib.SMTP("127.0.0.1", served.port, timeout=TIMEOUT) for _ in range(30)]
    try:
        serving = {server_pid_of(client, processes) for client in clients}
        # Chance that the kernel gives 30 connections to one of 3 processes: 3 / 3**30.
        assert len(serving) >= 2, serving
        for number, client in enumerate(clients):
            assert client.ehlo()[1].startswith(b"mx.test")
            client.sendmail("a@example.com", ["b@example.org"], f"Subject: {number}\r\n\r\nhi\r\n")
    finally:
        for client in clients:
            client.quit()
    assert served.total() == len(clients)
    status, err = served.stop()
    assert status == 0, err
    assert "Traceback" not in err
    assert all(gone(pid) for pid in workers)


def test_the_inbox_sees_live_what_every_worker_stores(served: Served) -> None:
    processes = [served.process.pid, *served.workers()]
    with (
        httpx.Client(base_url=served.http_url, timeout=TIMEOUT) as http,
        http.stream("GET", "/api/v1/events") as stream,
    ):
        lines = stream.iter_lines()
        for line in lines:  # the stream is live from its ready event
            if line == "event: ready":
                break
        serving, sent = set(), set()
        while len(serving) < 2 and len(sent) < 60:  # new connections until two processes served
            with smtplib.SMTP("127.0.0.1", served.port, timeout=TIMEOUT) as client:
                serving.add(server_pid_of(client, processes))
                subject = f"live {len(sent)}"
                client.sendmail(
                    "a@example.com", ["b@example.org"], f"Subject: {subject}\r\n\r\n.\r\n"
                )
                sent.add(subject)
        assert len(serving) >= 2, serving
        seen: set[str] = set()
        for line in lines:
            if line.startswith("data: "):
                event = json.loads(line.removeprefix("data: "))
                seen.update(m["Subject"] for m in event.get("messages", []))
            if seen >= sent:
                break
    assert seen == sent


def test_a_dead_worker_is_started_again(served: Served) -> None:
    first, second = served.workers()
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: len(set(served.workers()) - {first, second}) == 1, "a new worker")
    for number in range(10):
        with smtplib.SMTP("127.0.0.1", served.port, timeout=TIMEOUT) as client:
            client.sendmail("a@example.com", ["b@example.org"], f"Subject: {number}\r\n\r\n.\r\n")
    assert served.total() == 10
    status, err = served.stop()
    assert status == 0, err
    assert re.search(r"SMTP worker \d exited with status -9; starting it again", err), err


def test_a_dead_workers_spool_file_goes_when_it_is_started_again(
    served: Served, tmp_path: Path
) -> None:
    spool_dir = tmp_path / "data" / "spool"
    workers = served.workers()
    for _ in range(50):  # the kernel picks the process; most sessions land on a worker
        client = smtplib.SMTP("127.0.0.1", served.port, timeout=TIMEOUT)
        worker = server_pid_of(client, [served.process.pid, *workers])
        if worker in workers:
            break
        client.close()
    else:
        pytest.fail("50 sessions in a row landed on the serving process")
    with client:
        client.ehlo()
        client.mail("a@example.com")
        client.rcpt("b@example.org")
        assert client.docmd("DATA")[0] == 354
        # Past the memory threshold, and no end of data: the worker spools to a file.
        client.send(b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 400)
        wait_until(lambda: list(spool_dir.glob(f"*.{worker}.spool")), "a spool file")
        os.kill(worker, signal.SIGKILL)
        wait_until(lambda: len(set(served.workers()) - set(workers)) == 1, "a new worker")
        wait_until(lambda: not list(spool_dir.glob("*.spool")), "the spool file to go")
    status, err = served.stop()
    assert status == 0, err
    assert "removed 1 spool files an earlier process left" in err, err


def test_a_dead_commit_service_is_started_again_and_no_mail_is_refused(served: Served) -> None:
    first = served.commit_service()
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: gone(first), "the commit service to die")
    # Meanwhile each SMTP process commits on its own.  One that has not yet seen the
    # connection end sends there first, and answers 451, as for a message in flight:
    # a client sends it again, as clients do.
    refused = 0
    for number in range(10):
        refused += send_until_accepted(served.port, f"Subject: {number}\r\n\r\n.\r\n")
    assert refused <= 3  # at most once for each SMTP process
    wait_until(lambda: served.commit_services() not in ([], [first]), "a new commit service")
    for number in range(10, 20):
        assert send_until_accepted(served.port, f"Subject: {number}\r\n\r\n.\r\n") == 0
    assert served.total() == 20
    status, err = served.stop()
    assert status == 0, err
    assert "the commit service exited with status -9; starting it again" in err, err


def test_the_commit_service_listens_privately_and_stops_last(served: Served) -> None:
    commit = served.commit_service()
    (path,) = unix_sockets_of(commit)
    directory = Path(path).parent
    assert directory.stat().st_mode & 0o777 == 0o700
    with smtplib.SMTP("127.0.0.1", served.port, timeout=TIMEOUT) as client:
        client.sendmail("a@example.com", ["b@example.org"], "Subject: before\r\n\r\n.\r\n")
    status, err = served.stop()
    assert status == 0, err
    assert gone(commit)
    assert not directory.exists()


def send_until_accepted(port: int, message: str) -> int:
    """Send ``message`` until it is accepted; return how many times it got a 4xx."""
    for refused in range(5):
        with smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT) as client:
            try:
                client.sendmail("a@example.com", ["b@example.org"], message)
            except smtplib.SMTPDataError as error:
                if not 400 <= error.smtp_code < 500:
                    raise
                continue
            return refused
    raise AssertionError(f"not accepted in 5 tries: {message!r}")


def unix_sockets_of(pid: int) -> list[str]:
    """The paths of the listening Unix sockets process ``pid`` holds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    paths = []
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        # Flags 00010000: listening.
        if len(fields) == 8 and fields[6] in inodes and fields[3] == "00010000":
            paths.append(fields[7])
    return paths


def test_workers_stop_when_the_server_dies(served: Served) -> None:
    commit = served.commit_service()
    (socket_path,) = unix_sockets_of(commit)
    workers = [*served.workers(), commit]
    served.process.kill()
    served.process.communicate()
    # Their stdin, a pipe from the server, reaches its end: they stop by themselves.
    wait_until(lambda: all(gone(pid) for pid in workers), "the workers to stop")
    assert not Path(socket_path).parent.exists()  # the commit service cleaned up


@pytest.mark.asyncio
async def test_a_worker_that_cannot_start_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "mail.db").write_bytes(b"not a database, " * 100)
    settings = Settings(
        smtp=Listen("127.0.0.1", 0),
        http=None,
        store=f"sqlite://{tmp_path}/mail.db",
        data_dir=tmp_path,
        workers=2,
    )
    pool = WorkerPool(settings, 1)
    with pytest.raises(
        ChildStartError, match=r"^SMTP worker 1 did not start: cannot open"
    ) as caught:
        await pool.start()
    assert "\n" not in str(caught.value)
    assert pool.pids == []
    await asyncio.sleep(0)


def test_a_child_process_started_by_hand_says_what_it_is() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mailgate.runtime", "worker"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.startswith(
        "usage: python -m mailgate.runtime worker NUMBER | commit-service (started by mailgate"
    )


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="auto starts no worker on one CPU")
def test_the_test_helper_runs_workers_too() -> None:
    with MailgateServer(settings=Settings(workers=0)) as server:  # auto: one per CPU
        assert len(children(os.getpid(), WORKER)) == (os.cpu_count() or 1) - 1
        for number in range(20):
            with smtplib.SMTP(server.host, server.port, timeout=TIMEOUT) as client:
                client.sendmail(
                    "a@example.com", ["b@example.org"], f"Subject: {number}\r\n\r\n.\r\n"
                )
        assert len(server.messages()) == 20


@pytest.mark.asyncio
async def test_bound_ports_refuse_connections_until_they_serve(tmp_path: Path) -> None:
    # The first process binds before its workers start, and serves once they all do.
    store = SQLiteStore(tmp_path / "mail.db")
    sink = Acceptor(store, DeliverySettings(hostname="mx.test", spool_dir=tmp_path / "spool"))
    server = SMTPServer(Settings(smtp=Listen("127.0.0.1", 0), http=None, workers=2), sink=sink)
    try:
        await server.start(serve=False)
        port = server.addresses_of("smtp")[0][1]
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
        await server.start_serving()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert (await reader.readline()).startswith(b"220 ")
        writer.close()
        await writer.wait_closed()
    finally:
        await server.aclose()
        sink.close()
        await store.aclose()


def test_without_a_commit_service_each_process_commits_on_its_own(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 100)  # too deep a temporary directory for a Unix socket
    deep.mkdir()
    argv = ["serve", "--smtp", "127.0.0.1:0", "--no-http", "--data", str(tmp_path / "data")]
    process = subprocess.Popen(
        [sys.executable, "-m", "mailgate", *argv, "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(deep)},
    )
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], TIMEOUT)
        line = process.stdout.readline() if ready else ""
        match = re.search(r"smtp 127\.0\.0\.1:(\d+)", line)
        assert match, line
        assert not children(process.pid, COMMIT_SERVICE)
        for number in range(4):
            with smtplib.SMTP("127.0.0.1", int(match[1]), timeout=TIMEOUT) as client:
                client.sendmail(
                    "a@example.com", ["b@example.org"], f"Subject: {number}\r\n\r\n.\r\n"
                )
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert "the commit service did not start" in err
    assert "each SMTP process commits on its own" in err
    connection = sqlite3.connect(tmp_path / "data" / "mail.db")
    try:
        assert connection.execute("SELECT count(*) FROM messages").fetchone() == (4,)
    finally:
        connection.close()
