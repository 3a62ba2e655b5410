"""What the SMTP service logs: a line per message and per refusal, a summary per connection.

Most tests run a real server in this process (``MailgateServer``) and read
the records with ``caplog``; the last ones start ``mailgate serve`` as a user
does and read its stderr, JSON lines from every process it runs.
"""

from __future__ import annotations

import json
import logging
import os
import re
import select
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import httpx
import pytest
import trustme

from mailgate.auth import UsersFile
from mailgate.cli import main
from mailgate.config import ConfigError, Limits, Settings, load_settings
from mailgate.runtime._logging import JSONFormatter, TextFormatter
from mailgate.server._log import LogFields, RefusalLog, clean
from mailgate.testing import MailgateServer
from test_server_tls_auth import CHEAP, PASSWORD, make_server

TIMEOUT = 30.0
MESSAGE = b"Subject: hello\r\n\r\nHello, world.\r\n"
QUEUED = re.compile(r"2\.0\.0 Ok: queued as (\S+)")


def smtp_records(caplog: pytest.LogCaptureFixture, prefix: str = "") -> list[logging.LogRecord]:
    """The records of ``mailgate.smtp`` that carry fields, whose message starts with ``prefix``."""
    return [
        record
        for record in caplog.records
        if record.name == "mailgate.smtp"
        and isinstance(getattr(record, "fields", None), LogFields)
        and record.getMessage().startswith(prefix)
    ]


def fields_of(record: logging.LogRecord) -> dict[str, object]:
    fields = getattr(record, "fields", None)
    assert isinstance(fields, LogFields)
    return dict(fields)


def as_json(record: logging.LogRecord) -> dict[str, object]:
    entry = json.loads(JSONFormatter().format(record))
    assert isinstance(entry, dict)
    return entry


def send(client: smtplib.SMTP, sender: str, recipients: list[str], body: bytes = MESSAGE) -> str:
    """Send one message over ``client``; return the id the 250 names."""
    client.ehlo_or_helo_if_needed()
    assert client.mail(sender)[0] == 250
    for recipient in recipients:
        assert client.rcpt(recipient)[0] == 250
    code, text = client.data(body)
    assert code == 250, text
    found = QUEUED.search(text.decode())
    assert found is not None, text
    return found[1]


@pytest.fixture(autouse=True)
def _smtp_logs_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="mailgate.smtp")


# -- TLS and AUTH, from the fixtures of test_server_tls_auth -------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def tls_files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    cert = ca.issue_cert("mailgate.test", "127.0.0.1")
    directory = tmp_path_factory.mktemp("tls")
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    return cert_path, key_path


@pytest.fixture
def users(tmp_path: Path) -> UsersFile:
    users = UsersFile(tmp_path / "users")
    users.set_password("alice", PASSWORD, log2_n=CHEAP)
    return users


# -- a line per message ----------------------------------------------------------------------------


def test_an_accepted_message_is_one_line_with_every_field(
    caplog: pytest.LogCaptureFixture,
    ca: trustme.CA,
    tls_files: tuple[Path, Path],
    users: UsersFile,
) -> None:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with (
        make_server(tls_files, users) as server,
        smtplib.SMTP("127.0.0.1", server.port_of("submission"), timeout=TIMEOUT) as client,
    ):
        client.ehlo("client.test")
        client.starttls(context=context)
        client.ehlo("client.test")
        client.login("alice", PASSWORD)
        assert isinstance(client.sock, ssl.SSLSocket)
        version = client.sock.version()
        message_id = send(client, "alice@example.org", ["bob@example.org", "carol@elsewhere.net"])
        stored = server.get(message_id)
    assert stored is not None
    size = stored.summary.size
    [record] = [r for r in smtp_records(caplog) if "id" in fields_of(r)]
    assert record.levelno == logging.INFO
    assert record.getMessage() == (
        f"id={message_id} from=<alice@example.org> to=<bob@example.org>,<carol@elsewhere.net> "
        f"size={size} client=[127.0.0.1] helo=client.test proto=ESMTPSA tls={version} auth=alice"
    )
    entry = as_json(record)
    assert entry.pop("time")
    assert entry == {
        "level": "info",
        "logger": "mailgate.smtp",
        "message": record.getMessage(),
        "id": message_id,
        "from": "alice@example.org",
        "to": ["bob@example.org", "carol@elsewhere.net"],
        "size": size,
        "client": "127.0.0.1",
        "helo": "client.test",
        "proto": "ESMTPSA",
        "tls": version,
        "auth": "alice",
    }


