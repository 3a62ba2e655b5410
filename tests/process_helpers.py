"""``mailgate`` as a user runs it: the console script, in processes of its own.

``Launcher`` starts ``mailgate serve`` with the default process layout (the
serving process, the commit service, SMTP workers with ``--workers``), reads
the ports it bound from its ready line, and stops it with SIGTERM as a
service manager would.  Each server runs in a session of its own, so a test
that fails half-way leaves no process behind: ``Launcher.close`` kills the
session.  ``readme_blocks`` gives the fenced blocks of README.md, which
``test_readme`` runs and ``test_serve_modes`` serves.  ``until`` waits,
within a bound, for what a server does in its own time; ``inbox`` lists what
it stored over its API; ``mailgate_queue``
runs ``mailgate queue`` on a test's data directory; ``make_users_file`` and
``make_tls_files`` make the files ``--users`` and ``--tls-cert`` read.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from server_helpers import children, require_tool

MAILGATE = Path(sys.executable).parent / "mailgate"
"""The console script ``pip install`` made, beside the interpreter running the tests."""
README = Path(__file__).resolve().parent.parent / "README.md"
TIMEOUT = 30.0
"""Seconds a server may take to start or stop on a busy machine; a bound, not a pause."""

_READY = re.compile(r"mailgate (?P<version>\S+) listening: (?P<parts>.*), (?P<where>\S+ \S+)\n")
_BOUND = re.compile(r"(?P<name>smtp|submission|smtps) 127\.0\.0\.1:(?P<port>\d+)")
_PROCESSES = re.compile(r"(?P<count>\d+) SMTP processes")
_HTTP = re.compile(r"http (?P<url>http://127\.0\.0\.1:\d+/)")

T = TypeVar("T")


def environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of the tests, without the ``MAILGATE_*`` settings of whoever runs them.

    ``PYTHONPATH`` (``make test-compiled`` puts the compiled build first on it, relative to
    the repository) is made absolute, so a command started in a temporary directory
    imports the build under test.
    """
    env = {name: value for name, value in os.environ.items() if not name.startswith("MAILGATE_")}
    if env.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.pathsep.join(
            str(Path(entry).resolve()) for entry in env["PYTHONPATH"].split(os.pathsep) if entry
        )
    env.update(extra or {})
    return env


