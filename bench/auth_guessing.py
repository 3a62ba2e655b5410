"""Password guessing against a real ``mailgate serve``: what one address gets, what others feel.

Starts ``mailgate serve`` (a users file at the default scrypt cost, a
self-signed certificate, HTTP basic auth), then, for ``--seconds`` each:

1. SMTP: ``--connections`` parallel connections from 127.0.0.1, each
   STARTTLS then ``AUTH PLAIN`` with wrong passwords until the server ends
   it, then again; meanwhile, from 127.0.0.2, a real user logs in once a
   second and ``GET /api/v1/messages`` is timed.
2. HTTP: as many parallel keep-alive connections from 127.0.0.1 send wrong
   basic-auth passwords; the right one is tried from 127.0.0.2.

It prints guesses answered a second (``535``/``401``), the refusals
(``454``/``421``, ``429``/``503``), and the medians and maxima of the real
user's login time and the API's latency.

    .venv/bin/python bench/auth_guessing.py --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import httpx

PASSWORD = "correct horse battery staple"
ATTACKER = "127.0.0.1"
USER_ADDRESS = "127.0.0.2"


def cpu_seconds(pid: int) -> float:
    """CPU time the process ``pid`` has used (user and system)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    """The largest resident memory the process ``pid`` has had, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def reply(reader: asyncio.StreamReader) -> bytes:
    lines = b""
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("closed")
        lines += line
        if line[3:4] != b"-":
            return lines


async def smtp_session(port: int, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    await reply(reader)
    writer.write(b"EHLO bench\r\n")
    await reply(reader)
    writer.write(b"STARTTLS\r\n")
    await reply(reader)
    await writer.start_tls(tls(), server_hostname="localhost")
    writer.write(b"EHLO bench\r\n")
    await reply(reader)
    return reader, writer


def plain(user: str, password: str) -> bytes:
    token = base64.b64encode(f"\0{user}\0{password}".encode())
    return b"AUTH PLAIN " + token + b"\r\n"


async def smtp_guesser(port: int, until: float, counts: Counter[str]) -> None:
    guess = 0
    while time.monotonic() < until:
        writer = None
        try:
            reader, writer = await smtp_session(port, ATTACKER)
            while time.monotonic() < until:
                guess += 1
                writer.write(plain("alice", f"guess{guess}"))
                answer = await reply(reader)
                counts[answer[:3].decode()] += 1
                if not answer.startswith(b"535"):
                    break
        except (ConnectionError, OSError, ssl.SSLError):
            counts["closed"] += 1
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()


async def real_login(port: int) -> float:
    start = time.monotonic()
    reader, writer = await smtp_session(port, USER_ADDRESS)
    writer.write(plain("alice", PASSWORD))
    answer = await reply(reader)
    took = time.monotonic() - start
    writer.close()
    assert answer.startswith(b"235"), answer
    return took


async def timed_get(client: httpx.AsyncClient, url: str) -> float:
    start = time.monotonic()
    response = await client.get(url, auth=("admin", "s3cret"))
    assert response.status_code == 200, response.status_code
    return time.monotonic() - start


async def observer(smtp_port: int, http_port: int, until: float) -> tuple[list[float], list[float]]:
    logins: list[float] = []
    gets: list[float] = []
    transport = httpx.AsyncHTTPTransport(local_address=USER_ADDRESS)
    async with httpx.AsyncClient(transport=transport, timeout=60) as client:
        url = f"http://127.0.0.1:{http_port}/api/v1/messages"
        while time.monotonic() < until:
            gets.append(await timed_get(client, url))
            if smtp_port:
                logins.append(await real_login(smtp_port))
            await asyncio.sleep(1.0)
    return logins, gets


async def http_guesser(http_port: int, until: float, counts: Counter[str]) -> None:
    transport = httpx.AsyncHTTPTransport(local_address=ATTACKER)
    async with httpx.AsyncClient(transport=transport, timeout=60) as client:
        url = f"http://127.0.0.1:{http_port}/api/v1/messages"
        guess = 0
        while time.monotonic() < until:
            guess += 1
            try:
                response = await client.get(url, auth=("admin", f"guess{guess}"))
            except httpx.HTTPError:
                counts["error"] += 1
                continue
            counts[str(response.status_code)] += 1


def observe(smtp_port: int, http_port: int, seconds: float) -> tuple[list[float], list[float]]:
    """``observer`` in a process of its own, so the guessers' load does not slow it."""
    return asyncio.run(observer(smtp_port, http_port, time.monotonic() + seconds))


