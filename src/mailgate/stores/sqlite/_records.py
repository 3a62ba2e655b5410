"""What crosses to the commit service: one new message, as a named, typed record.

``NewMessageRecord`` is everything a transaction needs to store a new message:
the columns of its ``messages`` row (see ``_schema``), its content when the
row keeps it (``_store.MAX_INLINE_CONTENT_OCTETS``), the origin whose
subscribers hear of it, the text the search index takes for it, and the tags
and outbound queue rows (``QueuedRecipient``) that must be durable in the same
transaction as the message.  The SMTP processes of a node send it to the
commit service; a store with no commit service (a command's) gives the very
same record to its own writer thread: one record, whichever writer commits it.

Wire format, one encoder (``to_wire``) and one decoder (``from_wire``): the
``marshal`` of a flat tuple, ``WIRE_VERSION`` first, then the fields in the
order the class declares them, the queue rows as ``(recipient, due_ms)``
pairs.  ``marshal`` because it is C both ways (a frame costs about a
microsecond each way) and builds nothing but plain values on loading, unlike
``pickle``; the peer is a process of this server on a socket in a directory
only this user can enter.  The decoder checks the version, the number of
fields and every field's type, so a garbled frame is a ``ValueError``, never
a wrong row.

The classes are plain ``@final`` classes with ``__slots__`` and ``Final``
attributes, not frozen dataclasses: compiled by mypyc (``setup.py``) they are
native classes, made in 0.05 microseconds and read-only, where a frozen
dataclass takes 2.6 and a ``NamedTuple`` made with keywords 0.8, on every
message, in the SMTP process and again in the commit service.
"""

from __future__ import annotations

import marshal
from typing import Final, final

from mailgate.model import MessageId

__all__ = ["WIRE_VERSION", "NewMessageRecord", "QueuedRecipient"]

WIRE_VERSION = 4
"""Changes whenever the fields change: a frame of another version is refused.  (2 added
``inline_parts``, 3 ``tags``, 4 ``search_text``.)"""
_WIRE_FIELDS = 19  # the version and the eighteen fields


@final
class QueuedRecipient:
    """One outbound queue row to store with its message: a recipient to relay to.

    No store keeps an outbound queue yet: a store refuses a message that
    carries any (``StoreError``) rather than drop them.
    """

    __slots__ = ("due_ms", "recipient")

    def __init__(self, recipient: str, due_ms: int) -> None:
        self.recipient: Final = recipient
        self.due_ms: Final = due_ms
        """When the first delivery attempt is due, in milliseconds since the Unix epoch."""

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, QueuedRecipient)
            and self.recipient == other.recipient
            and self.due_ms == other.due_ms
        )

    def __hash__(self) -> int:
        return hash((self.recipient, self.due_ms))

    def __repr__(self) -> str:
        return f"QueuedRecipient({self.recipient!r}, {self.due_ms!r})"