def run_command(
    *argv: str, cwd: Path, env: Mapping[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command that ends by itself in the tests' ``environment`` (with ``env`` added),
    its output captured as text and its time bounded; its status is the caller's to check."""
    return subprocess.run(
        argv,
        cwd=cwd,
        env=environment(env),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def mailgate(
    *argv: str, cwd: Path, env: Mapping[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a ``mailgate`` command that ends by itself (``messages``, ``users``...)."""
    return run_command(str(MAILGATE), *argv, cwd=cwd, env=env, stdin=stdin)


def inbox(served: Serving, *, limit: int = 1000, **options: Any) -> list[dict[str, Any]]:
    """The messages ``served`` stores, newest first, as its JSON API lists them (up to
    ``limit``; ``options`` go to ``httpx.get``, as ``auth``); a test failure unless 200."""
    page = httpx.get(
        f"{served.http_url}api/v1/messages", params={"limit": limit}, timeout=TIMEOUT, **options
    )
    assert page.status_code == 200, page.text
    messages: list[dict[str, Any]] = page.json()["messages"]
    return messages


def mailgate_queue(tmp_path: Path, *argv: str) -> Any:
    """``mailgate queue ARGV`` on the data directory ``tmp_path / "data"``: the JSON it prints
    with ``--json``, else its output."""
    done = mailgate("queue", *argv, "--data", str(tmp_path / "data"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout) if "--json" in argv else done.stdout


def make_users_file(folder: Path, user: str, password: str) -> Path:
    """A users file with ``user``, made as the README says: the password on standard input."""
    added = mailgate("users", "add", user, "--users", "users", cwd=folder, stdin=f"{password}\n")
    assert added.returncode == 0, added.stderr
    return folder / "users"


def make_tls_files(folder: Path, *names: str) -> tuple[Path, Path, Path]:
    """A CA, and a certificate it signed for ``names``: the files of the CA, the certificate
    (its chain) and the key, in ``folder``."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    issued = ca.issue_cert(*names)
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    issued.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))
    for more in issued.cert_chain_pems[1:]:
        more.write_to_path(str(folder / "cert.pem"), append=True)
    issued.private_key_pem.write_to_path(str(folder / "key.pem"))
    return folder / "ca.pem", folder / "cert.pem", folder / "key.pem"


def until(condition: Callable[[], T], what: str, timeout: float = TIMEOUT) -> T:
    """Poll ``condition`` until it returns something true, and return that: a bound on a busy
    machine, not a pause; after ``timeout`` seconds the test fails, naming ``what``."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting until {what}"
        time.sleep(0.05)
    return value


def require_swaks_tls() -> str:
    """swaks, with its TLS support (it needs Net::SSLeay); skipped or failed as a missing tool."""
    swaks = require_tool("swaks")
    support = subprocess.run(
        [swaks, "--support"], capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    if "=== TLS supported" not in support.stdout + support.stderr:
        message = "swaks cannot do TLS here (install libnet-ssleay-perl)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return swaks


def run_swaks(*argv: str) -> str:
    """swaks with ``argv``: its transcript, after checking it succeeded."""
    swaks = require_swaks_tls()
    done = subprocess.run(
        [swaks, *argv], capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@dataclass
class Serving:
    """One ``mailgate serve`` process, ready: it printed its ready line."""

    process: subprocess.Popen[str]
    ready_line: str
    stderr_path: Path
    ports: dict[str, int]
    """The port of each SMTP listener: ``smtp``, ``submission``, ``smtps``."""
    smtp_processes: int
    http_url: str
    """``http://127.0.0.1:PORT/``, or ``""`` without the web inbox."""
    where: str
    """``data DIR`` or ``store URL``, as the ready line says."""

    @property
    def port(self) -> int:
        return self.ports["smtp"]

    def children(self, marker: str) -> list[int]:
        """The serving process's children whose command line holds ``marker``
        (``server_helpers.WORKER``, ``server_helpers.COMMIT_SERVICE``)."""
        return children(self.process.pid, marker)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self, signum: signal.Signals = signal.SIGTERM, *, group: bool = False) -> int:
        """Signal the serving process (with ``group``, every process of it, as Ctrl-C in a
        terminal does) and wait for it and its children to end; its status."""
        helpers = self.children("")
        if group:
            os.killpg(self.process.pid, signum)
        else:
            self.process.send_signal(signum)
        try:
            status = self.process.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"mailgate serve did not stop on {signum.name}:\n{self.stderr()}")
        deadline = time.monotonic() + TIMEOUT
        while any(_running(pid) for pid in helpers):
            if time.monotonic() > deadline:
                pytest.fail(f"children {helpers} outlived mailgate serve:\n{self.stderr()}")
            time.sleep(0.02)
        return status

    def stop_cleanly(self, signum: signal.Signals = signal.SIGTERM, *, group: bool = False) -> str:
        """Stop (with SIGTERM); check the status is 0 and no traceback was logged; the log."""
        status = self.stop(signum, group=group)
        log = self.stderr()
        assert status == 0, log
        assert "Traceback" not in log, log
        return log


def _running(pid: int) -> bool:
    """Whether ``pid`` is alive (a zombie, exited but not yet reaped, is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return not stat.rpartition(") ")[2].startswith("Z")


class Launcher:
    """Starts ``mailgate serve`` processes for one test; ``close`` kills what is left."""

    def __init__(self, tmp_path: Path) -> None:
        self._tmp_path = tmp_path
        self._started: list[subprocess.Popen[str]] = []

    def serve(
        self, *argv: str, cwd: Path | None = None, env: Mapping[str, str] | None = None
    ) -> Serving:
        """``mailgate serve ARGV``, waiting for its ready line (a test failure if none comes)."""
        cwd = cwd or self._tmp_path
        stderr_path = self._tmp_path / f"serve-{len(self._started)}.log"
        with stderr_path.open("w") as stderr:
            process = subprocess.Popen(
                [str(MAILGATE), "serve", *argv],
                cwd=cwd,
                env=environment(env),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,  # a file: a chatty log never fills a pipe and stalls the server
                text=True,
                start_new_session=True,
            )
        self._started.append(process)
        assert process.stdout is not None
        readable, _, _ = select.select([process.stdout], [], [], TIMEOUT)
        line = process.stdout.readline() if readable else ""
        match = _READY.fullmatch(line)
        if match is None:
            self._kill(process)
            log = stderr_path.read_text(errors="replace")
            pytest.fail(f"mailgate serve {' '.join(argv)} did not start: {line!r}\n{log}")
        parts = match["parts"]
        processes = _PROCESSES.search(parts)
        http = _HTTP.search(parts)
        return Serving(
            process=process,
            ready_line=line,
            stderr_path=stderr_path,
            ports={m["name"]: int(m["port"]) for m in _BOUND.finditer(parts)},
            smtp_processes=int(processes["count"]) if processes else 1,
            http_url=http["url"] if http else "",
            where=match["where"],
        )

    def close(self) -> None:
        for process in self._started:
            self._kill(process)

    @staticmethod
    def _kill(process: subprocess.Popen[str]) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # the serving process and its children
        process.wait(timeout=TIMEOUT)
        if process.stdout is not None:
            process.stdout.close()


def serving_pid(client: smtplib.SMTP, pids: list[int]) -> int:
    """Which of ``pids`` holds the server end of ``client``'s connection (read in ``/proc``)."""
    assert client.sock is not None
    port = client.sock.getsockname()[1]
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[2].split(":")[1], 16) == port:  # the remote end is this client
            inodes.add(f"socket:[{fields[9]}]")
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(FileNotFoundError):
                if os.readlink(fd) in inodes:
                    return pid
    raise AssertionError(f"no process of {pids} holds the server end of client port {port}")


def free_port() -> int:
    """A TCP port nothing listens on now, for a command that cannot be given port 0."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(frozen=True)
class Block:
    """A fenced block of README.md: its info string, its text, the line it starts on."""

    lang: str
    text: str
    line: int


def readme_blocks() -> list[Block]:
    blocks: list[Block] = []
    lang: str | None = None  # None outside a block
    start = 0
    body: list[str] = []
    for number, line in enumerate(README.read_text().splitlines(), start=1):
        if lang is None and line.startswith("```"):
            lang, start, body = line.removeprefix("```").strip(), number, []
        elif lang is not None and line == "```":
            blocks.append(Block(lang, "".join(f"{each}\n" for each in body), start))
            lang = None
        elif lang is not None:
            body.append(line)
    assert lang is None, f"README.md: the block that starts on line {start} does not end"
    return blocks


def readme_block(lang: str, first_line: str = "") -> Block:
    """The one README block in ``lang`` whose text starts with ``first_line``."""
    [block] = [b for b in readme_blocks() if b.lang == lang and b.text.startswith(first_line)]
    return block
