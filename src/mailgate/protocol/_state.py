"""Session states, and the two tables that say what each command may do in each.

Strategy.  Every command line the engine reads has a ``Verb``, with
``UNRECOGNIZED`` and ``UNIMPLEMENTED`` for lines that name no command this
server runs.  In each state that reads command lines (``READING``), every
verb is in exactly one of two tables:

- ``TRANSITIONS``: the state allows it.  The engine parses its arguments and
  hands the application an event (or answers it itself: NOOP, HELP, QUIT,
  the SASL exchange, a bad argument); the reply moves the session to the
  "positive" state of the pair after a 2xx (or 354 to DATA, 220 to
  STARTTLS, 334 in a SASL exchange), to the "negative" one otherwise.
- ``REFUSALS``: the state does not allow it, and the engine answers with the
  reply given there, before reading its arguments; the state is unchanged
  (RFC 5321 4.1.4: a command out of sequence gets 503 and changes nothing).
  A BDAT chunk is still read and thrown away (RFC 3030 2).

States that read no command lines (the greeting not sent, DATA content, a
SASL exchange, the TLS handshake, the end) are in neither table for any
verb.  What they read, and what else moves a session, is a ``Step``, found
in ``TRANSITIONS`` alone.  When the engine refuses such input itself (a
message too big, a cancelled exchange), it takes the negative column, as
if the application had refused.  The one move outside the tables is to
``CLOSED`` on a 421 or when the peer goes away; nothing leaves ``CLOSED``.

Beyond its state, a session has three facts that decide whether an
extension command is on offer (EHLO, TLS, AUTH): ``_offers`` turns them
into refusals, which the engine consults after ``REFUSALS``.
"""

from __future__ import annotations

import enum
from typing import Final, TypeAlias, assert_type

from mailgate.protocol._errors import LocalProtocolError
from mailgate.protocol._events import (
    AnyCommand,
    AuthCredentials,
    BdatChunk,
    DataEnd,
    DataStart,
    Ehlo,
    Expn,
    Helo,
    MailFrom,
    RcptTo,
    Rset,
    StartTLS,
    Vrfy,
)
from mailgate.protocol._replies import Reply

__all__ = [
    "READING",
    "REFUSALS",
    "TRANSITIONS",
    "Kind",
    "State",
    "Step",
    "Verb",
    "judge",
    "out_of_sequence",
    "transition",
]


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
    """Inside a SASL exchange: a 334 challenge sent, or the credentials being checked."""
    TLS_HANDSHAKE = enum.auto()
    """STARTTLS accepted; waiting for the shell to finish the handshake."""
    CLOSED = enum.auto()
    """QUIT answered, 421 sent, or the peer went away."""

    # Members are singletons: hashed by identity, in C, rather than by name in
    # Python (enum.Enum's way), as every command and reply looks one up.
    __hash__ = object.__hash__


class Verb(enum.Enum):
    """What a command line commands."""

    HELO = enum.auto()
    EHLO = enum.auto()
    MAIL = enum.auto()
    RCPT = enum.auto()
    DATA = enum.auto()
    BDAT = enum.auto()
    RSET = enum.auto()
    NOOP = enum.auto()
    HELP = enum.auto()
    VRFY = enum.auto()
    EXPN = enum.auto()
    QUIT = enum.auto()
    STARTTLS = enum.auto()
    AUTH = enum.auto()
    UNRECOGNIZED = enum.auto()
    """A line whose verb is no SMTP command: its "argument" is refused with 500."""
    UNIMPLEMENTED = enum.auto()
    """A command this server does not run, as configured: 502 (RFC 5321 4.2.4)."""

    __hash__ = object.__hash__


class Step(enum.Enum):
    """What else moves a session: input that is not a command line, and BDAT LAST."""

    GREETING = enum.auto()
    """The application's greeting."""
    DATA_END = enum.auto()
    """The ``<CRLF>.<CRLF>`` that ends DATA content."""
    BDAT_LAST = enum.auto()
    """A ``BDAT size LAST`` chunk: its reply ends the transaction, whatever it is."""
    TLS_DONE = enum.auto()
    """The TLS handshake after STARTTLS succeeded."""
    SASL_RESPONSE = enum.auto()
    """A client line answering a 334 challenge."""
    CREDENTIALS = enum.auto()
    """The application's verdict on ``AuthCredentials``."""

    __hash__ = object.__hash__


