"""The ``mailgate`` command: flags, one-line errors, serve and messages end to end."""

from __future__ import annotations

import importlib
import io
import os
import re
import select
import signal
import smtplib
import socket
import subprocess
import sys
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest

from mailgate import testing
from mailgate.auth import UsersFile
from mailgate.cli import main
from mailgate.config import OPTIONS, Domain, Listen, Settings

STARTUP_TIMEOUT_SECONDS = 30.0


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def one_error_line(err: str) -> str:
    assert err.count("\n") == 1, err
    assert err.startswith("mailgate: error: ")
    return err.removeprefix("mailgate: error: ").rstrip("\n")


@pytest.fixture(autouse=True)
def _no_mailgate_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in [n for n in os.environ if n.startswith("MAILGATE_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


# -- flags and errors ---------------------------------------------------------------------------


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "serve", "--help")
    assert status == 0
    for option in OPTIONS:
        # A password is never a flag: a command line is visible to every user of the machine.
        assert (option.flag in out) != option.secret
    assert "--no-http" in out
    assert "--config" in out


def test_no_command(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys)
    assert (status, out) == (2, "")
    assert (
        one_error_line(err)
        == "choose a command: serve, messages, queue, send, sendmail or users (see mailgate --help)"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["serve", "--max-message-size", "25X"],
            "--max-message-size: '25X' is not a size: give octets, or a number with K, M or G "
            "(e.g. 25M)",
        ),
        (["serve", "--smtp", "nowhere"], "--smtp: 'nowhere' is not HOST:PORT"),
        (["serve", "--vrfy", "maybe"], "--vrfy: 'maybe' is not one of off, 252, on"),
        (["serve", "--domain", "ok.example", "--domain", "no way"], "--domain: 'no way' is not"),
        (["serve", "--bogus"], "unrecognized arguments: --bogus (see mailgate --help)"),
        (["serve", "--smtp"], "argument --smtp: expected one argument (see mailgate serve --help)"),
        (["launch"], "argument COMMAND: invalid choice: 'launch'"),
        (["messages", "--limit", "0"], "argument --limit: '0' is not a whole number of at least 1"),
    ],
)
def test_bad_flags_are_one_line_and_status_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    status, out, err = run(capsys, *argv)
    assert (status, out) == (2, "")
    assert one_error_line(err).startswith(message)


def test_bad_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAILGATE_MAX_RECIPIENTS", "10")
    status, _, err = run(capsys, "serve")
    assert status == 2
    assert one_error_line(err) == (
        "MAILGATE_MAX_RECIPIENTS: must be at least 100 (RFC 5321 4.5.3.1.8), got 10"
    )


@pytest.mark.parametrize("via", ["flag", "environment"])
def test_bad_config_file(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, via: str
) -> None:
    config = tmp_path / "mailgate.toml"
    config.write_text("[limits]\nmax_line_length = 80\n")
    argv = ["messages"]
    if via == "flag":
        argv += ["--config", str(config)]
    else:
        monkeypatch.setenv("MAILGATE_CONFIG", str(config))
    status, _, err = run(capsys, *argv)
    assert status == 2
    assert one_error_line(err) == (
        f"limits.max_line_length in {config}: must be at least 1000 (RFC 5321 4.5.3.1.6), got 80"
    )


# -- serve: what it is given --------------------------------------------------------------------


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
    """Settings that ``mailgate serve`` would have served, instead of serving them."""
    serve_module = importlib.import_module("mailgate.cli._serve")
    seen: list[Settings] = []

    def fake_serve(settings: Settings) -> int:
        seen.append(settings)
        return 0

    monkeypatch.setattr(serve_module, "serve", fake_serve)
    return seen


