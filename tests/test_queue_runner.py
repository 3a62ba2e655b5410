"""The queue runner's decisions, on an injected clock with a scripted courier.

The courier (route, connection, SMTP) is tested against real servers in
tests/test_queue_delivery.py; here it answers from a script, so each reply
mix and each point of the schedule is exact.  The store is the real one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio

from mailgate.delivery import Acceptor, DeliverySettings
from mailgate.model import DeliveryState, Envelope, MessageId
from mailgate.protocol import Reply
from mailgate.queue._content import outgoing_content
from mailgate.queue._runner import (
    Attempt,
    AttemptResult,
    QueueRunner,
    RecipientResult,
    ReportRequest,
    RunnerSettings,
)
from mailgate.queue._schedule import RetrySchedule
from mailgate.stores import SQLiteStore
from mailgate.testing.stores import make_message

START = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


@dataclasses.dataclass
class ManualClock:
    now_value: datetime = START

    def now(self) -> datetime:
        return self.now_value


class ScriptedCourier:
    """Answers each recipient from ``replies`` (default 250), recording every attempt."""

    def __init__(self) -> None:
        self.replies: dict[str, Reply] = {}
        self.attempts: list[Attempt] = []
        self.dsn_offered = True
        self.unreachable = False

    async def deliver(self, attempt: Attempt) -> AttemptResult:
        self.attempts.append(attempt)
        ok = Reply(250, "2.0.0", "Ok")
        return AttemptResult(
            tuple(
                RecipientResult(r.address, self.replies.get(r.address, ok), "mx.test[127.0.0.2]:25")
                for r in attempt.recipients
            ),
            dsn_offered=self.dsn_offered,
            unreachable=self.unreachable,
        )


class RecordingReporter:
    def __init__(self) -> None:
        self.sent: list[ReportRequest] = []

    async def send(self, request: ReportRequest) -> None:
        self.sent.append(request)

    def actions(self) -> list[list[tuple[str, str]]]:
        """Each report's (action, recipient) pairs, sorted."""
        return [sorted((action, r.recipient) for action, r, _ in s.entries) for s in self.sent]


@dataclasses.dataclass
class Bench:
    store: SQLiteStore
    acceptor: Acceptor
    clock: ManualClock
    courier: ScriptedCourier
    reporter: RecordingReporter
    runner: Callable[..., QueueRunner]

    async def relay(
        self,
        *recipients: str,
        sender: str = "alice@here.test",
        rcpt_params: Mapping[str, Mapping[str, str | None]] | None = None,
    ) -> MessageId:
        params = rcpt_params or {}
        envelope = Envelope(
            mail_from=sender,
            rcpt_to=recipients,
            received_at=self.clock.now(),
            rcpt_params=tuple(dict(params.get(r, {})) for r in recipients),
            outbound=recipients,
        )
        spool = self.acceptor.begin(envelope)
        spool.write(make_message("onward"))
        return await self.acceptor.commit(spool)

    async def run(self, runner: QueueRunner) -> int:
        claimed = await runner.run_once()
        await runner.drain()
        return claimed

    async def states(self) -> dict[str, tuple[DeliveryState, int, str]]:
        rows = await self.store.queued(pending_only=False)
        return {r.recipient: (r.state, r.attempts, r.last_reply) for r in rows}


@pytest_asyncio.fixture
async def bench(tmp_path: Path) -> AsyncIterator[Bench]:
    store = SQLiteStore(tmp_path / "mail.db")
    clock = ManualClock()
    acceptor = Acceptor(
        store, DeliverySettings(hostname="mx.here.test", spool_dir=tmp_path / "spool"), clock=clock
    )
    courier, reporter = ScriptedCourier(), RecordingReporter()

    def runner(**settings: object) -> QueueRunner:
        options: dict[str, object] = {"rng": random.Random(7)}
        options.update(settings)
        return QueueRunner(
            store,
            courier,
            reporter,
            RunnerSettings(**options),
            clock=clock,  # type: ignore[arg-type]
        )

    try:
        yield Bench(store, acceptor, clock, courier, reporter, runner)
    finally:
        acceptor.close()
        await store.aclose()