Kind: TypeAlias = Verb | Step
"""What a reply answers, as far as the tables care."""

_S = State
_V = Verb

READING: Final = frozenset((_S.REFUSED, _S.CONNECTED, _S.READY, _S.MAIL, _S.RCPT, _S.BDAT))
"""The states that read command lines (with a BDAT chunk's octets after its line)."""

_IDENTIFIED = (_S.READY, _S.MAIL, _S.RCPT, _S.BDAT)
_GREETED = (_S.CONNECTED, *_IDENTIFIED)
_IN_TRANSACTION = (_S.MAIL, _S.RCPT, _S.BDAT)
_CHUNKS_FROM = (_S.RCPT, _S.BDAT)

# ------------------------------------------------------------------ allowed

# (state, what a reply answers) -> (after a positive reply, after a negative reply)
TRANSITIONS: Final[dict[tuple[State, Kind], tuple[State, State]]] = {
    # RFC 5321 3.1: a 554 greeting leaves only QUIT.
    (_S.GREETING, Step.GREETING): (_S.CONNECTED, _S.REFUSED),
    **{(s, _V.QUIT): (_S.CLOSED, _S.CLOSED) for s in READING},
    # RFC 5321 4.1.4: HELO and EHLO may come again, and end any transaction.
    **{(s, v): (_S.READY, s) for s in _GREETED for v in (_V.HELO, _V.EHLO)},
    # RFC 5321 4.1.1.5: RSET whenever a command may come.
    (_S.CONNECTED, _V.RSET): (_S.CONNECTED, _S.CONNECTED),
    **{(s, _V.RSET): (_S.READY, s) for s in _IDENTIFIED},
    # Commands that change nothing (RFC 5321 4.1.1.6 to 4.1.1.9), and lines
    # that name no command we run: answered without a move.
    **{
        (s, v): (s, s)
        for s in _GREETED
        for v in (_V.NOOP, _V.HELP, _V.VRFY, _V.EXPN, _V.UNRECOGNIZED, _V.UNIMPLEMENTED)
    },
    (_S.READY, _V.MAIL): (_S.MAIL, _S.READY),
    (_S.MAIL, _V.RCPT): (_S.RCPT, _S.MAIL),
    (_S.RCPT, _V.RCPT): (_S.RCPT, _S.RCPT),
    (_S.RCPT, _V.DATA): (_S.DATA, _S.RCPT),
    # RFC 5321 4.1.1.4: the transaction ends with the reply, whatever it is.
    (_S.DATA, Step.DATA_END): (_S.READY, _S.READY),
    # RFC 3030 2: a failed chunk fails the whole transaction.
    **{(s, _V.BDAT): (_S.BDAT, _S.READY) for s in _CHUNKS_FROM},
    **{(s, Step.BDAT_LAST): (_S.READY, _S.READY) for s in _CHUNKS_FROM},
    (_S.READY, _V.STARTTLS): (_S.TLS_HANDSHAKE, _S.READY),
    # RFC 3207 4.2: after the handshake the client starts again with EHLO.
    (_S.TLS_HANDSHAKE, Step.TLS_DONE): (_S.CONNECTED, _S.CLOSED),
    # RFC 4954 4: positive is a 334 challenge, or the credentials complete.
    (_S.READY, _V.AUTH): (_S.AUTH, _S.READY),
    (_S.AUTH, Step.SASL_RESPONSE): (_S.AUTH, _S.READY),
    (_S.AUTH, Step.CREDENTIALS): (_S.READY, _S.READY),
}

# ----------------------------------------------------------------- refused


def out_of_sequence(text: str) -> Reply:
    """RFC 5321 4.1.4: a command out of sequence gets 503 (RFC 3463 5.5.1)."""
    return Reply(503, "5.5.1", text)


