"""``GET /metrics`` of a real ``mailgate serve``: what clients did, counted exactly.

Each test starts the console script (with ``--workers 2`` too, where the
SMTP sessions run in two processes and the serving process adds up what the
workers report), has real clients do known things over SMTP (messages
stored and refused, TLS that works and TLS that does not, AUTH right, wrong
and blocked, connections over the per-address limit and left idle until
they are cut off), then scrapes ``/metrics`` with httpx, parses it with
``prometheus_client``'s parser and checks every count.  Workers report once
a second, so a scrape is polled until it agrees (a bound, not a pause).
"""

from __future__ import annotations

import base64
import os
import signal
import smtplib
import socket
import ssl
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from loopback import DnsZone, ReceivingMTAs, mta_for, relay_flags
from process_helpers import (
    TIMEOUT,
    Launcher,
    Serving,
    mailgate_queue,
    make_tls_files,
    make_users_file,
    serving_pid,
    until,
)
from server_helpers import WORKER, read_reply

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="finds a server's processes in /proc"
)

PASSWORD = "secret"
IDLE_TIMEOUT = 3  # seconds: long enough for a busy machine between a test's commands
PER_ADDRESS = 2  # --max-connections-per-ip, each SMTP process
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


# -- helpers ----------------------------------------------------------------------------------


def scrape(served: Serving, **options: Any) -> Samples:
    """Every sample ``/metrics`` shows, by name and labels."""
    response = httpx.get(f"{served.http_url}metrics", timeout=TIMEOUT, **options)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def scrape_until(served: Serving, expected: dict[str, float], what: str) -> Samples:
    """Scrape until every ``name{label="value"}`` of ``expected`` has its value; a failure
    names the samples that differ."""
    found: dict[str, float | None] = {}

    def agrees() -> Samples | None:
        samples = scrape(served)
        for key in expected:
            name, _, rest = key.partition("{")
            labels = dict(
                pair.split("=", 1) for pair in rest.rstrip("}").replace('"', "").split(",") if pair
            )
            found[key] = samples.get((name, frozenset(labels.items())))
        return samples if found == expected else None

    try:
        samples: Samples = until(agrees, what)
    except AssertionError:
        differ = {k: (found.get(k), v) for k, v in expected.items() if found.get(k) != v}
        raise AssertionError(f"{what}: (found, expected) differ: {differ}") from None
    return samples


def smtp_pids(served: Serving) -> list[int]:
    """The processes serving SMTP: the serving process and its workers."""
    return [served.process.pid, *served.children(WORKER)]


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def message(subject: str, to: str = "alice@here.test") -> bytes:
    return f"From: app@there.test\r\nTo: {to}\r\nSubject: {subject}\r\n\r\nHello.\r\n".encode()


