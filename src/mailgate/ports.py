"""The interfaces between layers, as ``typing.Protocol`` classes.

The shells (``server``, ``web``) see stores and delivery only through these.
Every implementation passes the matching conformance suite in
``mailgate.testing``.

New mail takes one path: the server asks a ``MailSink`` (``delivery``) for a
``Spool``, streams the message into it and commits it; the sink parses a
summary and hands a ``NewMessage`` to ``MessageStore.store``, which returns
only once the message is durable.

A store's capabilities are defined here and nowhere else: ``MessageStore`` is
the core every store keeps; ``SearchableStore`` and ``TaggableStore`` are
``MessageStore`` and more, as go-smtp's ``AuthSession`` embeds ``Session``.
A shell that needs a capability asks for it (``isinstance(store,
SearchableStore)``: they are runtime-checkable) and does without, or says it
cannot, when the store lacks it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import BinaryIO, Literal, Protocol, runtime_checkable

from mailgate import MailgateError
from mailgate.model import (
    DeliveryOutcome,
    Envelope,
    MessageId,
    MessagePage,
    MessageSummary,
    QueuedDelivery,
    SinkCounts,
    StoredMessage,
    StoreEvent,
)
from mailgate.protocol import Reply
from mailgate.query import Query

__all__ = [
    "AuthAdmission",
    "AuthFailure",
    "AuthThrottle",
    "Authenticator",
    "AuthenticatorBusyError",
    "Clock",
    "CountingSink",
    "HealthCheck",
    "HealthReporter",
    "InsufficientStorageError",
    "MailSink",
    "MessageStore",
    "MetricFamily",
    "MetricKind",
    "MetricSample",
    "MetricsSource",
    "NewMessage",
    "PrunableStore",
    "QueueStore",
    "RawStream",
    "SMTPReplyError",
    "SearchableStore",
    "SizedStore",
    "Spool",
    "StoreError",
    "StoreEvent",
    "TaggableStore",
]


class StoreError(MailgateError):
    """A store could not be opened, or could not do what was asked of it.

    The message is one line, fit to show an operator; the cause, if any, is
    chained.
    """


class InsufficientStorageError(StoreError):
    """The disk is (nearly) full: the message cannot be taken now (RFC 3463 X.3.1).

    The server's own condition, never the client's error: the client is told
    ``452 4.3.1`` and tries again later.
    """


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """One check ``/readyz`` reports: its name and, when it fails, why, in one line.

    Names: ``store`` (the store answers a read), ``commits`` (new mail and
    changes are being committed), ``disk`` (free space is above the floor
    under which ``MAIL`` gets ``452``).
    """

    name: str
    error: str | None = None
    """``None`` while the check passes."""


@runtime_checkable
class HealthReporter(Protocol):
    """Something that knows whether the node can take mail now: a store, the commit service."""

    def health(self) -> Sequence[HealthCheck]:
        """Its checks now, passing or not.  Cheap: no I/O beyond a ``statvfs``."""
        ...


MetricKind = Literal["counter", "gauge", "histogram"]
"""The kinds of metric ``/metrics`` shows."""


@dataclass(frozen=True, slots=True)
class MetricSample:
    """One value of a metric: its sample's name (``mailgate_smtp_auth_attempts_total``, a
    histogram's ``..._bucket`` with an ``le`` label), its labels, and the value."""

    name: str
    labels: tuple[tuple[str, str], ...]
    value: float


@dataclass(frozen=True, slots=True)
class MetricFamily:
    """One metric ``/metrics`` shows, in Prometheus's data model: its ``name`` (a
    counter's samples add ``_total``; a histogram's are ``_bucket``, ``_sum`` and
    ``_count``), ``kind``, ``help`` text, and its samples."""

    name: str
    kind: MetricKind
    help: str
    samples: tuple[MetricSample, ...]


class MetricsSource(Protocol):
    """What a node counts, for ``/metrics``."""

    async def metrics(self) -> Sequence[MetricFamily]:
        """Every metric now, summed over the node's SMTP processes.  Counters never go
        back while the node runs."""
        ...


