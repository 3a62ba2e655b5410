"""A 50 MiB message through ``mailgate serve --store postgresql://…``, never whole in memory.

One real serving process (one SMTP worker: SMTP, the store's writer, the web API
and the queue runner in one process) in catch-all mode on a fresh database.  It
receives a 50 MiB message over SMTP, serves it for download over the API, and,
released to a recipient at another domain, relays it to a receiving MTA on
loopback found through the loopback DNS.  Before each step the process's peak
RSS is set back to its current RSS (``/proc/PID/clear_refs``); after it, the
peak (``VmHWM``) less the RSS the process had once warmed up must stay under
``ALLOWED``, a fraction of the message.  The download and the relayed copy are
the octets sent (SHA-256), the relayed one less the ``Return-Path`` mailgate
adds.

Figures (RSS added, MiB, on the development machine): see
docs/log/2026-12-06-streaming-bodies.md.
"""

from __future__ import annotations

import base64
import hashlib
import os
import smtplib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from loopback import DnsZone, ReceivingMTAs
from postgresql_helpers import fresh_database
from process_helpers import TIMEOUT, Launcher, Serving

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads a process's memory in /proc"
)

MIB = 1024 * 1024
MESSAGE_OCTETS = 50 * MIB
ALLOWED = 16 * MIB
"""RSS a step may add to the warmed-up process: a third of the message."""
LARGE_TIMEOUT = 180.0
"""Seconds a step with the whole message may take on a busy machine: a bound, not a pause."""


def large_message(octets: int, subject: str) -> bytes:
    """A message of about ``octets``: base64 of random octets, in 76-character lines, as an
    attachment travels (the database cannot compress it away)."""
    encoded = base64.b64encode(os.urandom(octets * 3 // 4))
    lines = b"\r\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))
    header = (
        f"From: a@here.test\r\nTo: bob@far.test\r\nSubject: {subject}\r\n"
        "Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    )
    return header.encode() + lines + b"\r\n"


def memory(pid: int, field: str) -> int:
    """``VmRSS`` or ``VmHWM`` of process ``pid``, in octets."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for process {pid}")


def reset_peak(pid: int) -> None:
    """Set the process's peak RSS back to its RSS now (Linux 4.0 and later)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def until(condition: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)
    return value


def send(served: Serving, content: bytes, to: str = "bob@far.test") -> str:
    """Send ``content``; the id the server gave it."""
    with smtplib.SMTP("127.0.0.1", served.port, timeout=LARGE_TIMEOUT) as client:
        client.ehlo("client.test")
        client.mail("a@here.test")
        client.rcpt(to)
        code, reply = client.data(content)
    assert code == 250, reply
    return reply.decode().rsplit(" ", 1)[-1]


def download(served: Serving, message_id: str, target: Path) -> str:
    """Stream the raw message to ``target``; its SHA-256."""
    digest = hashlib.sha256()
    url = f"{served.http_url}api/v1/message/{message_id}/raw"
    with (
        httpx.stream("GET", url, params={"dl": "1"}, timeout=LARGE_TIMEOUT) as response,
        target.open("wb") as out,
    ):
        assert response.status_code == 200, response.read()
        assert response.headers["content-disposition"].startswith("attachment")
        for chunk in response.iter_bytes():
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def release(served: Serving, message_id: str, to: str) -> None:
    url = f"{served.http_url}api/v1/message/{message_id}/release"
    answer = httpx.post(url, json={"To": [to]}, timeout=TIMEOUT)
    assert answer.status_code == 200, answer.text


@pytest.mark.slow
def test_a_50_mib_message_in_and_out_of_postgresql_in_bounded_memory(
    launcher: Launcher,
    tmp_path: Path,
    dns_zone: Callable[[], DnsZone],
    receiving_mta: ReceivingMTAs,
) -> None:
    zone = dns_zone()
    mx = receiving_mta(hostname="mx.far.test", data_size_limit=0)
    zone.mx("far.test", (10, "mx.far.test"))
    zone.a("mx.far.test", mx.host)
    content = large_message(MESSAGE_OCTETS, "large")
    with fresh_database() as store:
        served = launcher.serve(
            "--smtp", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data", str(tmp_path / "data"),
            "--store", store, "--hostname", "mx.here.test", "--workers", "1",
            "--max-message-size", str(2 * MESSAGE_OCTETS),
            "--resolver", zone.nameserver, "--outbound-port", str(receiving_mta.port or 25),
        )  # fmt: skip
        pid = served.process.pid
        # Every path is taken once first, with a message past the store's one-row limit.
        warm = send(served, large_message(3 * MIB, "warm-up"))
        download(served, warm, tmp_path / "warm.eml")
        release(served, warm, "carol@far.test")
        until(lambda: len(mx.messages) == 1, "the warm-up message is relayed")
        baseline = memory(pid, "VmRSS")
        added: dict[str, int] = {}

        reset_peak(pid)
        message_id = send(served, content)
        added["store"] = memory(pid, "VmHWM") - baseline

        reset_peak(pid)
        downloaded = download(served, message_id, tmp_path / "large.eml")
        added["download"] = memory(pid, "VmHWM") - baseline
        raw = (tmp_path / "large.eml").read_bytes()
        assert raw.endswith(content)
        assert raw.startswith(b"Return-Path: <a@here.test>\r\nReceived: ")
        assert downloaded == hashlib.sha256(raw).hexdigest()

        reset_peak(pid)
        release(served, message_id, "bob@far.test")
        until(lambda: len(mx.messages) == 2, "the message is relayed", LARGE_TIMEOUT)
        added["relay"] = memory(pid, "VmHWM") - baseline
        relayed = mx.messages[1]
        assert relayed.recipients == ("bob@far.test",)
        # As stored, less the Return-Path a relay must not send (RFC 5321 4.4).
        expected = raw[raw.index(b"\r\n") + 2 :]
        assert hashlib.sha256(relayed.content).hexdigest() == hashlib.sha256(expected).hexdigest()
        served.stop_cleanly()
    figures = ", ".join(f"{step} {octets / MIB:.1f} MiB" for step, octets in added.items())
    print(f"RSS added to {baseline / MIB:.1f} MiB: {figures}")
    for step, octets in added.items():
        assert octets < ALLOWED, f"{step}: {figures}"
