"""The webhook: one POST for each new message a node accepts (Mailpit's ``--webhook-url``).

What is posted.  The message's summary as the API's message list shows it
(``web.summary_json``, Mailpit's ``MessageSummary``; ``Username`` is the AUTH
user), as compact JSON, with ``Content-Type: application/json`` and
``User-Agent: mailgate/VERSION``.

Where it runs.  In the serving process only, as the queue service does, never in
an SMTP worker.  It follows the store's live events (``MessageStore.subscribe``),
which name every message stored by any process of the node and, on a shared
PostgreSQL store, by every other node too.  So that each message is posted once,
a node posts only the mail it accepted itself: its acceptors write the node's
token on each envelope (``Envelope.node``, drawn as ``mailgate serve`` starts and
handed to its SMTP workers), and the service, which reads each new message for
its summary anyway, passes over another node's.  A lease, as the queue takes, was
the other way: a claim per message is a second write on the path of every
message, and one node holding a lease on all posts loses or repeats some as the
lease passes.  The token costs no write, and a read per message on each node.
The price: a node posts only the mail it took, so every node that should post
needs ``--webhook-url``; and as in Mailpit posts are not kept on disk, so those
still waiting when a node stops or dies are lost.

How.  Following the events never waits for the receiver: a message's post goes
on a queue of at most ``MAX_PENDING_POSTS``; past that the oldest is dropped,
and drops are counted and logged at most once a minute.  One task posts them in
order, starting at most ``limit`` requests a second, evenly spaced (as Mailpit's
limiter; a retry is a request too).  A connection error, a time-out, a ``5xx``
or a ``429`` is tried again after ``RETRY_DELAYS_SECONDS``, or after the
receiver's ``Retry-After`` up to ``MAX_RETRY_AFTER_SECONDS``; any other status
is final.  A post that fails for good is one log line, without a traceback,
naming the message, the receiver (scheme, host and port: a URL's path or query
may hold a secret) and why.  SMTP and the store never wait for any of it.  At
shutdown the posts still waiting get ``SHUTDOWN_GRACE_SECONDS``; those left are
given up, with a count in the log.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

import httpx

from mailgate import __version__
from mailgate.model import MessageId, StoreEvent, StoreEventKind, parse_date
from mailgate.ports import MessageStore, StoreError
from mailgate.web import summary_json

__all__ = ["WebhookPoster", "WebhookService", "WebhookSettings", "retry_after_seconds"]

log = logging.getLogger("mailgate")

RETRY_DELAYS_SECONDS = (0.5, 1.0, 2.0)
"""Waits before the second, third and fourth attempt of a post that failed for a while."""
MAX_RETRY_AFTER_SECONDS = 10.0
"""The longest ``Retry-After`` (RFC 9110 10.2.3) that is waited for; a longer one waits this."""
REQUEST_TIMEOUT_SECONDS = 5.0
"""How long one request may take to connect, send or hear back (Mailpit's client's too)."""
MAX_PENDING_POSTS = 1000
"""Posts that may wait for the receiver; past this the oldest is dropped."""
DROP_REPORT_SECONDS = 60.0
"""Drops are logged at most this often, with how many there were."""
SHUTDOWN_GRACE_SECONDS = 2.0
"""How long shutdown waits for the posts still waiting."""
MAX_RESPONSE_OCTETS = 64 * 1024
"""What is read of a response's body (to keep the connection) before it is closed."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookSettings:
    """Where and how fast to post; the rest have defaults that tests may shorten."""

    url: str
    limit: int
    """Requests started a second at most; 0: no limit."""
    max_pending: int = MAX_PENDING_POSTS
    retry_delays: tuple[float, ...] = RETRY_DELAYS_SECONDS
    max_retry_after: float = MAX_RETRY_AFTER_SECONDS
    timeout: float = REQUEST_TIMEOUT_SECONDS
    shutdown_grace: float = SHUTDOWN_GRACE_SECONDS


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """A ``Retry-After`` field's wait in seconds (delay-seconds or an HTTP-date, RFC 9110
    10.2.3), or ``None`` when there is none or it cannot be read."""
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(text)
    when = parse_date(text)
    return None if when is None else max(0.0, (when - now).total_seconds())


