"""Load drivers: Postfix's smtp-source, the asyncio clients in bench/, one timed
transaction and HTTP requests. Everything is bounded in count and time."""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import shutil
import signal
import smtplib
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import _proc
from bench.servers import REPO, VENV_BIN

SMTP_SOURCE = Path(shutil.which("smtp-source") or "/usr/sbin/smtp-source")
SENDER = "bench@client.test"
RECIPIENT = "sink@bench.test"
RELAY_RECIPIENT = "sink@elsewhere.test"  # not bench.test: a relaying server sends it onward
PYTHON = VENV_BIN / "python" if (VENV_BIN / "python").exists() else Path(sys.executable)


@dataclass
class SourceRun:
    """One smtp-source invocation."""

    argv: list[str]
    status: int
    elapsed_s: float
    messages: int
    stderr: str

    @property
    def ok(self) -> bool:
        return self.status == 0

    def template(self, port: int) -> str:
        """The command as the report shows it (the port is a placeholder)."""
        shown = ["smtp-source", *self.argv[1:]]
        return " ".join(shown).replace(f"127.0.0.1:{port}", "127.0.0.1:PORT")


def smtp_source(
    port: int,
    *,
    messages: int,
    size: int,
    sessions: int = 50,
    per_session: bool = True,
    subject: str | None = None,
    recipient: str = RECIPIENT,
    timeout_s: float = 600.0,
) -> SourceRun:
    """Run smtp-source; without ``-A`` it exits non-zero at the first refusal,
    so status 0 means every message was acknowledged with 2xx."""
    argv = [str(SMTP_SOURCE)]
    if per_session:
        argv.append("-d")
    argv += ["-s", str(sessions), "-m", str(messages), "-l", str(size)]
    argv += ["-f", SENDER, "-t", recipient]
    if subject is not None:
        argv += ["-S", subject]
    argv.append(f"127.0.0.1:{port}")
    started = time.perf_counter()
    proc = _proc.spawn(argv, stderr=subprocess.PIPE)
    try:
        _out, err = proc.communicate(timeout=timeout_s)
        status = proc.returncode
    except subprocess.TimeoutExpired:
        _proc.stop(proc, sig=signal.SIGKILL, timeout_s=5)
        err = f"timed out after {timeout_s:.0f} s".encode()
        status = -1
    elapsed = time.perf_counter() - started
    _proc._live.pop(proc.pid, None)
    return SourceRun(argv, status, elapsed, messages, err.decode(errors="replace").strip())


