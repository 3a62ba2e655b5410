"""The accept path: the one way in for new mail, from every session to the store.

``Acceptor.begin`` gives each message its id and a spool that starts with
``Return-Path:`` and the ``Received:`` trace header, and names the node that accepts it on
its envelope (``DeliverySettings.node``); ``Acceptor.commit`` summarizes the message
and hands it to the store, returning the id only once the store says it is
durable.  The tags the message gets as it arrives (``DeliverySettings.tags``:
its ``X-Tags``, plus addresses, rules) are in its summary, which the store
commits with it (``_tags``).  A message whose header already holds
``MAX_RECEIVED_FIELDS`` ``Received`` fields is going round in a loop: it is refused, and nothing of
it stored (RFC 5321 6.3).  Whatever happens, the spool's file is gone once ``commit`` returns
or raises: either the store took it, or it is removed.

``Acceptor.commit_times`` counts how long the store took to answer for each
message received over SMTP, from the end of its data: a histogram for
``/metrics``, kept as plain integers (a bucket found by bisection, one
increment), since this is the path every message takes.

Writing is the store's: in a node with the SQLite store, every SMTP
process's store sends the message to the commit service, the node's one
writer of new mail (as Postfix's smtpd hands mail to cleanup).  While that
service cannot be reached the store raises ``StoreError``, and the session
answers ``451``.

A crash can still leave spool files behind.  Every acceptor holds a shared
``flock`` on ``<spool>/.lock`` while it lives; the first to start when no
other holds it (no process is receiving into that directory) removes the
spool files it finds before it takes its share.  One that starts beside
others, such as an SMTP worker started again after it died, removes the
files of processes that are gone: a spool file's name ends with the id of
the process that writes it.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import errno
import io
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from mailgate.delivery._ids import new_message_id
from mailgate.delivery._return_path import return_path_header
from mailgate.delivery._spool import SPOOL_SUFFIX, MemoryThresholdSpool, SpoolBudget
from mailgate.delivery._summary import summarize
from mailgate.delivery._tags import Tagger
from mailgate.delivery._trace import received_header
from mailgate.model import Envelope, MessageId, MessageSummary, SinkCounts
from mailgate.ports import (
    Clock,
    InsufficientStorageError,
    MessageStore,
    SMTPReplyError,
    Spool,
    StoreError,
)
from mailgate.protocol import Reply
from mailgate.tags import AutoTags

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "COMMIT_SECONDS_BUCKETS",
    "MAX_RECEIVED_FIELDS",
    "Acceptor",
    "CommitTimes",
    "DeliverySettings",
    "ReceivedMessage",
    "SystemClock",
]

log = logging.getLogger(__name__)

DEFAULT_MEMORY_THRESHOLD_OCTETS = 256 * 1024
DEFAULT_SPOOL_MEMORY_OCTETS = 64 * 1024 * 1024
FREE_SPACE_LOOK_SECONDS = 0.5
"""How long ``has_room`` takes a look at the free space as read, when it found plenty."""
FREE_SPACE_MARGIN_OCTETS = 1 << 30
"""Free space beyond what is asked for that lets a look stand for a while: far more than
mail arriving over SMTP fills in half a second (a ``statvfs`` at every ``MAIL`` was 2% of
an SMTP process's time at peak: docs/design/performance.md)."""
MAX_RECEIVED_FIELDS = 100  # RFC 5321 6.3: a loop threshold of "normally at least 100"
_TOO_MANY_HOPS = Reply(554, "5.4.6", "Too many hops")  # RFC 3463 3.5: routing loop detected
SPOOL_LOCK = ".lock"
_OUT_OF_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_SQLITE_FULL = 13  # SQLITE_FULL: "database or disk is full"
COMMIT_SECONDS_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0
)  # fmt: skip
"""Upper bounds of ``CommitTimes``'s buckets: a group commit answers in about a millisecond
on a quiet disk, tens of them under load, seconds when the disk stalls."""