_ONLY_QUIT = out_of_sequence("Service refused; only QUIT is accepted")
_HELLO_FIRST = out_of_sequence("Send HELO or EHLO first")
_EHLO_FIRST = out_of_sequence("Send EHLO first")
_MAIL_FIRST = out_of_sequence("Send MAIL first")
_NESTED_MAIL = out_of_sequence("Nested MAIL command")
_NO_RECIPIENTS = out_of_sequence("No valid recipients")

# (state, verb) -> the engine's reply to a command the state does not allow
REFUSALS: Final[dict[tuple[State, Verb], Reply]] = {
    # RFC 5321 3.1: after a 554 greeting, 503 to anything but QUIT.
    **{(_S.REFUSED, v): _ONLY_QUIT for v in Verb if v is not _V.QUIT},
    (_S.CONNECTED, _V.MAIL): _HELLO_FIRST,
    **{(_S.CONNECTED, v): _EHLO_FIRST for v in (_V.BDAT, _V.STARTTLS, _V.AUTH)},
    **{(s, v): _MAIL_FIRST for s in (_S.CONNECTED, _S.READY) for v in (_V.RCPT, _V.DATA)},
    (_S.READY, _V.BDAT): _MAIL_FIRST,
    **{(s, _V.MAIL): _NESTED_MAIL for s in _IN_TRANSACTION},
    **{(_S.MAIL, v): _NO_RECIPIENTS for v in (_V.DATA, _V.BDAT)},
    (_S.BDAT, _V.RCPT): out_of_sequence("BDAT transfer under way"),
    # RFC 3030 2: DATA may not follow BDAT in one transaction.
    (_S.BDAT, _V.DATA): out_of_sequence("DATA cannot follow BDAT"),
    # RFC 3207 4, RFC 4954 4: neither STARTTLS nor AUTH in a transaction.
    **{(s, _V.STARTTLS): out_of_sequence("Finish the transaction first") for s in _IN_TRANSACTION},
    **{(s, _V.AUTH): out_of_sequence("Not during a mail transaction") for s in _IN_TRANSACTION},
}


# -------------------------------------------------------------- transitions


def transition(state: State, kind: Kind, *, positive: bool) -> State:
    """The state after a reply of this polarity to input of this kind.

    Raises ``KeyError`` for a pair the tables do not allow: the engine never
    lets such input through, so that is a bug in the engine.
    """
    after = TRANSITIONS[state, kind]
    return after[0] if positive else after[1]


def judge(command: AnyCommand, reply: Reply) -> tuple[Kind, bool]:
    """What ``reply`` answers, and whether it accepts ``command`` (the positive column).

    Raises ``LocalProtocolError`` for a reply that cannot answer it: DATA
    takes 354, STARTTLS 220, ``AuthCredentials`` 235 (or else an error), and
    no other command takes a 3xx.
    """
    code = reply.code
    kind: Kind
    match command:
        case MailFrom():
            kind = _V.MAIL
        case RcptTo():
            kind = _V.RCPT
        case DataStart():
            return _V.DATA, _expect(command, code, 354)
        case DataEnd():
            kind = Step.DATA_END
        case BdatChunk():
            kind = Step.BDAT_LAST if command.last else _V.BDAT
        case Ehlo():
            kind = _V.EHLO
        case Helo():
            kind = _V.HELO
        case Rset():
            kind = _V.RSET
        case Vrfy():
            kind = _V.VRFY
        case Expn():
            kind = _V.EXPN
        case StartTLS():
            return _V.STARTTLS, _expect(command, code, 220)
        case _:  # the type checker proves no other is left
            assert_type(command, AuthCredentials)
            return Step.CREDENTIALS, _expect(command, code, 235)
    if 300 <= code < 400:
        raise LocalProtocolError(f"{code} is no answer to {type(command).__name__}")
    return kind, code < 300


def _expect(command: AnyCommand, code: int, positive: int) -> bool:
    if code < 400 and code != positive:
        raise LocalProtocolError(f"{type(command).__name__} takes {positive} or an error")
    return code == positive