def test_plain_session_and_null_sender(caplog: pytest.LogCaptureFixture) -> None:
    with (
        MailgateServer() as server,
        smtplib.SMTP(server.host, server.port, local_hostname="client.test") as client,
    ):
        client.ehlo("client.test")
        message_id = send(client, "", ["bob@example.org"])
    [record] = smtp_records(caplog, "id=")
    assert re.fullmatch(
        rf"id={message_id} from=<> to=<bob@example\.org> size=\d+ client=\[127\.0\.0\.1\] "
        r"helo=client\.test proto=ESMTP",
        record.getMessage(),
    )
    assert fields_of(record)["from"] == ""


def test_nothing_per_message_above_info(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="mailgate.smtp")
    with MailgateServer() as server, smtplib.SMTP(server.host, server.port) as client:
        send(client, "alice@example.org", ["bob@example.org"])
    assert smtp_records(caplog) == []


# -- a line per refusal ----------------------------------------------------------------------------


def test_a_refused_relay_is_one_line_with_its_reply(caplog: pytest.LogCaptureFixture) -> None:
    with (
        MailgateServer(domains=("example.org",)) as server,
        smtplib.SMTP(server.host, server.port, local_hostname="client.test") as client,
    ):
        client.ehlo("client.test")
        assert client.mail("alice@example.org")[0] == 250
        assert client.rcpt("mallory@elsewhere.net")[0] == 550
    [record] = smtp_records(caplog, "refused")
    assert record.levelno == logging.INFO
    assert record.getMessage() == (
        "refused from=<alice@example.org> to=<mallory@elsewhere.net> client=[127.0.0.1] "
        'helo=client.test reply="550 5.7.1 Relaying denied"'
    )
    entry = as_json(record)
    assert entry["reply"] == "550 5.7.1 Relaying denied"
    assert entry["to"] == ["mallory@elsewhere.net"]


def test_mail_refused_before_auth_on_submission(
    caplog: pytest.LogCaptureFixture, tls_files: tuple[Path, Path], users: UsersFile
) -> None:
    with (
        make_server(tls_files, users) as server,
        smtplib.SMTP("127.0.0.1", server.port_of("submission"), timeout=TIMEOUT) as client,
    ):
        client.ehlo("client.test")
        assert client.mail("alice@example.org")[0] == 530
    [record] = smtp_records(caplog, "refused")
    assert record.getMessage() == (
        "refused from=<alice@example.org> client=[127.0.0.1] helo=client.test "
        'reply="530 5.7.0 Authentication required"'
    )


@pytest.mark.parametrize(
    ("body", "reply"),
    [
        ((b"x" * 70 + b"\r\n") * 30, "552 5.3.4 "),
        (b"x" * 1200 + b"\r\n", "554 5.6.0 "),
    ],
    ids=["too-big", "line-too-long"],
)
def test_a_message_refused_after_data_names_the_engines_reply(
    caplog: pytest.LogCaptureFixture, body: bytes, reply: str
) -> None:
    with (
        MailgateServer(limits=Limits(max_message_size=1000)) as server,
        smtplib.SMTP(server.host, server.port, local_hostname="client.test") as client,
    ):
        client.ehlo()
        assert client.mail("alice@example.org")[0] == 250
        assert client.rcpt("bob@example.org")[0] == 250
        code, _ = client.data(MESSAGE + body)
        assert code == int(reply[:3])
        assert server.messages() == []
    [record] = smtp_records(caplog, "refused")
    assert record.getMessage().startswith(
        "refused from=<alice@example.org> to=<bob@example.org> client=[127.0.0.1] "
        f'helo=client.test reply="{reply}'
    )