class SystemClock:
    """The real time, as a ``ports.Clock``."""

    def now(self) -> datetime:
        """The current UTC time, timezone-aware."""
        return datetime.now(UTC)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliverySettings:
    """How the accept path treats new mail.

    ``hostname`` names this server in trace headers; ``spool_dir`` holds the
    content of messages larger than ``memory_threshold`` octets while they
    stream in (it should be on the store's file system, so the store can
    move a body into place rather than copy it), and of every message that
    arrives while the acceptor's spools hold ``spool_memory`` octets in
    memory together (0: no limit).
    """

    hostname: str
    spool_dir: Path
    memory_threshold: int = DEFAULT_MEMORY_THRESHOLD_OCTETS
    spool_memory: int = DEFAULT_SPOOL_MEMORY_OCTETS
    min_free_space: int = 0
    """Octets that must stay free on the spool's file system for a sender to be accepted."""
    node: str = ""
    """The node's token, set on every envelope (``Envelope.node``); ``""``: left as given."""
    tags: AutoTags = field(default_factory=AutoTags)
    """Where new mail's tags come from: by default its ``X-Tags`` and plus addresses."""


@dataclass(frozen=True, slots=True, init=False)
class ReceivedMessage:
    """A complete message on its way to the store: a ``ports.NewMessage``."""

    id: MessageId
    envelope: Envelope
    summary: MessageSummary
    size: int
    content: bytes | None
    path: str | None

    def __init__(  # noqa: PLR0917 - the dataclass's own signature, positional
        self,
        id: MessageId,
        envelope: Envelope,
        summary: MessageSummary,
        size: int,
        content: bytes | None,
        path: str | None,
    ) -> None:
        # Written out, not generated: see docs/design/performance.md, "Records made per message".
        object.__setattr__(self, "id", id)
        object.__setattr__(self, "envelope", envelope)
        object.__setattr__(self, "summary", summary)
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "content", content)
        object.__setattr__(self, "path", path)

    def open(self) -> BinaryIO:
        """A fresh binary reader over the content, from its first octet."""
        if self.content is not None:
            return io.BytesIO(self.content)
        assert self.path is not None
        return open(self.path, "rb")


@dataclass(frozen=True, slots=True)
class CommitTimes:
    """How the store answered the commits of messages received over SMTP (``Acceptor``).

    ``counts[i]`` of the messages stored took more than the bound before
    ``COMMIT_SECONDS_BUCKETS[i]`` and at most it, from the end of their data
    to the store's answer; the last count, those that took longer.
    ``seconds`` is their times added up.  ``failed`` counts the commits the
    store refused (``StoreError``), ``no_room`` those of them for want of
    space (``InsufficientStorageError``).
    """

    counts: tuple[int, ...]
    seconds: float
    failed: int
    no_room: int


