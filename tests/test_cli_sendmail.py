"""``mailgate sendmail`` as programs run it: the console script, a message piped on standard
input, a real ``mailgate serve`` taking it; what was stored is read over the HTTP API."""

from __future__ import annotations

import email
import email.policy
import os
import pwd
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from process_helpers import (
    MAILGATE,
    TIMEOUT,
    Launcher,
    Serving,
    environment,
    free_port,
    mailgate,
    run_command,
)
from server_helpers import body_of, read_reply, require_tool

_T = TypeVar("_T")

HOSTNAME = socket.gethostname()
USER = pwd.getpwuid(os.getuid()).pw_name


def sendmail(
    *argv: str,
    message: bytes,
    server: Serving | None,
    cwd: Path,
    program: Path = MAILGATE,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``mailgate sendmail ARGV`` (or ``program ARGV`` for a link named sendmail), fed
    ``message``, told of ``server`` with ``--server``."""
    command = [str(program)] if program.name == "sendmail" else [str(program), "sendmail"]
    if server is not None:
        command += ["--server", f"127.0.0.1:{server.port}"]
    done = subprocess.run(
        [*command, *argv],
        cwd=cwd,
        env=environment(env),
        input=message,
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
    )
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


@dataclass
class Stored:
    """One message as the server stored it: its bytes as sent, and the API's summary."""

    content: bytes
    summary: dict[str, Any]

    @property
    def message(self) -> email.message.EmailMessage:
        parsed = email.message_from_bytes(self.content, policy=email.policy.default)
        assert isinstance(parsed, email.message.EmailMessage)
        return parsed

    def addresses(self, field: str) -> list[str]:
        return [each["Address"] for each in self.summary[field]]


class Inbox:
    """The HTTP API of a running server, counting what arrives."""

    def __init__(self, served: Serving) -> None:
        self.served = served
        self.seen = self.total()

    def total(self) -> int:
        page = httpx.get(f"{self.served.http_url}api/v1/messages", timeout=TIMEOUT).json()
        total: int = page["total"]
        return total

    def new(self) -> list[Stored]:
        """The messages stored since the last call, oldest first."""
        total = self.total()
        count, self.seen = total - self.seen, total
        page = httpx.get(
            f"{self.served.http_url}api/v1/messages", params={"limit": count}, timeout=TIMEOUT
        ).json()
        found = []
        for summary in reversed(page["messages"] if count else []):
            url = f"{self.served.http_url}api/v1/message/{summary['ID']}"
            raw = httpx.get(f"{url}/raw", timeout=TIMEOUT).content
            found.append(Stored(body_of(raw), httpx.get(url, timeout=TIMEOUT).json()))
        return found

    def one(self) -> Stored:
        [stored] = self.new()
        return stored


@pytest.fixture(scope="module")
def catcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serving]:
    """``mailgate serve`` on its defaults (catch-all), on free ports."""
    launcher = Launcher(tmp_path_factory.mktemp("catcher"))
    try:
        served = launcher.serve("--smtp", "127.0.0.1:0", "--http", "127.0.0.1:0")
        yield served
        served.stop_cleanly()
    finally:
        launcher.close()


@pytest.fixture
def inbox(catcher: Serving) -> Inbox:
    return Inbox(catcher)


# -- reading the message ------------------------------------------------------------------------


def test_recipients_from_arguments_and_the_fields_sendmail_adds(
    catcher: Serving, inbox: Inbox, tmp_path: Path
) -> None:
    done = sendmail(
        "alice@example.net", "Bob <bob@example.net>, carol@example.net",
        message=b"Subject: Figures\n\nThe figures.\n..stays stuffed\n.\nnot sent\n",
        server=catcher, cwd=tmp_path,
    )  # fmt: skip
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    stored = inbox.one()
    assert stored.addresses("Bcc") == ["alice@example.net", "bob@example.net", "carol@example.net"]
    assert stored.summary["ReturnPath"] == f"{USER}@{HOSTNAME}"  # as sendmail: user@hostname
    head, _, body = stored.content.partition(b"\r\n\r\n")
    assert body == b"The figures.\r\n..stays stuffed\r\n"  # a lone dot ended it
    message = stored.message
    assert message["From"] == f"{USER}@{HOSTNAME}"
    assert message["Date"] is not None
    assert message["Date"].datetime is not None
    assert message["Message-ID"].endswith(f"@{HOSTNAME}>")
    assert head.startswith(b"Subject: Figures\r\n")  # added after the fields given