@pytest.mark.parametrize(
    "helo",
    [
        # What the engine takes: a right-to-left override, a zero-width space, a long name.
        "evil\u202eelpmaxe.\u200bforged" + "x" * 400,
        # What it may refuse (501) before the session sees it; never logged raw either way.
        "evil\x1b[2J\x07.example",
    ],
)
def test_what_the_client_chose_never_reaches_the_log_raw(
    caplog: pytest.LogCaptureFixture, helo: str
) -> None:
    with MailgateServer() as server, socket.create_connection((server.host, server.port)) as sock:
        stream = sock.makefile("rwb")
        assert stream.readline().startswith(b"220 ")
        lines = [f"EHLO {helo}", "MAIL FROM:<a@example.org>", "RCPT TO:<b@example.org>", "QUIT"]
        stream.write("".join(f"{line}\r\n" for line in lines).encode())
        stream.flush()
        replies = stream.read().decode()
    assert "\r\n221 " in replies
    records = [r for r in caplog.records if r.name.startswith("mailgate")]
    assert records
    for record in records:
        for line in (TextFormatter().format(record), JSONFormatter().format(record)):
            assert line.isprintable(), line
    [summary] = summaries(caplog)
    if replies.startswith("250"):  # the EHLO was answered, and the name is in the summary
        assert summary["helo"] == clean(helo)
    if helo.isascii():
        return
    assert summary["helo"] == "evil\\u202eelpmaxe.\\u200bforged" + "x" * 226 + "..."
    assert re.search(r"\r\n250 2\.1\.0 ", replies)  # the session went on after EHLO


@pytest.mark.parametrize(
    ("text", "logged"),
    [
        ("alice@example.org", "alice@example.org"),
        ("a\r\nb", "a\\x0d\\x0ab"),
        ("tab\there", "tab\\x09here"),
        ("del\x7f", "del\\x7f"),
        ("ünïcödé@例え.jp", "ünïcödé@例え.jp"),
        ("line\u2028sep", "line\\u2028sep"),
        ("x" * 300, "x" * 256 + "..."),
        ("\n" * 300, "\\x0a" * 64 + "..."),
    ],
)
def test_clean(text: str, logged: str) -> None:
    assert clean(text) == logged


def test_values_with_spaces_are_quoted_in_text() -> None:
    fields = LogFields(helo='a b "c"', client="::1", to=["x@y"])
    assert str(fields) == r'helo="a b \"c\"" client=[::1] to=<x@y>'


# -- a summary per connection, at debug ------------------------------------------------------------