def looping_message() -> bytes:
    """A message that has been through 100 relays: refused as a loop (RFC 5321 6.3)."""
    hops = b"".join(b"Received: from r%d.test by r%d.test; Mon, 30 Nov 2026\r\n" % (n, n + 1)
                    for n in range(100))  # fmt: skip
    return hops + message("loop")


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A CA, and a certificate it signed for mx.here.test and 127.0.0.1: CA, cert, key."""
    return make_tls_files(tmp_path_factory.mktemp("tls"), "mx.here.test", "127.0.0.1")


@pytest.fixture(scope="module")
def users_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_users_file(tmp_path_factory.mktemp("users"), "alice", PASSWORD)


def serve(
    launcher: Launcher,
    tmp_path: Path,
    tls_files: tuple[Path, Path, Path],
    users_file: Path,
    *more: str,
) -> Serving:
    config = tmp_path / "mailgate.toml"
    config.write_text('[domains."here.test"]\nmailboxes = ["alice"]\n')
    _, cert, key = tls_files
    return launcher.serve(
        "--smtp", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data", str(tmp_path / "data"),
        "--config", str(config), "--hostname", "mx.here.test",
        "--tls-cert", str(cert), "--tls-key", str(key), "--users", str(users_file),
        "--max-message-size", "64K", "--idle-timeout", str(IDLE_TIMEOUT),
        "--max-connections-per-ip", str(PER_ADDRESS), "--auth-block-after", "1",
        *more,
    )  # fmt: skip


# -- the counts -------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_metrics_count_what_clients_did(
    launcher: Launcher,
    tmp_path: Path,
    tls_files: tuple[Path, Path, Path],
    users_file: Path,
    workers: int,
) -> None:
    served = serve(launcher, tmp_path, tls_files, users_file, "--workers", str(workers))
    assert served.smtp_processes == workers
    ca, _, _ = tls_files
    tls = ssl.create_default_context(cafile=str(ca))
    connections = 0

    # Stored, and refused for each reason a client can cause.
    with smtplib.SMTP("127.0.0.1", served.port, timeout=TIMEOUT) as client:
        connections += 1
        for n in range(3):
            assert client.sendmail("app@there.test", ["alice@here.test"], message(f"m{n}")) == {}
        assert client.mail("app@there.test")[0] == 250
        assert client.rcpt("carol@here.test") == (550, b"5.1.1 No such user here")
        assert client.rcpt("bob@elsewhere.test") == (550, b"5.7.1 Relaying denied")
        assert client.rcpt("alice@here.test")[0] == 250
        # No SIZE declared: the content itself is over --max-message-size.
        too_big = message("big") + (b"y" * 998 + b"\r\n") * 70
        assert client.data(too_big)[0] == 552
        assert client.mail("app@there.test")[0] == 250
        assert client.rcpt("alice@here.test")[0] == 250
        assert client.data(looping_message()) == (554, b"5.4.6 Too many hops")

    # TLS, then AUTH right; and wrong, which with --auth-block-after 1 blocks the address.
    pids = smtp_pids(served)
    with smtplib.SMTP("127.0.0.1", served.port, timeout=TIMEOUT) as client:
        connections += 1
        client.starttls(context=tls)
        client.ehlo("client.test")
        assert client.docmd("AUTH", "PLAIN " + plain("alice", PASSWORD))[0] == 235
    with smtplib.SMTP("127.0.0.1", served.port, timeout=TIMEOUT) as client:
        connections += 1
        client.starttls(context=tls)
        client.ehlo("client.test")
        blocked_in = serving_pid(client, pids)
        assert client.docmd("AUTH", "PLAIN " + plain("alice", "wrong"))[0] == 535
        client.close()  # the server has said 421 and closed

    # The block holds in the process that counted the failure: find a connection it serves.
    for _ in range(40):
        with smtplib.SMTP("127.0.0.1", served.port, timeout=TIMEOUT) as client:
            connections += 1
            if serving_pid(client, pids) != blocked_in:
                continue
            client.starttls(context=tls)
            client.ehlo("client.test")
            code, text = client.docmd("AUTH", "PLAIN " + plain("alice", PASSWORD))
            assert code == 454
            assert text.startswith(b"4.7.0 Too many authentication failures, try again in ")
            client.close()
            break
    else:
        pytest.fail(f"no connection of 40 went to process {blocked_in}")

    # A TLS handshake that fails: the client sends plaintext after STARTTLS.
    with socket.create_connection(("127.0.0.1", served.port), timeout=TIMEOUT) as sock:
        connections += 1
        assert read_reply(sock).startswith(b"220 ")
        sock.sendall(b"EHLO client.test\r\n")
        assert read_reply(sock).startswith(b"250")
        sock.sendall(b"STARTTLS\r\n")
        assert read_reply(sock).startswith(b"220 ")
        sock.sendall(b"this is not a TLS record\r\n")
        assert read_reply(sock)[:1] != b"2"  # an alert, or nothing: the server closes

    scrape_until(served, {"mailgate_smtp_sessions": 0}, "every session so far has ended")

    # Idle connections: as many as the per-address limit allows in each process, then
    # one more, refused; the idle ones are cut off after --idle-timeout.
    held: list[socket.socket] = []
    refused = 0
    try:
        while len(held) < PER_ADDRESS * workers:
            sock = socket.create_connection(("127.0.0.1", served.port), timeout=TIMEOUT)
            greeting = read_reply(sock)
            if greeting.startswith(b"220 "):
                held.append(sock)
                continue
            assert greeting.startswith(b"421 4.7.0 mx.here.test Too many connections from your")
            refused += 1
            sock.close()
        with socket.create_connection(("127.0.0.1", served.port), timeout=TIMEOUT) as sock:
            assert read_reply(sock).startswith(b"421 4.7.0 ")
            refused += 1
        connections += len(held)
        scrape_until(served, {"mailgate_smtp_sessions": len(held)}, "the idle sessions show")
        for sock in held:
            assert read_reply(sock) == b"421 4.4.2 mx.here.test Idle timeout, closing\r\n"
    finally:
        for sock in held:
            sock.close()

    expected = {
        "mailgate_smtp_processes": workers,
        "mailgate_smtp_sessions": 0,
        "mailgate_smtp_connections_admitted_total": connections,
        'mailgate_smtp_connections_refused_total{reason="per_address"}': refused,
        'mailgate_smtp_connections_refused_total{reason="too_many"}': 0,
        'mailgate_smtp_connections_refused_total{reason="shutting_down"}': 0,
        "mailgate_smtp_messages_accepted_total": 3,
        'mailgate_smtp_refusals_total{reason="unknown_user"}': 1,
        'mailgate_smtp_refusals_total{reason="relay_denied"}': 1,
        'mailgate_smtp_refusals_total{reason="too_big"}': 1,
        'mailgate_smtp_refusals_total{reason="loop"}': 1,
        'mailgate_smtp_refusals_total{reason="no_room"}': 0,
        'mailgate_smtp_refusals_total{reason="store_failure"}': 0,
        'mailgate_smtp_refusals_total{reason="other"}': 0,
        'mailgate_smtp_tls_handshakes_total{result="ok"}': 3,
        'mailgate_smtp_tls_handshakes_total{result="failed"}': 1,
        'mailgate_smtp_tls_sessions_total{version="TLSv1.3"}': 3,
        'mailgate_smtp_auth_attempts_total{result="ok"}': 1,
        'mailgate_smtp_auth_attempts_total{result="failed"}': 1,
        'mailgate_smtp_auth_attempts_total{result="blocked"}': 1,
        'mailgate_smtp_auth_attempts_total{result="throttled"}': 0,
        'mailgate_smtp_cutoffs_total{reason="idle"}': len(held),
        'mailgate_smtp_cutoffs_total{reason="slow_transfer"}': 0,
        'mailgate_smtp_cutoffs_total{reason="session_too_long"}': 0,
        "mailgate_store_commit_seconds_count": 3,
        'mailgate_store_commit_seconds_bucket{le="+Inf"}': 3,
        'mailgate_store_commit_errors_total{reason="error"}': 0,
        'mailgate_store_commit_errors_total{reason="no_room"}': 0,
    }
    samples = scrape_until(served, expected, "the counts add up")
    # The histogram's buckets are cumulative, and its sum is the time the commits took.
    buckets = sorted(
        (float(dict(labels)["le"]), count)
        for (name, labels), count in samples.items()
        if name == "mailgate_store_commit_seconds_bucket"
    )
    assert [count for _, count in buckets] == sorted(count for _, count in buckets)
    assert 0 < value(samples, "mailgate_store_commit_seconds_sum") < 3 * TIMEOUT
    stored = sum(len(message(f"m{n}")) for n in range(3))  # and a trace header each
    assert value(samples, "mailgate_smtp_accepted_bytes_total") > stored
    # The process's own metrics, from prometheus_client.
    assert value(samples, "process_resident_memory_bytes") > 0
    assert value(samples, "process_open_fds") > 0

    if workers > 1:
        # A worker killed outright is started again; what it reported stays counted.
        [worker] = served.children(WORKER)
        os.kill(worker, signal.SIGKILL)
        until(lambda: served.children(WORKER) not in ([], [worker]), "the worker is back")
        scrape_until(served, expected, "the dead worker's counts stay")
    served.stop_cleanly()


# -- the queue --------------------------------------------------------------------------------


def test_queue_sizes_and_delivery_counts(
    launcher: Launcher,
    tmp_path: Path,
    dns_zone: Callable[[], DnsZone],
    receiving_mta: ReceivingMTAs,
) -> None:
    zone = dns_zone()
    far = mta_for(zone, receiving_mta, "far.test")
    later = "450 4.2.1 Busy"
    mta_for(
        zone, receiving_mta, "busy.test", replies={"dan@busy.test": later, "eve@busy.test": later}
    )
    served = launcher.serve(
        "--smtp", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data", str(tmp_path / "data"),
        *relay_flags(zone, receiving_mta),
    )  # fmt: skip
    with smtplib.SMTP("127.0.0.1", served.port, timeout=TIMEOUT) as client:
        for to in ("bob@far.test", "dan@busy.test", "eve@busy.test"):
            client.sendmail("alice@here.test", [to], message("onward", to))

    def deferred() -> list[dict[str, Any]]:
        return [r for r in mailgate_queue(tmp_path, "list", "--json") if r["State"] == "deferred"]

    rows = until(lambda: len(deferred()) == 2 and deferred(), "both busy.test mails are deferred")
    assert mailgate_queue(tmp_path, "hold", rows[0]["MessageID"]) == "hold: 1 recipient\n"
    scrape_until(
        served,
        {
            'mailgate_queue_recipients{state="queued"}': 0,
            'mailgate_queue_recipients{state="deferred"}': 1,
            'mailgate_queue_recipients{state="held"}': 1,
            "mailgate_queue_delivery_attempts_total": 3,
            'mailgate_queue_deliveries_total{outcome="delivered"}': 1,
            'mailgate_queue_deliveries_total{outcome="deferred"}': 2,
            'mailgate_queue_deliveries_total{outcome="bounced"}': 0,
            "mailgate_smtp_messages_accepted_total": 3,
            "mailgate_store_commit_seconds_count": 3,
        },
        "the queue is counted",
    )
    assert len(far.messages) == 1
    served.stop_cleanly()


# -- who may read it --------------------------------------------------------------------------


def test_metrics_ask_for_the_api_password_and_an_allowed_host(
    launcher: Launcher, tmp_path: Path
) -> None:
    served = launcher.serve(
        "--smtp", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data", str(tmp_path / "data"),
        "--http-auth", "ops:s3cret", "--hostname", "mx.here.test",
    )  # fmt: skip
    url = f"{served.http_url}metrics"
    assert httpx.get(url, timeout=TIMEOUT).status_code == 401
    assert httpx.get(url, timeout=TIMEOUT, auth=("ops", "nope")).status_code == 401
    elsewhere = httpx.get(
        url, timeout=TIMEOUT, auth=("ops", "s3cret"), headers={"Host": "evil.test"}
    )
    assert elsewhere.status_code == 400
    samples = scrape(served, auth=("ops", "s3cret"), headers={"Host": "mx.here.test"})
    assert value(samples, "mailgate_smtp_connections_admitted_total") == 0
    assert value(samples, "mailgate_smtp_processes") == 1
    # A scraper that asks for OpenMetrics gets it.
    openmetrics = httpx.get(
        url,
        timeout=TIMEOUT,
        auth=("ops", "s3cret"),
        headers={"Accept": "application/openmetrics-text; version=1.0.0"},
    )
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.endswith("# EOF\n")
    assert "mailgate_smtp_messages_accepted_total 0.0\n" in openmetrics.text
    served.stop_cleanly()
