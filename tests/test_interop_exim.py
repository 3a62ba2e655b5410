"""Exim, Debian's default MTA, delivering to mailgate: real processes, real sockets.

Exim 4.96 writes the end of a message (the final dot, or ``BDAT n LAST``)
and ``QUIT`` in one go, then shuts down its sending side.  A server that
stops at that end-of-file before writing its ``250`` has stored a message
that Exim defers ("Remote host closed connection in response to pipelined
end of data") and sends again at its next queue run: every message twice.
Inside TLS Exim still pipelines ``QUIT``, but sends its close and shuts down
only once it has read the ``250``.

Each test has Exim deliver a few messages, one Exim process each, then runs
Exim's queue as its next retry would, and checks both sides: in Exim's log,
each message delivered at the first attempt, confirmed by a ``250`` naming
the id mailgate keeps it under, and nothing deferred; in mailgate, each
message stored once.

Exim is Debian's package unpacked, not installed, by
``tests/interop/exim/install.sh``.  It runs as root with our configuration
(``tests/interop/exim/exim.conf``) and a spool and logs of its own.
"""

from __future__ import annotations

import os
import pwd
import re
import select
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest

pytestmark = pytest.mark.interop

EXIM_DIR = Path(__file__).parent / "interop" / "exim"
EXIM = EXIM_DIR / "unpacked" / "usr" / "sbin" / "exim4"
EXIM_USER = "Debian-exim"  # Debian builds Exim to look this user up as it starts
MESSAGES = 5
TIMEOUT_SECONDS = 30.0

LISTENING = re.compile(
    r"mailgate \S+ listening: smtp 127\.0\.0\.1:(\d+), http (http://127\.0\.0\.1:\d+/), .*\n"
)
# Exim's main log: a time, then the message's id when the line is about one.
LOG_LINE = re.compile(
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (?:(?P<id>\w{6}-\w{6,11}-\w{2,4}) )?(?P<text>.*)"
)


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI runs tests/interop/exim/install.sh to prepare it")
    pytest.skip(f"{reason} (tests/interop/exim/install.sh prepares it)")


@pytest.fixture(scope="module")
def exim_binary() -> Path:
    if not EXIM.is_file():
        unavailable(f"Exim is not unpacked at {EXIM}")
    if os.geteuid() != 0:
        unavailable("Exim runs here with a configuration of its own, which needs root")
    try:
        pwd.getpwnam(EXIM_USER)
    except KeyError:
        unavailable(f"there is no user {EXIM_USER} for Exim to run as")
    version = subprocess.run(
        [EXIM, "-C", "/dev/null", "-bV"],
        capture_output=True,
        text=True,
        env={},
        timeout=TIMEOUT_SECONDS,
        check=False,
    )
    if version.returncode != 0 or not version.stdout.startswith("Exim version 4."):
        unavailable(f"Exim does not run: {version.stdout}{version.stderr}".strip())
    return EXIM


class Mailgate:
    """``mailgate serve`` as a user starts it: the console script, a process of its own."""

    def __init__(self, tmp_path: Path, *flags: str) -> None:
        argv = ["serve", *flags, "--smtp", "127.0.0.1:0", "--http", "127.0.0.1:0"]
        argv += ["--data", str(tmp_path / "data"), "--hostname", "mx.test"]
        self.log = tmp_path / "mailgate.log"
        with self.log.open("w") as stderr:
            self.process = subprocess.Popen(
                [Path(sys.executable).parent / "mailgate", *argv],
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], TIMEOUT_SECONDS)
        line = self.process.stdout.readline() if ready else ""
        match = LISTENING.fullmatch(line)
        if match is None:
            self.process.kill()
            self.process.communicate()
            pytest.fail(f"mailgate serve did not start: {line!r}\n{self.log.read_text()}")
        self.port = int(match[1])
        self.http_url = match[2]

    def messages(self) -> tuple[int, list[dict[str, Any]]]:
        """The store's total and its messages, as the HTTP API lists them."""
        page = httpx.get(f"{self.http_url}api/v1/messages", params={"limit": 100}).json()
        return page["total"], page["messages"]

    def raw(self, message_id: str) -> bytes:
        return httpx.get(f"{self.http_url}api/v1/message/{message_id}/raw").content

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.communicate(timeout=TIMEOUT_SECONDS)
        log = self.log.read_text()
        assert self.process.returncode == 0, log
        assert "Traceback" not in log, log


