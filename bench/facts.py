"""Facts about the machine and the software, for the report."""

from __future__ import annotations

import datetime as dt
import os
import platform
import resource
import subprocess
from pathlib import Path

from bench.servers import (
    POSTGRESQL,
    REPO,
    VENV_BIN,
    MailgatePostgreSQL,
    Server,
    _venv_module_version,
    postfix_version,
    psycopg,
)


def _run(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return "?"
    return (done.stdout or done.stderr).strip() or "?"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _memory() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "?"


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.platform()


def _postgresql() -> str:
    """The server's version and the settings that decide what a commit costs."""
    if psycopg is None:
        return "?"
    names = ("fsync", "synchronous_commit", "wal_sync_method", "commit_delay")
    try:
        with psycopg.connect(f"{POSTGRESQL}/postgres", connect_timeout=5) as db:
            version = db.execute("SHOW server_version").fetchone()
            settings = db.execute(
                "SELECT name, setting FROM pg_settings WHERE name = ANY(%s) ORDER BY name",
                (list(names),),
            ).fetchall()
    except psycopg.Error:
        return "?"
    shown = ", ".join(f"{name}={setting}" for name, setting in settings)
    return f"{version[0] if version else '?'} at {POSTGRESQL} (server defaults: {shown})"


def collect(workdir: Path, servers: dict[str, Server]) -> dict[str, str]:
    """What a reader needs to weigh the numbers."""
    python = VENV_BIN / "python"
    uvloop = _venv_module_version("uvloop")
    facts = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": _run(["nproc"]),
        "cpu": _cpu_model(),
        "memory": _memory(),
        "kernel": platform.release(),
        "os": _os_name(),
        "filesystem": _run(["findmnt", "-no", "FSTYPE,OPTIONS", "-T", str(workdir)]),
        "python": _run([str(python), "-c", "import sys; print(sys.version.split()[0])"]),
        "postfix": postfix_version(),
        "aiosmtpd": _venv_module_version("aiosmtpd"),
        "uvloop": uvloop,
        "event_loop": "asyncio"
        if uvloop == "not installed" or os.environ.get("BENCH_EVENT_LOOP") == "asyncio"
        else "uvloop",
        "nofile": str(resource.getrlimit(resource.RLIMIT_NOFILE)[0]),
        "loadavg": " ".join(f"{load:.2f}" for load in os.getloadavg()),
        "git": _run(["git", "-C", str(REPO), "describe", "--always", "--dirty"]),
    }
    if any(
        isinstance(server, MailgatePostgreSQL) and not server.unavailable()
        for server in servers.values()
    ):
        facts["postgresql"] = _postgresql()
    mailgate = servers.get("mailgate")
    if mailgate is not None:
        facts["mailgate"] = mailgate.unavailable() or mailgate.version()
    return facts
