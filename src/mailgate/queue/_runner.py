"""The queue runner: the one owner of delivery attempts in a node.

It claims due recipients from the ``ports.QueueStore`` under a lease,
groups each message's recipients by destination domain (or all of them,
through a smarthost), and gives each group to the ``Courier``, which
resolves the route and holds the SMTP conversation.  Each recipient's reply
becomes its outcome:

- ``2xx``: delivered (a success report when the sender asked, RFC 3461);
- ``5xx``: bounced, with a failure report unless the sender declined one;
- ``4xx``: deferred to the schedule's next attempt, or bounced once the
  queue lifetime is over; a delay notice once, when asked for.

A destination none of whose hosts can be reached (no route now, every host
refused, timed out, or greeted with ``421``) is suspended for the schedule's
first interval: its other messages are deferred without an attempt meanwhile,
so a dead domain backs off without holding delivery slots the rest of the
queue needs (as Postfix marks a destination dead).

A message's content is read whole, or streamed from the store when it is large
(``_content``): a 50 MB message is never whole in the process on its way out.

Reports are accepted as new mail through the accept path (``ports.MailSink``)
before the outcomes are recorded: a crash between the two sends a report
twice, never none.  Likewise a crash between a remote ``250`` and the
record of it delivers that recipient once more when the lease runs out
(at most one duplicate per delivery in flight at the crash); the runner renews its leases while
deliveries run, so a slow one is never claimed a second time.

Time is the injected ``Clock``'s; waiting is the only sleeping, and any
change to the store (new mail, an operator's retry) wakes the runner.

What it recorded is counted, for ``/metrics``: ``attempts`` (recipients a
connection was tried for) and ``outcomes`` (recipients delivered, deferred
and bounced, tried or not), plain integers that only grow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from mailgate import MailgateError
from mailgate.model import (
    DeliveryOutcome,
    DeliveryState,
    MessageId,
    QueuedDelivery,
    StoredMessage,
)
from mailgate.ports import Clock, QueueStore, StoreError
from mailgate.protocol import Notify, Reply, parse_notify
from mailgate.queue._content import MessageContent, StoredContent, load_content
from mailgate.queue._reports import Action, should_report
from mailgate.queue._schedule import RetrySchedule

__all__ = [
    "Attempt",
    "AttemptResult",
    "Courier",
    "OutboundRecipient",
    "QueueRunner",
    "RecipientResult",
    "ReportRequest",
    "Reporter",
    "RunnerSettings",
]

log = logging.getLogger("mailgate.queue")

MIN_LOOK_SECONDS = 0.25
"""The shortest time between two looks for due work that found none."""
OPERATOR_BOUNCE = Reply(550, "5.0.0", "Returned to the sender by the mail system's operator")
EXPIRED_TEXT = "delivery time expired; the last attempt got: "


@dataclass(frozen=True, slots=True)
class OutboundRecipient:
    """A recipient to deliver to, with its DSN parameters as the client gave them (xtext)."""

    address: str
    notify: str | None = None
    orcpt: str | None = None


@dataclass(frozen=True, slots=True)
class Attempt:
    """One message to one destination: what the courier is to deliver."""

    message_id: MessageId
    domain: str
    sender: str
    recipients: tuple[OutboundRecipient, ...]
    content: bytes | StoredContent
    """Bytes, or for a large message its content streamed from the store."""
    mail_params: Mapping[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RecipientResult:
    """One recipient's reply, and the host that gave it (``""`` when none was reached)."""

    recipient: str
    reply: Reply
    relay: str = ""


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What an attempt got for each recipient.

    ``dsn_offered``: the host that took the transaction passes DSNs on.
    ``unreachable``: no host of the destination took a transaction (no
    route now, every host refused, timed out or greeted with a ``4xx``):
    the destination, not the message, is what failed.
    """

    results: tuple[RecipientResult, ...]
    dsn_offered: bool = False
    unreachable: bool = False


class Courier(Protocol):
    """Delivers one attempt: route, connection, SMTP transaction."""

    async def deliver(self, attempt: Attempt) -> AttemptResult:
        """The reply for every recipient of ``attempt``, never raising for the network's
        or the remote server's failures (they are replies: ``451 4.4.1`` and kin)."""
        ...


@dataclass(frozen=True, slots=True)
class ReportRequest:
    """A delivery report to send to a message's sender (RFC 3464).

    ``action`` is ``failed``, ``delayed``, ``delivered`` or ``relayed``, one
    per recipient in ``results``.  ``content`` is the message as stored, or
    with ``whole`` false its first octets (a large message's: its header is
    returned, not the whole).
    """

    message: StoredMessage
    content: bytes
    entries: tuple[tuple[str, RecipientResult, QueuedDelivery], ...]
    at: datetime
    whole: bool = True


