"""SMTP worker processes: more event loops, and so more CPUs, on the same ports.

With ``--workers N`` above 1 the serving process runs SMTP itself and
starts N-1 workers (``WorkerPool``, a ``_supervisor.Supervisor``).  A worker
is ``python -m mailgate.runtime worker NUMBER`` (``run_worker``): a fresh
interpreter that opens the store, binds every SMTP listener on the ports the
serving process bound, with ``SO_REUSEPORT`` so that the kernel spreads new
connections among the processes, and serves SMTP only.  The web inbox stays
in the serving process, which learns of mail the workers store through the
store's live events.

A worker reads its settings, and where the commit service listens, on its
stdin; SIGTERM and SIGINT stop it gracefully, as they stop ``mailgate
serve``, and so does the end of its stdin (its parent is gone).  It reports
what it counts on its stdout, for ``/metrics`` (``_metrics``).

Chaos triggers set over the API (``/api/v1/chaos``, in the serving process)
reach the workers down the same pipes, as ``ChaosUpdate`` lines: numbered,
each answered with its number once the worker has it in force, and the API
answers only when every running worker has (``WorkerPool.send_chaos``), so a
test may send mail at once.  That pipe rather than a file the workers watch:
it is open already, a change arrives at once instead of at the next look,
and a worker with chaos off never looks at anything.  A worker started
again gets the triggers in force with its settings, and again once it
answers ``ready``, in case they changed meanwhile.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import pickle
import signal
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn

from mailgate import MailgateError
from mailgate.chaos import Chaos, ChaosError, ChaosTriggers
from mailgate.config import Listen, Settings
from mailgate.runtime._metrics import WorkerCounts, report_counts
from mailgate.runtime._process import (
    EXIT_FAILURE,
    EXIT_OK,
    READY,
    WORKER,
    answer_parent,
    configure_process,
    freeze_startup_objects,
    new_runner,
    when_parent_gone,
)
from mailgate.runtime._supervisor import Child, Supervisor

if TYPE_CHECKING:
    from mailgate.server import SMTPServer

__all__ = ["ChaosUpdate", "WorkerPool", "run_worker", "worker_settings"]

log = logging.getLogger("mailgate")

CHAOS_APPLIED_SECONDS = 10.0
"""How long ``send_chaos`` waits for the workers to say they have the triggers."""
_CHAOS = "chaos"
_CHAOS_APPLIED = "chaos-applied"


@dataclass(frozen=True, slots=True)
class ChaosUpdate:
    """Chaos triggers for a worker, numbered; it answers ``applied_line`` once they are in
    force.  ``generation`` grows with each change the serving process makes."""

    generation: int
    triggers: ChaosTriggers

    def to_line(self) -> str:
        return f"{_CHAOS} {self.generation} {self.triggers.text()}"

    @classmethod
    def from_line(cls, line: str) -> ChaosUpdate:
        """Raises ``ValueError`` or ``ChaosError`` for a line that is no update."""
        kind, generation, text = line.split(" ", 2)
        if kind != _CHAOS:
            raise ValueError(f"not a chaos update: {line[:40]!r}")
        return cls(int(generation), ChaosTriggers.parse(text))

    def applied_line(self) -> str:
        return f"{_CHAOS_APPLIED} {self.generation}"

    @staticmethod
    def applied(line: str) -> int | None:
        """The generation a worker's ``applied_line`` says it has in force, or ``None``."""
        kind, _, generation = line.partition(" ")
        return int(generation) if kind == _CHAOS_APPLIED and generation.isdigit() else None


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