class SMTPReplyError(MailgateError):
    """The message is refused for what it is, and ``reply`` tells the client why.

    Not a failure to keep it: a sink raises this once it has judged the
    message itself (a mail loop, RFC 5321 6.3, say), and the session sends
    ``reply`` as it is.
    """

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.text)
        self.reply = reply


class Clock(Protocol):
    """Injected time, so that tests never sleep."""

    def now(self) -> datetime:
        """The current UTC time, timezone-aware."""
        ...


class Spool(Protocol):
    """Where one message's bytes go while they stream in.

    Small messages stay in memory; a large one rolls over to a file, so a
    50 MB message never sits whole in the process.
    """

    @property
    def size(self) -> int:
        """Octets written so far, the trace header included."""
        ...

    def write(self, data: bytes) -> None:
        """Append message content."""
        ...

    def discard(self) -> None:
        """Throw the content away (the transaction was aborted)."""
        ...


class NewMessage(Protocol):
    """A fully received message, handed to ``MessageStore.store``.

    Its content is either held in memory (``content``) or in a spool file
    (``path``), written and closed but not yet synced to disk.  A store may
    move that file into its own storage; whatever it leaves behind, the sink
    removes after ``store`` returns or fails.
    """

    @property
    def id(self) -> MessageId: ...

    @property
    def envelope(self) -> Envelope: ...

    @property
    def summary(self) -> MessageSummary: ...

    @property
    def size(self) -> int:
        """Octets of content, the trace header included."""
        ...

    @property
    def content(self) -> bytes | None:
        """The whole content when it is held in memory, else ``None``."""
        ...

    @property
    def path(self) -> str | None:
        """The spool file holding the content when it is not in memory, else ``None``."""
        ...

    def open(self) -> BinaryIO:
        """A fresh binary reader over the content, from its first octet."""
        ...


class MailSink(Protocol):
    """What the SMTP shell hands accepted mail to (``delivery.accept``)."""

    def has_room(self, size: int = 0) -> bool:
        """Whether there is free space for a message of ``size`` octets (0: not declared).

        Asked at ``MAIL``, as Postfix's smtpd asks before it accepts a sender.
        """
        ...

    def begin(self, envelope: Envelope) -> Spool:
        """Open a spool for a message with this envelope, trace header written."""
        ...

    async def commit(self, spool: Spool) -> MessageId:
        """Store the message durably; return only once it is on disk.

        Raises ``SMTPReplyError`` when the message itself is refused (nothing
        of it is stored), ``InsufficientStorageError`` when there is no room
        for it, and other ``MailgateError`` subclasses when the store cannot
        take it.
        """
        ...


class RawStream(Protocol):
    """A stored message's exact bytes, read a part at a time (``MessageStore.stream_raw``).

    Iterate it once.  To stop before its end, ``aclose`` it (``contextlib.aclosing``):
    that lets go at once of what it holds, a file say.  It raises ``StoreError`` when
    the store cannot be read, or the message was deleted before its end was read:
    never fewer bytes in silence.
    """

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


class MessageStore(Protocol):
    """Durable storage of received messages: the core every store keeps."""

    async def store(self, message: NewMessage) -> MessageId:
        """Store the message; return its id only once it is durable.

        Raises ``StoreError`` when it cannot be stored (then nothing of it
        is visible, now or after a crash).
        """
        ...

    async def list(self, *, offset: int = 0, limit: int = 50) -> MessagePage:
        """Newest first."""
        ...

    async def get(self, message_id: MessageId) -> StoredMessage | None:
        """One message's summary and envelope, or ``None``."""
        ...

    async def raw(self, message_id: MessageId) -> bytes | None:
        """The exact stored bytes (trace header included), or ``None``.

        The whole message at once, for what needs it so (MIME parsing); to send
        or copy a message, ``stream_raw`` holds only a part of it at a time.
        """
        ...

    async def stream_raw(self, message_id: MessageId) -> RawStream | None:
        """The exact stored bytes (trace header included) a part at a time, or ``None``.

        However large the message, the store holds no more than a part of it
        (a few hundred KiB) in memory at once.
        """
        ...

    async def delete(self, message_ids: Sequence[MessageId] | None = None) -> int:
        """Delete these messages, or all of them for ``None``; return how many."""
        ...

    async def mark_read(self, message_ids: Sequence[MessageId] | None, read: bool) -> int:
        """Set the read flag on these messages, or all for ``None``; return how many changed."""
        ...

    def subscribe(self) -> AsyncIterator[StoreEvent]:
        """Live events: stored, read, unread, deleted; ends when the store closes.

        Changes committed from now on by any process sharing the store are
        reported, each once; those made through one store, in commit order.
        """
        ...

    async def aclose(self) -> None:
        """Finish pending writes and release the store."""
        ...


