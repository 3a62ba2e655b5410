"""Two mailgate nodes on one PostgreSQL, as a user runs them: one mail server.

Each node is ``mailgate serve --store postgresql://…`` in processes of its own, on its own
ports, sharing a fresh database.  Mail sent to either node is in both nodes' inboxes and
APIs, a wait on one node returns mail accepted by the other, and each queued recipient is
delivered once (the nodes' runners claim with ``FOR UPDATE SKIP LOCKED`` under leases).
"""

from __future__ import annotations

import smtplib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from loopback import DnsZone, ReceivingMTAs, mta_for, relay_flags
from postgresql_helpers import fresh_database
from process_helpers import TIMEOUT, Launcher, Serving, inbox, until

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="real processes")


def node(
    launcher: Launcher, tmp_path: Path, name: str, store: str, zone: DnsZone, mtas: ReceivingMTAs
) -> Serving:
    return launcher.serve(
        "--smtp", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data", str(tmp_path / name),
        "--store", store, *relay_flags(zone, mtas, hostname=f"{name}.here.test"),
    )  # fmt: skip


def send(served: Serving, to: str, subject: str) -> None:
    body = f"From: a@here.test\r\nTo: {to}\r\nSubject: {subject}\r\n\r\nHi.\r\n"
    with smtplib.SMTP("127.0.0.1", served.port, timeout=TIMEOUT) as client:
        client.sendmail("a@here.test", [to], body.encode())


def subjects(served: Serving) -> set[str]:
    return {m["Subject"] for m in inbox(served)}


def test_two_nodes_share_the_inbox_the_events_and_the_queue(
    launcher: Launcher,
    tmp_path: Path,
    dns_zone: Callable[[], DnsZone],
    receiving_mta: ReceivingMTAs,
) -> None:
    zone = dns_zone()
    mx = mta_for(zone, receiving_mta, "far.test")
    with fresh_database() as store:
        a = node(launcher, tmp_path, "a", store, zone, receiving_mta)
        b = node(launcher, tmp_path, "b", store, zone, receiving_mta)
        # A wait on B for mail that A accepts.
        with httpx.Client(timeout=TIMEOUT) as client:
            send(a, "bob@here.test", "to A, seen on B")
            waited = client.get(
                f"{b.http_url}api/v1/wait", params={"query": "subject:seen", "timeout": "10"}
            )
        assert waited.status_code == 200, waited.text
        assert waited.json()["Subject"] == "to A, seen on B"
        send(b, "carol@here.test", "to B")
        for served in (a, b):
            until(lambda s=served: {"to A, seen on B", "to B"} <= subjects(s), "both inboxes")
        # Outbound mail from both nodes: each recipient delivered once.
        for n in range(20):
            send(a if n % 2 else b, f"u{n}@far.test", f"out {n}")
        url = f"{a.http_url}api/v1/queue?all=true"

        def delivered() -> list[dict[str, Any]]:
            rows: list[dict[str, Any]] = httpx.get(url, timeout=TIMEOUT).json()["Recipients"]
            done = [r for r in rows if r["State"] == "delivered"]
            return done if len(done) == 20 else []

        rows = until(delivered, "twenty deliveries are recorded")
        assert {r["Attempts"] for r in rows} == {1}
        # Recorded after each remote 250: every delivery is in, and none went twice.
        assert sorted(m.recipients[0] for m in mx.messages) == sorted(
            f"u{n}@far.test" for n in range(20)
        )
        a.stop_cleanly()
        b.stop_cleanly()