class Reporter(Protocol):
    """Builds and sends delivery reports (as new mail, from ``<>``)."""

    async def send(self, request: ReportRequest) -> None:
        """Accept the report for delivery; raises ``MailgateError`` when it cannot."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class RunnerSettings:
    """How the runner works: who it is, its lease, its pace and its limits."""

    owner: str = "mailgate"
    schedule: RetrySchedule = field(default_factory=RetrySchedule)
    lease: timedelta = timedelta(minutes=2)
    claim_limit: int = 100
    """Messages one claim takes at most."""
    poll_interval: float = 1.0
    """Seconds between looks for due work when nothing wakes the runner."""
    smarthost: bool = False
    """All outbound mail goes to one relay host: a message's recipients travel together."""
    destination_concurrency: int = 5
    max_deliveries: int = 20
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)


def _notify(value: str | None) -> Notify | None:
    """A recipient's NOTIFY as stored; ``None`` when it gave none (or one this mailgate
    cannot read: checked on receipt, so only a store written by another version)."""
    try:
        return parse_notify(value) if value is not None else None
    except ValueError:
        return None


def _status_of(reply: Reply) -> str:
    """A reply as one line, ``450 4.2.1 text``, as the queue keeps it."""
    text = reply.text.replace("\n", " ")
    return f"{reply.code} {reply.enhanced} {text}" if reply.enhanced else f"{reply.code} {text}"


