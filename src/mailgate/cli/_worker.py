"""The SMTP worker process's side of ``_workers``: serve SMTP until told to stop.

Run as ``python -c "from mailgate.cli._worker import main; main()"`` by the
serving process, which writes the worker's settings and number to its stdin.
"""

from __future__ import annotations

import asyncio
import pickle
import signal
import sys

from mailgate import MailgateError
from mailgate.cli._app import Mailgate
from mailgate.cli._exit import EXIT_FAILURE, EXIT_OK
from mailgate.cli._process import (
    READY,
    answer_parent,
    configure_process,
    new_runner,
    when_parent_gone,
)
from mailgate.config import Settings

__all__ = ["main"]


def main() -> None:
    """Read the settings from stdin, serve SMTP, exit with the status."""
    # Written by our parent:
    settings, number, commit_socket = pickle.load(sys.stdin.buffer)  # noqa: S301
    configure_process(settings, f"[worker {number}]")
    with new_runner() as runner:
        status = runner.run(_work(settings, number, commit_socket))
    sys.exit(status)


async def _work(settings: Settings, number: int, commit_socket: str | None) -> int:
    app = Mailgate(settings, worker=number, commit_socket=commit_socket)
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
        await stop.wait()
    finally:
        await app.aclose()
    return EXIT_OK