def _receiver(url: str) -> str:
    """``scheme://host:port`` of ``url``: what a log line may show of it."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def _one_line(error: BaseException) -> str:
    """What went wrong, in one line: the error, and the system's reason under it if any
    (httpx says "All connection attempts failed"; the cause says the connection was refused)."""
    text = " ".join(str(error).split()) or type(error).__name__
    cause = error.__cause__ or error.__context__
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno:
            # asyncio words a refused connection "Connect call failed"; the errno says why.
            reason = os.strerror(cause.errno) if cause.errno > 0 else str(cause.strerror)
            return text if reason.lower() in text.lower() else f"{text} ({reason.lower()})"
        cause = cause.__cause__ or cause.__context__
    return text


@dataclass(frozen=True, slots=True)
class _Post:
    message_id: str
    body: bytes


@dataclass(frozen=True, slots=True)
class _Failure:
    reason: str
    retry: bool
    retry_after: float | None = None


class _Pace:
    """Lets at most ``per_second`` requests start a second, evenly spaced; 0: any number."""

    def __init__(self, per_second: int) -> None:
        self._interval = 1.0 / per_second if per_second > 0 else 0.0
        self._next = 0.0

    async def wait(self) -> None:
        if not self._interval:
            return
        now = asyncio.get_running_loop().time()
        start = max(now, self._next)
        self._next = start + self._interval
        if start > now:
            await asyncio.sleep(start - now)


class WebhookPoster:
    """Posts bodies to one URL in the order offered: paced, retried, a bounded queue.

    ``start`` on the event loop, ``offer`` (never waits), ``aclose``.  The counts
    (``posted``, ``failed``, ``dropped``, ``given_up``) are since it started.
    """

    def __init__(self, settings: WebhookSettings) -> None:
        self.settings = settings
        self.receiver = _receiver(settings.url)
        self.posted = self.failed = self.dropped = self.given_up = 0
        self._pending: collections.deque[_Post] = collections.deque()
        self._sending: _Post | None = None
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._pace = _Pace(settings.limit)
        self._client: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._unreported_drops = 0
        self._drop_report: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Start posting (once), on the running loop."""
        if self._task is not None:
            return
        # httpx logs each request at info, URL and all; a webhook's may hold a secret, and
        # what matters (a failure) this module says itself.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(self.settings.timeout),
            headers={"User-Agent": f"mailgate/{__version__}", "Content-Type": "application/json"},
            follow_redirects=False,
        )
        self._task = asyncio.get_running_loop().create_task(self._run(), name="mailgate-webhook")

    def offer(self, message_id: str, body: bytes) -> None:
        """Queue a post; the oldest waiting is dropped when ``max_pending`` wait already."""
        if len(self._pending) >= self.settings.max_pending:
            self._pending.popleft()
            self._note_drop()
        self._pending.append(_Post(message_id, body))
        self._idle.clear()
        self._wakeup.set()

    async def aclose(self) -> None:
        """Give the posts waiting ``shutdown_grace`` seconds, give up the rest, let go."""
        task, self._task = self._task, None
        if task is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.shutdown_grace):
                    await self._idle.wait()
            left = len(self._pending) + (self._sending is not None)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            self._pending.clear()
            if left:
                self.given_up += left
                log.warning(
                    "webhook: gave up %d posts to %s at shutdown, after %g s",
                    left,
                    self.receiver,
                    self.settings.shutdown_grace,
                )
        if self._drop_report is not None:
            self._drop_report.cancel()
            self._drop_report = None
        if self._unreported_drops:
            self._report_drops()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _note_drop(self) -> None:
        self.dropped += 1
        self._unreported_drops += 1
        if self._drop_report is None:  # the first in a quiet minute is told at once
            self._report_drops()
            self._drop_report = asyncio.get_running_loop().call_later(
                DROP_REPORT_SECONDS, self._end_drop_window
            )

    def _end_drop_window(self) -> None:
        self._drop_report = None
        if self._unreported_drops:
            self._report_drops()
            self._drop_report = asyncio.get_running_loop().call_later(
                DROP_REPORT_SECONDS, self._end_drop_window
            )

    def _report_drops(self) -> None:
        log.warning(
            "webhook: dropped %d posts (the oldest waiting): %d were waiting for %s;"
            " drops are logged at most once a minute",
            self._unreported_drops,
            self.settings.max_pending,
            self.receiver,
        )
        self._unreported_drops = 0

    async def _run(self) -> None:
        while True:
            if not self._pending:
                self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            post = self._sending = self._pending.popleft()
            try:
                await self._post(post)
            except Exception:  # a bug: say so, and post the rest
                log.exception("webhook: posting message %s failed", post.message_id)
            finally:
                self._sending = None

    async def _post(self, post: _Post) -> None:
        delays = self.settings.retry_delays
        attempt = 0
        while True:
            await self._pace.wait()
            failure = await self._attempt(post)
            attempt += 1
            if failure is None:
                self.posted += 1
                return
            if not failure.retry or attempt > len(delays):
                break
            delay = delays[attempt - 1]
            if failure.retry_after is not None:
                delay = min(failure.retry_after, self.settings.max_retry_after)
            log.debug(
                "webhook: post of message %s to %s failed (%s); trying again in %g s",
                post.message_id,
                self.receiver,
                failure.reason,
                delay,
            )
            await asyncio.sleep(delay)
        self.failed += 1
        tries = f" after {attempt} attempts" if attempt > 1 else ""
        log.warning(
            "webhook: post of message %s to %s failed%s: %s",
            post.message_id,
            self.receiver,
            tries,
            failure.reason,
        )

    async def _attempt(self, post: _Post) -> _Failure | None:
        """One request: ``None`` when the receiver took it (``2xx``), else why not."""
        assert self._client is not None, "started"
        try:
            async with self._client.stream("POST", self.settings.url, content=post.body) as reply:
                received = 0
                async for chunk in reply.aiter_raw():
                    received += len(chunk)
                    if received >= MAX_RESPONSE_OCTETS:
                        break
        except httpx.TimeoutException:
            return _Failure(f"no answer within {self.settings.timeout:g} s", retry=True)
        except httpx.TransportError as error:
            return _Failure(_one_line(error), retry=True)
        except httpx.HTTPError as error:
            return _Failure(_one_line(error), retry=False)
        status = reply.status_code
        if 200 <= status < 300:
            return None
        reason = f"{status} {reply.reason_phrase}".strip()
        if status == 429 or status >= 500:
            wait = retry_after_seconds(reply.headers.get("Retry-After"), datetime.now(UTC))
            return _Failure(reason, retry=True, retry_after=wait)
        return _Failure(reason, retry=False)


