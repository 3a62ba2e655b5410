"""Session states and the one table of transitions between them.

The engine moves between states only when the application *replies*: a
positive reply (2xx, or 354 to DATA, 334 to AUTH) takes the "positive"
column, anything else the "negative" column.  A pair missing from the
table leaves the state unchanged, which is RFC 5321 4.1.4's rule that a
failed command does not change the session.

The engine also answers some input itself (a refused message after its
terminator, a cancelled SASL exchange); it then takes the negative column of
the same table, as if the application had refused.  The one move outside
the table is to ``CLOSED``, which any state reaches on QUIT, on a 421 or
when the peer goes away, and which nothing leaves.
"""

from __future__ import annotations

import enum

from mailgate.protocol._errors import LocalProtocolError
from mailgate.protocol._events import (
    AuthResponse,
    AuthStart,
    BdatChunk,
    Command,
    DataEnd,
    DataStart,
    Ehlo,
    Helo,
    MailFrom,
    RcptTo,
    Rset,
    StartTLS,
)
from mailgate.protocol._replies import Reply

__all__ = ["Kind", "State", "is_acceptance", "reply_kind", "transition"]


class State(enum.Enum):
    GREETING = enum.auto()
    """Connected; the application has not sent its greeting yet."""
    REFUSED = enum.auto()
    """Greeted with 554: only QUIT is accepted (RFC 5321 3.1)."""
    CONNECTED = enum.auto()
    """Greeted with 220; waiting for HELO or EHLO."""
    READY = enum.auto()
    """Identified; no mail transaction open."""
    MAIL = enum.auto()
    """MAIL accepted, no recipient yet."""
    RCPT = enum.auto()
    """At least one recipient accepted."""
    DATA = enum.auto()
    """Receiving DATA content (354 sent)."""
    BDAT = enum.auto()
    """A BDAT transfer is under way: at least one non-LAST chunk accepted."""
    AUTH = enum.auto()
    """Inside a SASL exchange (334 sent)."""
    TLS_HANDSHAKE = enum.auto()
    """STARTTLS accepted; waiting for the shell to finish the handshake."""
    CLOSED = enum.auto()
    """QUIT answered, 421 sent, or the peer went away."""


class Kind(enum.Enum):
    """What a reply answered, as far as transitions care."""

    GREETING = enum.auto()
    HELLO = enum.auto()
    MAIL = enum.auto()
    RCPT = enum.auto()
    DATA = enum.auto()
    DATA_END = enum.auto()
    BDAT = enum.auto()
    BDAT_LAST = enum.auto()
    RSET = enum.auto()
    STARTTLS = enum.auto()
    TLS_DONE = enum.auto()
    AUTH = enum.auto()
    AUTH_DONE = enum.auto()
    OTHER = enum.auto()


_S = State
_K = Kind
_HELLO_FROM = (_S.CONNECTED, _S.READY, _S.MAIL, _S.RCPT, _S.BDAT)

# (state, kind) -> (after a positive reply, after a negative reply)
_TABLE: dict[tuple[State, Kind], tuple[State, State]] = {
    # RFC 5321 3.1: a 554 greeting leaves only QUIT.
    (_S.GREETING, _K.GREETING): (_S.CONNECTED, _S.REFUSED),
    **{(s, _K.HELLO): (_S.READY, s) for s in _HELLO_FROM},
    **{(s, _K.RSET): (_S.READY, s) for s in (_S.READY, _S.MAIL, _S.RCPT, _S.BDAT)},
    (_S.READY, _K.MAIL): (_S.MAIL, _S.READY),
    (_S.MAIL, _K.RCPT): (_S.RCPT, _S.MAIL),
    (_S.RCPT, _K.RCPT): (_S.RCPT, _S.RCPT),
    (_S.RCPT, _K.DATA): (_S.DATA, _S.RCPT),
    # RFC 5321 4.1.1.4: the transaction ends with the reply, whatever it is.
    (_S.DATA, _K.DATA_END): (_S.READY, _S.READY),
    # RFC 3030 2: a failed chunk fails the whole transaction.
    (_S.RCPT, _K.BDAT): (_S.BDAT, _S.READY),
    (_S.BDAT, _K.BDAT): (_S.BDAT, _S.READY),
    (_S.RCPT, _K.BDAT_LAST): (_S.READY, _S.READY),
    (_S.BDAT, _K.BDAT_LAST): (_S.READY, _S.READY),
    (_S.READY, _K.STARTTLS): (_S.TLS_HANDSHAKE, _S.READY),
    # RFC 3207 4.2: after the handshake the client starts again with EHLO.
    (_S.TLS_HANDSHAKE, _K.TLS_DONE): (_S.CONNECTED, _S.CLOSED),
    (_S.READY, _K.AUTH): (_S.AUTH, _S.READY),
    (_S.AUTH, _K.AUTH): (_S.AUTH, _S.READY),
    (_S.AUTH, _K.AUTH_DONE): (_S.READY, _S.READY),
}


def transition(state: State, kind: Kind, *, positive: bool) -> State:
    """The state after a reply of this polarity to a command of this kind."""
    pair = _TABLE.get((state, kind))
    if pair is None:
        return state
    return pair[0] if positive else pair[1]


def reply_kind(command: Command, reply: Reply) -> Kind:
    """What ``reply`` answers, as far as transitions care."""
    if isinstance(command, (Helo, Ehlo)):
        return Kind.HELLO
    if isinstance(command, MailFrom):
        return Kind.MAIL
    if isinstance(command, RcptTo):
        return Kind.RCPT
    if isinstance(command, DataStart):
        return Kind.DATA
    if isinstance(command, DataEnd):
        return Kind.DATA_END
    if isinstance(command, BdatChunk):
        return Kind.BDAT_LAST if command.last else Kind.BDAT
    if isinstance(command, Rset):
        return Kind.RSET
    if isinstance(command, StartTLS):
        return Kind.STARTTLS
    if isinstance(command, (AuthStart, AuthResponse)):
        return Kind.AUTH if reply.code == 334 else Kind.AUTH_DONE
    return Kind.OTHER


def is_acceptance(command: Command, reply: Reply) -> bool:
    """Whether ``reply`` accepts ``command``: the positive column.

    Raises ``LocalProtocolError`` for a reply that cannot answer it: DATA
    takes 354, STARTTLS 220, AUTH 334 or 235 (or else an error), and no
    other command takes a 3xx.
    """
    code = reply.code
    expected = 0
    if isinstance(command, DataStart):
        expected = 354
    elif isinstance(command, StartTLS):
        expected = 220
    elif isinstance(command, (AuthStart, AuthResponse)):
        if code < 400 and code not in (334, 235):
            raise LocalProtocolError("AUTH takes 334, 235 or an error")
        return code < 400
    if expected:
        if code < 400 and code != expected:
            raise LocalProtocolError(f"{type(command).__name__} takes {expected} or an error")
        return code == expected
    if 300 <= code < 400:
        raise LocalProtocolError(f"{code} is no answer to {type(command).__name__}")
    return code < 300