@runtime_checkable
class SearchableStore(MessageStore, Protocol):
    """A store that runs a ``query.Query`` itself (with indexes, say)."""

    async def search(self, query: Query, *, offset: int = 0, limit: int = 50) -> MessagePage:
        """Messages matching ``query`` (``query.matches``), newest first.

        ``total`` and ``unread`` count the matches.
        """
        ...


@runtime_checkable
class SizedStore(MessageStore, Protocol):
    """A store that can say how much disk it takes."""

    async def disk_usage(self) -> int:
        """Octets its files take now: the database, its journal, files of messages."""
        ...


@runtime_checkable
class PrunableStore(MessageStore, Protocol):
    """A store that deletes its oldest messages itself, for retention limits
    (``--max-messages``, ``--max-age``).

    Pruning is idempotent: each call deletes what is over the limits now, so
    calls that overlap (two nodes on one database) delete each message once
    between them, and a call that finds another pruning may do nothing.
    """

    async def prune(
        self,
        *,
        keep_newest: int | None = None,
        older_than: datetime | None = None,
        limit: int,
    ) -> int:
        """Delete up to ``limit`` of the oldest messages (in ``list``'s order) that are
        beyond the newest ``keep_newest``, or were received before ``older_than``, in
        one transaction; return how many.

        ``None`` sets no such limit.  Only the oldest ``limit`` messages, and those the
        queue holds back, are looked at, so a call costs the same however large the
        store; a message received before ``older_than`` but listed after a newer one
        (from a node whose clock was behind) goes once the messages before it have.

        A message with a pending outbound recipient (queued, deferred or held) is
        never pruned: it waits until its delivery is done.  Pruned messages go as
        ``delete`` takes them (content, tags, search entries, queue rows), and
        subscribers are told ``DELETED`` with their ids.  Asking when nothing is over
        the limits writes nothing.  Raises ``StoreError`` when the store cannot be
        read or written.
        """
        ...


@runtime_checkable
class CountingSink(MailSink, Protocol):
    """A sink that counts the messages it received over SMTP."""

    @property
    def counts(self) -> SinkCounts:
        """The counts since the sink started."""
        ...


@runtime_checkable
class TaggableStore(MessageStore, Protocol):
    """A store that keeps tags on messages.

    ``store`` keeps a new message's tags (its summary's, as the accept path gave
    them) in the same transaction as the message: durable with it, or not at all.
    """

    async def tags(self) -> dict[str, int]:
        """Every tag in use, with how many messages carry it."""
        ...

    async def set_tags(self, message_ids: Sequence[MessageId], tags: Sequence[str]) -> int:
        """Replace the tags of these messages; return how many of them exist."""
        ...

    async def rename_tag(self, old: str, new: str) -> int:
        """Rename a tag on every message (merging where both are set); return on how many
        it was."""
        ...

    async def delete_tag(self, tag: str) -> int:
        """Remove a tag from every message; return from how many."""
        ...


