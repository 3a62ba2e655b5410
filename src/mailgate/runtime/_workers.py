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
"""

from __future__ import annotations

import asyncio
import dataclasses
import pickle
import signal
import sys
from typing import TYPE_CHECKING, NoReturn

from mailgate import MailgateError
from mailgate.config import Listen, Settings
from mailgate.runtime._metrics import WorkerCounts, report_counts
from mailgate.runtime._process import (
    EXIT_FAILURE,
    EXIT_OK,
    READY,
    WORKER,
    answer_parent,
    configure_process,
    new_runner,
    when_parent_gone,
)
from mailgate.runtime._supervisor import Child, Supervisor

if TYPE_CHECKING:
    from mailgate.server import SMTPServer

__all__ = ["WorkerPool", "run_worker", "worker_settings"]


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
    ``node`` the node's token, which the workers' mail carries (``Mailgate.node``).
    """

    def __init__(
        self,
        settings: Settings,
        count: int,
        commit_service_socket: str | None = None,
        *,
        node: str = "",
    ) -> None:
        super().__init__(count, settings.limits.shutdown_grace)
        self.settings = settings
        self.commit_service_socket = commit_service_socket
        self.node = node
        self.counts = WorkerCounts()
        """What the workers counted, as they report it."""

    def _child(self, number: int) -> Child:
        return Child(
            arguments=(WORKER, str(number)),
            payload=(self.settings, self.commit_service_socket, self.node),
            name=f"SMTP worker {number}",
        )

    def _started(self, number: int) -> None:
        self.counts.started(number, self._processes[number].pid)

    def _exited(self, number: int) -> None:
        self.counts.exited(number)

    def _reported(self, number: int, line: str) -> None:
        if not self.counts.reported(number, line):
            super()._reported(number, line)


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

        when_parent_gone(loop, stop.set)
        answer_parent(READY)
        reporting = asyncio.create_task(report_counts(app.metrics), name="mailgate-counts")
        await stop.wait()
        reporting.cancel()
    finally:
        await app.aclose()
    return EXIT_OK