async def observed(
    smtp_port: int, http_port: int, seconds: float
) -> tuple[list[float], list[float]]:
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(1) as pool:
        return await loop.run_in_executor(pool, observe, smtp_port, http_port, seconds)


def summary(name: str, values: list[float]) -> str:
    if not values:
        return f"{name}: none"
    return f"{name}: n={len(values)} median={statistics.median(values):.3f}s max={max(values):.3f}s"


async def measure(
    pid: int, smtp_port: int, http_port: int, seconds: float, connections: int
) -> None:
    # Quiet first: the real user and the API with nobody guessing.
    logins, gets = await observed(smtp_port, http_port, 3)
    print("quiet:", summary("login", logins), "|", summary("GET /api/v1/messages", gets))

    counts: Counter[str] = Counter()
    until = time.monotonic() + seconds
    guessers = [smtp_guesser(smtp_port, until, counts) for _ in range(connections)]
    started, cpu = time.monotonic(), cpu_seconds(pid)
    results = await asyncio.gather(observed(smtp_port, http_port, seconds), *guessers)
    took = time.monotonic() - started
    logins, gets = results[0]
    print(
        f"SMTP, {connections} connections from {ATTACKER} for {took:.0f}s:"
        f" {counts['535'] / took:.1f} guesses answered a second; replies {dict(counts)}"
    )
    print("  from", USER_ADDRESS, summary("login", logins), "|", summary("GET", gets))
    used = (cpu_seconds(pid) - cpu) / took
    print(f"  server: {used:.2f} CPUs busy, peak resident memory {peak_rss_mib(pid):.0f} MiB")

    counts = Counter()
    until = time.monotonic() + seconds
    started, cpu = time.monotonic(), cpu_seconds(pid)
    results = await asyncio.gather(
        observed(0, http_port, seconds),
        *(http_guesser(http_port, until, counts) for _ in range(connections)),
    )
    took = time.monotonic() - started
    _, gets = results[0]
    print(
        f"HTTP, {connections} connections from {ATTACKER} for {took:.0f}s:"
        f" {counts['401'] / took:.1f} wrong passwords answered a second; replies {dict(counts)}"
    )
    print("  from", USER_ADDRESS, summary("GET with the right password", gets))
    print(f"  server: {(cpu_seconds(pid) - cpu) / took:.2f} CPUs busy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--connections", type=int, default=90)
    parser.add_argument("--mailgate", default=str(Path(sys.executable).with_name("mailgate")))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mailgate-auth-bench-") as tmp:
        users = Path(tmp) / "users"
        subprocess.run(
            [args.mailgate, "users", "add", "alice", "--users", str(users)],
            input=PASSWORD + "\n",
            text=True,
            check=True,
            capture_output=True,
        )
        smtp_port, http_port = free_port(), free_port()
        log = open(Path(tmp) / "log", "w+")  # noqa: SIM115 - read after the server stops
        server = subprocess.Popen(
            [
                args.mailgate,
                "serve",
                "--smtp",
                f"127.0.0.1:{smtp_port}",
                "--http",
                f"127.0.0.1:{http_port}",
                "--data",
                tmp,
                "--users",
                str(users),
                "--tls-self-signed",
                "--hostname",
                "localhost",
            ],
            env={**os.environ, "MAILGATE_HTTP_AUTH": "admin:s3cret"},
            stderr=log,
            start_new_session=True,
        )
        try:
            for _ in range(200):
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", http_port), timeout=1),
                ):
                    break
                time.sleep(0.05)
            asyncio.run(measure(server.pid, smtp_port, http_port, args.seconds, args.connections))
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
            log.seek(0)
            lines = log.read().splitlines()
            auth_lines = [line for line in lines if "auth" in line]
            print(f"server log: {len(lines)} lines, {len(auth_lines)} about auth; the last:")
            for line in auth_lines[-3:]:
                print("  ", line[:200])
            log.close()


if __name__ == "__main__":
    main()
