"""``--webhook-url``: a real ``mailgate serve`` posting to a real HTTP receiver on loopback.

The receiver (``Receiver``) is an ``http.server`` in a thread of the test: it
records each request with the time it came, and answers as the test scripts it
(a status, headers, or no answer until released).  Mail goes in with smtplib.
Times are only ever lower bounds (the limit spaces posts at least so far
apart) or bounds on waiting; the posts themselves are counted and ordered.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from mailgate.runtime._webhook import WebhookPoster, WebhookSettings, retry_after_seconds
from process_helpers import TIMEOUT

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
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {name.lower(): value for name, value in self.headers.items()}
                with receiver._changed:
                    number = len(receiver.requests)
                    receiver.requests.append(Request(time.monotonic(), self.path, headers, body))
                    receiver._changed.notify_all()
                if receiver.hold.is_set():
                    receiver.released.wait(TIMEOUT)
                status, extra = receiver.answer(number)
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")
                with receiver._changed:
                    receiver.answered += 1

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def wait_for(self, count: int, timeout: float = TIMEOUT) -> list[Request]:
        """The first ``count`` requests, once they came (a test failure if they do not)."""
        with self._changed:
            came = self._changed.wait_for(lambda: len(self.requests) >= count, timeout)
            assert came, f"{len(self.requests)} requests came, not {count}"
            return list(self.requests)

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    started = Receiver()
    try:
        yield started
    finally:
        started.close()


def posted_ids(requests: list[Request]) -> list[str]:
    return [str(request.json()["ID"]) for request in requests]


# -- the poster on its own: the bounded queue, shutdown, Retry-After -------------------------------


@pytest.mark.asyncio
async def test_past_the_bound_the_oldest_posts_are_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    receiver = Receiver()
    receiver.hold.set()
    poster = WebhookPoster(WebhookSettings(url=receiver.url, limit=0, max_pending=3))
    try:
        with caplog.at_level(logging.WARNING, logger="mailgate"):
            poster.start()
            poster.offer("m0", b'{"ID": "m0"}')
            await asyncio.to_thread(receiver.wait_for, 1)  # sending m0, held
            for number in range(1, 10):
                poster.offer(f"m{number}", f'{{"ID": "m{number}"}}'.encode())
            receiver.released.set()
            requests = await asyncio.to_thread(receiver.wait_for, 4)
            await poster.aclose()
    finally:
        receiver.close()
    assert posted_ids(requests) == ["m0", "m7", "m8", "m9"]  # the newest three waited
    assert (poster.posted, poster.dropped, poster.failed, poster.given_up) == (4, 6, 0, 0)
    drops = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    # The first drop at once; the others in one line, at the end of the minute or the end.
    assert [int(line.split()[2]) for line in drops] == [1, 5], drops


@pytest.mark.asyncio
async def test_shutdown_waits_briefly_then_gives_up(caplog: pytest.LogCaptureFixture) -> None:
    receiver = Receiver()
    receiver.hold.set()
    poster = WebhookPoster(WebhookSettings(url=receiver.url, limit=0, shutdown_grace=0.2))
    try:
        with caplog.at_level(logging.WARNING, logger="mailgate"):
            poster.start()
            for number in range(3):
                poster.offer(f"m{number}", b"{}")
            await asyncio.to_thread(receiver.wait_for, 1)
            await asyncio.wait_for(poster.aclose(), TIMEOUT)
    finally:
        receiver.close()
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
