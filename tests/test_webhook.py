"""``--webhook-url``: a real ``mailgate serve`` posting to a real HTTP receiver on loopback.

The receiver (``Receiver``) is a ``loopback.HttpSite`` in threads of the test: it
records each request with the time it came, and answers as the test scripts it
(a status, headers, or no answer until released).  Mail goes in with smtplib.
Times are only ever lower bounds (the limit spaces posts at least so far
apart) or bounds on waiting; the posts themselves are counted and ordered.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shlex
import smtplib
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from loopback import HttpSite
from mailgate import __version__
from mailgate.config import Settings
from mailgate.runtime._webhook import (
    MAX_PENDING_POSTS,
    MAX_RETRY_AFTER_SECONDS,
    REQUEST_TIMEOUT_SECONDS,
    RETRY_DELAYS_SECONDS,
    SHUTDOWN_GRACE_SECONDS,
    WebhookPoster,
    WebhookSettings,
    retry_after_seconds,
)
from postgresql_helpers import fresh_database
from process_helpers import (
    README,
    TIMEOUT,
    Launcher,
    Serving,
    free_port,
    inbox,
    mailgate,
    readme_block,
    serving_pid,
)
from server_helpers import WORKER
from test_readme import ANY_ID, commands, shell

QUEUED = re.compile(rb"queued as ([0-9A-Z]{26})")
FAILED = re.compile(r"webhook: post of message (?P<id>[0-9A-Z]{26}) to (?P<to>\S+) failed")


@dataclass
class Request:
    """One request the receiver got."""

    at: float
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, object]:
        data: dict[str, object] = json.loads(self.body)
        return data


Answer = Callable[[int], tuple[int, dict[str, str]]]
"""Given a request's number (0 for the first), the status and headers to answer with."""


@dataclass
class Receiver:
    """An HTTP receiver on 127.0.0.1 in a thread; ``hold`` keeps answers back until released."""

    answer: Answer = lambda _: (200, {})
    requests: list[Request] = field(default_factory=list)
    answered: int = 0
    hold: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def __post_init__(self) -> None:
        self.site = HttpSite(self._respond)
        self.url = self.site.url

    def _respond(self, handler: BaseHTTPRequestHandler) -> None:
        body = handler.rfile.read(int(handler.headers.get("Content-Length", "0")))
        headers = {name.lower(): value for name, value in handler.headers.items()}
        with self._changed:
            number = len(self.requests)
            self.requests.append(Request(time.monotonic(), handler.path, headers, body))
            self._changed.notify_all()
        if self.hold.is_set():
            self.released.wait(TIMEOUT)
        status, extra = self.answer(number)
        handler.send_response(status)
        for name, value in extra.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", "2")
        handler.end_headers()
        handler.wfile.write(b"ok")
        with self._changed:
            self.answered += 1

    def wait_for(self, count: int, timeout: float = TIMEOUT) -> list[Request]:
        """The first ``count`` requests, once they came (a test failure if they do not)."""
        with self._changed:
            came = self._changed.wait_for(lambda: len(self.requests) >= count, timeout)
            assert came, f"{len(self.requests)} requests came, not {count}"
            return list(self.requests)

    def close(self) -> None:
        self.released.set()
        self.site.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    started = Receiver()
    try:
        yield started
    finally:
        started.close()


def send(
    port: int, count: int = 1, *, subject: str = "Hello", separately: bool = False
) -> list[str]:
    """Send ``count`` messages over SMTP (one connection, or one each); their queued ids."""
    ids: list[str] = []
    client: smtplib.SMTP | None = None
    try:
        for number in range(count):
            if client is None:
                client = smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT)
            ids.append(send_one(client, f"{subject} {number}"))
            if separately:
                client.quit()
                client = None
    finally:
        if client is not None:
            client.quit()
    return ids


def send_one(client: smtplib.SMTP, subject: str, sender: str = "alice@example.org") -> str:
    """One message over an open connection; its queued id (the 250 is checked)."""
    client.ehlo_or_helo_if_needed()
    assert client.mail(sender)[0] == 250
    assert client.rcpt("bob@example.org")[0] == 250
    message = f"From: {sender}\r\nTo: bob@example.org\r\nSubject: {subject}\r\n\r\nHi Bob\r\n"
    code, reply = client.data(message.encode())
    assert code == 250, reply
    found = QUEUED.search(reply)
    assert found is not None, reply
    return found[1].decode()


def posted_ids(requests: list[Request]) -> list[str]:
    return [str(request.json()["ID"]) for request in requests]


def failures(served: Serving) -> list[re.Match[str]]:
    return [m for line in served.stderr().splitlines() if (m := FAILED.search(line))]