class Acceptor:
    """The ``ports.MailSink`` that every new message goes through, and a
    ``ports.CountingSink``.

    ``begin`` never blocks; ``commit`` parses the summary (in a worker thread
    when the content is in a file) and awaits the store's durable commit.
    Its spools share one ``SpoolBudget`` of ``spool_memory`` octets: a
    process has one acceptor, so that is the process's memory for messages
    on their way in.
    ``counts`` are of this acceptor's messages received over SMTP (those whose
    envelope names an SMTP protocol, RFC 3848), not of mail the HTTP API or
    the queue's reports hand it.
    """

    def __init__(
        self, store: MessageStore, settings: DeliverySettings, *, clock: Clock | None = None
    ) -> None:
        """Raises ``OSError`` when the spool directory cannot be created or locked."""
        self._store = store
        self._settings = settings
        self._clock: Clock = clock if clock is not None else SystemClock()
        settings.spool_dir.mkdir(parents=True, exist_ok=True)
        self._lock = _claim_spool(settings.spool_dir)
        self._budget = SpoolBudget(settings.spool_memory)
        self._header_tags = settings.tags.x_tags
        self._tagger = Tagger(settings.tags) if settings.tags.enabled else None
        self._accepted = self._accepted_octets = self._rejected = 0
        self._commit_counts = [0] * (len(COMMIT_SECONDS_BUCKETS) + 1)
        self._commit_seconds = 0.0
        self._commit_failures = self._commit_no_room = 0
        self._spare_octets = -1  # free space beyond the margin at the last look (has_room)
        self._spare_until = 0.0  # time.monotonic() until which that look stands

    @property
    def spool_budget(self) -> SpoolBudget:
        """The memory this acceptor's spools share."""
        return self._budget

    @property
    def counts(self) -> SinkCounts:
        """Messages received over SMTP since it started: stored, their octets, refused."""
        return SinkCounts(self._accepted, self._accepted_octets, self._rejected)

    @property
    def commit_times(self) -> CommitTimes:
        """How the store answered the commits of messages received over SMTP, so far."""
        return CommitTimes(
            tuple(self._commit_counts),
            self._commit_seconds,
            self._commit_failures,
            self._commit_no_room,
        )

    def close(self) -> None:
        """Let go of the spool directory; harmless to call again."""
        if self._lock >= 0:
            os.close(self._lock)  # closing releases the flock
            self._lock = -1

    def has_room(self, size: int = 0) -> bool:
        """Whether the spool's file system has ``min_free_space`` free, and ``size`` more.

        Asked at every ``MAIL``, so a look at the file system (``statvfs``) is
        taken as read for ``FREE_SPACE_LOOK_SECONDS`` while it found more than
        ``FREE_SPACE_MARGIN_OCTETS`` beyond what is asked; nearer the floor,
        every call looks.
        """
        needed = self._settings.min_free_space + size
        if needed <= self._spare_octets and time.monotonic() < self._spare_until:
            return True
        return self._room_for(needed)

    def _room_for(self, needed: int) -> bool:
        """Whether the spool's file system has ``needed`` octets free now (a fresh look)."""
        try:
            stat = os.statvfs(self._settings.spool_dir)
        except OSError:
            return True  # the commit will tell, with its own error
        free = stat.f_bavail * stat.f_frsize
        self._spare_octets = free - FREE_SPACE_MARGIN_OCTETS
        self._spare_until = time.monotonic() + FREE_SPACE_LOOK_SECONDS
        return free >= needed

    def begin(self, envelope: Envelope) -> Spool:
        """A spool for a new message, its id assigned and its trace header written."""
        now = self._clock.now()
        node = self._settings.node
        if node and envelope.node != node:
            envelope = envelope.with_node(node)
        message_id = new_message_id(now)
        return MemoryThresholdSpool(
            message_id,
            envelope,
            received_at=now,
            directory=self._settings.spool_dir,
            threshold=self._settings.memory_threshold,
            budget=self._budget,
            # RFC 5321 4.4: final delivery puts the reverse-path first, then the trace.
            trace_header=return_path_header(envelope.mail_from)
            + received_header(envelope, message_id, hostname=self._settings.hostname, when=now),
        )

    async def commit(self, spool: Spool) -> MessageId:
        """Store the message durably and return its id.

        Raises ``SpoolClosedError`` for a spool already committed or
        discarded, ``TypeError`` for a spool this sink did not make,
        ``ports.SMTPReplyError`` (554 5.4.6) for a message whose header
        holds ``MAX_RECEIVED_FIELDS`` or more ``Received`` fields (RFC 5321
        6.3), ``ports.InsufficientStorageError`` when the spool or the store
        ran out of space, and whatever else the store raises
        (``ports.StoreError``) when it cannot take the message.
        """
        started = time.perf_counter()
        if not isinstance(spool, MemoryThresholdSpool):
            raise TypeError(f"not a spool from this sink: {spool!r}")
        spool.close()
        smtp = "SMTP" in spool.envelope.protocol
        try:
            message_id = await self._commit(spool)
        except (SMTPReplyError, StoreError) as error:
            if smtp:
                self._rejected += 1
                if isinstance(error, StoreError):
                    self._commit_failures += 1
                    if isinstance(error, InsufficientStorageError):
                        self._commit_no_room += 1
            raise
        if smtp:
            self._accepted += 1
            self._accepted_octets += spool.size
            seconds = time.perf_counter() - started
            self._commit_counts[bisect.bisect_left(COMMIT_SECONDS_BUCKETS, seconds)] += 1
            self._commit_seconds += seconds
        return message_id

    async def _commit(self, spool: MemoryThresholdSpool) -> MessageId:
        try:
            if spool.received_fields >= MAX_RECEIVED_FIELDS:
                raise SMTPReplyError(_TOO_MANY_HOPS)
            if spool.failure is not None:
                raise self._storage_error(spool.failure, "could not spool the message")
            content = spool.content
            if content is not None:
                summary = _summarize(spool, io.BytesIO(content), self._header_tags)
            else:
                summary = await asyncio.to_thread(_summarize_file, spool, self._header_tags)
            tagger = self._tagger
            if tagger is not None:
                summary = tagger.tag(summary, spool.envelope)
            message = ReceivedMessage(
                id=spool.id,
                envelope=spool.envelope,
                summary=summary,
                size=spool.size,
                content=content,
                path=spool.path,
            )
            try:
                return await self._store.store(message)
            except StoreError as error:
                if isinstance(error, InsufficientStorageError):
                    raise
                # A commit that failed while the disk is full failed for that (a store's
                # own process may report it only as a failure).
                if _out_of_space(error) or not self._room_for(self._settings.min_free_space):
                    raise InsufficientStorageError(str(error)) from error
                raise
        finally:
            spool.release()

    def _storage_error(self, error: OSError, what: str) -> StoreError:
        if _out_of_space(error) or not self._room_for(self._settings.min_free_space):
            return InsufficientStorageError(f"{what}: {error}")
        return StoreError(f"{what}: {error}")


