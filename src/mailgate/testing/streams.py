"""The streaming read conformance suite: ``ports.MessageStore.stream_raw`` in every store.

Used like ``mailgate.testing.stores``: a store's test module runs
``STREAM_CHECKS`` against a ``StoreUnderTest``.  Messages go in through
``delivery.Acceptor`` as in production.  The large message is a few MiB of
numbered lines, larger than any store keeps in one piece (the PostgreSQL
store's parts start past 1 MiB), and no whole number of parts, so a part
lost, repeated or out of order shows in the bytes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable

from mailgate.delivery import Acceptor
from mailgate.model import MessageId
from mailgate.ports import MessageStore, StoreError
from mailgate.testing.stores import StoreUnderTest, make_envelope, make_message

__all__ = [
    "LARGE_BODY",
    "MAX_PART_OCTETS",
    "STREAM_CHECKS",
    "check_stream_a_message_deleted_while_read",
    "check_stream_raw",
    "check_stream_stops_early",
]

LARGE_BODY = b"".join(b"line %07d of a large message, streamed\r\n" % n for n in range(70_000))
"""About 2.8 MiB of body: several parts in any store."""
MAX_PART_OCTETS = 1024 * 1024
"""The most a store may hand over in one part: a stream never holds much more at once."""


async def _deliver(acceptor: Acceptor, content: bytes) -> MessageId:
    spool = acceptor.begin(make_envelope())
    for start in range(0, len(content), 64 * 1024):
        spool.write(content[start : start + 64 * 1024])
    return await acceptor.commit(spool)


async def _parts(store: MessageStore, message_id: MessageId) -> list[bytes] | None:
    stream = await store.stream_raw(message_id)
    if stream is None:
        return None
    async with contextlib.aclosing(stream):
        return [part async for part in stream]


async def check_stream_raw(subject: StoreUnderTest) -> None:
    """A small and a large message stream back as ``raw`` reads them, the large one in
    parts of at most ``MAX_PART_OCTETS``; an unknown id or a deleted message is ``None``."""
    async with subject.opened() as (store, acceptor):
        small = await _deliver(acceptor, make_message("small"))
        large = await _deliver(acceptor, make_message("large", LARGE_BODY))
        for message_id in (small, large):
            parts = await _parts(store, message_id)
            assert parts is not None
            assert all(0 < len(part) <= MAX_PART_OCTETS for part in parts)
            whole = await store.raw(message_id)
            assert whole is not None
            assert b"".join(parts) == whole
            stored = await store.get(message_id)
            assert stored is not None
            assert stored.summary.size == len(whole)
        large_parts = await _parts(store, large)
        assert large_parts is not None
        assert len(large_parts) > 1
        assert b"".join(large_parts).endswith(b"\r\n" + make_message("large", LARGE_BODY))
        assert await _parts(store, MessageId("0" * 26)) is None
        assert await store.delete([small, large]) == 2
        assert await store.stream_raw(small) is None
        assert await store.stream_raw(large) is None
    async with subject.opened() as (store, acceptor):  # and after opening it again
        kept = await _deliver(acceptor, make_message("kept", LARGE_BODY))
    async with subject.opened() as (store, _):
        parts = await _parts(store, kept)
        assert parts is not None
        assert b"".join(parts) == await store.raw(kept)


async def check_stream_stops_early(subject: StoreUnderTest) -> None:
    """A stream closed after its first part lets go: the message can still be read, streamed
    and deleted, and the store closes."""
    async with subject.opened() as (store, acceptor):
        large = await _deliver(acceptor, make_message("large", LARGE_BODY))
        for _ in range(3):
            stream = await store.stream_raw(large)
            assert stream is not None
            async with contextlib.aclosing(stream):
                async for part in stream:
                    assert part
                    break
            assert [part async for part in stream] == []  # closed: nothing more
        parts = await _parts(store, large)
        assert parts is not None
        assert b"".join(parts) == await store.raw(large)
        assert await store.delete([large]) == 1


async def check_stream_a_message_deleted_while_read(subject: StoreUnderTest) -> None:
    """A message deleted part-way through a stream is read whole, or the stream raises
    ``StoreError``: never fewer bytes in silence."""
    async with subject.opened() as (store, acceptor):
        large = await _deliver(acceptor, make_message("large", LARGE_BODY))
        expected = await store.raw(large)
        assert expected is not None
        stream = await store.stream_raw(large)
        assert stream is not None
        read: list[bytes] = []
        failure: StoreError | None = None
        async with contextlib.aclosing(stream):
            try:
                async for part in stream:
                    read.append(part)
                    if len(read) == 1:
                        assert await store.delete([large]) == 1
            except StoreError as error:
                failure = error
        if failure is None:
            assert b"".join(read) == expected
        else:
            assert "\n" not in str(failure)
        assert await store.stream_raw(large) is None


STREAM_CHECKS: tuple[Callable[[StoreUnderTest], Awaitable[None]], ...] = (
    check_stream_a_message_deleted_while_read,
    check_stream_raw,
    check_stream_stops_early,
)
"""The checks of ``MessageStore.stream_raw``, for ``pytest.mark.parametrize``."""