def test_fields_given_are_kept_as_they_are(inbox: Inbox, catcher: Serving, tmp_path: Path) -> None:
    given = (
        b"From one@example.org Mon Dec  1 08:00:00 2026\r\n"  # an mbox line: dropped
        b"From: Ann <ann@example.org>\r\n"
        b"Date: Mon, 01 Dec 2026 08:00:00 +0000\r\n"
        b"Message-ID: <given@example.org>\r\n"
        b"X-Folded: one\r\n\ttwo\r\n"
        b"\r\n"
        b"Hi.\r\n"
    )
    done = sendmail(
        "-F", "Not Used", "bob@example.net", message=given, server=catcher, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    stored = inbox.one()
    assert stored.content == given.partition(b"\r\n")[2]
    assert stored.summary["ReturnPath"] == "ann@example.org"  # the From field's address


def test_t_reads_to_cc_and_bcc_and_removes_bcc(
    inbox: Inbox, catcher: Serving, tmp_path: Path
) -> None:
    message = (
        b"From: app@example.org\n"
        b"To: Ann <ann@example.net>,\n  bob@example.net\n"
        b"Cc: carol@example.net\n"
        b"Bcc: boss@example.net\n"
        b"bcc: audit@example.net\n"
        b"Subject: Report\n"
        b"\n"
        b"Line one\n.\nLine three\n"
    )
    done = sendmail("-t", "-i", "extra@example.net", message=message, server=catcher, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    stored = inbox.one()
    assert b"boss@" not in stored.content
    assert b"audit@" not in stored.content
    assert stored.addresses("To") == ["ann@example.net", "bob@example.net"]
    assert stored.addresses("Cc") == ["carol@example.net"]
    # In the envelope only: what no field names (the arguments too, added as Postfix does).
    assert stored.addresses("Bcc") == ["extra@example.net", "boss@example.net", "audit@example.net"]
    assert stored.content.endswith(b"\r\n\r\nLine one\r\n.\r\nLine three\r\n")  # -i
    assert stored.summary["ReturnPath"] == "app@example.org"


def test_no_recipient_argument_reads_the_fields_as_t(
    inbox: Inbox, catcher: Serving, tmp_path: Path
) -> None:
    message = b"To: ann@example.net\nBcc: boss@example.net\nSubject: Hi\n\nHi\n"
    done = sendmail(message=message, server=catcher, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    stored = inbox.one()
    assert stored.addresses("To") == ["ann@example.net"]
    assert stored.addresses("Bcc") == ["boss@example.net"]
    assert b"Bcc" not in stored.content


def test_without_t_bcc_stays_when_recipients_are_named(
    inbox: Inbox, catcher: Serving, tmp_path: Path
) -> None:
    message = b"To: ann@example.net\nBcc: boss@example.net\n\nHi\n"
    done = sendmail("ann@example.net", message=message, server=catcher, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    stored = inbox.one()
    assert b"Bcc: boss@example.net\r\n" in stored.content
    assert stored.addresses("To") == ["ann@example.net"]


def test_f_and_f_name(inbox: Inbox, catcher: Serving, tmp_path: Path) -> None:
    for argv, sender, from_field in [
        (["-f", "backup@example.org", "-F", "Backup job"], "backup@example.org",
         "Backup job <backup@example.org>"),
        (["-fbackup@example.org", "-FJürgen Groß"], "backup@example.org",
         "Jürgen Groß <backup@example.org>"),
        (["-r", "<old@example.org>"], "old@example.org", "old@example.org"),
        (["-f", "<>"], "", f"{USER}@{HOSTNAME}"),
    ]:  # fmt: skip
        done = sendmail(
            *argv, "ops@example.net", message=b"Subject: Night\n\nDone.\n",
            server=catcher, cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        stored = inbox.one()
        assert stored.summary["ReturnPath"] == sender, argv
        assert stored.message["From"] == from_field, argv
        assert stored.content.isascii()  # a name that is not ASCII is RFC 2047-encoded


def test_cron_as_it_runs_sendmail(inbox: Inbox, catcher: Serving, tmp_path: Path) -> None:
    """Debian's cron and cronie, word for word, with cron's output for root."""
    for argv, message, sender, from_field in [
        (
            ["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"],
            b"disk 91% full\n",
            USER,
            f"CronDaemon <{USER}@{HOSTNAME}>".encode(),  # none given: sendmail's, with -F's name
        ),
        (
            ["-FCronDaemon", "-i", "-odi", "-oem", "-oi", "-t", "-f", "root"],
            b"From: root (Cron Daemon)\nTo: root\nSubject: Cron <root@vm> df\n\ndisk 91% full\n",
            "root",
            b"root (Cron Daemon)",
        ),
    ]:
        done = sendmail(*argv, message=message, server=catcher, cwd=tmp_path)
        assert (done.returncode, done.stderr) == (0, ""), argv
        stored = inbox.one()
        # A name without a domain is at this machine in the envelope (fields stay as given).
        assert stored.addresses("Bcc") == [f"root@{HOSTNAME}"]
        assert stored.summary["ReturnPath"] == f"{sender}@{HOSTNAME}"
        assert stored.content.endswith(b"\r\n\r\ndisk 91% full\r\n")
        assert b"\r\nFrom: " + from_field + b"\r\n" in b"\r\n" + stored.content
    assert inbox.new() == []


def test_options_programs_pass_are_accepted(inbox: Inbox, catcher: Serving, tmp_path: Path) -> None:
    done = sendmail(
        "-bm", "-odi", "-odb", "-oem", "-oee", "-om", "-G", "-U", "-n", "-m", "-c",
        "-B", "8BITMIME", "-L", "app", "-O", "DeliveryMode=b", "-C", "/etc/mail/sendmail.cf",
        "-h", "10", "-X", "/dev/null", "-N", "success,failure", "-R", "hdrs", "-V", "env-1",
        "-v", "ann@example.net",
        message=b"Subject: Options\n\nHi\n", server=catcher, cwd=tmp_path,
    )  # fmt: skip
    assert (done.returncode, done.stderr) == (0, "")
    lines = done.stdout.splitlines()  # -v: the conversation
    assert lines[0].startswith("S: 220 ")
    assert any(
        line.startswith("C: MAIL FROM:<") and "RET=HDRS ENVID=env-1" in line for line in lines
    ), lines
    assert "C: RCPT TO:<ann@example.net> NOTIFY=FAILURE,SUCCESS" in lines
    assert lines[-1].startswith("S: 221 ")
    assert inbox.one().addresses("Bcc") == ["ann@example.net"]


# -- where it sends -----------------------------------------------------------------------------


def test_a_link_named_sendmail_is_mailgate_sendmail(
    inbox: Inbox, catcher: Serving, tmp_path: Path
) -> None:
    link = tmp_path / "sbin" / "sendmail"
    link.parent.mkdir()
    link.symlink_to(MAILGATE)
    done = sendmail(
        "-oi", "-f", "app@example.org", "ann@example.net",
        message=b"Subject: Linked\n\nHi\n", server=catcher, cwd=tmp_path, program=link,
    )  # fmt: skip
    assert (done.returncode, done.stderr) == (0, "")
    assert inbox.one().message["Subject"] == "Linked"
    help_ = sendmail("--help", message=b"", server=None, cwd=tmp_path, program=link)
    assert help_.returncode == 0
    assert help_.stdout.startswith("usage: mailgate sendmail [options] [recipient ...]")


def test_the_server_from_the_environment(inbox: Inbox, catcher: Serving, tmp_path: Path) -> None:
    env = {"MAILGATE_SENDMAIL_SERVER": f"127.0.0.1:{catcher.port}"}
    done = sendmail("ann@example.net", message=b"\n", server=None, cwd=tmp_path, env=env)
    assert (done.returncode, done.stderr) == (0, "")
    assert inbox.one().addresses("Bcc") == ["ann@example.net"]
    bad = sendmail(
        "ann@example.net", message=b"\n", server=None, cwd=tmp_path,
        env={"MAILGATE_SENDMAIL_SERVER": "127.0.0.1:port"},
    )  # fmt: skip
    assert bad.returncode == 64
    assert bad.stderr == (
        "mailgate: error: sendmail: MAILGATE_SENDMAIL_SERVER '127.0.0.1:port' is not HOST:PORT"
        " (see mailgate sendmail --help)\n"
    )


def test_mailgate_help_lists_sendmail(tmp_path: Path) -> None:
    done = mailgate("--help", cwd=tmp_path)
    assert done.returncode == 0
    assert "sendmail" in done.stdout


# -- exit statuses (sysexits.h) -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["-Z", "ann@example.net"], "unknown option -Z"),
        (["--bogus", "ann@example.net"], "unknown option --bogus"),
        (["ann@example.net", "-f"], "option -f requires argument"),
        (["-bp"], "-bp is not supported: only -bm, reading a message"),
        (["-N", "sometimes", "ann@example.net"], "-N 'sometimes': give never, or some of"),
        (["-R", "all", "ann@example.net"], "-R 'all': give full or hdrs"),
        (["<>"], "'<>' names no address"),
        ([], "no recipient: name one, or put one in To, Cc or Bcc"),
    ],
)
def test_usage_errors_are_one_line_and_64(
    inbox: Inbox, catcher: Serving, tmp_path: Path, argv: list[str], error: str
) -> None:
    done = sendmail(*argv, message=b"Subject: no\n\nno\n", server=catcher, cwd=tmp_path)
    assert (done.returncode, done.stdout) == (64, ""), done
    assert done.stderr.startswith(f"mailgate: error: sendmail: {error}")
    assert done.stderr.endswith(" (see mailgate sendmail --help)\n")
    assert done.stderr.count("\n") == 1
    assert inbox.new() == []


def test_no_server_listening_is_69_and_an_unknown_host_68(tmp_path: Path) -> None:
    port = free_port()
    done = sendmail(
        "--server", f"127.0.0.1:{port}", "ann@example.net", message=b"\n", server=None,
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 69
    assert done.stderr.startswith(f"mailgate: error: 127.0.0.1:{port}: 451 4.4.1 connection to ")
    assert done.stderr.count("\n") == 1
    done = sendmail(
        "--server", "nowhere.invalid:25", "ann@example.net", message=b"\n", server=None,
        cwd=tmp_path,
    )  # fmt: skip
    assert (done.returncode, done.stderr.count("\n")) == (68, 1), done.stderr
    assert done.stderr.startswith("mailgate: error: nowhere.invalid: ")


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serving]:
    """A server with domains: alice@example.org, anyone at lists.example.org, no relaying."""
    directory = tmp_path_factory.mktemp("strict")
    (directory / "mailgate.toml").write_text(
        '[domains."example.org"]\nmailboxes = ["alice"]\n\n[domains."lists.example.org"]\n'
    )
    launcher = Launcher(directory)
    try:
        served = launcher.serve(
            "--config", "mailgate.toml", "--smtp", "127.0.0.1:0", "--http", "127.0.0.1:0",
            "--max-recipients", "100", "--max-message-size", "64K",
        )  # fmt: skip
        yield served
        served.stop_cleanly()
    finally:
        launcher.close()


@pytest.mark.parametrize(
    ("recipient", "status", "reply"),
    [
        ("bob@example.net", 69, "550 5.7.1 Relaying denied"),
        ("nobody@example.org", 67, "550 5.1.1 No such user here"),
    ],
)
def test_a_refused_recipient(
    strict: Serving, tmp_path: Path, recipient: str, status: int, reply: str
) -> None:
    inbox = Inbox(strict)
    done = sendmail(recipient, message=b"Subject: x\n\nx\n", server=strict, cwd=tmp_path)
    assert (done.returncode, done.stdout) == (status, "")
    assert reply in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert inbox.new() == []


def test_some_recipients_refused(strict: Serving, tmp_path: Path) -> None:
    """The others get the message; each refusal is a line, the status the worst of them."""
    inbox = Inbox(strict)
    recipients = [f"r{n}@lists.example.org" for n in range(101)]
    done = sendmail(*recipients, message=b"Subject: many\n\nx\n", server=strict, cwd=tmp_path)
    assert done.returncode == 75  # 452: try the rest later
    assert done.stderr == "mailgate: error: r100@lists.example.org: 452 4.5.3 Too many recipients\n"
    assert len(inbox.one().addresses("Bcc")) == 100
    done = sendmail(
        "alice@example.org", "nobody@example.org", "r1@lists.example.org", *recipients[2:],
        message=b"Subject: mixed\n\nx\n", server=strict, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 67  # a permanent refusal outweighs a temporary one
    assert done.stderr.splitlines() == [
        "mailgate: error: nobody@example.org: 550 5.1.1 No such user here",
        "mailgate: error: r100@lists.example.org: 452 4.5.3 Too many recipients",
    ]
    assert "alice@example.org" in inbox.one().addresses("Bcc")


def test_a_message_too_large_is_65(strict: Serving, tmp_path: Path) -> None:
    inbox = Inbox(strict)
    big = b"Subject: big\n\n" + (b"x" * 998 + b"\n") * 70
    done = sendmail("alice@example.org", message=big, server=strict, cwd=tmp_path)
    assert done.returncode == 65
    assert "552 5.3.4 Message size exceeds the server's limit of 65536" in done.stderr
    assert inbox.new() == []


def test_a_4xx_greeting_is_75(launcher: Launcher, tmp_path: Path) -> None:
    served = launcher.serve(
        "--smtp", "127.0.0.1:0", "--http", "127.0.0.1:0", "--max-connections", "1"
    )
    with socket.create_connection(("127.0.0.1", served.port), timeout=TIMEOUT) as held:
        assert held.recv(512).startswith(b"220 ")  # the one connection allowed is taken
        # ... by a session that keeps going: a newcomer may take the slot of one stalled
        # for a second, as a sendmail process starting on a busy machine would find it.
        done = _while_busy(
            held, lambda: sendmail("ann@example.net", message=b"\n", server=served, cwd=tmp_path)
        )
    assert done.returncode == 75
    assert done.stderr.startswith(f"mailgate: error: 127.0.0.1:{served.port}: 421 4.7.0 ")
    assert done.stderr.endswith("Too many connections, try again later\n")
    assert done.stderr.count("\n") == 1
    assert Inbox(served).total() == 0
    served.stop_cleanly()


def _while_busy(held: socket.socket, work: Callable[[], _T]) -> _T:
    """Run ``work`` while ``held`` sends a message's content, a line every 0.2 s: progress,
    which keeps its slot (NOOPs would not)."""
    for line, code in (
        (b"EHLO client.test", b"250"),
        (b"MAIL FROM:<a@example.org>", b"250"),
        (b"RCPT TO:<b@example.net>", b"250"),
        (b"DATA", b"354"),
    ):
        held.sendall(line + b"\r\n")
        reply = read_reply(held)
        assert reply.startswith(code), reply
    done = threading.Event()

    def keep_going() -> None:
        while not done.wait(0.2):
            held.sendall(b"more content\r\n")

    busy = threading.Thread(target=keep_going, daemon=True)
    busy.start()
    try:
        return work()
    finally:
        done.set()
        busy.join()


# -- PHP ----------------------------------------------------------------------------------------


def test_php_mail(inbox: Inbox, catcher: Serving, tmp_path: Path) -> None:
    php = require_tool("php")
    (tmp_path / "php.ini").write_text(
        f'sendmail_path = "{MAILGATE} sendmail -t -i --server 127.0.0.1:{catcher.port}"\n'
    )
    script = (
        'exit(mail("ann@example.net", "From PHP", "Line one\\n.\\nLine three",'
        ' "From: app@example.org\\r\\nCc: bob@example.net\\r\\nBcc: boss@example.net") ? 0 : 1);'
    )
    done = run_command(php, "-c", str(tmp_path / "php.ini"), "-r", script, cwd=tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    stored = inbox.one()
    assert stored.message["Subject"] == "From PHP"
    assert stored.addresses("To") == ["ann@example.net"]
    assert stored.addresses("Cc") == ["bob@example.net"]
    assert stored.addresses("Bcc") == ["boss@example.net"]
    assert b"boss@" not in stored.content
    assert stored.summary["ReturnPath"] == "app@example.org"
    assert stored.content.endswith(b"\r\n\r\nLine one\r\n.\r\nLine three\r\n")