@pytest.mark.asyncio
async def test_250_450_550_delivers_defers_and_bounces_only_those(bench: Bench) -> None:
    bench.courier.replies = {
        "busy@far.test": Reply(450, "4.2.1", "Mailbox busy"),
        "gone@far.test": Reply(550, "5.1.1", "No such user"),
    }
    message = await bench.relay("ok@far.test", "busy@far.test", "gone@far.test")
    runner = bench.runner()
    assert await bench.run(runner) == 3
    assert len(bench.courier.attempts) == 1  # one domain: one transaction for all three
    assert await bench.states() == {
        "ok@far.test": (DeliveryState.DELIVERED, 1, "250 2.0.0 Ok"),
        "busy@far.test": (DeliveryState.DEFERRED, 1, "450 4.2.1 Mailbox busy"),
        "gone@far.test": (DeliveryState.BOUNCED, 1, "550 5.1.1 No such user"),
    }
    assert bench.reporter.actions() == [[("failed", "gone@far.test")]]
    deferred = await bench.store.queued(message)
    assert deferred[0].next_attempt is not None
    assert timedelta(minutes=1) <= deferred[0].next_attempt - START <= timedelta(minutes=1.1)
    # Not due yet: nothing to claim; then only the 450 recipient is tried again.
    assert await bench.run(runner) == 0
    bench.clock.now_value = deferred[0].next_attempt
    bench.courier.replies = {}
    assert await bench.run(runner) == 1
    assert [r.address for r in bench.courier.attempts[-1].recipients] == ["busy@far.test"]
    assert (await bench.states())["busy@far.test"][:2] == (DeliveryState.DELIVERED, 2)
    assert len(bench.reporter.sent) == 1


@pytest.mark.asyncio
async def test_a_recipient_deferred_past_the_lifetime_bounces_with_the_last_reply(
    bench: Bench,
) -> None:
    bench.courier.replies = {"slow@far.test": Reply(421, "4.4.2", "Try later")}
    await bench.relay("slow@far.test")
    schedule = RetrySchedule(intervals=(timedelta(hours=1),), lifetime=timedelta(hours=3), jitter=0)
    runner = bench.runner(schedule=schedule)
    offsets = []
    while (await bench.states())["slow@far.test"][0] is DeliveryState.DEFERRED or not offsets:
        assert await bench.run(runner) == 1
        offsets.append((bench.clock.now_value - START) / timedelta(hours=1))
        rows = await bench.store.queued()
        if rows:
            assert rows[0].next_attempt is not None
            bench.clock.now_value = rows[0].next_attempt
    assert offsets == [0, 1, 2, 3]
    state, attempts, reply = (await bench.states())["slow@far.test"]
    assert (state, attempts) == (DeliveryState.BOUNCED, 4)
    assert reply == "421 4.4.2 delivery time expired; the last attempt got: Try later"
    assert bench.reporter.actions() == [[("failed", "slow@far.test")]]


@pytest.mark.asyncio
async def test_reports_follow_notify_and_never_go_to_the_null_sender(bench: Bench) -> None:
    bench.courier.replies = {
        "never@far.test": Reply(550, "5.1.1", "No"),
        "success@far.test": Reply(250, "2.0.0", "Ok"),
        "failure@far.test": Reply(550, "5.1.1", "No"),
    }
    await bench.relay(
        "never@far.test",
        "success@far.test",
        "failure@far.test",
        rcpt_params={
            "never@far.test": {"NOTIFY": "NEVER"},
            "success@far.test": {"NOTIFY": "SUCCESS"},
            "failure@far.test": {"NOTIFY": "SUCCESS,FAILURE"},
        },
    )
    bench.courier.dsn_offered = False
    await bench.run(bench.runner())
    assert bench.reporter.actions() == [
        [("failed", "failure@far.test"), ("relayed", "success@far.test")]
    ]
    await bench.relay("gone@far.test", sender="")
    bench.courier.replies["gone@far.test"] = Reply(550, "5.1.1", "No")
    await bench.run(bench.runner())
    assert len(bench.reporter.sent) == 1  # no bounce of a bounce
    assert (await bench.states())["gone@far.test"][0] is DeliveryState.BOUNCED


@pytest.mark.asyncio
async def test_one_delay_notice_after_four_hours_when_asked_for(bench: Bench) -> None:
    bench.courier.replies = {"slow@far.test": Reply(450, "4.2.1", "Busy")}
    await bench.relay("slow@far.test", rcpt_params={"slow@far.test": {"NOTIFY": "DELAY,FAILURE"}})
    runner = bench.runner()
    for _ in range(12):
        await bench.run(runner)
        row = (await bench.store.queued())[0]
        assert row.next_attempt is not None
        bench.clock.now_value = row.next_attempt
    assert bench.reporter.actions() == [[("delayed", "slow@far.test")]]
    delayed = bench.reporter.sent[0]
    assert delayed.at - START >= timedelta(hours=4)
    assert (await bench.store.queued())[0].delay_notified


