"""A stored message's content on its way out: whole when small, streamed when large.

A message of up to ``WHOLE_CONTENT_OCTETS`` is read whole (``MessageStore.raw``),
as nearly all mail is: one read, and the bytes serve the attempt and the reports.
A larger one is never whole in the process: ``StoredContent`` reads it from the
store (``stream_raw``) a part at a time each time it is sent, to each host an
attempt tries.  What ``MAIL`` must say before the content goes (its ``SIZE``, and
whether it needs ``BODY=8BITMIME`` or ``SMTPUTF8``) is measured by one streaming
pass first (``StoredContent.measure``), which also keeps the first
``REPORT_HEAD_OCTETS`` for delivery reports: a report about a large message
returns its header only, as RFC 3461 4.3 allows (and ``build_report`` does past
``DEFAULT_MAX_RETURNED_OCTETS`` whatever ``RET`` says).

Either way the ``Return-Path`` field mailgate put at the top is left out of what
is sent (RFC 5321 4.4: only final delivery adds one), by ``outgoing_content`` for
bytes and by ``strip_return_path`` while the content streams.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass

from mailgate.model import MessageId
from mailgate.ports import MessageStore, StoreError
from mailgate.queue._reports import DEFAULT_MAX_RETURNED_OCTETS

__all__ = [
    "REPORT_HEAD_OCTETS",
    "WHOLE_CONTENT_OCTETS",
    "MessageContent",
    "StoredContent",
    "load_content",
    "outgoing_content",
    "strip_return_path",
]

WHOLE_CONTENT_OCTETS = 1024 * 1024
"""A larger message is streamed from the store, not read whole (the PostgreSQL store's
limit for one row: ``stores.postgresql._contents``)."""
REPORT_HEAD_OCTETS = 64 * 1024
"""What a report about a large message gets of it: more than a report returns of any
header (``DEFAULT_MAX_RETURNED_OCTETS``), so it cuts the header where it would."""
assert REPORT_HEAD_OCTETS > DEFAULT_MAX_RETURNED_OCTETS
MAX_RETURN_PATH_OCTETS = 64 * 1024
"""How far a stream is held back looking for the end of a leading ``Return-Path``: mailgate
writes one line; past this, whatever it is, it is sent as it is."""
_RETURN_PATH = b"return-path:"


def _return_path_end(content: bytes, *, final: bool) -> int | None:
    """Octets of the ``Return-Path`` field at the top of ``content`` (0 when none), or
    ``None`` when more content must be seen to tell (never when ``final``)."""
    if content[: len(_RETURN_PATH)].lower() != _RETURN_PATH:
        if not final and len(content) < len(_RETURN_PATH):
            return None if _RETURN_PATH.startswith(content.lower()) else 0
        return 0
    end = content.find(b"\r\n")
    while end >= 0:
        after = content[end + 2 : end + 3]
        if not after and not final:
            return None  # a folded next line would go on the field
        if after not in (b" ", b"\t"):
            return end + 2
        end = content.find(b"\r\n", end + 2)
    return None if not final else 0


def outgoing_content(content: bytes) -> bytes:
    """The stored message as it goes on: without the ``Return-Path`` header mailgate added
    at the top (RFC 5321 4.4: only final delivery adds one; a relay must not send it)."""
    end = _return_path_end(content, final=True)
    return content[end:] if end else content


async def strip_return_path(parts: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """``parts`` as ``outgoing_content`` leaves them, holding back only the first octets."""
    held: bytes | None = b""
    async for part in parts:
        if held is None:
            yield part
            continue
        held += part
        end = _return_path_end(held, final=False)
        if end is None and len(held) < MAX_RETURN_PATH_OCTETS:
            continue
        if held[end or 0 :]:
            yield held[end or 0 :]
        held = None
    if held:
        rest = held[_return_path_end(held, final=True) or 0 :]
        if rest:
            yield rest


class StoredContent:
    """A large stored message's content as it goes on, read from the store each time it is
    iterated (an ``AsyncIterable``), with the facts ``MAIL`` needs, measured beforehand.

    Iterating it raises ``StoreError`` when the store cannot be read or the message
    was deleted meanwhile.
    """

    def __init__(
        self,
        store: MessageStore,
        message_id: MessageId,
        *,
        size: int,
        eight_bit: bool,
        utf8_headers: bool,
    ) -> None:
        self._store = store
        self.message_id = message_id
        self.size = size
        """Octets that are sent (the ``Return-Path`` left out), for ``SIZE``."""
        self.eight_bit = eight_bit
        """Whether an octet is over 127 (``BODY=8BITMIME``)."""
        self.utf8_headers = utf8_headers
        """Whether the header holds one (``SMTPUTF8``)."""

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._parts()

    async def _parts(self) -> AsyncIterator[bytes]:
        stream = await self._store.stream_raw(self.message_id)
        if stream is None:
            raise StoreError(f"message {self.message_id} was deleted before it was sent")
        async with contextlib.aclosing(stream):
            async for part in strip_return_path(stream):
                yield part

    @classmethod
    async def measure(
        cls, store: MessageStore, message_id: MessageId
    ) -> tuple[StoredContent, bytes] | None:
        """The content and its first ``REPORT_HEAD_OCTETS`` as stored, from one pass over
        it; ``None`` when there is no such message.  Raises ``StoreError``."""
        stream = await store.stream_raw(message_id)
        if stream is None:
            return None
        head = bytearray()
        size, eight_bit, utf8_headers = 0, False, False
        in_header, tail = True, b""

        async def kept(parts: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
            async for part in parts:
                if len(head) < REPORT_HEAD_OCTETS:
                    head.extend(part[: REPORT_HEAD_OCTETS - len(head)])
                yield part

        async with contextlib.aclosing(stream):
            async for part in strip_return_path(kept(stream)):
                size += len(part)
                eight_bit = eight_bit or not part.isascii()
                if in_header:  # it ends at the first empty line, as Transaction.of finds it
                    window = tail + part
                    ends = [i for i in (window.find(b"\r\n\r\n"), window.find(b"\n\n")) if i >= 0]
                    utf8_headers = utf8_headers or not window[: min(ends, default=None)].isascii()
                    in_header, tail = not ends, window[-3:]
        content = cls(store, message_id, size=size, eight_bit=eight_bit, utf8_headers=utf8_headers)
        return content, bytes(head)


@dataclass(frozen=True, slots=True)
class MessageContent:
    """A message's content for its attempts and its reports.

    ``outgoing`` is what is sent; ``original`` what reports return of it: the
    stored message, or with ``whole`` false its first octets only.
    """

    outgoing: bytes | StoredContent
    original: bytes
    whole: bool = True


async def load_content(
    store: MessageStore, message_id: MessageId, size: int
) -> MessageContent | None:
    """The content of a stored message of ``size`` octets: read whole up to
    ``WHOLE_CONTENT_OCTETS``, else measured for streaming; ``None`` when there is no such
    message.  Raises ``StoreError``."""
    if size <= WHOLE_CONTENT_OCTETS:
        content = await store.raw(message_id)
        return None if content is None else MessageContent(outgoing_content(content), content)
    measured = await StoredContent.measure(store, message_id)
    if measured is None:
        return None
    streamed, head = measured
    return MessageContent(streamed, head, whole=False)
