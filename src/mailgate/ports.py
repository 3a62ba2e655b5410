"""The interfaces between layers, as ``typing.Protocol`` classes.

The shells (``server``, ``web``) see stores and delivery only through these.
Every implementation passes the matching conformance suite in
``mailgate.testing``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Protocol

from mailgate.model import Envelope, MessageId, MessagePage, StoredMessage

__all__ = ["Clock", "MailSink", "MessageStore", "NewMessage", "Spool"]


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
    """A fully received message, handed to ``MessageStore.commit``."""

    @property
    def id(self) -> MessageId: ...

    @property
    def envelope(self) -> Envelope: ...


class MailSink(Protocol):
    """What the SMTP shell hands accepted mail to (``delivery.accept``)."""

    def begin(self, envelope: Envelope) -> Spool:
        """Open a spool for a message with this envelope, trace header written."""
        ...

    async def commit(self, spool: Spool) -> MessageId:
        """Store the message durably; return only once it is on disk.

        Raises ``MailgateError`` subclasses when the store cannot take it.
        """
        ...


class MessageStore(Protocol):
    """Durable storage of received messages."""

    async def list(self, *, offset: int = 0, limit: int = 50) -> MessagePage:
        """Newest first."""
        ...

    async def get(self, message_id: MessageId) -> StoredMessage | None:
        """One message's summary and envelope, or ``None``."""
        ...

    async def raw(self, message_id: MessageId) -> bytes | None:
        """The exact stored bytes (trace header included), or ``None``."""
        ...

    async def delete(self, message_ids: Sequence[MessageId] | None = None) -> int:
        """Delete these messages, or all of them for ``None``; return how many."""
        ...

    async def mark_read(self, message_ids: Sequence[MessageId] | None, read: bool) -> int:
        """Set the read flag on these messages, or all for ``None``."""
        ...

    def subscribe(self) -> AsyncIterator[StoreEvent]:
        """Live events: stored, read, deleted."""
        ...

    async def aclose(self) -> None:
        """Finish pending commits and release the store."""
        ...


class StoreEvent(Protocol):
    """A change to the store: ``kind`` is ``"stored"``, ``"read"``, ``"deleted"``..."""

    @property
    def kind(self) -> str: ...

    @property
    def message_ids(self) -> tuple[MessageId, ...]: ...
