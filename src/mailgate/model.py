"""Plain data shared by every layer: envelopes, stored-message summaries, ids.

Nothing here performs I/O.  Values are frozen dataclasses so they can be
passed between the event loop and the store's writer thread without copying.
``parse_date`` reads the one kind of time that arrives as text from outside
(a message's ``Date``, an HTTP ``Retry-After``), so every layer reads it alike.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import NewType

__all__ = [
    "Address",
    "DeliveryOutcome",
    "DeliveryState",
    "Envelope",
    "MessageId",
    "MessagePage",
    "MessageSummary",
    "QueuedDelivery",
    "SinkCounts",
    "StoreEvent",
    "StoreEventKind",
    "StoredMessage",
    "TLSInfo",
    "parse_date",
]

MessageId = NewType("MessageId", str)
"""A store-wide unique, time-sortable message id (26 characters of Crockford base32)."""


def parse_date(value: str) -> datetime | None:
    """An RFC 5322 date-time (an HTTP-date is one too, RFC 9110 5.6.7) as an aware time, one
    without a zone (``-0000``) taken as UTC; ``None`` for text that is not one."""
    try:
        date = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return date if date.tzinfo is not None else date.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True, init=False)
class Address:
    """A header address such as ``Barry Gibbs <bg@example.com>``."""

    name: str
    address: str

    def __init__(self, name: str, address: str) -> None:
        # Written out, not generated: see docs/design/performance.md, "Records made per message".
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "address", address)


@dataclass(frozen=True, slots=True)
class TLSInfo:
    """What the TLS layer of a session negotiated."""

    version: str
    cipher: str


@dataclass(frozen=True, slots=True, init=False)
class Envelope:
    """The SMTP envelope of one message, as the client gave it.

    ``mail_from`` is ``""`` for the null reverse-path ``<>``.  Parameter
    names are upper-case; a parameter without a value maps to ``None``.
    """

    mail_from: str
    rcpt_to: tuple[str, ...]
    received_at: datetime
    helo_name: str = ""
    client_address: str = ""
    client_hostname: str = ""
    """The client's name from reverse DNS, or ``""`` when it has none or was not looked up."""
    client_port: int = 0
    protocol: str = "ESMTP"
    mail_params: Mapping[str, str | None] = field(default_factory=dict)
    rcpt_params: tuple[Mapping[str, str | None], ...] = ()
    auth_user: str | None = None
    tls: TLSInfo | None = None
    outbound: tuple[str, ...] = ()
    """Recipients that are not local and are to be relayed onward."""
    node: str = ""
    """The node that accepted the message: a token each ``mailgate serve`` draws as it starts
    and shares with its SMTP processes, so that a node can tell its own mail from other
    nodes' on a shared store; ``""`` when unknown (mail an older mailgate stored)."""

    def __init__(  # noqa: PLR0917 - the dataclass's own signature, positional
        self,
        mail_from: str,
        rcpt_to: tuple[str, ...],
        received_at: datetime,
        helo_name: str = "",
        client_address: str = "",
        client_hostname: str = "",
        client_port: int = 0,
        protocol: str = "ESMTP",
        mail_params: Mapping[str, str | None] | None = None,
        rcpt_params: tuple[Mapping[str, str | None], ...] = (),
        auth_user: str | None = None,
        tls: TLSInfo | None = None,
        outbound: tuple[str, ...] = (),
        node: str = "",
    ) -> None:
        # Written out, not generated: see docs/design/performance.md, "Records made per message".
        object.__setattr__(self, "mail_from", mail_from)
        object.__setattr__(self, "rcpt_to", rcpt_to)
        object.__setattr__(self, "received_at", received_at)
        object.__setattr__(self, "helo_name", helo_name)
        object.__setattr__(self, "client_address", client_address)
        object.__setattr__(self, "client_hostname", client_hostname)
        object.__setattr__(self, "client_port", client_port)
        object.__setattr__(self, "protocol", protocol)
        object.__setattr__(self, "mail_params", {} if mail_params is None else mail_params)
        object.__setattr__(self, "rcpt_params", rcpt_params)
        object.__setattr__(self, "auth_user", auth_user)
        object.__setattr__(self, "tls", tls)
        object.__setattr__(self, "outbound", outbound)
        object.__setattr__(self, "node", node)

    def with_node(self, node: str) -> Envelope:
        """This envelope with ``node`` in place: ``dataclasses.replace``, which is interpreted
        Python, written out for the accept path, which sets the node of every message."""
        return Envelope(
            self.mail_from,
            self.rcpt_to,
            self.received_at,
            self.helo_name,
            self.client_address,
            self.client_hostname,
            self.client_port,
            self.protocol,
            self.mail_params,
            self.rcpt_params,
            self.auth_user,
            self.tls,
            self.outbound,
            node,
        )