def test_serve_flags_reach_the_settings(
    served: list[Settings], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "mailgate.toml"
    config.write_text('hostname = "file.example"\nexpn = "on"\n[limits]\nerror_budget = 5\n')
    monkeypatch.setenv("MAILGATE_HOSTNAME", "env.example")
    argv = [
        "serve", "--smtp", "[::1]:2525", "--no-http", "--data", "spool-here",
        "--domain", "a.example", "--domain", "B.example", "--max-message-size", "10M",
        "--max-recipients", "200", "--max-connections", "7", "--vrfy", "off",
        "--bare-line-endings", "normalise", "--idle-timeout", "2m", "--log-level", "debug",
        "--config", str(config),
    ]  # fmt: skip
    assert main(argv) == 0
    [settings] = served
    assert settings.smtp == Listen("::1", 2525)
    assert settings.http is None
    assert settings.data_dir == Path("spool-here")
    assert settings.hostname == "env.example"
    assert settings.domains == (Domain("a.example"), Domain("b.example"))
    assert settings.limits.max_message_size == 10 * 1024 * 1024
    assert settings.limits.max_recipients == 200
    assert settings.limits.max_connections == 7
    assert settings.limits.idle_timeout == 120.0
    assert settings.limits.error_budget == 5
    assert (settings.vrfy, settings.expn, settings.bare_line_endings) == ("off", "on", "normalise")
    assert settings.log_level == "debug"


def test_serve_defaults(served: list[Settings]) -> None:
    assert main(["serve"]) == 0
    assert served == [Settings()]


def test_http_can_be_moved_or_turned_off(served: list[Settings]) -> None:
    main(["serve", "--http", ":9000"])
    main(["serve", "--http", "off"])
    assert [s.http for s in served] == [Listen("", 9000), None]


# -- serve: for real ----------------------------------------------------------------------------

# Runs ``mailgate`` as its console script does, on the event loop given by
# argv[1]: "asyncio" hides uvloop so the standard loop is used.
_LAUNCH = """
import sys
if sys.argv.pop(1) == "asyncio":
    sys.modules["uvloop"] = None
from mailgate.cli import main
sys.exit(main())
"""

_LOOPS = ["asyncio", pytest.param("uvloop", marks=pytest.mark.skipif(
    sys.platform == "win32", reason="uvloop is not built for Windows"
))]  # fmt: skip


class Served:
    def __init__(self, process: subprocess.Popen[str], line: str) -> None:
        self.process = process
        self.line = line
        match = re.fullmatch(
            r"mailgate \S+ listening: smtp 127\.0\.0\.1:(\d+), "
            r"(?:http (http://127\.0\.0\.1:\d+/), )?(.*)\n",
            line,
        )
        assert match, line
        self.port = int(match[1])
        self.http_url = match[2] or ""
        self.where = match[3]

    def stop(self, signum: signal.Signals = signal.SIGTERM) -> tuple[int, str]:
        self.process.send_signal(signum)
        _, err = self.process.communicate(timeout=STARTUP_TIMEOUT_SECONDS)
        return self.process.returncode, err


def _launch(loop: str, *argv: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _LAUNCH, loop, *argv],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _first_line(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], STARTUP_TIMEOUT_SECONDS)
    line = process.stdout.readline() if ready else ""
    if not line:
        process.kill()
        _, err = process.communicate()
        pytest.fail(f"mailgate serve did not start (status {process.returncode}):\n{err}")
    return line


@pytest.fixture(params=_LOOPS)
def serve(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "uvloop":
        pytest.importorskip("uvloop")
    processes: list[subprocess.Popen[str]] = []

    def start(*argv: str) -> Served:
        process = _launch(request.param, "serve", "--smtp", "127.0.0.1:0", *argv, cwd=tmp_path)
        processes.append(process)
        return Served(process, _first_line(process))

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.communicate()


def _message(subject: str, body: str = "Hello.\n") -> EmailMessage:
    message = EmailMessage()
    message["From"] = "Alice <alice@example.com>"
    message["To"] = "bob@example.org"
    message["Subject"] = subject
    message.set_content(body)
    return message


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_receives_mail_and_stops_on_a_signal(
    serve: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], signum: signal.Signals
) -> None:
    served = serve("--http", "127.0.0.1:0", "--data", "box", "--hostname", "mx.test")
    assert served.where == "data ./box"
    with smtplib.SMTP("127.0.0.1", served.port) as client:
        assert client.ehlo()[1].startswith(b"mx.test")
        client.send_message(_message("Größe"))
    page = httpx.get(f"{served.http_url}api/v1/messages").json()
    assert [m["Subject"] for m in page["messages"]] == ["Größe"]
    assert "<title>" in httpx.get(served.http_url).text
    status, err = served.stop(signum)
    assert status == 0, err
    assert "Traceback" not in err

    assert main(["messages", "--data", str(tmp_path / "box"), "--count"]) == 0
    assert capsys.readouterr().out == "1\n"


def test_serve_names_an_explicit_store(serve: Any, tmp_path: Path) -> None:
    served = serve("--no-http", "--store", f"sqlite://{tmp_path}/elsewhere.db")
    assert served.where == f"store sqlite://{tmp_path}/elsewhere.db"
    status, err = served.stop()
    assert status == 0, err
    assert (tmp_path / "elsewhere.db").exists()


