"""Processes the harness starts, and what /proc says about them.

Every child is started in its own session through :func:`spawn` and recorded,
so that :func:`cleanup_all` can end it (and whatever it forked) on any exit of
the harness, Ctrl-C included. Children never see the terminal's SIGINT: the
harness decides the order in which things stop.

Readiness is read from ``/proc/net/tcp`` (a listening socket on the port), not
probed with a connection, so no server ever sees a session the load did not
open.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
TCP_LISTEN = "0A"  # include/net/tcp_states.h: TCP_LISTEN = 10

_live: dict[int, subprocess.Popen[bytes]] = {}


def spawn(
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    stdout: Any = subprocess.DEVNULL,
    stderr: Any = subprocess.DEVNULL,
    stdin: Any = subprocess.DEVNULL,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a new session and remember it for :func:`cleanup_all`."""
    proc = subprocess.Popen(
        list(argv),
        env=env,
        cwd=cwd,
        stdout=stdout,
        stderr=stderr,
        stdin=stdin,
        start_new_session=True,
    )
    _live[proc.pid] = proc
    return proc


def children_of(pid: int) -> list[int]:
    """All descendants of ``pid`` (any depth), from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may contain spaces.
        fields = stat[stat.rfind(")") + 2 :].split()
        parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants that are alive."""
    return [pid, *children_of(pid)] if alive(pid) else []


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


def stop(
    proc: subprocess.Popen[bytes],
    *,
    sig: int = signal.SIGTERM,
    timeout_s: float = 15.0,
    extra_pids: Iterable[int] = (),
) -> tuple[bool, int | None]:
    """Send ``sig`` to ``proc``; SIGKILL it and its descendants after ``timeout_s``.

    Returns ``(clean, returncode)``: clean is False when SIGKILL was needed.
    ``extra_pids`` are processes that left the tree (daemons) but belong to it.
    """
    family = set(children_of(proc.pid)) | set(extra_pids)
    clean = True
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            clean = False
            family |= set(children_of(proc.pid))
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    # Stragglers: its own process group first, then each recorded descendant.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    for pid in family:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    _live.pop(proc.pid, None)
    return clean, proc.returncode


def cleanup_all() -> None:
    """End every process :func:`spawn` started that is still running."""
    for proc in list(_live.values()):
        stop(proc, sig=signal.SIGTERM, timeout_s=5.0)


def listening(port: int, host: str = "127.0.0.1") -> bool:
    """True when a TCP socket listens on ``host:port`` (IPv4), per /proc/net/tcp."""
    packed = socket.inet_aton(host)
    want = f"{int.from_bytes(packed, 'little'):08X}:{port:04X}"
    want_any = f"00000000:{port:04X}"
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    for line in lines:
        fields = line.split()
        if fields[3] == TCP_LISTEN and fields[1] in (want, want_any):
            return True
    return False


def wait_listening(port: int, proc: subprocess.Popen[bytes] | None, timeout_s: float) -> None:
    """Wait until something listens on ``port``; raise if ``proc`` dies first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if listening(port):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode} before listening")
        time.sleep(0.05)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout_s:.0f} s")


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def status_kib(pid: int, field: str) -> int | None:
    """A ``kB`` field of /proc/PID/status (``VmRSS``, ``VmHWM``), or None."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_kib(pids: Iterable[int]) -> int:
    """Sum of VmRSS over ``pids`` (shared pages are counted once per process)."""
    return sum(status_kib(pid, "VmRSS") or 0 for pid in pids)


def pss_kib(pids: Iterable[int]) -> int:
    """Sum of Pss over ``pids``: shared pages divided among the processes sharing them."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
        except OSError:
            continue
    return total


def cpu_s(pids: Iterable[int]) -> float:
    """User+system CPU of ``pids``, including their reaped children."""
    ticks = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        # fields[11:15] are utime, stime, cutime, cstime (proc(5) fields 14-17).
        ticks += sum(int(value) for value in fields[11:15])
    return ticks / CLOCK_TICKS_PER_S


def machine_cpu_s() -> tuple[float, float]:
    """(all CPU time, time stolen by the hypervisor) of the whole machine so far, summed over
    its CPUs, from /proc/stat; (0, 0) where it cannot be read."""
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()
    except OSError:
        return 0.0, 0.0
    if fields[:1] != ["cpu"] or len(fields) < 9:
        return 0.0, 0.0
    # user nice system idle iowait irq softirq steal (proc(5)); guest time is inside user.
    ticks = [int(value) for value in fields[1:9]]
    return sum(ticks) / CLOCK_TICKS_PER_S, ticks[7] / CLOCK_TICKS_PER_S


def raise_nofile(wanted: int) -> int:
    """Raise RLIMIT_NOFILE towards ``wanted`` (children inherit it); return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
