"""The commit process: commits the new mail of every SMTP process of ``mailgate serve``.

Run as ``python -c "from mailgate.cli._committer import main; main()"`` by
the serving process (``_commit_process.CommitProcess``), which writes the
settings and the socket path to its stdin.  It opens the store, listens on
the Unix socket, answers ``ready``, and commits what the SMTP processes send
(``mailgate.stores.sqlite.SQLiteStore.serve_commits``) until SIGTERM or until
its stdin reaches end-of-file (the serving process is gone: then it removes
the socket and its directory itself).  It ignores
SIGINT: on Ctrl-C the SMTP processes finish their transactions first, and the
serving process stops it last.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import signal
import socket
import sys

from mailgate import MailgateError
from mailgate.cli._exit import EXIT_FAILURE, EXIT_OK
from mailgate.cli._process import (
    READY,
    answer_parent,
    configure_process,
    new_runner,
    when_parent_gone,
)
from mailgate.config import Settings
from mailgate.stores import SQLiteStore, open_store

__all__ = ["main"]

LISTEN_BACKLOG = 128


def main() -> None:
    """Read the settings and socket path from stdin, commit until stopped, exit."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    settings, socket_path = pickle.load(sys.stdin.buffer)  # noqa: S301 - written by our parent
    configure_process(settings, "[commit]")
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
        answer_parent(READY)
        with listener:
            await asyncio.to_thread(store.serve_commits, listener, stop_reader.fileno())
        if orphaned:  # nobody else is left to remove the socket and its directory
            with contextlib.suppress(OSError):
                os.unlink(socket_path)
                os.rmdir(os.path.dirname(socket_path))
    finally:
        stop_reader.close()
        stop_writer.close()
        await store.aclose()
    return EXIT_OK


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
