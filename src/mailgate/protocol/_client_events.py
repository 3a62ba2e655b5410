"""What the client engine is given and what it emits: envelopes, settings, events.

Every event is a frozen dataclass named after the reply it reports.  The
caller learns of a message the peer cannot take before anything is sent:
``ClientConnection.check`` returns the refusal as a ``Reply``, and
``ClientConnection.mail`` raises ``MessageRefused`` carrying the same reply,
so the queue can put it in a bounce either way.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

from mailgate.protocol._errors import MailgateError
from mailgate.protocol._events import ConnectionClosed, Event
from mailgate.protocol._replies import Reply

__all__ = [
    "AnyClientEvent",
    "AuthReply",
    "ClientSettings",
    "ContentRequest",
    "Envelope",
    "Greeting",
    "HelloReply",
    "MailReply",
    "MessageRefused",
    "MessageReply",
    "QuitReply",
    "RcptReply",
    "Recipient",
    "ResetReply",
    "ServerClosing",
    "StartTLSReply",
]

# An address or a DSN value goes on a command line verbatim: anything that
# could end the line or split the command is refused before it is queued.
_UNSAFE_ADDRESS = re.compile(r"[\x00-\x20\x7f<>]")
_UNSAFE_VALUE = re.compile(r"[^\x21-\x7e]|=")
_DOMAIN = re.compile(r"[A-Za-z0-9.\-\[\]:_]+\Z")


def _check_address(address: str, *, null_ok: bool) -> None:
    if (not address and not null_ok) or _UNSAFE_ADDRESS.search(address):
        raise ValueError(f"unusable address {address!r}")


def _check_value(name: str, value: str | None) -> None:
    if value is not None and (not value or _UNSAFE_VALUE.search(value)):
        raise ValueError(f"{name} must be printable ASCII without blanks or '=': {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientSettings:
    """What one ``ClientConnection`` says and uses.

    ``hostname``: the name given in EHLO/HELO.  ``pipelining`` and
    ``chunking``: use PIPELINING (RFC 2920) and CHUNKING (RFC 3030) when the
    peer offers them; BDAT is used only with both.  ``tls_active``: the
    connection began with TLS (implicit TLS, port 465).  ``transcript``:
    keep a transcript of the session for ``take_transcript``.

    Raises ``ValueError`` for a hostname that cannot go on a command line.
    """

    hostname: str = "localhost"
    pipelining: bool = True
    chunking: bool = True
    tls_active: bool = False
    transcript: bool = False

    def __post_init__(self) -> None:
        if not _DOMAIN.match(self.hostname):
            raise ValueError(f"unusable EHLO name {self.hostname!r}")


@dataclass(frozen=True, slots=True)
class Recipient:
    """One recipient, with its RFC 3461 parameters as raw (xtext) values.

    ``notify`` (``"SUCCESS,FAILURE"``, ``"NEVER"``) and ``orcpt``
    (``"rfc822;user@example.org"``) are sent only to a peer offering DSN.

    Raises ``ValueError`` for an address or value that cannot go on a
    command line.
    """

    address: str
    notify: str | None = None
    orcpt: str | None = None

    def __post_init__(self) -> None:
        _check_address(self.address, null_ok=False)
        _check_value("NOTIFY", self.notify)
        _check_value("ORCPT", self.orcpt)


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope:
    """One message's envelope and what its content needs from the peer.

    ``sender`` is ``""`` for the null reverse-path.  ``size``: the content's
    octets, for SIZE= (RFC 1870) and the local size check.  ``eight_bit``:
    the content holds octets above 127 (BODY=8BITMIME, RFC 6152).
    ``utf8_headers``: header fields hold UTF-8 (RFC 6532), so the message
    needs SMTPUTF8 (RFC 6531), as do non-ASCII addresses.  ``ret`` and
    ``envid`` (RFC 3461 4.3, 4.4) are sent only to a peer offering DSN.

    Raises ``ValueError`` for no recipients, or an address or value that
    cannot go on a command line.
    """

    sender: str
    recipients: tuple[Recipient, ...]
    size: int | None = None
    eight_bit: bool = False
    utf8_headers: bool = False
    ret: Literal["FULL", "HDRS"] | None = None
    envid: str | None = None

    def __post_init__(self) -> None:
        _check_address(self.sender, null_ok=True)
        if not self.recipients:
            raise ValueError("an envelope needs at least one recipient")
        if self.size is not None and self.size < 0:
            raise ValueError("size must not be negative")
        _check_value("ENVID", self.envid)

    @property
    def needs_smtputf8(self) -> bool:
        """Whether the message needs SMTPUTF8 (RFC 6531 3.2)."""
        return (
            self.utf8_headers
            or not self.sender.isascii()
            or not all(r.address.isascii() for r in self.recipients)
        )


class MessageRefused(MailgateError):
    """The peer cannot take this message; nothing was sent.

    ``reply`` is a synthesised permanent reply for the bounce.
    """

    def __init__(self, reply: Reply) -> None:
        super().__init__(f"{reply.code} {reply.enhanced} {reply.text}")
        self.reply = reply


@dataclass(frozen=True, slots=True)
class Greeting(Event):
    """The server's greeting: ``hello()`` after a 220, else only ``quit()``."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class HelloReply(Event):
    """The reply to EHLO, or to HELO when the engine fell back to it.

    ``extended`` is true after a positive EHLO reply; ``extensions`` maps
    each EHLO keyword (upper-cased) to its parameters, as
    ``{"SIZE": ("10240000",), "AUTH": ("PLAIN", "LOGIN")}``.
    """

    reply: Reply
    extended: bool = False
    extensions: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StartTLSReply(Event):
    """The reply to STARTTLS: after a 220, hand the socket to TLS, then ``tls_established``."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class AuthReply(Event):
    """The final reply to AUTH (235 means authenticated)."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class MailReply(Event):
    """The reply to MAIL."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class RcptReply(Event):
    """The reply to RCPT for ``recipient``."""

    recipient: str
    reply: Reply


@dataclass(frozen=True, slots=True)
class ContentRequest(Event):
    """Send the content now: ``send_content`` for each chunk, then ``end_content``.

    ``reply`` is the 354 to DATA, or ``None`` with BDAT, which needs none.
    """

    reply: Reply | None


@dataclass(frozen=True, slots=True)
class MessageReply(Event):
    """The transaction is over; ``reply`` is its outcome.

    The final reply to the content; or the refusal of MAIL, of DATA or of a
    BDAT chunk; or, when no recipient was accepted, a synthesised
    ``554 5.5.1``.  A recipient's own outcome is its ``RcptReply`` when that
    was negative and MAIL was accepted, otherwise this reply.
    """

    reply: Reply


@dataclass(frozen=True, slots=True)
class ResetReply(Event):
    """The reply to the caller's RSET."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class QuitReply(Event):
    """The reply to QUIT; the session is over."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class ServerClosing(Event):
    """A 421 no command asked for: the server is closing the connection."""

    reply: Reply


AnyClientEvent: TypeAlias = (
    Greeting
    | HelloReply
    | StartTLSReply
    | AuthReply
    | MailReply
    | RcptReply
    | ContentRequest
    | MessageReply
    | ResetReply
    | QuitReply
    | ServerClosing
    | ConnectionClosed
)
"""Every ``Event`` the client engine emits."""
