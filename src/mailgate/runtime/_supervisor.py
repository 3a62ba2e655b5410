"""Supervision of child processes: start them, start again those that die, stop them.

The SMTP workers (``_workers``) and the commit service (``_commit_service``)
are children of the serving process, each a fresh interpreter running
``python -m mailgate.runtime KIND`` (``__main__``).  The parent hands a child
its payload on the child's stdin (a pickle; both ends are this program) and
keeps that pipe open: a child whose stdin reaches end-of-file has lost its
parent and stops.  A child answers ``ready``, or ``error: ...`` on one line,
on its stdout; each line it writes there afterwards is a report for its
parent (``Supervisor._reported``: the commit service says so whether its
commits go through).  Once a child has answered, its parent may write it lines
on its stdin (``Supervisor._tell``), never before: the child reads its payload
through a buffered reader, which could swallow what came behind it.  SIGTERM
stops a child gracefully; one that takes too long is killed.  A child that
dies is started again, after a pause that grows with each failure in a row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import signal
from asyncio.subprocess import PIPE, Process
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from mailgate import MailgateError
from mailgate.runtime._process import READY, child_command

__all__ = ["Child", "ChildStartError", "Supervisor"]

log = logging.getLogger("mailgate")

START_TIMEOUT_SECONDS = 60.0
RESTART_DELAYS_SECONDS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
"""Pauses before starting a dead child again, the n-th for the n-th failure in a row."""
HEALTHY_AFTER_SECONDS = 60.0
"""A child that ran this long before it died starts again at the shortest pause."""
STOP_MARGIN_SECONDS = 5.0
"""How much longer than the shutdown grace a child may take to stop before it is killed."""


class ChildStartError(MailgateError):
    """A child process (an SMTP worker, the commit service) could not start; one line."""


@dataclass(frozen=True)
class Child:
    """What one child process runs."""

    arguments: tuple[str, ...]
    """After ``python -m mailgate.runtime``: its kind, and a worker's number."""
    payload: object
    """Pickled to its stdin."""
    name: str
    """In messages: ``SMTP worker 2``, ``the commit service``."""


class Supervisor:
    """Child processes numbered from 1, each started again when it dies.

    A subclass says what child ``number`` runs (``_child``).
    """

    def __init__(self, count: int, grace: float) -> None:
        self.count = count
        self._grace = grace
        self._processes: dict[int, Process] = {}
        self._ready: set[int] = set()
        """The children that answered ``ready`` and have not exited since."""
        self._watchers: set[asyncio.Task[None]] = set()
        self._closing = False

    def _child(self, number: int) -> Child:
        """What child ``number`` runs."""
        raise NotImplementedError

    def _started(self, number: int) -> None:
        """Child ``number`` answered ``ready`` (at start, or started again)."""

    def _exited(self, number: int) -> None:
        """Child ``number`` exited, and is to be started again."""

    def _reported(self, number: int, line: str) -> None:
        """Child ``number`` wrote ``line`` (without its end) on its stdout after ``ready``."""
        log.warning("%s said %r", self._child(number).name, line[:200])

    def _tell(self, number: int, line: str) -> bool:
        """Write ``line`` to child ``number``'s stdin if it runs and has answered ``ready``;
        say whether it was written."""
        process = self._processes.get(number)
        if process is None or number not in self._ready or process.returncode is not None:
            return False
        assert process.stdin is not None
        process.stdin.write(line.encode() + b"\n")
        return True

    @property
    def pids(self) -> list[int]:
        """The process ids of the children running now."""
        return [p.pid for p in self._processes.values() if p.returncode is None]

    async def start(self) -> None:
        """Start every child and wait until each serves.

        Raises ``ChildStartError`` (one line) when one cannot start; then none is left running.
        """
        numbers = range(1, self.count + 1)
        results = await asyncio.gather(*(self._spawn(n) for n in numbers), return_exceptions=True)
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is not None:
            await self.aclose()
            raise failure
        for number in numbers:
            self._track(self._supervise(number), f"mailgate-child-{number}")

    def _track(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def _listen(self, number: int, stdout: asyncio.StreamReader) -> None:
        """Hand each line child ``number`` writes to ``_reported``, until it exits."""
        while line := await stdout.readline():
            self._reported(number, line.decode("utf-8", "replace").rstrip("\n"))

    async def _spawn(self, number: int) -> None:
        child = self._child(number)
        process = await asyncio.create_subprocess_exec(
            *child_command(*child.arguments), stdin=PIPE, stdout=PIPE
        )
        self._processes[number] = process
        assert process.stdin is not None
        assert process.stdout is not None
        process.stdin.write(pickle.dumps(child.payload))
        try:
            await process.stdin.drain()
            async with asyncio.timeout(START_TIMEOUT_SECONDS):
                line = await process.stdout.readline()
        except (TimeoutError, ConnectionError):
            line = b""
        if line.rstrip(b"\n") == READY.encode():
            self._ready.add(number)
            self._started(number)
            self._track(self._listen(number, process.stdout), f"mailgate-child-{number}-reports")
            return
        await _stop(process, STOP_MARGIN_SECONDS)
        reason = line.decode("utf-8", "replace").strip().removeprefix("error: ")
        raise ChildStartError(
            f"{child.name} did not start: "
            + (reason or f"it exited with status {process.returncode}")
        )

    async def _supervise(self, number: int) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        started = loop.time()
        while True:
            status = await self._processes[number].wait()
            self._ready.discard(number)
            if self._closing:
                return
            self._exited(number)
            if loop.time() - started >= HEALTHY_AFTER_SECONDS:
                failures = 0
            delay = RESTART_DELAYS_SECONDS[min(failures, len(RESTART_DELAYS_SECONDS) - 1)]
            failures += 1
            log.error(
                "%s exited with status %s; starting it again in %g s",
                self._child(number).name,
                status,
                delay,
            )
            await asyncio.sleep(delay)
            if self._closing:
                return
            started = loop.time()
            try:
                await self._spawn(number)
            except ChildStartError as error:
                log.error("%s", error)

    async def aclose(self) -> None:
        """Stop every child gracefully (SIGTERM), killing those that take too long."""
        self._closing = True
        for task in list(self._watchers):
            task.cancel()
        grace = self._grace + STOP_MARGIN_SECONDS
        await asyncio.gather(*(_stop(p, grace) for p in self._processes.values()))
        self._processes.clear()


async def _stop(process: Process, grace: float) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; wait for the exit, close the pipes."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(grace):
                await process.wait()
        except TimeoutError:
            log.warning("process %d did not stop in time: killing it", process.pid)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
    if process.stdin is not None:
        process.stdin.close()