def wait_for_failures(served: Serving, count: int) -> list[re.Match[str]]:
    deadline = time.monotonic() + TIMEOUT
    while len(found := failures(served)) < count:
        assert time.monotonic() < deadline, f"{len(found)} failures logged:\n{served.stderr()}"
        time.sleep(0.05)
    return found


def serve(launcher: Launcher, url: str, *argv: str) -> Serving:
    return launcher.serve(
        "--smtp", "127.0.0.1:0", "--http", "127.0.0.1:0", "--hostname", "mx.test",
        "--webhook-url", url, *argv,
    )  # fmt: skip


# -- what is posted -------------------------------------------------------------------------------


def test_each_new_message_is_posted_as_the_api_lists_it(
    launcher: Launcher, receiver: Receiver
) -> None:
    served = serve(
        launcher, f"{receiver.url}/new-mail?token=s3cret", "--tls-self-signed", "--auth-accept-any"
    )
    with smtplib.SMTP("127.0.0.1", served.port, timeout=TIMEOUT) as client:
        first = send_one(client, "Lunch?")
        client.starttls(context=ssl._create_unverified_context())
        client.login("carol", "anything")
        second = send_one(client, "Dinner?", sender="carol@example.org")
    one, two = receiver.wait_for(2)
    by_id = {message["ID"]: message for message in inbox(served)}
    for request, message_id, username in ((one, first, ""), (two, second, "carol")):
        assert request.path == "/new-mail?token=s3cret"
        assert request.headers["content-type"] == "application/json"
        assert request.headers["user-agent"] == f"mailgate/{__version__}"
        body = request.json()
        assert body["ID"] == message_id
        # The fields and values of the API's summary; Username is the AUTH user, as Mailpit's.
        assert body == {**by_id[message_id], "Username": username}
    assert one.json()["Subject"] == "Lunch?"
    assert one.json()["From"] == {"Name": "", "Address": "alice@example.org"}
    assert one.json()["To"] == [{"Name": "", "Address": "bob@example.org"}]
    log = served.stop_cleanly()
    assert "s3cret" not in log  # the URL's query is never logged


def test_posts_are_spread_by_the_limit_in_order(launcher: Launcher, receiver: Receiver) -> None:
    served = serve(launcher, receiver.url, "--webhook-limit", "5")
    sent = send(served.port, 20)
    requests = receiver.wait_for(20)
    assert posted_ids(requests) == sent  # one each, in the order they were stored
    times = [request.at for request in requests]
    # 5 a second, evenly spaced: 19 gaps of at least 0.2 s between the requests' starts.
    assert times[-1] - times[0] >= 3.0, times
    assert max(sum(1 for t in times if start <= t < start + 1) for start in times) <= 7
    served.stop_cleanly()
    assert len(receiver.requests) == 20


def test_no_limit_posts_every_message(launcher: Launcher, receiver: Receiver) -> None:
    served = serve(launcher, receiver.url, "--webhook-limit", "0")
    sent = send(served.port, 20)
    assert posted_ids(receiver.wait_for(20)) == sent
    served.stop_cleanly()


# -- retries --------------------------------------------------------------------------------------


def test_a_503_and_a_429_are_tried_again(launcher: Launcher, receiver: Receiver) -> None:
    answers = {0: (503, {}), 1: (429, {"Retry-After": "2"})}
    receiver.answer = lambda number: answers.get(number, (200, {}))
    served = serve(launcher, receiver.url)
    [message_id] = send(served.port)
    first, second, third = receiver.wait_for(3)
    assert posted_ids([first, second, third]) == [message_id] * 3
    assert third.at - second.at >= 1.9  # the receiver's Retry-After, not the 1 s backoff
    [sentinel] = send(served.port)
    assert posted_ids(receiver.wait_for(4))[3:] == [sentinel]  # nothing more of the first
    log = served.stop_cleanly()
    assert not FAILED.search(log), log


def test_a_400_is_not_tried_again(launcher: Launcher, receiver: Receiver) -> None:
    receiver.answer = lambda number: (400, {}) if number == 0 else (200, {})
    served = serve(launcher, receiver.url)
    refused, taken = send(served.port, 2)
    assert posted_ids(receiver.wait_for(2)) == [refused, taken]
    [failure] = wait_for_failures(served, 1)
    log = served.stop_cleanly()
    assert len(receiver.requests) == 2
    assert failure["id"] == refused
    [line] = [line for line in log.splitlines() if FAILED.search(line)]
    assert line.endswith(f"to {receiver.url} failed: 400 Bad Request"), line