def test_serve_cannot_listen(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = _launch(
            "asyncio", "serve", "--no-http", "--smtp", f"127.0.0.1:{port}", cwd=tmp_path
        )
        out, err = process.communicate(timeout=STARTUP_TIMEOUT_SECONDS)
    assert (process.returncode, out) == (1, "")
    assert err.splitlines()[-1] == (
        f"mailgate: error: cannot listen for smtp on 127.0.0.1:{port}: Address already in use"
    )


def test_serve_with_an_unknown_store(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, out, err = run(capsys, "serve", "--no-http", "--store", "nosuch:///x")
    assert (status, out) == (2, "")
    assert "nosuch:///x" in one_error_line(err)


def test_messages_with_an_unknown_store(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "messages", "--store", "nosuch:///x")
    assert (status, out) == (2, "")
    assert "nosuch:///x" in one_error_line(err)


def test_messages_with_a_store_that_cannot_open(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "file").write_text("not a directory")
    status, out, err = run(capsys, "messages", "--data", str(tmp_path / "file" / "box"))
    assert (status, out) == (1, "")
    assert str(tmp_path / "file") in one_error_line(err)


# -- messages -----------------------------------------------------------------------------------


@pytest.fixture
def mailbox(tmp_path: Path) -> Path:
    """A data directory holding three messages, the last a multipart one."""
    data = tmp_path / "box"
    with (
        testing.MailgateServer(data_dir=data) as server,
        smtplib.SMTP(server.host, server.port) as client,
    ):
        client.send_message(_message("first"))
        client.send_message(_message("=?utf-8?q?zweite_Gr=C3=BC=C3=9Fe?="))
        rich = _message("third", "plain text\n")
        rich.add_alternative("<p>html</p>", subtype="html")
        rich.add_attachment(b"\x00\x01binary", maintype="application", subtype="octet-stream")
        client.send_message(rich)
    return data


def _ids(capsys: pytest.CaptureFixture[str], data: Path) -> list[str]:
    assert main(["messages", "--data", str(data)]) == 0
    return [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]


def test_messages_table(capsys: pytest.CaptureFixture[str], mailbox: Path) -> None:
    status, out, err = run(capsys, "messages", "--data", str(mailbox))
    assert (status, err) == (0, "")
    header, *rows = out.splitlines()
    assert header.split() == ["ID", "DATE", "FROM", "TO", "SUBJECT", "SIZE"]
    assert len(rows) == 3
    subjects = [re.split(r"\s{2,}", row)[4] for row in rows]
    assert subjects == ["third", "zweite Grüße", "first"]  # newest first
    for row in rows:
        assert re.fullmatch(
            r"[0-9A-Z]{26}  \d{4}-\d\d-\d\d \d\d:\d\d:\d\d  alice@example\.com  bob@example\.org  "
            r".+\s+\d+(\.\d)?[BKMG]",
            row,
        ), row
    # Columns line up: every row is as wide as the header's columns.
    assert len({row.index("alice@") for row in rows} | {header.index("FROM")}) == 1


def test_messages_table_falls_back_to_the_envelope(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data = tmp_path / "bare"
    with (
        testing.MailgateServer(data_dir=data) as server,
        smtplib.SMTP(server.host, server.port) as client,
    ):
        client.sendmail("env@from.example", ["one@to.example"], b"Subject: bare\r\n\r\nhi\r\n")
    status, out, _ = run(capsys, "messages", "--data", str(data))
    assert status == 0
    row = out.splitlines()[1]
    assert re.split(r"\s{2,}", row)[2:5] == ["env@from.example", "one@to.example", "bare"]


def test_messages_limit_and_count(capsys: pytest.CaptureFixture[str], mailbox: Path) -> None:
    status, out, _ = run(capsys, "messages", "--limit", "1", "--data", str(mailbox))
    assert status == 0
    assert len(out.splitlines()) == 2
    assert run(capsys, "messages", "--count", "--store", f"sqlite://{mailbox}/mail.db") == (
        0,
        "3\n",
        "",
    )


def test_messages_in_an_empty_store(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert run(capsys, "messages", "--data", str(tmp_path / "empty")) == (0, "", "")
    assert run(capsys, "messages", "--count", "--data", str(tmp_path / "empty")) == (0, "0\n", "")


def test_show(capsys: pytest.CaptureFixture[str], mailbox: Path) -> None:
    newest, middle, _ = _ids(capsys, mailbox)
    status, out, err = run(capsys, "messages", "show", middle, "--data", str(mailbox))
    assert (status, err) == (0, "")
    headers, _, body = out.partition("\n\n")
    assert headers.startswith("Return-Path: <alice@example.com>\nReceived: from ")
    assert "\nSubject: zweite Grüße\n" in f"\n{headers}\n"
    assert "\nFrom: Alice <alice@example.com>\n" in f"\n{headers}\n"
    assert body == "Hello.\n"
    # Flags given before ``show`` count too; a multipart message shows its plain part.
    status, out, _ = run(capsys, "messages", "--data", str(mailbox), "show", newest)
    assert status == 0
    assert out.partition("\n\n")[2] == "plain text\n"


def test_show_raw_is_the_stored_bytes(
    capsysbinary: pytest.CaptureFixture[bytes], mailbox: Path
) -> None:
    assert main(["messages", "--data", str(mailbox)]) == 0
    newest = capsysbinary.readouterr().out.decode().splitlines()[1].split()[0]
    assert main(["messages", "show", newest, "--raw", "--data", str(mailbox)]) == 0
    raw = capsysbinary.readouterr().out
    assert raw.startswith(b"Return-Path: <")
    assert b"\r\nReceived: " in raw
    assert b"\x00\x01binary" not in raw  # base64 in transit: these are the bytes as received
    assert b"Subject: third\r\n" in raw


def test_show_an_unknown_id(capsys: pytest.CaptureFixture[str], mailbox: Path) -> None:
    status, out, err = run(capsys, "messages", "show", "NOSUCHMESSAGE", "--data", str(mailbox))
    assert (status, out) == (1, "")
    assert one_error_line(err) == "no message with id 'NOSUCHMESSAGE'"


@pytest.mark.parametrize(
    ("content", "shown"),
    [
        (
            b"Subject: bin\r\nContent-Type: application/octet-stream\r\n\r\nAAAA\r\n",
            "(no text part; see --raw)\n",
        ),
        (
            b"Subject: odd\r\nContent-Type: text/plain; charset=x-nonesuch\r\n\r\nbody\r\n",
            "body\n",
        ),
        (b"Subject: none\r\n\r\nno newline at the end", "no newline at the end\n"),
    ],
)
def test_show_odd_messages(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: bytes, shown: str
) -> None:
    with testing.MailgateServer(data_dir=tmp_path / "box") as server:
        with smtplib.SMTP(server.host, server.port) as client:
            client.sendmail("a@example.com", ["b@example.org"], content)
        [summary] = server.messages()
    status, out, _ = run(capsys, "messages", "show", summary.id, "--data", str(tmp_path / "box"))
    assert status == 0
    assert out.partition("\n\n")[2] == shown


def test_switches_take_no_value(served: list[Settings]) -> None:
    assert main(["serve", "--tls-self-signed", "--auth-accept-any"]) == 0
    [settings] = served
    assert settings.tls.self_signed
    assert settings.auth_accept_any


def test_serve_with_bad_tls_files_fails_at_start_up(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    common = ("serve", "--smtp", "127.0.0.1:0", "--no-http", "--data", str(tmp_path))
    status, _, err = run(
        capsys,
        *common,
        "--tls-cert",
        str(tmp_path / "no.pem"),
        "--tls-key",
        str(tmp_path / "no.key"),
    )
    assert status == 1
    assert one_error_line(err) == f"--tls-cert: {tmp_path / 'no.pem'}: no such file"
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not PEM at all\n")
    status, _, err = run(capsys, *common, "--tls-cert", str(garbage), "--tls-key", str(garbage))
    assert status == 1
    assert "not a matching PEM certificate and key" in one_error_line(err)


def test_submission_without_tls_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    status, _, err = run(
        capsys,
        "serve",
        "--smtp",
        "127.0.0.1:0",
        "--submission",
        "127.0.0.1:0",
        "--no-http",
        "--data",
        str(tmp_path),
    )
    assert status == 2
    assert one_error_line(err).startswith("--submission needs TLS")


def test_users_commands(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    users = str(tmp_path / "users")
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret\n"))
    assert run(capsys, "users", "add", "alice", "--users", users)[:2] == (0, "added alice\n")
    assert run(capsys, "users", "list", "--users", users)[:2] == (0, "alice\n")
    monkeypatch.setattr("sys.stdin", io.StringIO("other\n"))
    status, _, err = run(capsys, "users", "add", "alice", "--users", users)
    assert status == 1
    assert "exists" in one_error_line(err)
    monkeypatch.setattr("sys.stdin", io.StringIO("n3w\n"))
    assert run(capsys, "users", "passwd", "alice", "--users", users)[0] == 0
    assert UsersFile(tmp_path / "users").check("alice", "n3w")
    assert run(capsys, "users", "delete", "alice", "--users", users)[:2] == (0, "deleted alice\n")
    status, _, err = run(capsys, "users", "delete", "alice", "--users", users)
    assert status == 1
    status, _, err = run(capsys, "users", "list")
    assert status == 2
    assert "--users FILE" in one_error_line(err)
