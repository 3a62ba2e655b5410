"""Spools: where a message's bytes go while they stream in.

A spool holds its content in memory up to a threshold, then moves it to a
file of its own under the spool directory (``<id>.<pid>.spool``) and appends
there, so a 50 MB message never sits whole in the process.  The file is
written but not synced: making it durable is the store's job, done once at
commit.

The threshold bounds one spool; a ``SpoolBudget`` bounds them all.  Every
spool of a process takes what it holds in memory from one budget, and one
that would take more than is left goes to its file at once (a new one, its
trace header already), so a thousand connections part-way through a
message cost the process the budget, not a thousand thresholds.  A spool
gives its share back when it rolls over, when it is discarded, and when it
is released after its commit.  The accounting is an integer taken and given
back on the event loop's thread, the only one that writes, discards or
releases a spool (a worker thread only reads a closed spool's file), so it
needs no lock.

A ``Return-Path`` field in the header the client sent is left out as the
content streams in (``_return_path``): the accept path writes its own.  The
same pass counts the header's ``Received`` fields (``received_fields``), for
the accept path's loop check.

A spool whose file cannot be written (the disk is full) keeps taking
content and throws it away, so the client can finish sending and be told
after the end of data (RFC 5321 4.1.1.4); ``failure`` says why, and the
sink refuses to commit it.

A spool is used from one task at a time.  Its life is ``write``* then
``discard``, or ``close`` (the sink closes it to commit it) and later
``release`` once the store has taken the content.  Closing freezes content
held in memory as ``bytes``, the one copy the store is handed.
"""

from __future__ import annotations

import contextlib
import os
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from mailgate import MailgateError
from mailgate.delivery._return_path import ReturnPathFilter
from mailgate.model import Envelope, MessageId

__all__ = ["SPOOL_SUFFIX", "MemoryThresholdSpool", "SpoolBudget", "SpoolClosedError"]

SPOOL_SUFFIX = ".spool"
_NO_LIMIT_OCTETS = 1 << 60
"""What a budget of 0 (no limit) starts with: more than any process holds."""


class SpoolClosedError(MailgateError):
    """Content was written to a spool that was already committed or discarded."""


class SpoolBudget:
    """The octets of content that the spools sharing it may hold in memory together.

    ``limit`` 0 means no limit.  ``free`` is what is left: a spool takes from
    it what it keeps in memory and gives it back when it lets that go.
    """

    __slots__ = ("_total", "free", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._total = limit if limit > 0 else _NO_LIMIT_OCTETS
        self.free = self._total
        """Octets a spool may still take."""

    @property
    def held(self) -> int:
        """Octets the spools hold in memory now."""
        return self._total - self.free


class MemoryThresholdSpool:
    """A ``ports.Spool`` that rolls over from memory to a file past a threshold,
    or at once when its ``budget`` has no room for what it would hold."""

    __slots__ = (
        "_budget",
        "_buffer",
        "_directory",
        "_file",
        "_header_filter",
        "_path",
        "_size",
        "_state",
        "_threshold",
        "envelope",
        "failure",
        "id",
        "received_at",
        "received_fields",
    )

    def __init__(
        self,
        message_id: MessageId,
        envelope: Envelope,
        *,
        received_at: datetime,
        directory: Path,
        threshold: int,
        trace_header: bytes,
        budget: SpoolBudget,
    ) -> None:
        self.id = message_id
        self.envelope = envelope
        self.received_at = received_at
        self._directory = directory
        self._threshold = threshold
        self._budget = budget
        self._file: BinaryIO | None = None
        self._path: str | None = None
        self._header_filter: ReturnPathFilter | None = ReturnPathFilter()
        self._state = "open"
        self.failure: OSError | None = None
        """Why the content could not be kept, once writing it failed."""
        self.received_fields = 0
        """``Received`` fields in the header the client sent (the trace header not counted)."""
        size = len(trace_header)
        if size <= budget.free and size <= threshold:  # as _append does it, a call less
            budget.free -= size
            self._buffer: bytearray | bytes = bytearray(trace_header)
            self._size = size
        else:  # no room in memory: to a file at once
            self._buffer = bytearray()
            self._size = 0
            self._append(trace_header)

    @property
    def size(self) -> int:
        """Octets written so far, the trace header included."""
        return self._size

    @property
    def is_open(self) -> bool:
        """Whether content may still be written."""
        return self._state == "open"

    def write(self, data: bytes) -> None:
        """Append content; raises ``SpoolClosedError`` once committed or discarded.

        When the content must go to a file and cannot, ``failure`` is set and
        this and later writes throw the content away.
        """
        if self._state != "open":
            raise SpoolClosedError(f"spool for {self.id} is {self._state}")
        header_filter = self._header_filter
        if header_filter is not None:
            data = header_filter.feed(data)
            self.received_fields = header_filter.received
            if header_filter.done:
                self._header_filter = None
        self._append(data)

    def _append(self, data: bytes) -> None:
        size = len(data)
        self._size += size
        if self.failure is not None:
            return
        try:
            if self._file is not None:
                self._file.write(data)
                return
            budget = self._budget
            if size > budget.free or len(self._buffer) + size > self._threshold:
                self._roll_over(data)
                return
            budget.free -= size
            self._buffer += data
        except OSError as error:
            self.failure = error
            self.release()

    def _roll_over(self, data: bytes) -> None:
        # The name carries the process's id, so that a process started later can tell
        # the files of one that died from those of one that still receives (Acceptor).
        path = self._directory / f"{self.id}.{os.getpid()}{SPOOL_SUFFIX}"
        # "x": an id names one message, so an existing file is someone else's.
        file = open(path, "xb")  # noqa: SIM115 - the spool owns it until close()
        try:
            file.write(self._buffer)
            file.write(data)
        except BaseException:
            file.close()
            path.unlink(missing_ok=True)
            raise
        self._file = file
        self._path = str(path)
        self._let_go()

    def _let_go(self) -> None:
        """Drop the content held in memory, giving its share of the budget back."""
        self._budget.free += len(self._buffer)
        self._buffer = bytearray()

    def discard(self) -> None:
        """Throw the content away; harmless to call again, or after a commit."""
        if self._state == "discarded":
            return
        self._state = "discarded"
        self.release()

    def close(self) -> None:
        """Stop writing: the content is complete.  The file, if any, is flushed."""
        if self._state != "open":
            raise SpoolClosedError(f"spool for {self.id} is {self._state}")
        if self._header_filter is not None:
            self._append(self._header_filter.flush())
            self.received_fields = self._header_filter.received
            self._header_filter = None
        self._state = "closed"
        if self._path is None:
            self._buffer = bytes(self._buffer)  # what ``content`` hands on, uncopied
        if self._file is not None:
            file, self._file = self._file, None
            try:
                file.close()  # writes what the file object still buffers
            except OSError as error:
                self.failure = error

    def release(self) -> None:
        """Let go of the content: what is held in memory, and the spool file if the
        store left one behind."""
        self._let_go()
        if self._file is not None:
            file, self._file = self._file, None
            with contextlib.suppress(OSError):  # the content is being thrown away
                file.close()
        if self._path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path)
            self._path = None

    @property
    def content(self) -> bytes | None:
        """The content so far while it is held in memory, else ``None``.

        Empty once released: the store has taken it.
        """
        return None if self._path is not None else bytes(self._buffer)

    @property
    def path(self) -> str | None:
        """The spool file holding the content, once it rolled over."""
        return self._path
