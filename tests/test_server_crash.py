"""Kill -9 the real ``mailgate serve``, an SMTP worker of it, or its commit service,
under load: nothing acknowledged is lost.

Clients send over SMTP and write down every id a ``250`` names.  The server,
one of its SMTP processes, or the process it commits new mail in, is killed
with SIGKILL in the middle of the load.  Reopening the store must find every
acknowledged message with exactly the bytes that were sent, and no message
that is only partly there.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import smtplib
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mailgate.model import MessageId
from mailgate.stores import open_store
from server_helpers import COMMIT_SERVICE, WORKER, body_of, children

SENDERS = 8
KILL_AFTER = 150  # acknowledged messages before the kill


def start_server(data: Path, workers: int) -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mailgate",
            "serve",
            "--smtp",
            "127.0.0.1:0",
            "--no-http",
            "--data",
            str(data),
            "--hostname",
            "crash.test",
            "--log-level",
            "warning",
            "--workers",
            str(workers),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.search(r"smtp 127\.0\.0\.1:(\d+)", line)
    assert match, line
    return process, int(match.group(1))


def message(sender: int, n: int) -> bytes:
    filler = f"{sender}-{n} ".encode() * 60
    return (
        f"Subject: crash {sender}-{n}\r\nFrom: s{sender}@load.example\r\n\r\n".encode()
        + b"\r\n".join(filler[i : i + 70] for i in range(0, len(filler), 70))
        + b"\r\n"
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("victim", ["server", "SMTP worker", "commit service"])
def test_sigkill_under_load_loses_nothing_acknowledged(tmp_path: Path, victim: str) -> None:
    data = tmp_path / "data"
    process, port = start_server(data, workers=2 if victim == "SMTP worker" else 1)
    acknowledged: dict[str, bytes] = {}
    attempts = [0] * SENDERS  # message(sender, n) was sent for every n below
    refused = [0] * SENDERS  # of those, answered 4xx
    lock = threading.Lock()
    enough = threading.Event()
    ending = threading.Event()

    def send(sender: int) -> None:
        while not ending.is_set():
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                    client.ehlo()
                    while attempts[sender] < 10_000:
                        n = attempts[sender]
                        attempts[sender] += 1
                        body = message(sender, n)
                        client.mail(f"s{sender}@load.example")
                        client.rcpt("sink@crash.test")
                        code, text = client.data(body)
                        if 400 <= code < 500:  # the commit service died, or is starting again
                            refused[sender] += 1
                            continue
                        if code != 250:
                            return
                        message_id = text.decode().rsplit(" ", 1)[-1]
                        with lock:
                            acknowledged[message_id] = body
                            if len(acknowledged) >= KILL_AFTER:
                                enough.set()
                    return
            except (smtplib.SMTPException, OSError):
                continue  # the process serving it died: expected; the next session goes on

    threads = [threading.Thread(target=send, args=(i,), daemon=True) for i in range(SENDERS)]
    for thread in threads:
        thread.start()
    assert enough.wait(60), f"only {len(acknowledged)} messages were acknowledged"
    if victim == "server":
        ending.set()
        os.kill(process.pid, signal.SIGKILL)
    else:
        (child,) = children(process.pid, COMMIT_SERVICE if victim == "commit service" else WORKER)
        os.kill(child, signal.SIGKILL)
        with lock:
            more = len(acknowledged) + KILL_AFTER
        # Its sessions end, or (the commit service) every message gets 451 until it is
        # started again: then the load goes on.
        deadline = time.monotonic() + 60
        while len(acknowledged) < more and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(acknowledged) >= more, f"the load stopped with the {victim}"
        if victim == "commit service":  # the one writer of new mail was away a while
            assert sum(refused) > 0
        ending.set()
        os.kill(process.pid, signal.SIGTERM)
    process.wait(30)
    for thread in threads:
        thread.join(30)
    assert process.stdout is not None
    process.stdout.close()
    with lock:
        promised = dict(acknowledged)

    async def check() -> None:
        store = await open_store(f"sqlite://{data / 'mail.db'}")
        try:
            page = await store.list(limit=100_000)
            stored_ids = {m.id for m in page.messages}
            assert set(promised) <= stored_ids, "an acknowledged message is missing"
            sent_bodies = set()
            for sender in range(SENDERS):
                sent_bodies.update(message(sender, n) for n in range(attempts[sender]))
            for summary in page.messages:
                raw = await store.raw(MessageId(summary.id))
                assert raw is not None
                body = body_of(raw)
                if summary.id in promised:
                    assert body == promised[summary.id]
                # Stored but not yet acknowledged is allowed; partial never is.
                assert body in sent_bodies
        finally:
            await store.aclose()

    asyncio.run(check())