@dataclass(frozen=True, slots=True, init=False)
class MessageSummary:
    """What a listing shows of a message, parsed once when it is stored."""

    id: MessageId
    received_at: datetime
    size: int
    sender: Address | None = None
    to: tuple[Address, ...] = ()
    cc: tuple[Address, ...] = ()
    bcc: tuple[Address, ...] = ()
    reply_to: tuple[Address, ...] = ()
    subject: str = ""
    date: datetime | None = None
    message_id: str = ""
    attachments: int = 0
    snippet: str = ""
    read: bool = False
    tags: tuple[str, ...] = ()
    inline: int = 0
    """Inline parts: not the text or HTML body, shown within it (by ``Content-ID``, say)."""

    def __init__(  # noqa: PLR0917 - the dataclass's own signature, positional
        self,
        id: MessageId,
        received_at: datetime,
        size: int,
        sender: Address | None = None,
        to: tuple[Address, ...] = (),
        cc: tuple[Address, ...] = (),
        bcc: tuple[Address, ...] = (),
        reply_to: tuple[Address, ...] = (),
        subject: str = "",
        date: datetime | None = None,
        message_id: str = "",
        attachments: int = 0,
        snippet: str = "",
        read: bool = False,
        tags: tuple[str, ...] = (),
        inline: int = 0,
    ) -> None:
        # Written out, not generated: see docs/design/performance.md, "Records made per message".
        object.__setattr__(self, "id", id)
        object.__setattr__(self, "received_at", received_at)
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "sender", sender)
        object.__setattr__(self, "to", to)
        object.__setattr__(self, "cc", cc)
        object.__setattr__(self, "bcc", bcc)
        object.__setattr__(self, "reply_to", reply_to)
        object.__setattr__(self, "subject", subject)
        object.__setattr__(self, "date", date)
        object.__setattr__(self, "message_id", message_id)
        object.__setattr__(self, "attachments", attachments)
        object.__setattr__(self, "snippet", snippet)
        object.__setattr__(self, "read", read)
        object.__setattr__(self, "tags", tags)
        object.__setattr__(self, "inline", inline)


@dataclass(frozen=True, slots=True)
class SinkCounts:
    """What a sink did with the messages received over SMTP since it started.

    ``rejected`` counts messages received in full and then refused: a mail
    loop, no room for them, a store that could not keep them.
    """

    accepted: int = 0
    accepted_octets: int = 0
    rejected: int = 0


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A stored message's summary together with its envelope."""

    summary: MessageSummary
    envelope: Envelope


@dataclass(frozen=True, slots=True)
class MessagePage:
    """One page of a listing, newest first, and how many there are in all."""

    messages: tuple[MessageSummary, ...]
    total: int
    unread: int
    offset: int = 0


class StoreEventKind(enum.StrEnum):
    """What happened to the messages named by a ``StoreEvent``."""

    STORED = "stored"
    READ = "read"
    UNREAD = "unread"
    DELETED = "deleted"
    QUEUE = "queue"
    """The outbound queue rows of these messages changed (queued, attempted, held...)."""
    OVERFLOW = "overflow"
    """The subscriber fell behind and events were dropped: list again."""


@dataclass(frozen=True, slots=True)
class StoreEvent:
    """A change to a store, as ``MessageStore.subscribe`` reports it.

    An empty ``message_ids`` on ``READ``, ``UNREAD`` or ``DELETED`` means the
    change applied to every message; it is always empty for ``OVERFLOW``.
    """

    kind: StoreEventKind
    message_ids: tuple[MessageId, ...] = ()


class DeliveryState(enum.StrEnum):
    """Where one recipient of an outbound message stands.

    ``QUEUED`` and ``DEFERRED`` are pending (due at ``next_attempt``);
    ``HELD`` waits for a person to release it; ``DELIVERED`` and ``BOUNCED``
    are final.  A message is done when every recipient is final.
    """

    QUEUED = "queued"
    DEFERRED = "deferred"
    HELD = "held"
    DELIVERED = "delivered"
    BOUNCED = "bounced"

    @property
    def pending(self) -> bool:
        """Whether a delivery attempt is still to come (or a person must release it)."""
        return self in (DeliveryState.QUEUED, DeliveryState.DEFERRED, DeliveryState.HELD)


@dataclass(frozen=True, slots=True)
class QueuedDelivery:
    """One recipient of an outbound message, as the queue keeps it.

    ``last_reply`` is the last remote reply (or the reason mailgate gave
    itself, such as a DNS failure) as ``"450 4.2.1 text"``; ``relay`` names
    the host it came from, ``mx.example.net[192.0.2.1]:25``.
    """

    message_id: MessageId
    recipient: str
    sender: str
    state: DeliveryState
    queued_at: datetime
    attempts: int = 0
    next_attempt: datetime | None = None
    last_attempt: datetime | None = None
    last_reply: str = ""
    relay: str = ""
    bounce_requested: bool = False
    """A person asked for it to be bounced: the queue runner bounces it without trying."""
    delay_notified: bool = False
    """A delay notice has been sent for it (RFC 3461 NOTIFY=DELAY)."""


@dataclass(frozen=True, slots=True)
class DeliveryOutcome:
    """What one delivery attempt (or a decision not to try) did for one recipient.

    ``state`` is ``DELIVERED``, ``DEFERRED`` (then ``next_attempt`` says
    when to try again) or ``BOUNCED``.  ``attempted`` is False when no
    connection was tried (bounced by a person, expired).
    """

    message_id: MessageId
    recipient: str
    state: DeliveryState
    at: datetime
    reply: str
    relay: str = ""
    next_attempt: datetime | None = None
    attempted: bool = True
    delay_notified: bool = False