def summaries(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [fields_of(r) for r in smtp_records(caplog, "disconnect") if r.levelno == logging.DEBUG]


def test_connection_summary_after_quit(caplog: pytest.LogCaptureFixture) -> None:
    with (
        MailgateServer(domains=("example.org",)) as server,
        smtplib.SMTP(server.host, server.port, local_hostname="client.test") as client,
    ):
        send(client, "alice@example.org", ["bob@example.org"])
        assert client.mail("alice@example.org")[0] == 250
        assert client.rcpt("mallory@elsewhere.net")[0] == 550
        client.rset()
        client.quit()
        client.close()
    [summary] = summaries(caplog)
    duration = summary.pop("duration")
    assert isinstance(duration, float)
    assert 0 <= duration < TIMEOUT
    # EHLO, MAIL, RCPT, DATA, MAIL, RCPT, RSET, QUIT
    assert summary == {
        "client": "127.0.0.1",
        "helo": "client.test",
        "commands": 8,
        "messages": 1,
        "refused": 1,
        "errors": 1,
        "end": "QUIT",
    }


def test_connection_summary_after_eof_and_after_too_many_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with MailgateServer(limits=Limits(error_budget=2)) as server:
        with socket.create_connection((server.host, server.port)) as sock:
            sock.sendall(b"EHLO client.test\r\n")
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(4096):
                pass
        with socket.create_connection((server.host, server.port)) as sock:
            sock.sendall(b"BOGUS\r\nBOGUS\r\n")
            while sock.recv(4096):
                pass
    ends = sorted((s["end"], s["errors"]) for s in summaries(caplog))
    assert ends == [("421", 2), ("EOF", 0)]


# -- refused connections: a bounded number of lines ------------------------------------------------


def test_a_flood_of_refused_connections_is_logged_in_few_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    flood = 200
    with MailgateServer(limits=Limits(max_connections_per_ip=2)) as server:
        held = [socket.create_connection((server.host, server.port)) for _ in range(2)]
        for sock in held:
            assert sock.makefile("rb").readline().startswith(b"220 ")
        for _ in range(flood):
            with socket.create_connection((server.host, server.port)) as sock:
                assert sock.makefile("rb").readline().startswith(b"421 4.7.0 ")
        for sock in held:
            sock.close()
    lines = smtp_records(caplog, "connection refused")
    # The first at once; the rest counted, and logged as one line when the server stops.
    assert len(lines) == 2
    first, rest = (fields_of(r) for r in lines)
    reply = "421 4.7.0 Too many connections from your address, try again later"
    assert first == {"client": "127.0.0.1", "reply": reply}
    assert rest == {"client": "127.0.0.1", "reply": reply, "suppressed": flood - 1, "interval": 60}
    assert lines[1].getMessage() == (
        f'connection refused client=[127.0.0.1] reply="{reply}" suppressed={flood - 1} interval=60'
    )


class FakeTimers:
    """``loop.call_later`` on a clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 0.0
        self.due: list[tuple[float, Callable[[], None], FakeHandle]] = []

    def call_later(self, delay: float, callback: Callable[[], None]) -> FakeHandle:
        handle = FakeHandle()
        self.due.append((self.now + delay, callback, handle))
        return handle

    def advance(self, seconds: float) -> None:
        self.now += seconds
        ready = [entry for entry in self.due if entry[0] <= self.now]
        self.due = [entry for entry in self.due if entry[0] > self.now]
        for _, callback, handle in ready:
            if not handle.cancelled:
                callback()


class FakeHandle:
    cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


def refusal_lines(caplog: pytest.LogCaptureFixture) -> list[Mapping[str, object]]:
    lines = [fields_of(r) for r in caplog.records if r.name == "test.refusals"]
    caplog.clear()
    return lines


def test_refusal_log_writes_one_line_per_address_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    timers = FakeTimers()
    refusals = RefusalLog(logging.getLogger("test.refusals"), call_later=timers.call_later)
    for _ in range(1000):
        refusals.refused("192.0.2.1", "421 4.7.0 Too many")
    refusals.refused("192.0.2.2", "421 4.7.0 Too many")
    assert refusal_lines(caplog) == [
        {"client": "192.0.2.1", "reply": "421 4.7.0 Too many"},
        {"client": "192.0.2.2", "reply": "421 4.7.0 Too many"},
    ]
    # The flood from .1 goes on, 8 a second, for three minutes: a line a minute, with the
    # count of that minute (the 999 of the start, and 479 more, in the first).
    for suppressed in (999 + 479, 480, 480):
        for _ in range(480):
            timers.advance(0.125)
            refusals.refused("192.0.2.1", "421 4.7.0 Too many")
        assert refusal_lines(caplog) == [
            {
                "client": "192.0.2.1",
                "reply": "421 4.7.0 Too many",
                "suppressed": suppressed,
                "interval": 60,
            }
        ]
    timers.advance(60.0)  # the last refusal, counted when its minute ends
    assert [line["suppressed"] for line in refusal_lines(caplog)] == [1]
    timers.advance(60.0)  # a quiet minute: nothing, and the address is forgotten
    assert refusal_lines(caplog) == []
    refusals.refused("192.0.2.1", "421 4.7.0 Too many")
    assert refusal_lines(caplog) == [{"client": "192.0.2.1", "reply": "421 4.7.0 Too many"}]


def test_refusal_log_counts_a_bounded_number_of_addresses(
    caplog: pytest.LogCaptureFixture,
) -> None:
    timers = FakeTimers()
    refusals = RefusalLog(
        logging.getLogger("test.refusals"), max_addresses=10, call_later=timers.call_later
    )
    for n in range(1000):
        refusals.refused(f"2001:db8::{n:x}", "421 4.7.0 Too many")
    lines = refusal_lines(caplog)
    assert len(lines) == 11  # ten addresses, then the first of the others
    assert lines[-1]["client"] == "other"
    refusals.flush()
    assert refusal_lines(caplog) == [
        {"client": "other", "reply": "421 4.7.0 Too many", "suppressed": 989, "interval": 60}
    ]
    assert all(handle.cancelled for _, _, handle in timers.due)


# -- the setting ---------------------------------------------------------------------------------


def test_log_format_from_each_source(tmp_path: Path) -> None:
    assert Settings().log_format == "text"
    config = tmp_path / "mailgate.toml"
    config.write_text('log_format = "json"\n')
    for argv, environ, config_file in (
        ({"log_format": "json"}, {}, None),
        ({}, {"MAILGATE_LOG_FORMAT": "JSON"}, None),
        ({}, {}, config),
    ):
        loaded = load_settings(argv_values=argv, environ=environ, config_file=config_file)
        assert loaded.log_format == "json"
    with pytest.raises(ConfigError) as caught:
        load_settings(argv_values={}, environ={"MAILGATE_LOG_FORMAT": "xml"}, config_file=None)
    assert str(caught.value) == "MAILGATE_LOG_FORMAT: 'xml' is not one of text, json"


def test_a_bad_log_format_is_one_line_and_status_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in os.environ if n.startswith("MAILGATE_")]:
        monkeypatch.delenv(name)
    assert main(["serve", "--log-format", "xml"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "mailgate: error: --log-format: 'xml' is not one of text, json\n"


# -- mailgate serve --log-format json, as a user runs it -----------------------------------------

MAILGATE = Path(sys.executable).parent / "mailgate"
LISTENING = re.compile(r"mailgate \S+ listening: smtp 127\.0\.0\.1:(\d+), .*\n")


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., tuple[int, str, Callable[[], str]]]]:
    """Start ``mailgate serve`` with more flags; give its SMTP port, its web URL and a stop
    function that sends SIGTERM and returns everything it wrote to stderr."""
    started: list[subprocess.Popen[str]] = []

    def start(*flags: str) -> tuple[int, str, Callable[[], str]]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAILGATE_")}
        if env.get("PYTHONPATH"):  # make test-compiled: the build under test, from anywhere
            env["PYTHONPATH"] = os.pathsep.join(
                str(Path(p).resolve()) for p in env["PYTHONPATH"].split(os.pathsep) if p
            )
        argv = [str(MAILGATE), "serve", "--smtp", "127.0.0.1:0", "--http", "127.0.0.1:0"]
        argv += ["--data", str(tmp_path / "data"), "--hostname", "mx.test", *flags]
        process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        started.append(process)
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], TIMEOUT)
        line = process.stdout.readline() if ready else ""
        match = LISTENING.fullmatch(line)
        if match is None:
            process.kill()
            pytest.fail(f"mailgate serve did not start: {line!r}\n{process.communicate()[1]}")
        http = re.search(r"http (http://127\.0\.0\.1:\d+/)", line)
        assert http is not None

        def stop() -> str:
            process.send_signal(signal.SIGTERM)
            _, err = process.communicate(timeout=TIMEOUT)
            assert process.returncode == 0, err
            return err

        return int(match[1]), http[1], stop

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.communicate()


def json_lines(stderr: str) -> list[dict[str, object]]:
    """Every line of ``stderr``, each a JSON object (json.loads fails on any other line)."""
    entries = [json.loads(line) for line in stderr.splitlines()]
    assert all(isinstance(entry, dict) for entry in entries)
    return entries


def test_serve_writes_json_lines_with_the_message(
    serve: Callable[..., tuple[int, str, Callable[[], str]]],
) -> None:
    port, http, stop = serve("--log-format", "json")
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=TIMEOUT) as client:
        message_id = send(client, "alice@example.org", ["bob@example.org", "carol@example.org"])
    stored = httpx.get(f"{http}api/v1/message/{message_id}", timeout=TIMEOUT).json()
    entries = json_lines(stop())
    [entry] = [e for e in entries if e.get("id") == message_id]
    assert entry["level"] == "info"
    assert entry["logger"] == "mailgate.smtp"
    assert entry["from"] == "alice@example.org"
    assert entry["to"] == ["bob@example.org", "carol@example.org"]
    assert entry["size"] == stored["Size"]
    assert entry["client"] == "127.0.0.1"
    assert entry["helo"] == "client.test"
    assert entry["proto"] == "ESMTP"
    assert str(entry["message"]).startswith(f"id={message_id} from=<alice@example.org> ")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(entry["time"]))


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="--workers needs SO_REUSEPORT")
def test_serve_workers_log_json_lines_too(
    serve: Callable[..., tuple[int, str, Callable[[], str]]],
) -> None:
    port, _, stop = serve("--log-format", "json", "--workers", "2", "--log-level", "debug")
    sent = []
    # A connection each: the kernel spreads them between the two processes, so some
    # reach the worker (all 24 reaching one process would be a 1 in 8 million chance).
    for n in range(24):
        with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test") as client:
            sent.append(send(client, "alice@example.org", [f"user{n}@example.org"]))
    entries = json_lines(stop())
    logged = {str(e["id"]): e.get("process", "") for e in entries if "id" in e}
    assert sorted(logged) == sorted(sent)
    assert set(logged.values()) == {"", "worker 1"}
    summaries = [e for e in entries if str(e["message"]).startswith("disconnect ")]
    assert len(summaries) == len(sent)
    assert {e["end"] for e in summaries} == {"QUIT"}