@runtime_checkable
class QueueStore(MessageStore, Protocol):
    """A store that keeps the outbound queue: one row per recipient to relay to.

    Rows are written with their message (``store`` queues a message's
    ``Envelope.outbound`` recipients in the same transaction), then claimed
    by a queue runner under a lease, so that two runners never attempt the
    same recipient at once, and a runner that dies has its claims taken over
    once the lease runs out.  Outcomes are written only by the lease holder.
    Every change to a message's rows is reported to subscribers as a
    ``QUEUE`` event.
    """

    async def claim(
        self, owner: str, *, now: datetime, lease: timedelta, limit: int
    ) -> list[QueuedDelivery]:
        """Lease up to ``limit`` due recipients (``QUEUED`` or ``DEFERRED``, due by ``now``,
        unleased or with an expired lease) to ``owner`` until ``now + lease``.

        Every pending recipient of a claimed message that is due is claimed
        with it, so that one connection can carry them all.
        """
        ...

    async def record(self, owner: str, outcomes: Sequence[DeliveryOutcome]) -> int:
        """Write outcomes of recipients ``owner`` holds the lease of, and release the lease.

        Outcomes for recipients whose lease another runner now holds are
        dropped (it is fenced off); returns how many were written.
        """
        ...

    async def renew_claims(self, owner: str, until: datetime) -> int:
        """Extend every lease ``owner`` holds to ``until`` (deliveries still running)."""
        ...

    async def release_claims(self, owner: str) -> int:
        """Drop every lease ``owner`` holds (a runner starting again); return how many."""
        ...

    async def queued(
        self, message_id: MessageId | None = None, *, pending_only: bool = True
    ) -> list[QueuedDelivery]:
        """The queue's rows, oldest message first: all, or one message's; pending ones only
        unless ``pending_only`` is False."""
        ...

    async def enqueue(self, message_id: MessageId, recipients: Sequence[str], now: datetime) -> int:
        """Queue a stored message for delivery to ``recipients`` (a release); return how many
        rows were added.  A recipient already pending for it is left as it is."""
        ...

    async def retry(self, message_id: MessageId | None, now: datetime) -> int:
        """Make pending recipients (of one message, or all) due at ``now``; return how many."""
        ...

    async def hold(self, message_id: MessageId) -> int:
        """Hold a message's pending recipients: no attempt until released; return how many."""
        ...

    async def release(self, message_id: MessageId, now: datetime) -> int:
        """Release a message's held recipients, due at ``now``; return how many."""
        ...

    async def request_bounce(self, message_id: MessageId, now: datetime) -> int:
        """Have a message's pending recipients bounced at the next run; return how many."""
        ...

    async def dequeue(self, message_id: MessageId) -> int:
        """Remove a message's pending recipients from the queue (no bounce); return how many."""
        ...


class AuthenticatorBusyError(MailgateError):
    """Too many password checks are running or waiting: try again later.

    Not a failed authentication: the credentials were not checked.
    """


class Authenticator(Protocol):
    """Checks SMTP AUTH credentials (users and their password hashes)."""

    async def authenticate(self, username: str, password: str) -> bool:
        """Whether ``password`` is right for ``username``.

        Takes as long for unknown users as for known ones.  Raises
        ``AuthenticatorBusyError`` when it has too many checks in hand.
        """
        ...


@dataclass(frozen=True, slots=True)
class AuthAdmission:
    """Whether a client's credentials may be checked now.

    When not, ``retry_after`` says in how many seconds to try again, and
    ``blocked`` whether the client is blocked for failing too often (rather
    than asking again too soon after a failure, or too often at once).
    """

    allowed: bool
    retry_after: float = 0.0
    blocked: bool = False


@dataclass(frozen=True, slots=True)
class AuthFailure:
    """What a failed check costs: wait ``delay`` seconds before answering it.

    ``failures`` counts the client's recent failures, this one included;
    ``blocked_for`` is more than 0 when this failure blocked the client.
    """

    delay: float
    failures: int
    blocked_for: float = 0.0


class AuthThrottle(Protocol):
    """Password guessing limited per client address, for every service of a process.

    A service asks ``admit`` before it checks a client's credentials and,
    when admitted, reports the outcome with exactly one of ``succeeded``,
    ``failed`` or ``withdrawn`` (the check could not be made).
    """

    def admit(self, client: str) -> AuthAdmission:
        """Whether credentials from the address ``client`` may be checked now."""
        ...

    def succeeded(self, client: str) -> None:
        """The admitted check from ``client`` succeeded."""
        ...

    def failed(self, client: str, username: str, service: str) -> AuthFailure:
        """The admitted check from ``client`` failed; logged with ``service`` (smtp, http)."""
        ...

    def withdrawn(self, client: str) -> None:
        """The admitted check from ``client`` was not made."""
        ...