@pytest.mark.asyncio
async def test_an_operator_bounce_is_not_attempted_and_reports(bench: Bench) -> None:
    message = await bench.relay("held@far.test", "other@else.test")
    assert await bench.store.request_bounce(message, START) == 2
    await bench.run(bench.runner())
    assert bench.courier.attempts == []
    states = await bench.states()
    assert states["held@far.test"] == (
        DeliveryState.BOUNCED,
        0,
        "550 5.0.0 Returned to the sender by the mail system's operator",
    )
    assert bench.reporter.actions() == [
        [("failed", "held@far.test"), ("failed", "other@else.test")]
    ]


@pytest.mark.asyncio
async def test_recipients_go_by_domain_or_all_together_through_a_smarthost(bench: Bench) -> None:
    await bench.relay("a@one.test", "b@two.test", "c@one.test")
    await bench.run(bench.runner())
    by_domain = sorted(
        (a.domain, [r.address for r in a.recipients]) for a in bench.courier.attempts
    )
    assert by_domain == [("one.test", ["a@one.test", "c@one.test"]), ("two.test", ["b@two.test"])]
    bench.courier.attempts.clear()
    await bench.relay("a@one.test", "b@two.test")
    await bench.run(bench.runner(smarthost=True))
    assert [len(a.recipients) for a in bench.courier.attempts] == [2]


@pytest.mark.asyncio
async def test_what_goes_on_has_no_return_path_and_keeps_the_trace(bench: Bench) -> None:
    await bench.relay("a@one.test")
    await bench.run(bench.runner())
    content = bench.courier.attempts[0].content
    assert content.startswith(b"Received: from ")
    assert content.endswith(make_message("onward"))
    assert outgoing_content(b"Return-Path: <a@b>\r\n\tfolded\r\nX: y\r\n\r\n") == b"X: y\r\n\r\n"
    assert outgoing_content(b"X: y\r\n\r\n") == b"X: y\r\n\r\n"


@pytest.mark.asyncio
async def test_an_unreachable_destination_is_suspended_not_the_queue(bench: Bench) -> None:
    bench.courier.replies = {"a@dead.test": Reply(451, "4.4.1", "Connection refused")}
    bench.courier.unreachable = True
    await bench.relay("a@dead.test")
    runner = bench.runner()
    await bench.run(runner)
    assert len(bench.courier.attempts) == 1
    bench.courier.unreachable = False
    # Meanwhile: more mail for the dead domain waits without an attempt; other domains go.
    waiting = await bench.relay("b@dead.test")
    await bench.relay("c@alive.test")
    await bench.run(runner)
    assert [a.domain for a in bench.courier.attempts] == ["dead.test", "alive.test"]
    row = (await bench.store.queued(waiting))[0]
    assert (row.state, row.attempts) == (DeliveryState.DEFERRED, 0)
    assert row.last_reply.startswith("451 4.4.1 delivery to dead.test suspended")
    # After the suspension (the schedule's first interval) it is tried again.
    bench.clock.now_value += timedelta(minutes=1.2)
    bench.courier.replies = {}
    await bench.run(runner)
    tried = bench.courier.attempts[2:]
    assert sorted(r.address for a in tried for r in a.recipients) == ["a@dead.test", "b@dead.test"]
    assert {r.state for r in await bench.store.queued(pending_only=False)} == {
        DeliveryState.DELIVERED
    }


@pytest.mark.asyncio
async def test_a_wake_up_in_the_turn_of_the_close_does_not_keep_the_runner_going(
    bench: Bench,
) -> None:
    """The close cancels the runner while a wake-up is on its way: Python 3.11's
    ``asyncio.wait_for`` took the wake-up and dropped the cancellation, the runner went on
    waiting for work, and ``mailgate serve`` (or a test's server) never finished stopping."""
    runner = bench.runner(poll_interval=30.0)
    await runner.start()
    await asyncio.sleep(0.05)  # it waits for work now
    runner.wake()
    async with asyncio.timeout(5):
        await runner.aclose()  # cancels in the turn of the wake-up, before either runs
