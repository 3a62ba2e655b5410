"""What every process of a node sets up first, and how a child talks to its parent.

The serving process and each child (an SMTP worker, the commit service) set
up logging, the GIL and their event loop the same way.  A child is
``python -m mailgate.runtime KIND`` (``__main__``): it reads its payload from
stdin, a pipe its parent keeps open, and answers ``READY`` or ``error: ...``
on one line of stdout.  Its parent may write it lines on stdin afterwards
(``when_parent_gone`` hands them over), and it may report on stdout.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import resource
import sys
from collections.abc import Callable

from mailgate.config import Settings
from mailgate.runtime._logging import log_handler, spare_record_details

__all__ = [
    "COMMIT_SERVICE",
    "EXIT_FAILURE",
    "EXIT_OK",
    "READY",
    "WORKER",
    "answer_parent",
    "batch_scheduling",
    "child_command",
    "configure_process",
    "freeze_startup_objects",
    "new_runner",
    "open_files_wanted",
    "when_parent_gone",
]

log = logging.getLogger("mailgate")

GIL_SWITCH_INTERVAL_SECONDS = 0.002
GC_THRESHOLDS = (20_000, 20, 20)
"""The cyclic garbage collector's thresholds (``gc.set_threshold``) in every process of a
node, against Python's 700, 10, 10: a message makes hundreds of objects that reference
counting frees, and at the default a young collection came every 90 messages or so, each
taking some of what survived along to the older generations (docs/design/performance.md)."""
STDIN = 0
READY = "ready"
"""What a child process (an SMTP worker, the commit service) answers once it serves."""
EXIT_OK = 0
EXIT_FAILURE = 1
"""A child's exit status when it could not start (it told its parent why)."""

WORKER = "worker"
COMMIT_SERVICE = "commit-service"
"""The kinds of child process: the first argument after ``python -m mailgate.runtime``."""


def child_command(*arguments: str) -> list[str]:
    """The command line of a child process: ``python -m mailgate.runtime KIND ...``.

    The kind (and a worker's number) show in ``ps``.
    """
    return [sys.executable, "-m", "mailgate.runtime", *arguments]


def configure_process(settings: Settings, label: str = "") -> None:
    """Log to stderr at the configured level and in the configured form (text or JSON).

    ``label`` names a child process: after each logger's name in text, as
    ``process`` in JSON.
    """
    if not logging.getLogger().handlers:  # else logging is someone else's (basicConfig agrees)
        spare_record_details()
    logging.basicConfig(
        handlers=[log_handler(settings.log_format, label)], level=settings.log_level.upper()
    )
    # A thread beside a busy event loop (adopting a large message's body file, a store's
    # writer thread) waits for the GIL after each blocking call; by default a busy loop
    # keeps it for up to 5 ms, which would add to latency.  Shorter than 2 ms, the
    # threads trade it so often that both spend more CPU a message
    # (docs/design/performance.md).
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_SECONDS)
    gc.set_threshold(*GC_THRESHOLDS)
    _raise_open_files_limit(open_files_wanted(settings))


def freeze_startup_objects() -> None:
    """Once a process serves: collect, then leave what it has made so far (modules, classes,
    settings, caches) out of every later collection (``gc.freeze``), which would otherwise
    walk all of it each time it reaches the oldest generation."""
    gc.collect()
    gc.freeze()


def batch_scheduling() -> None:
    """Have the kernel schedule this process as ``SCHED_BATCH``.

    Such a process is never run ahead of a running one the moment it wakes up: it
    waits for a CPU to come free, with the same share of CPU time as before.  The
    commit service asks for it: a frame arriving then no longer interrupts the SMTP
    process that sent it, which goes on to finish what else it had to do, so each
    transaction takes more messages, and costs less a message (at peak, 1.03 to 1.06
    times the throughput: docs/design/performance.md).  The threads the
    process starts afterwards inherit it.  Linux only; elsewhere, and where the call
    is refused, nothing changes.
    """
    setscheduler = getattr(os, "sched_setscheduler", None)
    policy = getattr(os, "SCHED_BATCH", None)
    if setscheduler is None or policy is None:
        return
    try:
        setscheduler(0, policy, os.sched_param(0))
    except OSError as error:
        log.debug("could not be scheduled as a batch process: %s", error)


def open_files_wanted(settings: Settings) -> int:
    """File descriptors an SMTP process may need at its limits: each connection holds its
    socket and, once its message is past the spool budget, the spool file; then some to
    spare for listeners, the store and logs."""
    return 2 * settings.limits.max_connections + 256


def _raise_open_files_limit(wanted: int) -> None:
    """Raise the soft open-files limit towards ``wanted`` (as far as the hard one allows).

    A default soft limit of 1,024 would have a process with 1,000 connections, some of
    them spooling to files, fail to accept or to spool well before its own limits.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < wanted:
        log.warning(
            "the open-files limit (%d) is below the %d that --max-connections may need",
            target,
            wanted,
        )


def new_runner() -> asyncio.Runner:
    """An asyncio runner on uvloop when it is installed (the ``fast`` extra)."""
    try:
        import uvloop  # noqa: PLC0415 - optional: the fast extra
    except ImportError:
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def answer_parent(line: str) -> None:
    """Tell the parent process ``READY`` or ``error: ...``, or later a report: one line on
    stdout."""
    sys.stdout.buffer.write(line.replace("\n", " ").encode() + b"\n")
    sys.stdout.buffer.flush()


def when_parent_gone(
    loop: asyncio.AbstractEventLoop,
    callback: Callable[[], None],
    on_line: Callable[[str], None] | None = None,
) -> None:
    """Call ``callback`` once stdin, a pipe from the parent process, reaches its end; until
    then hand ``on_line`` each line the parent writes there (without its end), if given."""
    pending = bytearray()

    def readable() -> None:
        data = os.read(STDIN, 4096)
        if not data:
            loop.remove_reader(STDIN)
            callback()
            return
        if on_line is None:
            return
        pending.extend(data)
        while (end := pending.find(b"\n")) >= 0:
            line = pending[:end].decode("utf-8", "replace")
            del pending[: end + 1]
            on_line(line)

    loop.add_reader(STDIN, readable)