def test_an_unreachable_receiver_costs_smtp_nothing(launcher: Launcher) -> None:
    url = f"http://127.0.0.1:{free_port()}/hook"
    served = serve(launcher, url)
    sent = send(served.port, 2)  # each got its 250
    found = wait_for_failures(served, 2)  # each tried 4 times over 3.5 s
    assert [m["id"] for m in found] == sent
    assert {m["to"] for m in found} == {url.removesuffix("/hook")}
    log = served.stop_cleanly()
    lines = [line for line in log.splitlines() if "webhook" in line]
    assert len(lines) == 2, lines  # one line a failure, nothing else
    assert all(
        line.endswith(
            " failed after 4 attempts: All connection attempts failed (connection refused)"
        )
        for line in lines
    ), lines


def test_a_receiver_that_does_not_answer_holds_up_no_message(
    launcher: Launcher, receiver: Receiver
) -> None:
    receiver.hold.set()
    served = serve(launcher, receiver.url)
    [first] = send(served.port)
    receiver.wait_for(1)  # posted, and the receiver keeps its answer back
    rest = send(served.port, 5)  # every one gets its 250 meanwhile
    assert receiver.answered == 0
    receiver.released.set()
    requests = receiver.wait_for(6)
    assert set(posted_ids(requests)) >= {first, *rest}
    served.stop_cleanly()


# -- one post per message, however many processes and nodes ---------------------------------------


def test_with_workers_each_message_is_posted_once(launcher: Launcher, receiver: Receiver) -> None:
    served = serve(launcher, receiver.url, "--workers", "2", "--webhook-limit", "0")
    processes = [served.process.pid, *served.children(WORKER)]
    assert len(processes) == 2
    serving: set[int] = set()
    sent: list[str] = []
    while len(serving) < 2 or len(sent) < 10:  # connections until both processes took mail
        assert len(sent) < 60, serving
        with smtplib.SMTP("127.0.0.1", served.port, timeout=TIMEOUT) as client:
            serving.add(serving_pid(client, processes))
            sent.append(send_one(client, f"message {len(sent)}"))
    receiver.wait_for(len(sent))
    [sentinel] = send(served.port)
    posted = posted_ids(receiver.wait_for(len(sent) + 1))
    assert posted[-1] == sentinel
    assert sorted(posted[:-1]) == sorted(sent)  # each once
    served.stop_cleanly()
    assert len(receiver.requests) == len(sent) + 1


def test_nodes_sharing_postgresql_post_only_what_each_took(
    launcher: Launcher, receiver: Receiver, tmp_path: Path
) -> None:
    with fresh_database() as store:
        nodes = [
            serve(launcher, receiver.url, "--store", store, "--data", str(tmp_path / name))
            for name in ("node1", "node2")
        ]
        sent = [message_id for node in nodes for message_id in send(node.port, 3)]
        receiver.wait_for(len(sent))
        # A sentinel through each node: what either would post twice would come before it.
        sentinels = [send(node.port)[0] for node in nodes]
        posted = posted_ids(receiver.wait_for(len(sent) + 2))
        assert sorted(posted) == sorted(sent + sentinels)  # each once, by one node
        for node in nodes:
            node.stop_cleanly()
    assert len(receiver.requests) == len(sent) + 2


# -- settings -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "env", "error"),
    [
        (
            ["--webhook-url", "ftp://example.org/hook"],
            {},
            "--webhook-url: 'ftp://example.org/hook' is not an http or https URL"
            " (e.g. http://127.0.0.1:8000/new-mail)",
        ),
        (
            [],
            {"MAILGATE_WEBHOOK_URL": "http:///new-mail"},
            "MAILGATE_WEBHOOK_URL: 'http:///new-mail' names no host"
            " (e.g. http://127.0.0.1:8000/new-mail)",
        ),
        (["--webhook-limit", "-1"], {}, "--webhook-limit: '-1' is not a whole number"),
    ],
)
def test_a_bad_setting_is_one_line_naming_it(
    tmp_path: Path, argv: list[str], env: dict[str, str], error: str
) -> None:
    done = mailgate("serve", *argv, cwd=tmp_path, env=env)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", f"mailgate: error: {error}\n")


def test_the_toml_file_sets_it(tmp_path: Path) -> None:
    config = tmp_path / "mailgate.toml"
    config.write_text('webhook_url = "http://example.org:8000/hook"\nwebhook_limit = "x"\n')
    done = mailgate("serve", "--config", str(config), cwd=tmp_path)
    assert done.stderr == (
        f"mailgate: error: webhook_limit in {config}: 'x' is not a whole number\n"
    )


# -- the poster on its own: the bounded queue, shutdown, Retry-After -------------------------------