class WebhookService:
    """Posts each message stored from now on that this node (``node``) accepted."""

    def __init__(self, settings: WebhookSettings, store: MessageStore, *, node: str) -> None:
        self.poster = WebhookPoster(settings)
        self._store = store
        self._node = node
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Follow the store's events from now on (what is stored after this is posted)."""
        if self._task is not None:
            return
        events = self._store.subscribe()
        self.poster.start()
        self._task = asyncio.get_running_loop().create_task(
            self._follow(events), name="mailgate-webhook-events"
        )

    async def aclose(self) -> None:
        """Stop following, then close the poster (which gives what waits a moment)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self.poster.aclose()

    async def _follow(self, events: AsyncIterator[StoreEvent]) -> None:
        try:
            async for event in events:
                if event.kind is StoreEventKind.STORED:
                    for message_id in event.message_ids:
                        await self._offer(message_id)
                elif event.kind is StoreEventKind.OVERFLOW:
                    log.warning(
                        "webhook: fell behind the store's events; messages stored meanwhile"
                        " are not posted"
                    )
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug: nothing more would be posted
            log.exception("webhook: following the store's events failed")
        finally:
            with contextlib.suppress(Exception):
                await getattr(events, "aclose", _nothing)()

    async def _offer(self, message_id: MessageId) -> None:
        try:
            stored = await self._store.get(message_id)
        except StoreError as error:
            log.warning(
                "webhook: cannot read message %s, so it is not posted: %s", message_id, error
            )
            return
        if stored is None or stored.envelope.node != self._node:
            return  # deleted already, or another node's to post
        summary = summary_json(stored.summary, stored.envelope.auth_user or "")
        body = json.dumps(summary, ensure_ascii=False, separators=(",", ":")).encode()
        self.poster.offer(message_id, body)


async def _nothing() -> None:
    return None