class WorkerPool(Supervisor):
    """``count`` SMTP worker processes numbered from 1, started again when they die.

    ``commit_service_socket`` is where the commit service listens, if there is one;
    ``node`` the node's token, which the workers' mail carries (``Mailgate.node``);
    ``chaos`` the serving process's chaos triggers, whose changes the workers follow.
    """

    def __init__(
        self,
        settings: Settings,
        count: int,
        commit_service_socket: str | None = None,
        *,
        node: str = "",
        chaos: Chaos | None = None,
    ) -> None:
        super().__init__(count, settings.limits.shutdown_grace)
        self.settings = settings
        self.commit_service_socket = commit_service_socket
        self.node = node
        self.counts = WorkerCounts()
        """What the workers counted, as they report it."""
        self.chaos = chaos
        self._chaos_sent = 0
        self._chaos_applied: dict[int, int] = {}
        self._chaos_heard = asyncio.Event()
        if chaos is not None:
            chaos.follow(self.send_chaos)

    def _child(self, number: int) -> Child:
        settings = self.settings
        if self.chaos is not None:  # those in force now, not those at start
            settings = dataclasses.replace(settings, chaos_triggers=self.chaos.triggers)
        return Child(
            arguments=(WORKER, str(number)),
            payload=(settings, self.commit_service_socket, self.node),
            name=f"SMTP worker {number}",
        )

    def _started(self, number: int) -> None:
        self.counts.started(number, self._processes[number].pid)
        if self.chaos is not None:  # a change made while it started is not in its settings
            self._tell(number, ChaosUpdate(self._chaos_sent, self.chaos.triggers).to_line())

    def _exited(self, number: int) -> None:
        self.counts.exited(number)
        self._chaos_applied.pop(number, None)
        self._chaos_heard.set()  # nobody waits for a dead worker

    def _reported(self, number: int, line: str) -> None:
        applied = ChaosUpdate.applied(line)
        if applied is not None:
            self._chaos_applied[number] = max(applied, self._chaos_applied.get(number, 0))
            self._chaos_heard.set()
        elif not self.counts.reported(number, line):
            super()._reported(number, line)

    async def send_chaos(self, triggers: ChaosTriggers) -> None:
        """Have every running worker put ``triggers`` in force; return once each says it has,
        or after ``CHAOS_APPLIED_SECONDS`` (logged).  A worker starting meanwhile gets
        them when it answers ``ready``."""
        self._chaos_sent += 1
        update = ChaosUpdate(self._chaos_sent, triggers)
        told = {n: p.pid for n, p in self._processes.items() if self._tell(n, update.to_line())}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CHAOS_APPLIED_SECONDS
        while waiting := [
            number
            for number, pid in told.items()
            if self._chaos_applied.get(number, 0) < update.generation
            and number in self._processes
            and self._processes[number].pid == pid
            and self._processes[number].returncode is None
        ]:
            self._chaos_heard.clear()
            try:
                async with asyncio.timeout_at(deadline):
                    await self._chaos_heard.wait()
            except TimeoutError:
                log.warning(
                    "SMTP workers %s did not say they have the new chaos triggers in %g s",
                    ", ".join(map(str, waiting)),
                    CHAOS_APPLIED_SECONDS,
                )
                return


def run_worker(number: int) -> NoReturn:
    """Be SMTP worker ``number``: read the settings from stdin, serve SMTP, exit with the status."""
    # Written by our parent:
    settings, commit_service_socket, node = pickle.load(sys.stdin.buffer)  # noqa: S301
    configure_process(settings, f"[worker {number}]")
    with new_runner() as runner:
        status = runner.run(_work(settings, number, commit_service_socket, node))
    sys.exit(status)


async def _work(
    settings: Settings, number: int, commit_service_socket: str | None, node: str
) -> int:
    from mailgate.runtime._node import Mailgate  # noqa: PLC0415 - _node imports this module

    app = Mailgate(settings, worker=number, commit_service_socket=commit_service_socket, node=node)
    try:
        await app.start()
    except (MailgateError, OSError) as error:
        answer_parent(f"error: {error}")
        return EXIT_FAILURE
    try:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)

        when_parent_gone(loop, stop.set, lambda line: _apply_chaos(app.chaos, line))
        freeze_startup_objects()
        answer_parent(READY)
        reporting = asyncio.create_task(report_counts(app.metrics), name="mailgate-counts")
        await stop.wait()
        reporting.cancel()
    finally:
        await app.aclose()
    return EXIT_OK


def _apply_chaos(chaos: Chaos | None, line: str) -> None:
    """Be a worker told of new chaos triggers (a ``ChaosUpdate`` line): put them in force,
    and say so."""
    try:
        update = ChaosUpdate.from_line(line)
    except (ValueError, ChaosError) as error:
        log.error("ignoring a line from the serving process: %s", error)
        return
    if chaos is not None:
        chaos.set(update.triggers)
    answer_parent(update.applied_line())
