"""SMTP worker processes: more event loops, and so more CPUs, on the same ports.

With ``--workers N`` above 1 the serving process runs SMTP itself and
starts N-1 workers.  A worker is a fresh interpreter that opens the store,
binds every SMTP listener on the ports the serving process bound, with
``SO_REUSEPORT`` so that the kernel spreads new connections among the
processes, and serves SMTP only.  The web inbox stays in the serving
process, which learns of mail the workers store through the store's live
events.

The serving process hands a worker its settings on the worker's stdin (a
pickle; both ends are this program) and keeps that pipe open: a worker
whose stdin reaches end-of-file has lost its parent and stops.  A worker
answers ``ready``, or ``error: ...`` on one line, on its stdout.  SIGTERM
and SIGINT stop a worker gracefully, as they stop ``mailgate serve``.  A
worker that dies is started again, after a pause that grows with each
failure in a row.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import pickle
import signal
import sys
from asyncio.subprocess import PIPE, Process

from mailgate import MailgateError
from mailgate.cli._process import READY
from mailgate.config import Listen, Settings
from mailgate.server import SMTPServer

__all__ = ["Children", "WorkerError", "WorkerPool", "worker_settings"]

log = logging.getLogger("mailgate")

START_TIMEOUT_SECONDS = 60.0
RESTART_DELAYS_SECONDS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
"""Pauses before starting a dead worker again, the n-th for the n-th failure in a row."""
HEALTHY_AFTER_SECONDS = 60.0
"""A worker that ran this long before it died starts again at the shortest pause."""
STOP_MARGIN_SECONDS = 5.0
"""How much longer than the shutdown grace a worker may take to stop before it is killed."""

_CHILD = "from mailgate.cli._worker import main; main()"


class WorkerError(MailgateError):
    """A worker process (or the commit process) could not start; one line."""


def worker_settings(settings: Settings, server: SMTPServer) -> Settings:
    """What a worker runs with: the bound SMTP ports (port 0 resolved) and no web inbox."""

    def bound(name: str, listen: Listen | None) -> Listen | None:
        addresses = server.addresses_of(name)
        if listen is None or not addresses:
            return listen
        return dataclasses.replace(listen, port=addresses[0][1])

    return dataclasses.replace(
        settings,
        http=None,
        smtp=bound("smtp", settings.smtp) or settings.smtp,
        submission=bound("submission", settings.submission),
        smtps=bound("smtps", settings.smtps),
    )


class Children:
    """Child processes numbered from 1, each started again when it dies.

    A child is ``python -c CODE``; it gets a payload pickled on its stdin and
    answers ``ready``, or ``error: ...`` on one line, on its stdout.
    """

    def __init__(self, count: int, grace: float) -> None:
        self.count = count
        self._grace = grace
        self._processes: dict[int, Process] = {}
        self._supervisors: set[asyncio.Task[None]] = set()
        self._closing = False

    def _child(self, number: int) -> tuple[str, object, str]:
        """The code child ``number`` runs, its payload, and its name in messages."""
        raise NotImplementedError

    @property
    def pids(self) -> list[int]:
        """The process ids of the children running now."""
        return [p.pid for p in self._processes.values() if p.returncode is None]

    async def start(self) -> None:
        """Start every child and wait until each serves.

        Raises ``WorkerError`` (one line) when one cannot start; then none is left running.
        """
        numbers = range(1, self.count + 1)
        results = await asyncio.gather(*(self._spawn(n) for n in numbers), return_exceptions=True)
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is not None:
            await self.aclose()
            raise failure
        for number in numbers:
            task = asyncio.create_task(self._supervise(number), name=f"mailgate-child-{number}")
            self._supervisors.add(task)
            task.add_done_callback(self._supervisors.discard)

    async def _spawn(self, number: int) -> None:
        code, payload, name = self._child(number)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, stdin=PIPE, stdout=PIPE
        )
        self._processes[number] = process
        assert process.stdin is not None
        assert process.stdout is not None
        process.stdin.write(pickle.dumps(payload))
        try:
            await process.stdin.drain()
            line = await asyncio.wait_for(process.stdout.readline(), START_TIMEOUT_SECONDS)
        except (TimeoutError, ConnectionError):
            line = b""
        if line.rstrip(b"\n") == READY.encode():
            return
        await _stop(process, STOP_MARGIN_SECONDS)
        reason = line.decode("utf-8", "replace").strip().removeprefix("error: ")
        raise WorkerError(
            f"{name} did not start: " + (reason or f"it exited with status {process.returncode}")
        )

    async def _supervise(self, number: int) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        started = loop.time()
        while True:
            status = await self._processes[number].wait()
            if self._closing:
                return
            if loop.time() - started >= HEALTHY_AFTER_SECONDS:
                failures = 0
            delay = RESTART_DELAYS_SECONDS[min(failures, len(RESTART_DELAYS_SECONDS) - 1)]
            failures += 1
            log.error(
                "%s exited with status %s; starting it again in %g s",
                self._child(number)[2],
                status,
                delay,
            )
            await asyncio.sleep(delay)
            if self._closing:
                return
            started = loop.time()
            try:
                await self._spawn(number)
            except WorkerError as error:
                log.error("%s", error)

    async def aclose(self) -> None:
        """Stop every child gracefully (SIGTERM), killing those that take too long."""
        self._closing = True
        for task in list(self._supervisors):
            task.cancel()
        grace = self._grace + STOP_MARGIN_SECONDS
        await asyncio.gather(*(_stop(p, grace) for p in self._processes.values()))
        self._processes.clear()


class WorkerPool(Children):
    """``count`` SMTP worker processes numbered from 1, started again when they die.

    ``commit_socket`` is where the commit process listens, if there is one.
    """

    def __init__(self, settings: Settings, count: int, commit_socket: str | None = None) -> None:
        super().__init__(count, settings.limits.shutdown_grace)
        self.settings = settings
        self.commit_socket = commit_socket

    def _child(self, number: int) -> tuple[str, object, str]:
        return _CHILD, (self.settings, number, self.commit_socket), f"SMTP worker {number}"


async def _stop(process: Process, grace: float) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; wait for the exit, close the pipes."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), grace)
        except TimeoutError:
            log.warning("process %d did not stop in time: killing it", process.pid)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
    if process.stdin is not None:
        process.stdin.close()
