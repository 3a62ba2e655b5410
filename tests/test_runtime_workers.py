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
import threading
import time
from collections import Counter
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
        # Drained as it comes, so that a server logging much never blocks on a full pipe.
        self._err: list[str] = []
        self._draining = threading.Thread(target=self._drain, daemon=True)
        self._draining.start()

    def _drain(self) -> None:
        assert self.process.stderr is not None
        self._err.extend(self.process.stderr)

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
        """SIGTERM, then the exit status and everything the server wrote on stderr."""
        self.process.send_signal(signal.SIGTERM)
        return self._ended()

    def kill(self) -> None:
        self.process.kill()
        self._ended()

    def _ended(self) -> tuple[int, str]:
        status = self.process.wait(TIMEOUT)
        self._draining.join(TIMEOUT)
        for pipe in (self.process.stdout, self.process.stderr):
            assert pipe is not None
            pipe.close()
        return status, "".join(self._err)


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
        server.kill()


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


def test_a_dead_commit_service_means_451_until_it_is_started_again(
    served: Served, tmp_path: Path
) -> None:
    # The one writer of new mail is gone: every SMTP process refuses new mail with 451
    # (no second route), and takes it again as soon as the service is back.
    first = served.commit_service()
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: gone(first), "the commit service to die")
    # /readyz says so until it is back (it is started again after half a second).
    wait_until(
        lambda: readyz_error(served) == "the commit service is not running; it is starting",
        "/readyz to say the commit service is not running",
    )
    outcomes: dict[str, str] = {}
    deadline = time.monotonic() + TIMEOUT
    in_a_row = 0
    while in_a_row < 20:  # every SMTP process reached the new service
        assert time.monotonic() < deadline, f"not accepted again: {outcomes}"
        subject = f"message {len(outcomes)}"
        outcomes[subject] = code = send_once(served.port, f"Subject: {subject}\r\n\r\n.\r\n")
        in_a_row = in_a_row + 1 if code == "250" else 0
    assert set(outcomes.values()) == {"250", "451 4.3.0"}, "none refused, or not with 451"
    assert served.commit_services() not in ([], [first])
    assert readyz_error(served) is None
    status, err = served.stop()
    assert status == 0, err
    assert "the commit service exited with status -9; starting it again" in err, err
    assert "lost the commit service: new mail gets 451 until it is back" in err, err
    # Nothing was in flight at the kill: what got 250 is stored once, what got 451 not at all.
    connection = sqlite3.connect(tmp_path / "data" / "mail.db")
    try:
        stored = Counter(
            subject for (subject,) in connection.execute("SELECT subject FROM messages")
        )
    finally:
        connection.close()
    assert stored == Counter(subject for subject, code in outcomes.items() if code == "250")


def readyz_error(served: Served) -> str | None:
    """Why ``/readyz`` says the node is not ready, or ``None`` when it is."""
    ready = httpx.get(f"{served.http_url}readyz", timeout=TIMEOUT)
    error: str | None = ready.json().get("error")
    assert (ready.status_code == 200) == (error is None), ready.text
    return error


def send_once(port: int, message: str) -> str:
    """Send ``message`` once: ``"250"``, or the code and enhanced code it was refused with."""
    with smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT) as client:
        try:
            client.sendmail("a@example.com", ["b@example.org"], message)
        except smtplib.SMTPDataError as error:
            return f"{error.smtp_code} {error.smtp_error[:5].decode()}"
    return "250"


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


def policies(pid: int) -> set[int]:
    """The scheduling policies of process ``pid``'s threads."""
    return {os.sched_getscheduler(int(task.name)) for task in Path(f"/proc/{pid}/task").iterdir()}


def test_the_commit_service_waits_its_turn_for_a_cpu(served: Served) -> None:
    # SCHED_BATCH: a frame arriving does not interrupt the SMTP process that sent it.
    with smtplib.SMTP("127.0.0.1", served.port, timeout=TIMEOUT) as client:
        client.sendmail("a@example.com", ["b@example.org"], "Subject: one\r\n\r\n.\r\n")
    commit = served.commit_service()
    assert len(list(Path(f"/proc/{commit}/task").iterdir())) > 1  # its committing thread too
    assert policies(commit) == {os.SCHED_BATCH}
    # The SMTP processes answer clients at once, as any process does.
    for pid in (served.process.pid, *served.workers()):
        assert policies(pid) == {os.SCHED_OTHER}


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
    served.kill()
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


def test_the_test_helper_stores_new_mail_in_the_commit_service_as_serve_does() -> None:
    with MailgateServer() as server:
        (service,) = children(os.getpid(), COMMIT_SERVICE)
        for number in range(5):
            with smtplib.SMTP(server.host, server.port, timeout=TIMEOUT) as client:
                client.sendmail(
                    "a@example.com", ["b@example.org"], f"Subject: {number}\r\n\r\n.\r\n"
                )
        assert len(server.messages()) == 5
        store = server.store
        assert isinstance(store, SQLiteStore)
        assert store.stats.transactions == 0  # none by the test process's own writer
    assert gone(service)


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


def test_serve_does_not_start_without_its_commit_service(tmp_path: Path) -> None:
    # There is no other writer of new mail to fall back on: a one-line error, not a server.
    deep = tmp_path / ("d" * 100)  # too deep a temporary directory for a Unix socket
    deep.mkdir()
    argv = ["serve", "--smtp", "127.0.0.1:0", "--no-http", "--data", str(tmp_path / "data")]
    done = subprocess.run(
        [sys.executable, "-m", "mailgate", *argv, "--workers", "2"],
        capture_output=True,
        text=True,
        env={**os.environ, "TMPDIR": str(deep)},
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    assert re.fullmatch(
        r"mailgate: error: the commit service did not start: cannot listen on \S+: .*too long\n",
        done.stderr,
    ), done.stderr
    assert not list(deep.iterdir())  # its socket's directory is gone too
