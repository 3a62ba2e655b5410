"""Reports sent as new mail: stored for a local sender, queued for a remote one, readable
by Python's email package and by a bounce parser written elsewhere."""

from __future__ import annotations

import email
import email.policy
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from flufl.bounce import all_failures

from mailgate.delivery import Acceptor, DeliverySettings
from mailgate.model import DeliveryState, Envelope, MessageId, QueuedDelivery
from mailgate.protocol import Reply
from mailgate.queue._reporter import MailReporter, report_status
from mailgate.queue._reports import Action
from mailgate.queue._runner import RecipientResult, ReportRequest
from mailgate.stores import SQLiteStore
from mailgate.testing.stores import make_message

AT = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


@pytest_asyncio.fixture
async def parts(tmp_path: Path) -> AsyncIterator[tuple[SQLiteStore, Acceptor, MailReporter]]:
    store = SQLiteStore(tmp_path / "mail.db")
    acceptor = Acceptor(store, DeliverySettings(hostname="mx.here.test", spool_dir=tmp_path))
    reporter = MailReporter(
        acceptor,
        hostname="mx.here.test",
        lifetime=timedelta(days=5),
        is_local=lambda address: address.endswith("@here.test"),
        new_report_id=iter(f"report{n}" for n in range(99)).__next__,
    )
    try:
        yield store, acceptor, reporter
    finally:
        acceptor.close()
        await store.aclose()


async def request(
    store: SQLiteStore,
    acceptor: Acceptor,
    sender: str,
    entries: list[tuple[str, str, Reply]],
    **mail_params: str,
) -> ReportRequest:
    recipients = tuple(recipient for _, recipient, _ in entries)
    envelope = Envelope(
        mail_from=sender,
        rcpt_to=recipients,
        received_at=AT - timedelta(hours=1),
        mail_params=mail_params,
        rcpt_params=tuple({"ORCPT": f"rfc822;orig+2B{i}@far.test"} for i in range(len(entries))),
        outbound=recipients,
    )
    spool = acceptor.begin(envelope)
    spool.write(make_message("original", b"The body.\r\n"))
    message_id = await acceptor.commit(spool)
    stored = await store.get(message_id)
    content = await store.raw(message_id)
    assert stored is not None
    assert content is not None
    rows = {r.recipient: r for r in await store.queued(message_id)}
    return ReportRequest(
        stored,
        content,
        tuple(
            (action, RecipientResult(r, reply, "mx.far.test[127.0.0.2]:25"), rows[r])
            for action, r, reply in entries
        ),
        AT,
    )


async def only_report(store: SQLiteStore, original: MessageId) -> tuple[MessageId, bytes]:
    page = await store.list()
    reports = [m.id for m in page.messages if m.id != original]
    assert len(reports) == 1
    raw = await store.raw(reports[0])
    assert raw is not None
    return reports[0], raw


@pytest.mark.asyncio
async def test_a_bounce_to_a_local_sender_is_stored_and_parses_as_rfc_3464(
    parts: tuple[SQLiteStore, Acceptor, MailReporter],
) -> None:
    store, acceptor, reporter = parts
    failed = Reply(550, "5.1.1", "No such user here")
    sent = await request(
        store, acceptor, "alice@here.test", [("failed", "gone@far.test", failed)], RET="HDRS"
    )
    await reporter.send(sent)
    report_id, raw = await only_report(store, sent.message.summary.id)
    stored = await store.get(report_id)
    assert stored is not None
    assert (stored.envelope.mail_from, stored.envelope.rcpt_to) == ("", ("alice@here.test",))
    assert stored.envelope.outbound == ()  # a local sender: stored, not queued
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    assert message["From"] == "Mail Delivery System <MAILER-DAEMON@mx.here.test>"
    assert message["Auto-Submitted"] == "auto-replied"
    types = [part.get_content_type() for part in message.iter_parts()]
    assert types == ["text/plain", "message/delivery-status", "text/rfc822-headers"]
    status = raw.decode()
    assert "Final-Recipient: rfc822; gone@far.test" in status
    assert "Original-Recipient: rfc822; orig+0@far.test" in status
    assert "Action: failed" in status
    assert "Status: 5.1.1" in status
    assert "Remote-MTA: dns; mx.far.test" in status
    assert "Diagnostic-Code: smtp; 550 5.1.1 No such user here" in status
    # A list manager learns which of its subscribers failed: the original recipient.
    assert all_failures(email.message_from_bytes(raw)) == (set(), {b"orig+0@far.test"})


@pytest.mark.asyncio
async def test_a_report_to_a_remote_sender_is_queued(
    parts: tuple[SQLiteStore, Acceptor, MailReporter],
) -> None:
    store, acceptor, reporter = parts
    sent = await request(
        store,
        acceptor,
        "bob@away.test",
        [("delayed", "slow@far.test", Reply(450, "4.2.1", "Busy"))],
    )
    await reporter.send(sent)
    report_id, raw = await only_report(store, sent.message.summary.id)
    queued = await store.queued(report_id)
    assert [(r.recipient, r.sender, r.state) for r in queued] == [
        ("bob@away.test", "", DeliveryState.QUEUED)
    ]
    assert b"Action: delayed" in raw
    assert b"Will-Retry-Until: " in raw


@pytest.mark.parametrize(
    ("action", "reply", "status"),
    [
        (Action.FAILED, Reply(550, "5.7.1", "Relay denied"), "5.7.1"),
        (Action.FAILED, Reply(554, None, "No"), "5.0.0"),
        (Action.FAILED, Reply(421, "4.4.2", "Timed out"), "5.4.7"),
        (Action.DELAYED, Reply(451, "4.4.1", "Refused"), "4.4.1"),
        (Action.DELAYED, Reply(421, None, "Busy"), "4.0.0"),
        (Action.RELAYED, Reply(250, "2.1.5", "Ok"), "2.1.5"),
        (Action.DELIVERED, Reply(250, None, "Ok"), "2.0.0"),
    ],
)
def test_the_status_a_report_gives_fits_its_action(
    action: Action, reply: Reply, status: str
) -> None:
    assert report_status(action, reply) == status


def test_queued_delivery_rows_carry_their_queue_time() -> None:
    row = QueuedDelivery(MessageId("x"), "a@b", "", DeliveryState.QUEUED, AT)
    assert row.queued_at == AT
