"""The SMTP client shell's values: its settings, what it sends, what it reports.

``SMTPClientSettings`` gathers every option of a connection, keyword-only;
a ``Transaction`` is one message to send and a ``DeliveryResult`` what
became of it; ``DeliveryError`` is the one exception, carrying a ``Reply``.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Literal, Protocol, TypeAlias

from mailgate.protocol import Envelope, MailgateError, Recipient, Reply

__all__ = [
    "COMMAND_TIMEOUT_SECONDS",
    "CONNECT_TIMEOUT_SECONDS",
    "DATA_BLOCK_TIMEOUT_SECONDS",
    "DATA_TIMEOUT_SECONDS",
    "Content",
    "DeliveryError",
    "DeliveryResult",
    "SMTPClientSettings",
    "SizedContent",
    "TLSPolicy",
    "Transaction",
    "Transcriber",
    "made_up",
]

CONNECT_TIMEOUT_SECONDS = 300.0  # RFC 5321 4.5.3.2.1: initial 220 message, 5 minutes
COMMAND_TIMEOUT_SECONDS = 300.0  # RFC 5321 4.5.3.2.2-3: MAIL and RCPT, 5 minutes
DATA_BLOCK_TIMEOUT_SECONDS = 180.0  # RFC 5321 4.5.3.2.5: each data block, 3 minutes
DATA_TIMEOUT_SECONDS = 600.0  # RFC 5321 4.5.3.2.6: DATA termination, 10 minutes

TLSPolicy: TypeAlias = Literal["none", "may", "encrypt", "verify"]
Transcriber: TypeAlias = Callable[[Literal["C", "S"], str], None]
Content: TypeAlias = bytes | Iterable[bytes] | AsyncIterable[bytes]


class SizedContent(Protocol):
    """Content in chunks, each iteration from its first octet, whose facts are known before
    it is sent: a large stored message, which is never one bytes object."""

    @property
    def size(self) -> int: ...

    @property
    def eight_bit(self) -> bool:
        """Whether an octet is over 127."""
        ...

    @property
    def utf8_headers(self) -> bool:
        """Whether the header (up to the first empty line) holds an octet over 127."""
        ...

    def __aiter__(self) -> AsyncIterator[bytes]: ...


class DeliveryError(MailgateError):
    """A connection or a command failed; ``reply`` says why, ``temporary`` whether to retry.

    ``reply`` is the server's when it gave one, otherwise made up here
    (``451 4.4.1``, ``451 4.4.2``, ``451 4.5.0``, ``454 4.7.0``).
    ``temporary`` defaults to whether the code is below 500.
    """

    def __init__(self, reply: Reply, *, temporary: bool | None = None) -> None:
        super().__init__(" ".join(filter(None, (str(reply.code), reply.enhanced, reply.text))))
        self.reply = reply
        self.temporary = reply.code < 500 if temporary is None else temporary


@dataclass(frozen=True, slots=True, kw_only=True)
class SMTPClientSettings:
    """How ``connect`` reaches a server and talks to it.

    ``hostname``: our name in EHLO.  ``tls``: ``none`` (never STARTTLS),
    ``may`` (STARTTLS when offered, certificate not checked), ``encrypt``
    (STARTTLS required, not checked) or ``verify`` (required, and checked
    against ``tls_server_name`` or the host with ``tls_context``, which
    must then be given).  ``implicit_tls``: TLS from the first octet (port
    465).  ``transcript``: called with each line, ``"C"`` for ours and
    ``"S"`` for the server's, AUTH secrets masked.

    Raises ``ValueError`` for ``verify`` without a verifying context, or
    ``implicit_tls`` with ``tls="none"``.
    """

    hostname: str = "localhost"
    tls: TLSPolicy = "may"
    tls_context: ssl.SSLContext | None = None
    tls_server_name: str | None = None
    implicit_tls: bool = False
    connect_timeout: float = CONNECT_TIMEOUT_SECONDS
    command_timeout: float = COMMAND_TIMEOUT_SECONDS
    data_block_timeout: float = DATA_BLOCK_TIMEOUT_SECONDS
    data_timeout: float = DATA_TIMEOUT_SECONDS
    pipelining: bool = True
    chunking: bool = True
    transcript: Transcriber | None = None

    def __post_init__(self) -> None:
        if self.tls == "verify" and (
            self.tls_context is None or self.tls_context.verify_mode is not ssl.CERT_REQUIRED
        ):
            raise ValueError("tls='verify' needs a tls_context that verifies certificates")
        if self.implicit_tls and self.tls == "none":
            raise ValueError("implicit_tls needs a TLS policy other than 'none'")


@dataclass(frozen=True, slots=True)
class Transaction:
    """One message to send: its envelope and its content.

    ``content`` is bytes, or chunks (an iterable or async iterable of
    bytes) so that a large message need never be one bytes object; any
    line endings, dot-stuffing is the engine's.
    """

    envelope: Envelope
    content: Content

    @classmethod
    def of(
        cls,
        content: bytes | SizedContent,
        *,
        sender: str,
        recipients: Iterable[str | Recipient],
        ret: Literal["FULL", "HDRS"] | None = None,
        envid: str | None = None,
    ) -> Transaction:
        """A transaction for ``content``, its size and 8-bit needs read from it (or, for
        ``SizedContent``, as it says them).

        Raises ``ValueError`` as ``Envelope`` does.
        """
        if isinstance(content, bytes):
            head = content.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
            size, eight_bit, utf8_headers = len(content), not content.isascii(), not head.isascii()
        else:
            size, eight_bit, utf8_headers = content.size, content.eight_bit, content.utf8_headers
        envelope = Envelope(
            sender=sender,
            recipients=tuple(r if isinstance(r, Recipient) else Recipient(r) for r in recipients),
            size=size,
            eight_bit=eight_bit,
            utf8_headers=utf8_headers,
            ret=ret,
            envid=envid,
        )
        return cls(envelope, content)


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """What became of one message.

    ``recipients``: each recipient's outcome in envelope order: its RCPT
    reply when that was negative and MAIL was accepted, otherwise
    ``reply``.  ``reply``: the message's outcome (``MessageReply``).
    """

    recipients: tuple[tuple[str, Reply], ...]
    reply: Reply


def made_up(code: int, enhanced: str, text: str) -> DeliveryError:
    return DeliveryError(Reply(code, enhanced, text.replace("\n", " ").replace("\r", " ")))
