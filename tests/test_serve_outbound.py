"""Outbound delivery as a user runs it: ``mailgate serve`` with a domain and a relay network,
a DNS server and receiving MTAs on loopback, and ``mailgate queue`` beside it.

The console script runs in processes of its own (the serving process, its commit service,
SMTP workers with ``--workers``); the queue runner runs in the serving process only, so
with workers each message still goes out once.
"""

from __future__ import annotations

import smtplib
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from loopback import DnsZone, ReceivingMTAs, mta_for, relay_flags
from process_helpers import TIMEOUT, Launcher, Serving, inbox, mailgate_queue, until

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="finds a server's processes in /proc"
)


def serve(
    launcher: Launcher,
    tmp_path: Path,
    zone: DnsZone,
    mtas: ReceivingMTAs,
    *extra: str,
    env: dict[str, str] | None = None,
) -> Serving:
    return launcher.serve(
        "--smtp", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data", str(tmp_path / "data"),
        *relay_flags(zone, mtas), *extra, env=env,
    )  # fmt: skip


def send(served: Serving, to: str, subject: str, sender: str = "alice@here.test") -> str:
    body = f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n\r\nHello.\r\n"
    with smtplib.SMTP("127.0.0.1", served.port, timeout=TIMEOUT) as client:
        client.sendmail(sender, [to], body.encode())
        return client.noop()[1].decode()


def test_mail_for_another_domain_is_delivered_by_mx_and_the_queue_says_so(
    launcher: Launcher,
    tmp_path: Path,
    dns_zone: Callable[[], DnsZone],
    receiving_mta: ReceivingMTAs,
) -> None:
    zone = dns_zone()
    mx = mta_for(zone, receiving_mta, "far.test")
    served = serve(launcher, tmp_path, zone, receiving_mta)
    send(served, "bob@far.test", "Onward")
    until(lambda: mx.messages, "the remote MTA has the message")
    (received,) = mx.messages
    assert (received.sender, received.recipients) == ("alice@here.test", ("bob@far.test",))
    assert b"Subject: Onward" in received.content
    (stored,) = inbox(served)
    rows = until(
        lambda: [
            r
            for r in mailgate_queue(tmp_path, "show", stored["ID"], "--json")
            if r["State"] == "delivered"
        ],
        "the queue records the delivery",
    )
    assert rows[0]["Recipient"] == "bob@far.test"
    assert rows[0]["LastReply"].startswith("250")
    assert rows[0]["Relay"] == f"mx.far.test[{mx.host}]:{receiving_mta.port or 25}"
    assert mailgate_queue(tmp_path, "list") == "The queue is empty.\n"
    log = served.stop_cleanly()
    assert f"to=<bob@far.test> relay=mx.far.test[{mx.host}]" in log
    assert "status=sent (250" in log


def test_a_null_mx_domain_bounces_to_the_local_sender_inbox(
    launcher: Launcher,
    tmp_path: Path,
    dns_zone: Callable[[], DnsZone],
    receiving_mta: ReceivingMTAs,
) -> None:
    zone = dns_zone()
    zone.mx("nomail.test", (0, "."))
    served = serve(launcher, tmp_path, zone, receiving_mta)
    send(served, "carol@nomail.test", "Nowhere")
    reports = until(
        lambda: [m for m in inbox(served) if m["From"]["Address"].startswith("MAILER-DAEMON")],
        "a bounce arrives",
    )
    (report,) = reports
    assert [to["Address"] for to in report["To"]] == ["alice@here.test"]
    raw = httpx.get(f"{served.http_url}api/v1/message/{report['ID']}/raw", timeout=TIMEOUT).text
    assert "Content-Type: multipart/report; report-type=delivery-status" in raw
    assert "Final-Recipient: rfc822; carol@nomail.test" in raw
    assert "Status: 5.1.10" in raw
    served.stop_cleanly()


def test_a_deferred_recipient_shows_its_reply_and_an_operator_bounces_it(
    launcher: Launcher,
    tmp_path: Path,
    dns_zone: Callable[[], DnsZone],
    receiving_mta: ReceivingMTAs,
) -> None:
    zone = dns_zone()
    mta_for(zone, receiving_mta, "busy.test", replies={"dan@busy.test": "450 4.2.1 Busy"})
    served = serve(launcher, tmp_path, zone, receiving_mta)
    send(served, "dan@busy.test", "Later")
    rows = until(
        lambda: [r for r in mailgate_queue(tmp_path, "list", "--json") if r["State"] == "deferred"],
        "the recipient is deferred",
    )
    assert rows[0]["LastReply"] == "450 4.2.1 Busy"
    assert rows[0]["Attempts"] == 1
    assert rows[0]["NextAttempt"] is not None
    assert mailgate_queue(tmp_path, "bounce", rows[0]["MessageID"]) == "bounce: 1 recipient\n"
    until(
        lambda: any(m["From"]["Address"].startswith("MAILER-DAEMON") for m in inbox(served)),
        "the bounce arrives",
    )
    assert mailgate_queue(tmp_path, "list") == "The queue is empty.\n"
    served.stop_cleanly()


def test_with_workers_each_message_goes_out_once(
    launcher: Launcher,
    tmp_path: Path,
    dns_zone: Callable[[], DnsZone],
    receiving_mta: ReceivingMTAs,
) -> None:
    zone = dns_zone()
    mx = mta_for(zone, receiving_mta, "far.test")
    served = serve(launcher, tmp_path, zone, receiving_mta, "--workers", "2")
    assert served.smtp_processes == 2
    for n in range(10):
        send(served, f"u{n}@far.test", f"n{n}")
    until(lambda: len(mx.messages) >= 10, "ten messages are delivered")
    time.sleep(0.5)  # any second delivery would have come by now
    assert sorted(m.recipients[0] for m in mx.messages) == sorted(
        f"u{n}@far.test" for n in range(10)
    )
    served.stop_cleanly()


def test_a_smarthost_with_credentials_from_the_environment(
    launcher: Launcher,
    tmp_path: Path,
    dns_zone: Callable[[], DnsZone],
    receiving_mta: ReceivingMTAs,
) -> None:
    zone = dns_zone()
    relay = receiving_mta(hostname="relay.isp.test", tls=True, auth={"me": "pa55"})
    served = serve(
        launcher, tmp_path, zone, receiving_mta,
        "--relay-host", f"{relay.host}:{relay.port}",
        env={"MAILGATE_RELAY_AUTH": "me:pa55"},
    )  # fmt: skip
    send(served, "x@anywhere.test", "Via the ISP")
    until(lambda: relay.messages, "the smarthost has the message")
    (received,) = relay.messages
    assert (received.recipients, received.tls, received.login) == (("x@anywhere.test",), True, "me")
    assert "pa55" not in served.ready_line
    served.stop_cleanly()
