"""kill -9 of a node while it delivers: nothing queued is lost, duplicates stay within bounds.

A real ``mailgate serve`` (the serving process with its queue runner, and its commit
service) relays to a receiving MTA on loopback.  A client sends without pause while the
whole node (every process of it) gets SIGKILL at a random moment, as mail comes in and goes
out, and is started again on the same data; five times.  In the end every message the node
acknowledged with ``250`` has reached the MTA (and perhaps the one in flight at a kill, if
it was committed before the ``250`` could be sent), and the MTA got at most one copy more
than that per delivery in flight at a kill (a crash between the remote ``250`` and its
record).
"""

from __future__ import annotations

import random
import signal
import smtplib
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from loopback import DnsZone, ReceivingMTAs, mta_for, relay_flags
from process_helpers import TIMEOUT, Launcher, Serving, until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="kills a process group"),
]

BATCHES = 5
DESTINATION_CONCURRENCY = 5  # the default of --destination-concurrency
PER_BATCH = 1000  # more than a node takes before it is killed


def start(launcher: Launcher, tmp_path: Path, zone: DnsZone, mtas: ReceivingMTAs) -> Serving:
    return launcher.serve(
        "--smtp", "127.0.0.1:0", "--no-http", "--data", str(tmp_path / "data"),
        *relay_flags(zone, mtas),
    )  # fmt: skip


def send_until_killed(
    served: Serving, first: int, acknowledged: set[str], attempted: set[str]
) -> None:
    """Send messages until the node dies; add the subjects it acknowledged with 250, and
    those it was sent."""
    n = first
    try:
        with smtplib.SMTP("127.0.0.1", served.port, timeout=TIMEOUT) as client:
            while n < first + PER_BATCH:
                subject = f"crash-{n}"
                body = f"To: u{n}@far.test\r\nSubject: {subject}\r\n\r\nHi.\r\n"
                attempted.add(subject)
                client.sendmail("a@here.test", [f"u{n}@far.test"], body.encode())
                acknowledged.add(subject)
                n += 1
    except (OSError, smtplib.SMTPException):
        pass  # killed: the message in flight was not acknowledged


def subject_of(content: bytes) -> str:
    for line in content.split(b"\r\n"):
        if line.startswith(b"Subject: "):
            return line.removeprefix(b"Subject: ").decode()
    return ""


def test_kill_9_while_delivering_loses_nothing_and_duplicates_stay_within_bounds(
    tmp_path: Path, dns_zone: Callable[[], DnsZone], receiving_mta: ReceivingMTAs
) -> None:
    zone = dns_zone()
    mx = mta_for(zone, receiving_mta, "far.test")
    rng = random.Random(20261206)
    launcher = Launcher(tmp_path)
    acknowledged: set[str] = set()
    attempted: set[str] = set()
    kills = 0
    try:
        for batch in range(BATCHES):
            served = start(launcher, tmp_path, zone, receiving_mta)
            sender = threading.Thread(
                target=send_until_killed, args=(served, batch * PER_BATCH, acknowledged, attempted)
            )
            sender.start()
            time.sleep(rng.uniform(0.05, 0.4))  # while mail comes in and goes out
            served.stop(signal.SIGKILL, group=True)
            kills += 1
            sender.join(TIMEOUT)
        served = start(launcher, tmp_path, zone, receiving_mta)
        until(
            lambda: acknowledged <= {subject_of(m.content) for m in mx.messages},
            "acknowledged mail is delivered",
            timeout=TIMEOUT * 2,
        )
        served.stop_cleanly()
    finally:
        launcher.close()
    copies = Counter(subject_of(m.content) for m in mx.messages)
    duplicates = sum(count - 1 for count in copies.values())
    assert acknowledged <= set(copies) <= attempted
    # At most one copy more per delivery in flight at a kill: a node runs up to
    # DESTINATION_CONCURRENCY deliveries to one destination at once.
    assert duplicates <= kills * DESTINATION_CONCURRENCY, copies