def _out_of_space(error: BaseException) -> bool:
    """Whether ``error``, or what caused it, says the disk or a quota is full."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _OUT_OF_SPACE_ERRNOS:
            return True
        if getattr(seen, "sqlite_errorcode", None) == _SQLITE_FULL:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _claim_spool(directory: Path) -> int:
    """Hold the spool directory shared, first sweeping it when nobody else holds it."""
    if fcntl is None:
        return -1
    fd = os.open(directory / SPOOL_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while another process sweeps
            _sweep(directory, alone=False)
            return fd
        _sweep(directory, alone=True)
        fcntl.flock(fd, fcntl.LOCK_SH)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _sweep(directory: Path, *, alone: bool) -> None:
    """Remove the spool files of processes that are gone: every one, when ``alone``."""
    swept = 0
    for entry in os.scandir(directory):
        if not entry.name.endswith(SPOOL_SUFFIX) or not (alone or _writer_gone(entry.name)):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.path)
            swept += 1
    if swept:
        log.warning("removed %d spool files an earlier process left in %s", swept, directory)


def _writer_gone(name: str) -> bool:
    """Whether the process named in a spool file's name has exited.

    ``False`` when the name holds no process id (a file an older release wrote):
    only a sweep with no other process receiving removes that.
    """
    message_id, _, pid = name.removesuffix(SPOOL_SUFFIX).rpartition(".")
    if not message_id or not (pid.isascii() and pid.isdigit()):
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):  # alive but another user's; or no process id
        return False
    return False


def _summarize(spool: MemoryThresholdSpool, reader: BinaryIO, header_tags: bool) -> MessageSummary:
    try:
        return summarize(
            reader,
            message_id=spool.id,
            received_at=spool.received_at,
            size=spool.size,
            envelope=spool.envelope,
            header_tags=header_tags,
        )
    except Exception:
        # Unforeseen input must not cost the message: store it with what is certain.
        log.exception("could not summarize message %s", spool.id)
        return MessageSummary(id=spool.id, received_at=spool.received_at, size=spool.size)


def _summarize_file(spool: MemoryThresholdSpool, header_tags: bool) -> MessageSummary:
    assert spool.path is not None
    with open(spool.path, "rb") as reader:
        return _summarize(spool, reader, header_tags)