@pytest.mark.asyncio
async def test_past_the_bound_the_oldest_posts_are_dropped(
    caplog: pytest.LogCaptureFixture, receiver: Receiver
) -> None:
    receiver.hold.set()
    poster = WebhookPoster(WebhookSettings(url=receiver.url, limit=0, max_pending=3))
    with caplog.at_level(logging.WARNING, logger="mailgate"):
        poster.start()
        poster.offer("m0", b'{"ID": "m0"}')
        await asyncio.to_thread(receiver.wait_for, 1)  # sending m0, held
        for number in range(1, 10):
            poster.offer(f"m{number}", f'{{"ID": "m{number}"}}'.encode())
        receiver.released.set()
        requests = await asyncio.to_thread(receiver.wait_for, 4)
        await poster.aclose()
    assert posted_ids(requests) == ["m0", "m7", "m8", "m9"]  # the newest three waited
    assert (poster.posted, poster.dropped, poster.failed, poster.given_up) == (4, 6, 0, 0)
    drops = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    # The first drop at once; the others in one line, at the end of the minute or the end.
    assert [int(line.split()[2]) for line in drops] == [1, 5], drops


@pytest.mark.asyncio
async def test_shutdown_waits_briefly_then_gives_up(
    caplog: pytest.LogCaptureFixture, receiver: Receiver
) -> None:
    receiver.hold.set()
    poster = WebhookPoster(WebhookSettings(url=receiver.url, limit=0, shutdown_grace=0.2))
    with caplog.at_level(logging.WARNING, logger="mailgate"):
        poster.start()
        for number in range(3):
            poster.offer(f"m{number}", b"{}")
        await asyncio.to_thread(receiver.wait_for, 1)
        await asyncio.wait_for(poster.aclose(), TIMEOUT)
    assert (poster.posted, poster.given_up) == (0, 3)
    assert [r.getMessage() for r in caplog.records] == [
        f"webhook: gave up 3 posts to {receiver.url} at shutdown, after 0.2 s"
    ]


def test_retry_after_is_seconds_or_a_date() -> None:
    now = datetime(2026, 12, 6, 7, 0, tzinfo=UTC)
    assert retry_after_seconds("3", now) == 3.0
    assert retry_after_seconds(format_datetime(now + timedelta(seconds=90), usegmt=True), now) == 90
    assert retry_after_seconds(format_datetime(now - timedelta(seconds=5), usegmt=True), now) == 0
    assert retry_after_seconds("soon", now) is None
    assert retry_after_seconds(None, now) is None


# -- the README's example -------------------------------------------------------------------------


def test_the_readme_example(launcher: Launcher, receiver: Receiver, tmp_path: Path) -> None:
    """The commands as shown, the receiver's port in place of 8000 and free ports for mailgate;
    the body posted is the one shown but for the id, the time and what the host names."""
    (serve_shown, _), (send_shown, sent_shown) = commands(
        readme_block("console", "$ mailgate serve --webhook-url")
    )
    argv = shlex.split(serve_shown.removesuffix("&"))
    assert argv[:2] == ["mailgate", "serve"]
    given = [a.replace("http://127.0.0.1:8000", receiver.url) for a in argv[2:]]
    served = launcher.serve(*given, "--smtp", "127.0.0.1:0", "--http", "127.0.0.1:0")
    sent = shell(send_shown.replace("127.0.0.1:1025", f"127.0.0.1:{served.port}"), cwd=tmp_path)
    assert sent.returncode == 0, sent.stderr
    assert ANY_ID.sub("ID", sent.stdout) == ANY_ID.sub("ID", sent_shown)
    [request] = receiver.wait_for(1)
    assert request.path == "/new-mail"
    shown = json.loads(readme_block("json", "{").text)
    posted = request.json()
    assert posted["ID"] in sent.stdout
    varying = ("ID", "MessageID", "Created", "Size")
    assert {k: v for k, v in posted.items() if k not in varying} == {
        k: v for k, v in shown.items() if k not in varying
    }
    assert list(posted) == list(shown)  # the fields, in Mailpit's order
    assert request.headers["user-agent"] == f"mailgate/{__version__}"
    assert f"`User-Agent: mailgate/{__version__}`" in README.read_text()
    served.stop_cleanly()


def test_the_readme_states_the_figures() -> None:
    text = " ".join(README.read_text().split())
    delays = ", ".join(f"{d:g}" for d in RETRY_DELAYS_SECONDS[:-1])
    assert f"tried again after {delays} and {RETRY_DELAYS_SECONDS[-1]:g} seconds" in text
    assert f"no answer in {REQUEST_TIMEOUT_SECONDS:g} seconds" in text
    assert f"`Retry-After`, up to {MAX_RETRY_AFTER_SECONDS:g} seconds" in text
    assert f"up to {MAX_PENDING_POSTS:,} wait in memory" in text
    assert f"at shutdown those left get {SHUTDOWN_GRACE_SECONDS:g} seconds" in text
    assert f"| `--webhook-limit N` | `{Settings().webhook_limit}` |" in text
