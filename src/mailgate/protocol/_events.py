"""Events the server engine emits.

Every subclass of ``Command`` needs exactly one reply from the application
through ``ServerConnection.send`` before the engine reads further.  The other
events are information: message content, an aborted transfer, the end.

``AnyCommand`` and ``AnyEvent`` name the closed sets of them, so that a
``match`` over what ``next_event`` returns ends in ``assert_never`` and the
type checker proves every event handled.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, TypeAlias

from mailgate.protocol._dsn import Notify, OriginalRecipient, Ret

__all__ = [
    "NEED_DATA",
    "AnyCommand",
    "AnyEvent",
    "AuthCredentials",
    "BdatChunk",
    "Command",
    "ConnectionClosed",
    "DataAborted",
    "DataChunk",
    "DataEnd",
    "DataStart",
    "Ehlo",
    "Event",
    "Expn",
    "Helo",
    "MailFrom",
    "RcptTo",
    "Rset",
    "StartTLS",
    "Vrfy",
]


class _NeedData(enum.Enum):
    # An enum of one, so that ``event is NEED_DATA`` narrows the type.
    NEED_DATA = enum.auto()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData.NEED_DATA
"""``next_event`` has nothing to return until more data arrives."""


class Event:
    """Base class of everything ``next_event`` returns, bar ``NEED_DATA``."""

    __slots__ = ()


class Command(Event):
    """An event that needs one reply from the application."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Helo(Command):
    """``HELO name``: a plain SMTP session (no extensions, no parameters)."""

    name: str


@dataclass(frozen=True, slots=True)
class Ehlo(Command):
    """``EHLO name``: answer with ``ServerConnection.ehlo_reply``."""

    name: str


@dataclass(frozen=True, slots=True, init=False)
class MailFrom(Command):
    """``MAIL FROM:<address>``; ``address`` is ``""`` for the null sender.

    ``params`` holds every ESMTP parameter as the client sent it, keys
    upper-cased, ``None`` for a parameter without a value.  ``size``,
    ``body`` and ``smtputf8`` are the validated SIZE, BODY and SMTPUTF8
    parameters; ``ret`` and ``envid`` the DSN parameters RET and ENVID (RFC
    3461 4.3, 4.4), the envelope id decoded from its xtext.
    """

    address: str
    params: Mapping[str, str | None] = field(default_factory=dict)
    size: int | None = None
    body: str | None = None
    smtputf8: bool = False
    ret: Ret | None = None
    envid: str | None = None

    def __init__(  # noqa: PLR0917 - the dataclass's own signature, positional
        self,
        address: str,
        params: Mapping[str, str | None] | None = None,
        size: int | None = None,
        body: str | None = None,
        smtputf8: bool = False,
        ret: Ret | None = None,
        envid: str | None = None,
    ) -> None:
        # Written out, not generated: see docs/design/performance.md, "Records made per message".
        object.__setattr__(self, "address", address)
        object.__setattr__(self, "params", {} if params is None else params)
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "body", body)
        object.__setattr__(self, "smtputf8", smtputf8)
        object.__setattr__(self, "ret", ret)
        object.__setattr__(self, "envid", envid)


@dataclass(frozen=True, slots=True, init=False)
class RcptTo(Command):
    """``RCPT TO:<address>``; a source route, if any, is already stripped.

    ``params`` holds every ESMTP parameter as the client sent it (as
    ``MailFrom.params``); ``notify`` and ``orcpt`` are the validated DSN
    parameters NOTIFY and ORCPT (RFC 3461 4.1, 4.2), the latter decoded.
    """

    address: str
    params: Mapping[str, str | None] = field(default_factory=dict)
    notify: Notify | None = None
    orcpt: OriginalRecipient | None = None

    def __init__(
        self,
        address: str,
        params: Mapping[str, str | None] | None = None,
        notify: Notify | None = None,
        orcpt: OriginalRecipient | None = None,
    ) -> None:
        # Written out, not generated: see docs/design/performance.md, "Records made per message".
        object.__setattr__(self, "address", address)
        object.__setattr__(self, "params", {} if params is None else params)
        object.__setattr__(self, "notify", notify)
        object.__setattr__(self, "orcpt", orcpt)


@dataclass(frozen=True, slots=True)
class DataStart(Command):
    """``DATA``: reply ``354`` to receive content, or refuse."""


@dataclass(frozen=True, slots=True, init=False)
class DataChunk(Event):
    """Message content, dot-unstuffed, in arrival order (no reply)."""

    data: bytes

    def __init__(self, data: bytes) -> None:
        # Written out, not generated: see docs/design/performance.md, "Records made per message".
        object.__setattr__(self, "data", data)


@dataclass(frozen=True, slots=True, init=False)
class DataEnd(Command):
    """The ``<CRLF>.<CRLF>`` after DATA: reply once the message is safe."""

    size: int

    def __init__(self, size: int) -> None:
        # Written out, not generated: see docs/design/performance.md, "Records made per message".
        object.__setattr__(self, "size", size)


@dataclass(frozen=True, slots=True)
class BdatChunk(Command):
    """All octets of one ``BDAT size [LAST]`` chunk have arrived as ``DataChunk``s."""

    size: int
    last: bool
    total: int


@dataclass(frozen=True, slots=True)
class DataAborted(Event):
    """The engine refused the message and answered the client itself.

    Throw away what the ``DataChunk`` events delivered; the transaction is over.
    """

    reason: str


@dataclass(frozen=True, slots=True)
class Rset(Command):
    """``RSET``: abort any transaction; RFC 5321 4.1.1.5 says reply 250."""


@dataclass(frozen=True, slots=True)
class Vrfy(Command):
    """``VRFY string``."""

    argument: str


@dataclass(frozen=True, slots=True)
class Expn(Command):
    """``EXPN string``."""

    argument: str


@dataclass(frozen=True, slots=True)
class StartTLS(Command):
    """``STARTTLS``: reply 220, start the handshake, then ``tls_established``."""


@dataclass(frozen=True, slots=True)
class AuthCredentials(Command):
    """``AUTH``'s SASL exchange is complete: check ``password`` for ``username``.

    The engine has run the exchange (RFC 4954 4: the ``334`` challenges, the
    base64, a ``*`` cancelling it) and the mechanism (``PLAIN``, ``LOGIN``).
    Reply ``235`` to let the client in, ``535`` for wrong credentials,
    ``454`` when they cannot be checked now.
    """

    mechanism: str
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class ConnectionClosed(Event):
    """The session is over: flush ``data_to_send`` and close the transport."""


AnyCommand: TypeAlias = (
    Helo
    | Ehlo
    | MailFrom
    | RcptTo
    | DataStart
    | DataEnd
    | BdatChunk
    | Rset
    | Vrfy
    | Expn
    | StartTLS
    | AuthCredentials
)
"""Every ``Command`` the engine emits."""

AnyEvent: TypeAlias = AnyCommand | DataChunk | DataAborted | ConnectionClosed
"""Every ``Event`` the engine emits."""
