"""Three nodes on one PostgreSQL, one killed with SIGKILL again and again: one mail server.

Three ``mailgate serve --store postgresql://…`` nodes share a fresh database and relay to a
receiving MTA on loopback.  Clients send to all three without pause; every moment or so a
random node (every process of it) gets SIGKILL and is started again on the same ports'
settings.  Afterwards: every message a node acknowledged with ``250`` is listed by every
node, every queued recipient reached the MTA, copies beyond one are at most one per
delivery in flight at a kill, and no lease is left held.

In the suite the trial is short: four kills, a moment apart.  By hand,
``MAILGATE_TRIAL_MESSAGES=10000`` runs it until that many messages were
acknowledged, four senders a node, a kill every few seconds.
"""

from __future__ import annotations

import os
import random
import signal
import smtplib
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import psycopg
import pytest

from loopback import DnsZone, ReceivingMTAs, mta_for, relay_flags
from postgresql_helpers import fresh_database
from process_helpers import TIMEOUT, Launcher, Serving, until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="kills process groups"),
]

NODES = 3
KILLS = 4
DESTINATION_CONCURRENCY = 5
TRIAL_MESSAGES = int(os.environ.get("MAILGATE_TRIAL_MESSAGES", "0"))
SENDERS_PER_NODE = 4 if TRIAL_MESSAGES else 1
PAGE = 5000


def start(
    launcher: Launcher, tmp_path: Path, n: int, store: str, zone: DnsZone, mtas: ReceivingMTAs
) -> Serving:
    return launcher.serve(
        "--smtp", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data", str(tmp_path / f"node{n}"),
        "--store", store, *relay_flags(zone, mtas, hostname=f"node{n}.here.test"),
    )  # fmt: skip


class Sender(threading.Thread):
    """Sends to one node until told to stop or the node dies; records what was acknowledged."""

    def __init__(self, served: Serving, prefix: str) -> None:
        super().__init__()
        self.served, self.prefix = served, prefix
        self.acknowledged: set[str] = set()
        self.attempted: set[str] = set()
        self.stopping = threading.Event()

    def run(self) -> None:
        n = 0
        try:
            with smtplib.SMTP("127.0.0.1", self.served.port, timeout=TIMEOUT) as client:
                while not self.stopping.is_set():
                    subject = f"{self.prefix}-{n}"
                    body = f"To: u@far.test\r\nSubject: {subject}\r\n\r\nHi.\r\n"
                    self.attempted.add(subject)
                    client.sendmail("a@here.test", ["u@far.test"], body.encode())
                    self.acknowledged.add(subject)
                    n += 1
        except (OSError, smtplib.SMTPException):
            pass  # the node was killed: the message in flight was not acknowledged


def subject_of(content: bytes) -> str:
    for line in content.split(b"\r\n"):
        if line.startswith(b"Subject: "):
            return line.removeprefix(b"Subject: ").decode()
    return ""


def test_three_nodes_one_killed_again_and_again_lose_nothing(
    launcher: Launcher,
    tmp_path: Path,
    dns_zone: Callable[[], DnsZone],
    receiving_mta: ReceivingMTAs,
) -> None:
    zone = dns_zone()
    mx = mta_for(zone, receiving_mta, "far.test")
    rng = random.Random(18)
    acknowledged: set[str] = set()
    attempted: set[str] = set()
    with fresh_database() as store:
        nodes = [start(launcher, tmp_path, n, store, zone, receiving_mta) for n in range(NODES)]
        kills = 0
        while kills < KILLS or len(acknowledged) < TRIAL_MESSAGES:
            senders = [
                Sender(served, f"r{kills}n{n}s{s}")
                for n, served in enumerate(nodes)
                for s in range(SENDERS_PER_NODE)
            ]
            for sender in senders:
                sender.start()
            # Mail comes in and goes out meanwhile.
            time.sleep(rng.uniform(2, 4) if TRIAL_MESSAGES else rng.uniform(0.2, 0.6))
            kills += 1
            victim = rng.randrange(NODES)
            nodes[victim].stop(signal.SIGKILL, group=True)
            for sender in senders:
                sender.stopping.set()
                sender.join(TIMEOUT)
                acknowledged |= sender.acknowledged
                attempted |= sender.attempted
            nodes[victim] = start(launcher, tmp_path, victim, store, zone, receiving_mta)
        until(
            lambda: acknowledged <= {subject_of(m.content) for m in mx.messages},
            "acknowledged mail is delivered",
            timeout=TIMEOUT * 2 + len(acknowledged) / 100,
        )
        for served in nodes:
            listed: set[str] = set()
            for start_at in range(0, len(attempted) + PAGE, PAGE):
                page = httpx.get(
                    f"{served.http_url}api/v1/messages",
                    params={"limit": PAGE, "start": start_at},
                    timeout=TIMEOUT,
                ).json()
                listed |= {m["Subject"] for m in page["messages"]}
            assert acknowledged <= listed, served.http_url
        with psycopg.connect(store) as connection:
            (held,) = connection.execute(
                "SELECT count(*) FROM deliveries WHERE lease_owner IS NOT NULL"
            ).fetchone() or (None,)
            (waiting,) = connection.execute(
                "SELECT count(*) FROM deliveries WHERE state IN ('queued', 'deferred', 'held')"
            ).fetchone() or (None,)
        for served in nodes:
            served.stop_cleanly()
    copies = Counter(subject_of(m.content) for m in mx.messages)
    duplicates = sum(count - 1 for count in copies.values())
    assert len(acknowledged) > 50  # the trial carried real load
    assert acknowledged <= set(copies) <= attempted
    # At most one copy more per delivery in flight at a kill (up to 5 a node to one
    # destination, the default --destination-concurrency).
    assert duplicates <= kills * DESTINATION_CONCURRENCY, copies.most_common(5)
    assert (held, waiting) == (0, 0)
    print(f"{len(acknowledged)} acknowledged, {kills} kills, {duplicates} duplicates")
