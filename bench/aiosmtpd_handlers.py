"""aiosmtpd handlers for the two Python reference servers.

The harness runs the ``aiosmtpd`` command with one of these classes::

    aiosmtpd -n -l 127.0.0.1:PORT -s SIZE -c bench.aiosmtpd_handlers.MaildirHandler DIR
    aiosmtpd -n -l 127.0.0.1:PORT -s SIZE -c bench.aiosmtpd_handlers.DiscardHandler COUNT_FILE

``MaildirHandler`` is the durable reference: each message is written to
``DIR/tmp``, the file is fsynced, renamed into ``DIR/new`` and the directory is
fsynced, all before ``250`` is returned. The blocking file work runs in the
event loop's default thread pool, so sessions overlap their fsyncs the way a
careful asyncio server would (``BENCH_MAILDIR_IO=inline`` does it on the event
loop instead).

``DiscardHandler`` is the protocol-only reference: it counts messages and
writes the count to ``COUNT_FILE`` when the server exits (SIGINT).

Both pick the same event loop as mailgate: uvloop when it is installed, unless
``BENCH_EVENT_LOOP=asyncio``. The loop policy is set here because aiosmtpd
imports the handler before it creates its loop.
"""

from __future__ import annotations

import asyncio
import atexit
import itertools
import os
import socket
import time
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

__all__ = ["DiscardHandler", "MaildirHandler", "event_loop_name"]


def _choose_event_loop() -> str:
    if os.environ.get("BENCH_EVENT_LOOP", "auto") == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: PLC0415 - optional
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


event_loop_name = _choose_event_loop()


class MaildirHandler:
    """Store each message in a Maildir, durably, before answering ``250``."""

    def __init__(self, root: Path, *, inline_io: bool = False) -> None:
        self.root = root
        for sub in ("tmp", "new", "cur"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self._new_fd = os.open(root / "new", os.O_RDONLY | os.O_DIRECTORY)
        self._serial = itertools.count()
        self._host = socket.gethostname().replace("/", "_").replace(":", "_")
        self._inline_io = inline_io

    @classmethod
    def from_cli(cls, parser: ArgumentParser, *args: str) -> MaildirHandler:
        if len(args) != 1:
            parser.error("MaildirHandler takes one argument: the Maildir path")
        inline = os.environ.get("BENCH_MAILDIR_IO", "thread") == "inline"
        return cls(Path(args[0]), inline_io=inline)

    def _deliver(self, name: str, content: bytes) -> None:
        tmp = self.root / "tmp" / name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, self.root / "new" / name)
        os.fsync(self._new_fd)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        # Maildir unique name: time, pid and a per-process counter, host.
        name = f"{time.time_ns()}.P{os.getpid()}Q{next(self._serial)}.{self._host}"
        content = envelope.original_content or envelope.content
        if isinstance(content, str):
            content = content.encode("utf-8", "surrogateescape")
        if self._inline_io:
            self._deliver(name, content)
        else:
            await asyncio.get_running_loop().run_in_executor(None, self._deliver, name, content)
        return f"250 2.0.0 OK queued as {name}"


class DiscardHandler:
    """Accept and drop every message; count them for the harness."""

    def __init__(self, count_file: Path) -> None:
        self.count = 0
        self._count_file = count_file
        atexit.register(self._write_count)

    @classmethod
    def from_cli(cls, parser: ArgumentParser, *args: str) -> DiscardHandler:
        if len(args) != 1:
            parser.error("DiscardHandler takes one argument: the count file")
        return cls(Path(args[0]))

    def _write_count(self) -> None:
        self._count_file.write_text(f"{self.count}\n")

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.count += 1
        return "250 2.0.0 OK"
