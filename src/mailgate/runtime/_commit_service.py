"""The commit service: one process that commits the new mail of every SMTP process.

With an SQLite store, a mailgate node (``mailgate serve``, and so
``mailgate.testing.MailgateServer``) commits new mail in a process of its
own, which every SMTP process (the serving process and its workers) reaches
over a Unix socket in a new directory only this user can enter.  It is the
node's one writer of new mail, as Postfix's cleanup is.  Its two sides are
here:

- ``CommitService``, in the serving process: starts it (the node does not
  start without it), starts it again when it dies (a
  ``_supervisor.Supervisor`` of one child), and stops it last, after every
  SMTP process has finished its transactions.  While it is being started
  again the SMTP processes answer new mail with ``451`` and reach it again
  as soon as it listens (``mailgate.stores.SQLiteStore``'s route for new
  mail): clients send again, as they do.  It is what ``/readyz`` asks
  whether new mail is committed (``health``): the service reports, on its
  stdout, each change of whether its commits go through
  (``mailgate.stores.WriteState``), whichever SMTP process sent the mail.
- ``run_commit_service``, the service itself (``python -m mailgate.runtime
  commit-service``): reads the settings and the socket path on its stdin,
  opens the store, listens on the socket, answers ``ready``, and commits what
  the SMTP processes send (``mailgate.stores.SQLiteStore.serve_commit_service``)
  until SIGTERM or until its stdin reaches end-of-file (the serving process
  is gone: then it removes the socket and its directory itself).  It ignores
  SIGINT: on Ctrl-C the SMTP processes finish their transactions first, and
  the serving process stops it last.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import NoReturn

from mailgate import MailgateError
from mailgate.config import Settings
from mailgate.ports import HealthCheck
from mailgate.runtime._process import (
    COMMIT_SERVICE,
    EXIT_FAILURE,
    EXIT_OK,
    READY,
    answer_parent,
    batch_scheduling,
    configure_process,
    freeze_startup_objects,
    new_runner,
    when_parent_gone,
)
from mailgate.runtime._supervisor import Child, Supervisor
from mailgate.stores import SQLiteStore, WriteHealth, WriteState, open_store

__all__ = ["CommitService", "run_commit_service"]

LISTEN_BACKLOG = 128


class CommitService(Supervisor):
    """The commit service of the store ``settings`` name, listening at ``socket_path``;
    a ``ports.HealthReporter`` of its commits."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(1, settings.limits.shutdown_grace)
        self.settings = settings
        self._directory = Path(tempfile.mkdtemp(prefix="mailgate-"))  # mode 0700
        self.socket_path = str(self._directory / "commit.sock")
        self._commits = WriteHealth()
        self._running = False

    def health(self) -> list[HealthCheck]:
        """``commits``: whether the service runs and its commits go through."""
        if not self._running:
            return [HealthCheck("commits", "the commit service is not running; it is starting")]
        return [HealthCheck("commits", self._commits.problem())]

    def _started(self, number: int) -> None:
        self._commits.adopt(WriteState())  # a new process, which has committed nothing yet
        self._running = True

    def _exited(self, number: int) -> None:
        self._running = False

    def _reported(self, number: int, line: str) -> None:
        try:
            state = WriteState.from_line(line)
        except ValueError:
            super()._reported(number, line)
            return
        self._commits.adopt(state)

    def _child(self, number: int) -> Child:
        return Child(
            arguments=(COMMIT_SERVICE,),
            payload=(self.settings, self.socket_path),
            name="the commit service",
        )

    async def aclose(self) -> None:
        """Stop the process, then remove its socket's directory."""
        try:
            await super().aclose()
        finally:
            shutil.rmtree(self._directory, ignore_errors=True)


def run_commit_service() -> NoReturn:
    """Be the commit service: read the settings and socket path from stdin, commit, exit."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    settings, socket_path = pickle.load(sys.stdin.buffer)  # noqa: S301 - written by our parent
    configure_process(settings, "[commit service]")
    batch_scheduling()  # before any thread starts: they inherit it
    with new_runner() as runner:
        status = runner.run(_commit(settings, socket_path))
    sys.exit(status)


async def _commit(settings: Settings, socket_path: str) -> int:
    try:
        store = await open_store(settings.store_url)
    except MailgateError as error:
        answer_parent(f"error: {error}")
        return EXIT_FAILURE
    stop_reader, stop_writer = socket.socketpair()
    try:
        if not isinstance(store, SQLiteStore):
            answer_parent(f"error: {settings.store_url} is not an SQLite store")
            return EXIT_FAILURE
        try:
            listener = _listen(socket_path)
        except OSError as error:
            answer_parent(f"error: cannot listen on {socket_path}: {error}")
            return EXIT_FAILURE
        loop = asyncio.get_running_loop()
        orphaned = False

        def stop() -> None:
            with contextlib.suppress(OSError):
                stop_writer.send(b"x")

        def parent_gone() -> None:
            nonlocal orphaned
            orphaned = True
            stop()

        loop.add_signal_handler(signal.SIGTERM, stop)
        when_parent_gone(loop, parent_gone)
        freeze_startup_objects()
        answer_parent(READY)
        with listener:
            await asyncio.to_thread(
                store.serve_commit_service, listener, stop_reader.fileno(), _tell_parent
            )
        if orphaned:  # nobody else is left to remove the socket and its directory
            with contextlib.suppress(OSError):
                os.unlink(socket_path)
                os.rmdir(os.path.dirname(socket_path))
    finally:
        stop_reader.close()
        stop_writer.close()
        await store.aclose()
    return EXIT_OK


def _tell_parent(state: WriteState) -> None:
    """Report a change of whether the service's commits go through: one line on stdout."""
    try:
        answer_parent(state.to_line())
    except OSError:  # the parent is gone: the service stops on its stdin's end
        pass


def _listen(path: str) -> socket.socket:
    """A Unix stream socket listening at ``path`` (a file left there by a dead process goes)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(path)
        os.chmod(path, 0o600)
        listener.listen(LISTEN_BACKLOG)
    except BaseException:
        listener.close()
        raise
    return listener