class Exim:
    """Exim with our configuration, and a spool and logs of its own in ``home``."""

    def __init__(self, binary: Path, home: Path, port: int, *, chunking: bool, tls: bool) -> None:
        self.binary = binary
        self.home = home
        self.config = home / "exim.conf"
        macros = {"EXIM": str(binary), "WORKDIR": str(home), "PORT": str(port)}
        if chunking:
            macros["CHUNKING"] = "yes"
        if tls:
            macros["STARTTLS"] = "yes"
        defined = "".join(f"{name} = {value}\n" for name, value in macros.items())
        self.config.write_text(defined + (EXIM_DIR / "exim.conf").read_text())

    def run(self, *argv: str, stdin: bytes = b"") -> str:
        done = subprocess.run(
            [self.binary, "-C", self.config, *argv],
            input=stdin,
            capture_output=True,
            env={},
            timeout=TIMEOUT_SECONDS,
            check=False,
        )
        assert (done.returncode, done.stderr) == (0, b""), (argv, done, self.log())
        return done.stdout.decode()

    def send(self, sender: str, recipient: str, message: bytes) -> None:
        """Take the message in and deliver it before returning (``-odi``)."""
        self.run("-odi", "-f", sender, recipient, stdin=message)

    def run_queue(self) -> None:
        """Deliver what is still queued, retry times or not (``-qff``)."""
        self.run("-qff")

    def queued(self) -> int:
        return int(self.run("-bpc"))

    def log(self, name: str = "main") -> str:
        path = self.home / "log" / f"{name}log"
        return path.read_text() if path.exists() else ""


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Mailgate]]:
    """Start mailgate with the given flags; stopped here if the test did not stop it."""
    started: list[Mailgate] = []

    def start(*flags: str) -> Mailgate:
        started.append(Mailgate(tmp_path, *flags))
        return started[-1]

    yield start
    for mailgate in started:
        if mailgate.process.poll() is None:
            mailgate.process.kill()
            mailgate.process.communicate()


@pytest.fixture
def exim_home() -> Iterator[Path]:
    """A directory Exim's own user can reach and write (pytest's ``tmp_path`` is
    below one only root may enter)."""
    user = pwd.getpwnam(EXIM_USER)
    with tempfile.TemporaryDirectory(prefix="mailgate-exim-") as name:
        os.chown(name, user.pw_uid, user.pw_gid)
        yield Path(name)


def message(subject: str) -> bytes:
    """A message as a local program hands it to Exim: LF line ends, a line that
    starts with a dot (stuffed over DATA, sent as it is with BDAT)."""
    lines = ["From: Sender <sender@example.org>", "To: rcpt@example.net", f"Subject: {subject}"]
    lines += ["", "Hello from Exim.", ".a line that starts with a dot"]
    return "".join(f"{line}\n" for line in lines).encode()


def by_message(log: str) -> tuple[dict[str, list[str]], list[str]]:
    """The main log's lines grouped by message id, and the lines of no message."""
    messages: dict[str, list[str]] = {}
    others = []
    for line in log.splitlines():
        match = LOG_LINE.fullmatch(line)
        assert match, line
        if match["id"]:
            messages.setdefault(match["id"], []).append(match["text"])
        else:
            others.append(match["text"])
    return messages, others


def delivery(line: str, port: int) -> tuple[set[str], str]:
    """The flags of a delivery line (``X=...`` for TLS, ``L``, ``K``) and the id
    mailgate named in its ``250``."""
    match = re.fullmatch(
        rf"=> rcpt@example\.net R=to_mailgate T=mailgate_smtp "
        rf"H=127\.0\.0\.1 \[127\.0\.0\.1\]:{port}(?P<flags>(?: \S+)*?) "
        rf'C="250 2\.0\.0 Ok: queued as (?P<id>\w+)" DT=\d+s',
        line,
    )
    assert match, line
    flags = {flag.partition("=")[0] for flag in match["flags"].split()}
    return flags, match["id"]


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "starttls"])
@pytest.mark.parametrize("chunking", [False, True], ids=["DATA", "BDAT"])
def test_exim_delivers_each_message_once(
    serve: Callable[..., Mailgate], exim_binary: Path, exim_home: Path, chunking: bool, tls: bool
) -> None:
    mailgate = serve(*(["--tls-self-signed"] if tls else []))
    exim = Exim(exim_binary, exim_home, mailgate.port, chunking=chunking, tls=tls)
    subjects = [f"From Exim {n}" for n in range(MESSAGES)]
    for subject in subjects:
        exim.send("sender@example.org", "rcpt@example.net", message(subject))
    first_attempts = exim.log()
    exim.run_queue()
    queue_run = exim.log().removeprefix(first_attempts)

    # Each message stored once: none was deferred and sent again by the queue run.
    total, stored = mailgate.messages()
    assert sorted(m["Subject"] for m in stored) == subjects, first_attempts + queue_run
    assert total == MESSAGES

    # Exim's side: taken in, delivered at the first attempt, done; nothing else.
    messages, others = by_message(first_attempts)
    assert others == []
    assert len(messages) == MESSAGES
    for lines in messages.values():
        assert [line.split(" ", 1)[0] for line in lines] == ["<=", "=>", "Completed"], lines
    again, queue_run_lines = by_message(queue_run)
    assert again == {}, queue_run
    assert [line.partition(":")[0] for line in queue_run_lines] == [
        "Start queue run",
        "End queue run",
    ]
    assert exim.queued() == 0
    assert exim.log("panic") == ""

    # How it went over the wire, and mailgate's 250 naming the id it stored under.
    confirmed = set()
    for lines in messages.values():
        flags, message_id = delivery(lines[1], mailgate.port)
        expected = {"L"} | ({"K"} if chunking else set()) | ({"X", "CV"} if tls else set())
        assert flags == expected, lines[1]
        confirmed.add(message_id)
    assert confirmed == {m["ID"] for m in stored}

    for stored_message in stored:
        raw = mailgate.raw(stored_message["ID"])
        assert raw.endswith(b"\r\nHello from Exim.\r\n.a line that starts with a dot\r\n"), raw

    mailgate.stop()