class QueueRunner:
    """Claims due recipients and delivers them until ``aclose``."""

    def __init__(
        self,
        store: QueueStore,
        courier: Courier,
        reporter: Reporter,
        settings: RunnerSettings,
        *,
        clock: Clock,
    ) -> None:
        self._store = store
        self._courier = courier
        self._reporter = reporter
        self._settings = settings
        self._clock = clock
        self._wake = asyncio.Event()
        self._jobs: set[asyncio.Task[None]] = set()
        self._destinations: dict[str, asyncio.Semaphore] = {}
        self._backoff: dict[str, tuple[datetime, Reply]] = {}
        """Destinations none of whose hosts could be reached: until when, and why."""
        self._slots = asyncio.Semaphore(settings.max_deliveries)
        self._tasks: list[asyncio.Task[None]] = []
        self.attempts = 0
        """Recipients whose outcome came of an attempt to deliver them, since it started."""
        self.outcomes = dict.fromkeys(
            (DeliveryState.DELIVERED, DeliveryState.DEFERRED, DeliveryState.BOUNCED), 0
        )
        """Outcomes recorded since it started, by state."""

    def wake(self) -> None:
        """Look for due work now (new mail, an operator's retry)."""
        self._wake.set()

    async def start(self) -> None:
        """Take back this owner's leases from before a restart, then run in the background."""
        taken = await self._store.release_claims(self._settings.owner)
        if taken:
            log.info("queue: took back %d claims from before a restart", taken)
        self._tasks = [
            asyncio.create_task(self._run(), name="mailgate-queue-runner"),
            asyncio.create_task(self._follow(), name="mailgate-queue-follow"),
            asyncio.create_task(self._renew(), name="mailgate-queue-leases"),
        ]

    async def aclose(self, grace: float = 5.0) -> None:
        """Stop claiming; give deliveries in flight ``grace`` seconds to finish and record
        their outcomes, then cancel the rest.

        A cancelled delivery keeps its lease: this runner, started again, takes
        it back at once (``start``) and tries again, so nothing is lost; a
        message the remote server had already taken may go twice.
        """
        for task in self._tasks:
            task.cancel()
        # Not each awaited under suppress(CancelledError): that would swallow the
        # cancellation of whoever is closing the runner too.
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._jobs:
            _, late = await asyncio.wait(self._jobs, timeout=grace)
            for task in late:
                task.cancel()
            if late:
                log.warning("queue: %d deliveries cut short by shutdown", len(late))
                await asyncio.gather(*late, return_exceptions=True)

    async def _follow(self) -> None:
        async for _ in self._store.subscribe():
            self._wake.set()

    async def _renew(self) -> None:
        """Keep the leases of deliveries in flight: a quarter of the lease at a time."""
        interval = self._settings.lease.total_seconds() / 4
        while True:
            await asyncio.sleep(interval)
            if self._jobs:
                try:
                    await self._store.renew_claims(
                        self._settings.owner, self._clock.now() + self._settings.lease
                    )
                except MailgateError as error:
                    log.warning("queue: could not renew leases: %s", error)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            looked = loop.time()
            try:
                claimed = await self.run_once()
            except MailgateError as error:
                log.warning("queue: could not claim due deliveries: %s", error)
                claimed = 0
            if claimed:
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.poll_interval):
                    await self._wake.wait()
            # Under load every message stored wakes the runner, and most are not for
            # elsewhere: look at most every MIN_LOOK_SECONDS, or the looks cost the SMTP
            # sessions of this process a sixth more CPU a message.
            pause = MIN_LOOK_SECONDS - (loop.time() - looked)
            if pause > 0:
                await asyncio.sleep(pause)

    async def run_once(self) -> int:
        """Claim what is due now and start delivering it; return how many recipients."""
        settings = self._settings
        if len(self._jobs) >= settings.max_deliveries:
            return 0
        claimed = await self._store.claim(
            settings.owner, now=self._clock.now(), lease=settings.lease, limit=settings.claim_limit
        )
        by_message: dict[MessageId, list[QueuedDelivery]] = {}
        for row in claimed:
            by_message.setdefault(row.message_id, []).append(row)
        for message_id, rows in by_message.items():
            task = asyncio.create_task(self._message(message_id, rows))
            self._jobs.add(task)
            task.add_done_callback(self._jobs.discard)
        return len(claimed)

    async def drain(self) -> None:
        """Wait for every delivery started so far (tests)."""
        while self._jobs:
            await asyncio.gather(*list(self._jobs), return_exceptions=True)

    async def _message(self, message_id: MessageId, rows: list[QueuedDelivery]) -> None:
        try:
            await self._deliver_message(message_id, rows)
        except Exception:
            # The leases run out and the rows are tried again; nothing is lost.
            log.exception("queue: delivering %s failed", message_id)

    async def _deliver_message(self, message_id: MessageId, rows: list[QueuedDelivery]) -> None:
        stored = await self._store.get(message_id)
        if stored is None:
            return  # deleted meanwhile: its rows went with it
        content = await load_content(self._store, message_id, stored.summary.size)
        if content is None:
            return
        bounced = [r for r in rows if r.bounce_requested]
        if bounced:
            results = [RecipientResult(r.recipient, OPERATOR_BOUNCE) for r in bounced]
            await self._settle(stored, content, bounced, results, attempted=False, dsn=False)
        groups: dict[str, list[QueuedDelivery]] = {}
        for row in rows:
            if row.bounce_requested:
                continue
            domain = "" if self._settings.smarthost else row.recipient.rpartition("@")[2].lower()
            groups.setdefault(domain, []).append(row)
        await asyncio.gather(
            *(self._attempt(stored, content, domain, group) for domain, group in groups.items())
        )

    async def _attempt(
        self,
        stored: StoredMessage,
        content: MessageContent,
        domain: str,
        rows: list[QueuedDelivery],
    ) -> None:
        envelope = stored.envelope
        params = dict(zip(envelope.rcpt_to, envelope.rcpt_params, strict=False))
        recipients = tuple(
            OutboundRecipient(
                row.recipient,
                notify=params.get(row.recipient, {}).get("NOTIFY"),
                orcpt=params.get(row.recipient, {}).get("ORCPT"),
            )
            for row in rows
        )
        attempt = Attempt(
            message_id=stored.summary.id,
            domain=domain,
            sender=envelope.mail_from,
            recipients=recipients,
            content=content.outgoing,
            mail_params=envelope.mail_params,
        )
        semaphore = self._destinations.setdefault(
            domain, asyncio.Semaphore(self._settings.destination_concurrency)
        )
        async with semaphore, self._slots:
            suspended = self._suspended(domain)
            if suspended is not None:
                results = [RecipientResult(r.address, suspended) for r in recipients]
                await self._settle(stored, content, rows, results, attempted=False, dsn=False)
                return
            try:
                result = await self._courier.deliver(attempt)
            except StoreError as error:  # not the destination's fault: the lease runs out
                log.warning("queue: %s: could not be read to send: %s", attempt.message_id, error)
                return
        if result.unreachable and result.results and result.results[0].reply.code < 500:
            self._suspend(domain, result.results[0].reply)
        else:
            self._backoff.pop(domain, None)
        await self._settle(stored, content, rows, list(result.results), dsn=result.dsn_offered)

    def _suspend(self, domain: str, reply: Reply) -> None:
        """No attempt to ``domain`` for the schedule's first interval: its hosts are down."""
        until = self._clock.now() + self._settings.schedule.intervals[0]
        text = f"delivery to {domain or 'the relay host'} suspended until a retry: {reply.text}"
        self._backoff[domain] = (until, Reply(reply.code, reply.enhanced, text[:400]))
        log.info("queue: %s unreachable; suspended until %s", domain or "relay host", until)

    def _suspended(self, domain: str) -> Reply | None:
        """The reply recipients at a backed-off ``domain`` get without an attempt, or ``None``."""
        entry = self._backoff.get(domain)
        if entry is None:
            return None
        until, reply = entry
        if self._clock.now() >= until:
            del self._backoff[domain]
            return None
        return reply

    async def _settle(
        self,
        stored: StoredMessage,
        content: MessageContent,
        rows: Sequence[QueuedDelivery],
        results: Sequence[RecipientResult],
        *,
        attempted: bool = True,
        dsn: bool,
    ) -> None:
        """Turn replies into outcomes, send the reports they call for, then record them."""
        now = self._clock.now()
        schedule = self._settings.schedule
        envelope = stored.envelope
        sender = envelope.mail_from
        notify = {
            r: _notify(p.get("NOTIFY"))
            for r, p in zip(envelope.rcpt_to, envelope.rcpt_params, strict=False)
        }
        by_recipient = {result.recipient: result for result in results}
        outcomes: list[DeliveryOutcome] = []
        reports: list[tuple[str, RecipientResult, QueuedDelivery]] = []
        delays: list[tuple[str, RecipientResult, QueuedDelivery]] = []
        for row in rows:
            result = by_recipient.get(row.recipient) or RecipientResult(
                row.recipient, Reply(451, "4.3.0", "No reply for this recipient")
            )
            reply = result.reply
            wanted = notify.get(row.recipient)
            attempts = row.attempts + int(attempted)
            delay_notified = False
            if reply.code < 400:
                state = DeliveryState.DELIVERED
                action = Action.DELIVERED if dsn else Action.RELAYED
                if should_report(action, sender=sender, notify=wanted):
                    reports.append((action.value, result, row))
                next_attempt = None
            elif reply.code >= 500:
                state, next_attempt = DeliveryState.BOUNCED, None
            else:
                next_attempt = schedule.next_attempt(
                    attempts, row.queued_at, now, self._settings.rng
                )
                if next_attempt is None:
                    state = DeliveryState.BOUNCED
                    result = RecipientResult(
                        row.recipient,
                        Reply(reply.code, reply.enhanced, EXPIRED_TEXT + reply.text),
                        result.relay,
                    )
                else:
                    state = DeliveryState.DEFERRED
                    if (
                        should_report(Action.DELAYED, sender=sender, notify=wanted)
                        and not row.delay_notified
                        and schedule.delay_notice_due(row.queued_at, now)
                    ):
                        delays.append((Action.DELAYED.value, result, row))
                        delay_notified = True
            if state is DeliveryState.BOUNCED and should_report(
                Action.FAILED, sender=sender, notify=wanted
            ):
                reports.append((Action.FAILED.value, result, row))
            outcomes.append(
                DeliveryOutcome(
                    message_id=row.message_id,
                    recipient=row.recipient,
                    state=state,
                    at=now,
                    reply=_status_of(result.reply),
                    relay=result.relay,
                    next_attempt=next_attempt,
                    attempted=attempted,
                    delay_notified=delay_notified,
                )
            )
            self._log_attempt(row, result, state, now)
        for entries in (reports, delays):
            if entries:  # should_report sends none to the null sender (RFC 3461 6.2)
                request = ReportRequest(
                    stored, content.original, tuple(entries), now, whole=content.whole
                )
                await self._reporter.send(request)
        await self._store.record(self._settings.owner, outcomes)
        for outcome in outcomes:
            self.outcomes[outcome.state] += 1
        if attempted:
            self.attempts += len(outcomes)

    def _log_attempt(
        self, row: QueuedDelivery, result: RecipientResult, state: DeliveryState, now: datetime
    ) -> None:
        status = {
            DeliveryState.DELIVERED: "sent",
            DeliveryState.DEFERRED: "deferred",
            DeliveryState.BOUNCED: "bounced",
        }[state]
        delay = (now - row.queued_at).total_seconds()
        log.info(
            "id=%s to=<%s> relay=%s delay=%.2f status=%s (%s)",
            row.message_id,
            row.recipient,
            result.relay or "none",
            delay,
            status,
            _status_of(result.reply),
        )