def smtp_source_split(
    ports: list[int],
    *,
    messages: int,
    size: int,
    sessions: int = 50,
    per_session: bool = True,
    timeout_s: float = 600.0,
) -> SourceRun:
    """smtp-source on each port at once, the sessions and messages shared out between
    them (the first ports take what does not divide); the elapsed time is until the last
    one ends, and the status is the first failure's, or 0."""
    if len(ports) == 1:
        return smtp_source(
            ports[0],
            messages=messages,
            size=size,
            sessions=sessions,
            per_session=per_session,
            timeout_s=timeout_s,
        )
    share = len(ports)
    procs = []
    started = time.perf_counter()
    for index, port in enumerate(ports):
        argv = [str(SMTP_SOURCE)] + (["-d"] if per_session else [])
        argv += ["-s", str(sessions // share + (index < sessions % share))]
        argv += ["-m", str(messages // share + (index < messages % share)), "-l", str(size)]
        argv += ["-f", SENDER, "-t", RECIPIENT, f"127.0.0.1:{port}"]
        procs.append((argv, _proc.spawn(argv, stderr=subprocess.PIPE)))
    status, errors = 0, []
    deadline = started + timeout_s
    for argv, proc in procs:
        try:
            _out, err = proc.communicate(timeout=max(0.1, deadline - time.perf_counter()))
            code = proc.returncode
        except subprocess.TimeoutExpired:
            _proc.stop(proc, sig=signal.SIGKILL, timeout_s=5)
            err, code = f"timed out after {timeout_s:.0f} s".encode(), -1
        _proc._live.pop(proc.pid, None)
        status = status or code
        if err.strip():
            errors.append(f"{argv[-1]}: {err.decode(errors='replace').strip()}")
    elapsed = time.perf_counter() - started
    shown = [*procs[0][0][:-1], f"127.0.0.1:{ports[0]}"]
    shown[shown.index("-s") + 1] = f"{sessions}/{share}"
    shown[shown.index("-m") + 1] = f"{messages}/{share}"
    shown.append(f"(one such smtp-source on each of {share} ports at once)")
    return SourceRun(shown, status, elapsed, messages, "\n".join(errors))


def _bench_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _read_json_line(proc: subprocess.Popen[bytes], timeout_s: float) -> dict[str, Any]:
    """The next line of ``proc``'s stdout, parsed as JSON, within ``timeout_s``."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        buf = b""
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise TimeoutError(f"no answer from the client within {timeout_s:.0f} s")
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                raise RuntimeError(f"client exited (status {proc.wait()}) without answering")
            buf += chunk
    return dict(json.loads(buf.split(b"\n", 1)[0]))


class IdleClient:
    """``bench.idle_client`` in a subprocess, driven step by step."""

    def __init__(
        self, port: int, count: int, *, concurrency: int, timeout_s: float, deadline_s: float
    ) -> None:
        self.argv = [
            str(PYTHON),
            "-m",
            "bench.idle_client",
            "--port",
            str(port),
            "--count",
            str(count),
            "--concurrency",
            str(concurrency),
            "--timeout",
            str(timeout_s),
            "--deadline",
            str(deadline_s),
        ]
        self.port = port
        self._limit_s = deadline_s + timeout_s + 60
        self.proc = _proc.spawn(
            self.argv,
            env=_bench_env(),
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )

    def template(self) -> str:
        shown = [".venv/bin/python", *self.argv[1:]]
        return " ".join(shown).replace(f"--port {self.port}", "--port PORT")

    def held(self) -> dict[str, Any]:
        return _read_json_line(self.proc, self._limit_s)

    def release(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"\n")
        self.proc.stdin.flush()
        return _read_json_line(self.proc, self._limit_s)

    def close(self) -> None:
        _proc.stop(self.proc, sig=signal.SIGTERM, timeout_s=30)


def paced_latency(
    port: int | list[int],
    *,
    rate: float,
    duration_s: float,
    warmup_s: float,
    connections: int = 50,
) -> tuple[str, dict[str, Any]]:
    """Run ``bench.latency_client`` (its sessions shared out between the ports, when
    several); return its command template and its report."""
    ports = port if isinstance(port, list) else [port]
    argv = [str(PYTHON), "-m", "bench.latency_client"]
    for each in ports:
        argv += ["--port", str(each)]
    argv += [
        "--rate",
        f"{rate:.0f}",
        "--duration",
        str(duration_s),
        "--warmup",
        str(warmup_s),
        "--connections",
        str(connections),
    ]
    proc = _proc.spawn(
        argv, env=_bench_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        report = _read_json_line(proc, duration_s + 120)
    finally:
        stderr = b""
        with contextlib.suppress(subprocess.TimeoutExpired):
            _out, stderr = proc.communicate(timeout=30)
        _proc.stop(proc, timeout_s=5)
        if stderr.strip():
            sys.stderr.write(stderr.decode(errors="replace")[-2000:])
    shown = " ".join([".venv/bin/python", *argv[1:]])
    for index, each in enumerate(ports):
        name = "PORT" if len(ports) == 1 else f"PORT{index + 1}"
        shown = shown.replace(f"--port {each} ", f"--port {name} ")
    shown = shown.replace(f"--rate {rate:.0f}", "--rate R")
    return shown, report


def timed_transaction(port: int, timeout_s: float = 10.0) -> tuple[float | None, str]:
    """Send one small message in a new session; return (milliseconds, error)."""
    started = time.perf_counter()
    try:
        with smtplib.SMTP(
            "127.0.0.1", port, local_hostname="probe.client.test", timeout=timeout_s
        ) as smtp:
            smtp.sendmail(SENDER, [RECIPIENT], b"Subject: alongside\r\n\r\nhello\r\n")
    except (OSError, smtplib.SMTPException) as exc:
        return None, f"{type(exc).__name__}: {exc}"[:200]
    return (time.perf_counter() - started) * 1000.0, ""


def http_get(url: str, timeout_s: float = 30.0) -> tuple[int, int, float]:
    """GET ``url``; return (status, body octets, milliseconds)."""
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - loopback http
            body = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        return exc.code, 0, (time.perf_counter() - started) * 1000.0
    return status, len(body), (time.perf_counter() - started) * 1000.0