@final
class NewMessageRecord:
    """A new message for a write transaction: its row, content, origin, tags and queue rows.

    Immutable: the attributes are ``Final``, which mypy holds every use to, and
    which the compiled build makes read-only.
    """

    __slots__ = (
        "attachments",
        "body_file",
        "content",
        "date_iso",
        "envelope_json",
        "header_message_id",
        "id",
        "inline_parts",
        "origin",
        "queued",
        "received_at_ms",
        "recipients_json",
        "search_text",
        "sender_json",
        "size",
        "snippet",
        "subject",
        "tags",
    )

    def __init__(
        self,
        *,
        id: MessageId,
        received_at_ms: int,
        size: int,
        sender_json: str | None,
        recipients_json: str,
        subject: str,
        date_iso: str | None,
        header_message_id: str,
        attachments: int,
        inline_parts: int,
        snippet: str,
        envelope_json: str,
        search_text: str,
        body_file: str | None,
        content: bytes | None,
        origin: str,
        tags: tuple[str, ...] = (),
        queued: tuple[QueuedRecipient, ...] = (),
    ) -> None:
        self.id: Final = id
        self.received_at_ms: Final = received_at_ms
        self.size: Final = size
        self.sender_json: Final = sender_json
        self.recipients_json: Final = recipients_json
        self.subject: Final = subject
        self.date_iso: Final = date_iso
        self.header_message_id: Final = header_message_id
        self.attachments: Final = attachments
        self.inline_parts: Final = inline_parts
        self.snippet: Final = snippet
        self.envelope_json: Final = envelope_json
        self.search_text: Final = search_text
        """What free words are looked for in, lowered: ``query.field_text`` of ``Field.TEXT``."""
        self.body_file: Final = body_file
        """The file in the bodies directory holding the content, synced and in place; or
        ``None`` when ``content`` holds it."""
        self.content: Final = content
        self.origin: Final = origin
        """The store whose subscribers learn of the message: the writer's own, or, for a
        message the commit service stores, the SMTP process's store that sent it."""
        self.tags: Final = tags
        """The tags the message is stored with (most have none)."""
        self.queued: Final = queued

    def _fields(self) -> tuple[object, ...]:
        return (
            self.id,
            self.received_at_ms,
            self.size,
            self.sender_json,
            self.recipients_json,
            self.subject,
            self.date_iso,
            self.header_message_id,
            self.attachments,
            self.inline_parts,
            self.snippet,
            self.envelope_json,
            self.search_text,
            self.body_file,
            self.content,
            self.origin,
            self.tags,
            self.queued,
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NewMessageRecord) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return f"NewMessageRecord(id={self.id!r}, origin={self.origin!r}, ...)"

    def to_wire(self) -> bytes:
        """The record as a frame's payload (``from_wire`` reads it back)."""
        return marshal.dumps(
            (
                WIRE_VERSION,
                self.id,
                self.received_at_ms,
                self.size,
                self.sender_json,
                self.recipients_json,
                self.subject,
                self.date_iso,
                self.header_message_id,
                self.attachments,
                self.inline_parts,
                self.snippet,
                self.envelope_json,
                self.search_text,
                self.body_file,
                self.content,
                self.origin,
                self.tags,
                tuple([(queued.recipient, queued.due_ms) for queued in self.queued]),
            )
        )

    @staticmethod
    def from_wire(payload: bytes | memoryview) -> NewMessageRecord:
        """The record a frame's payload carries.

        Raises ``ValueError`` when it carries none: not ``marshal`` data,
        another ``WIRE_VERSION``, or a field of the wrong type.
        """
        try:
            fields = marshal.loads(payload)  # noqa: S302 - a process of this server sent it
        except (EOFError, TypeError, ValueError) as error:
            raise ValueError(f"undecodable frame: {error}") from error
        if not isinstance(fields, tuple) or len(fields) != _WIRE_FIELDS:
            raise ValueError("a frame that is not a new message")
        (
            version,
            message_id,
            received_at_ms,
            size,
            sender_json,
            recipients_json,
            subject,
            date_iso,
            header_message_id,
            attachments,
            inline_parts,
            snippet,
            envelope_json,
            search_text,
            body_file,
            content,
            origin,
            tags,
            queued,
        ) = fields
        if version != WIRE_VERSION:
            raise ValueError(f"a frame of wire version {version!r}, not {WIRE_VERSION}")
        if not (
            isinstance(message_id, str)
            and isinstance(received_at_ms, int)
            and isinstance(size, int)
            and (sender_json is None or isinstance(sender_json, str))
            and isinstance(recipients_json, str)
            and isinstance(subject, str)
            and (date_iso is None or isinstance(date_iso, str))
            and isinstance(header_message_id, str)
            and isinstance(attachments, int)
            and isinstance(inline_parts, int)
            and isinstance(snippet, str)
            and isinstance(envelope_json, str)
            and isinstance(search_text, str)
            and (body_file is None or isinstance(body_file, str))
            and (content is None or isinstance(content, bytes))
            and isinstance(origin, str)
            and isinstance(tags, tuple)
            and all(isinstance(tag, str) for tag in tags)
            and isinstance(queued, tuple)
        ):
            raise ValueError("a frame whose fields are not a new message's")
        recipients: list[QueuedRecipient] = []
        for pair in queued:
            if not (
                isinstance(pair, tuple)
                and len(pair) == 2
                and isinstance(pair[0], str)
                and isinstance(pair[1], int)
            ):
                raise ValueError("a frame whose queue rows are not (recipient, due) pairs")
            recipients.append(QueuedRecipient(pair[0], pair[1]))
        return NewMessageRecord(
            id=MessageId(message_id),
            received_at_ms=received_at_ms,
            size=size,
            sender_json=sender_json,
            recipients_json=recipients_json,
            subject=subject,
            date_iso=date_iso,
            header_message_id=header_message_id,
            attachments=attachments,
            inline_parts=inline_parts,
            snippet=snippet,
            envelope_json=envelope_json,
            search_text=search_text,
            body_file=body_file,
            content=content,
            origin=origin,
            tags=tags,
            queued=tuple(recipients),
        )
