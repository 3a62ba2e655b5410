"""mailgate → Postfix → mailgate: Debian's Postfix as the next hop of mailgate's queue.

mailgate A (``a.test``) relays a message for ``bob@b.test``; the loopback DNS server names a
private Postfix instance on 127.0.26.1:25 as b.test's MX; Postfix relays b.test to mailgate B
(``--domain b.test``) on 127.0.26.2.  The message arrives in B's store with both hops in its
trace, the DSN parameters A was given pass through Postfix, and A's queue records the
delivery with Postfix's reply.  Needs root (Postfix's daemons) and Debian's postfix package;
skipped with the reason elsewhere, failed under CI.
"""

from __future__ import annotations

import os
import shutil
import smtplib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from loopback import DnsZone
from mailgate.model import Envelope
from mailgate.stores import open_store
from process_helpers import TIMEOUT, Launcher

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Postfix runs on Linux"),
]

POSTFIX = Path("/usr/sbin/postfix")
MASTER = Path("/usr/lib/postfix/sbin/master")
POSTFIX_ADDRESS = "127.0.26.1"
B_ADDRESS = "127.0.26.2"


def unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; .ci/run installs postfix")
    pytest.skip(reason)


@pytest.fixture
def postfix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private Postfix relay for b.test on 127.0.26.1:25 to mailgate B; its directory."""
    if not POSTFIX.exists() or not MASTER.exists():
        unavailable("Postfix is not installed (Debian package postfix)")
    if os.geteuid() != 0:
        unavailable("a private Postfix instance needs root")
    work = Path(tempfile_dir(tmp_path_factory))
    etc, queue, data = work / "etc", work / "queue", work / "data"
    for path in (etc, queue, data):
        path.mkdir(parents=True)
    shutil.chown(data, "postfix", "postfix")
    (etc / "main.cf").write_text(
        f"""\
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
myhostname = postfix.b.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relay_domains = b.test
relayhost = [{B_ADDRESS}]:25
maillog_file = {work}/postfix.log
maillog_file_prefixes = {work}
smtp_tls_security_level = none
alias_maps =
alias_database =
biff = no
"""
    )
    services = [
        f"{POSTFIX_ADDRESS}:25 inet n - n - - smtpd",
        "pickup unix n - n 60 1 pickup",
        "cleanup unix n - n - 0 cleanup",
        "qmgr unix n - n 300 1 qmgr",
        "rewrite unix - - n - - trivial-rewrite",
        "bounce unix - - n - 0 bounce",
        "defer unix - - n - 0 bounce",
        "trace unix - - n - 0 bounce",
        "verify unix - - n - 1 verify",
        "flush unix n - n 1000? 0 flush",
        "proxymap unix - - n - - proxymap",
        "smtp unix - - n - - smtp",
        "relay unix - - n - - smtp",
        "error unix - - n - - error",
        "retry unix - - n - - error",
        "anvil unix - - n - 1 anvil",
        "scache unix - - n - 1 scache",
        "postlog unix-dgram n - n - 1 postlogd",
    ]
    (etc / "master.cf").write_text("\n".join(services) + "\n")
    started = subprocess.run(
        [str(POSTFIX), "-c", str(etc), "start"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        yield work
    finally:
        subprocess.run(
            [str(POSTFIX), "-c", str(etc), "stop"],
            capture_output=True,
            timeout=TIMEOUT,
            check=False,
        )


def tempfile_dir(factory: pytest.TempPathFactory) -> Path:
    """A directory Postfix's unprivileged daemons can reach: every parent searchable."""
    path = Path("/tmp") / f"mailgate-postfix-{os.getpid()}-{time.monotonic_ns()}"
    path.mkdir(mode=0o755)
    return path


def test_mailgate_to_postfix_to_mailgate(
    postfix: Path, launcher: Launcher, tmp_path: Path, dns_zone: Callable[[], DnsZone]
) -> None:
    zone = dns_zone()
    zone.mx("b.test", (10, "mx.b.test"))
    zone.a("mx.b.test", POSTFIX_ADDRESS)
    b = launcher.serve(
        "--smtp", f"{B_ADDRESS}:25", "--no-http", "--hostname", "mx2.b.test",
        "--domain", "b.test", "--data", str(tmp_path / "b"),
    )  # fmt: skip
    a = launcher.serve(
        "--smtp", "127.0.0.1:0", "--http", "127.0.0.1:0", "--hostname", "mail.a.test",
        "--domain", "a.test", "--relay-network", "127.0.0.0/8", "--resolver", zone.nameserver,
        "--data", str(tmp_path / "a"),
    )  # fmt: skip
    body = "From: alice@a.test\r\nTo: bob@b.test\r\nSubject: Via Postfix\r\n\r\nHello.\r\n"
    with smtplib.SMTP("127.0.0.1", a.port, timeout=TIMEOUT) as client:
        client.ehlo("client.a.test")
        client.sendmail(
            "alice@a.test",
            ["bob@b.test"],
            body.encode(),
            mail_options=["ENVID=roundtrip1"],
            rcpt_options=["NOTIFY=FAILURE", "ORCPT=rfc822;bob@b.test"],
        )
    deadline = time.monotonic() + TIMEOUT
    while True:
        rows = httpx.get(f"{a.http_url}api/v1/queue?all=true", timeout=TIMEOUT).json()
        if rows["Recipients"] and rows["Recipients"][0]["State"] == "delivered":
            break
        if time.monotonic() > deadline:
            log = (postfix / "postfix.log").read_text()
            pytest.fail(f"not delivered: {rows['Recipients']}\n{log[-3000:]}")
        time.sleep(0.05)
    (row,) = rows["Recipients"]
    assert row["Relay"] == f"mx.b.test[{POSTFIX_ADDRESS}]:25"
    assert row["LastReply"].startswith("250 2.0.0 Ok: ")  # Postfix: "Ok: 233 bytes queued as …"
    assert "queued as" in row["LastReply"]

    async def stored_at_b() -> list[tuple[Envelope, bytes]]:
        store = await open_store(f"sqlite://{tmp_path}/b/mail.db")
        try:
            found = []
            for summary in (await store.list()).messages:
                stored = await store.get(summary.id)
                raw = await store.raw(summary.id)
                assert stored is not None
                assert raw is not None
                found.append((stored.envelope, raw))
            return found
        finally:
            await store.aclose()

    import asyncio  # noqa: PLC0415

    deadline = time.monotonic() + TIMEOUT
    while not (arrived := asyncio.run(stored_at_b())):
        assert time.monotonic() < deadline, (postfix / "postfix.log").read_text()
        time.sleep(0.1)
    ((envelope, raw),) = arrived
    assert envelope.mail_from == "alice@a.test"
    # The DSN parameters mailgate A was given went on through Postfix (RFC 3461 5.2).
    assert envelope.mail_params.get("ENVID") == "roundtrip1"
    assert dict(envelope.rcpt_params[0]).get("ORCPT") == "rfc822;bob@b.test"
    assert b"Subject: Via Postfix" in raw
    trace = [line for line in raw.split(b"\r\n") if line.startswith(b"Received: ")]
    assert len(trace) == 3  # mailgate B, Postfix, mailgate A
    assert b"by postfix.b.test (Postfix)" in raw
    assert b"by mail.a.test (mailgate)" in raw
    log = (postfix / "postfix.log").read_text()
    assert "status=sent" in log
    assert f"relay={B_ADDRESS}[{B_ADDRESS}]:25" in log
    a.stop_cleanly()
    b.stop_cleanly()
