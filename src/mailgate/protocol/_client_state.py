"""The client engine's states, and the bookkeeping of commands and transactions.

``ClientState`` is what the caller may do next; ``Sent`` is what a command
still waiting for its reply was, so that the reply is read for what it
answers (replies come first in, first out: RFC 5321 4.2, RFC 2920 3.1).
An ``OpenTransaction`` holds what its replies have said so far: whether
MAIL was accepted, how many recipients were, the first failed BDAT chunk.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, TypeAlias

from mailgate.protocol._client_wire import ContentEncoder
from mailgate.protocol._replies import Reply

__all__ = [
    "NEEDS_8BITMIME",
    "NEEDS_SMTPUTF8",
    "NO_RECIPIENTS",
    "ClientState",
    "OpenTransaction",
    "Sent",
    "SentCommand",
    "TranscriptLine",
    "size_limit",
]

TranscriptLine: TypeAlias = tuple[Literal["C", "S"], str]
"""One line of a session transcript: who said it (``C`` us, ``S`` the server), and what."""

# RFC 2920 3.1: "no valid recipients" is the outcome when none was accepted.
NO_RECIPIENTS = Reply(554, "5.5.1", "No valid recipients")
# RFC 6531 3.2: a message needing SMTPUTF8 must not go to a server without it.
NEEDS_SMTPUTF8 = Reply(553, "5.6.7", "The receiving server does not support SMTPUTF8")
# RFC 6152 3: 8-bit content only to a server offering 8BITMIME.
NEEDS_8BITMIME = Reply(554, "5.6.3", "The receiving server does not support 8BITMIME")
_SIZE_VALUE = re.compile(r"[0-9]{1,20}\Z")  # RFC 1870 4: size-param ::= [1*DIGIT]


class ClientState(enum.Enum):
    GREETING = enum.auto()
    """Connected; waiting for the server's greeting."""
    REFUSED = enum.auto()
    """The greeting was not 220: only ``quit`` is left (RFC 5321 3.1)."""
    CONNECTED = enum.auto()
    """Greeted (or TLS just established): ``hello`` is next."""
    HELLO = enum.auto()
    """EHLO, or HELO after it, waits for its reply."""
    READY = enum.auto()
    """Identified; no transaction open."""
    STARTTLS = enum.auto()
    """STARTTLS waits for its reply."""
    TLS_HANDSHAKE = enum.auto()
    """The server said 220 to STARTTLS; the shell runs the handshake."""
    AUTH = enum.auto()
    """An AUTH exchange is under way."""
    TRANSACTION = enum.auto()
    """MAIL, the RCPTs (and DATA) wait for their replies."""
    CONTENT = enum.auto()
    """The caller sends the content."""
    CONTENT_SENT = enum.auto()
    """The content is sent; its reply is awaited."""
    RESET = enum.auto()
    """The caller's RSET waits for its reply."""
    QUIT = enum.auto()
    """QUIT waits for its reply."""
    CLOSED = enum.auto()
    """The session is over."""


class Sent(enum.Enum):
    """What a command waiting for a reply was."""

    EHLO = enum.auto()
    HELO = enum.auto()
    STARTTLS = enum.auto()
    AUTH = enum.auto()
    MAIL = enum.auto()
    RCPT = enum.auto()
    DATA = enum.auto()
    DOT = enum.auto()
    LONE_DOT = enum.auto()
    """The dot that ends a DATA the engine has no content for."""
    BDAT = enum.auto()
    BDAT_LAST = enum.auto()
    RSET = enum.auto()
    AUTO_RSET = enum.auto()
    """The engine's own RSET, closing a transaction that failed half-way."""
    QUIT = enum.auto()


@dataclass(frozen=True, slots=True)
class SentCommand:
    kind: Sent
    wire: bytes
    log: str
    recipient: str = ""


@dataclass(slots=True)
class OpenTransaction:
    chunking: bool
    encoder: ContentEncoder
    unanswered: int
    """RCPT replies still to come."""
    mail: Reply | None = None
    accepted: int = 0
    data_sent: bool = False
    failure: Reply | None = None
    """The first failed BDAT chunk's reply."""
    held: bytes | None = None
    """A BDAT chunk kept back, to go as the last one if nothing follows."""
    ending: bool = False
    octets: int = 0

    @property
    def sendable(self) -> bool:
        """Whether MAIL and at least one RCPT were accepted."""
        return self.mail is not None and self.mail.code // 100 == 2 and self.accepted > 0

    def outcome(self) -> Reply:
        """The outcome of a transaction that sent no content."""
        assert self.mail is not None
        return self.mail if self.mail.code // 100 != 2 else NO_RECIPIENTS


def size_limit(extensions: Mapping[str, tuple[str, ...]]) -> int:
    """The peer's SIZE maximum in octets; 0 for none (RFC 1870 4)."""
    params = extensions.get("SIZE", ())
    return int(params[0]) if params and _SIZE_VALUE.match(params[0]) else 0
