"""The commit process: one writer of new mail for every SMTP process of a server.

A store's writer thread shares its process's GIL with the event loop.  After
each step of a commit it waits for the GIL while a busy loop runs compiled
code that never offers it, and with several SMTP processes each commit also
waits for the other processes' turns on the write lock.  Both add
milliseconds to the reply after the final dot at moderate load.  So
``mailgate serve`` runs the commits of new mail in a process of their own:
the SMTP processes send each message's row there (``CommitClient``, on their
event loop, with no thread), and one single-threaded loop (``CommitServer``)
commits what every process sent in one group commit, then answers.

Wire protocol, over a Unix stream socket in a directory only this user can
enter:

- client to server: frames, each a 4-byte big-endian length and then the
  ``marshal`` of ``(origin, row, content, body_file)`` (an ``Insert``);
- server to client: one byte a frame, in the order the frames came:
  ``COMMITTED``, or ``FAILED`` (the server logs why).

Invariants:

- a frame is answered only after the COMMIT holding it returned;
- the body file a frame names was synced and moved into the bodies
  directory by the client; the server syncs the directory before the commit
  (``Committer``);
- each change is logged under the sending store's origin, and that store
  tells its own subscribers when the answer arrives, so its follower skips
  it and every other store's follower publishes it once;
- a client whose connection ends fails every unanswered commit with
  ``StoreError``: the message may or may not be stored, and the SMTP client,
  told ``451``, sends it again.  Until it connects again its store commits
  on its own writer thread.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import marshal
import selectors
import socket
import struct
from collections.abc import Callable

from mailgate.model import MessageId
from mailgate.ports import StoreError
from mailgate.stores._sqlite_writer import MAX_BATCH_OPERATIONS, Committer, Insert

__all__ = ["COMMITTED", "FAILED", "CommitClient", "CommitServer", "encode_insert"]

log = logging.getLogger(__name__)

COMMITTED = 1
FAILED = 0
_HEADER = struct.Struct("!I")
MAX_FRAME_BYTES = 256 * 1024 * 1024
"""A frame longer than this ends the connection: no message kept in memory is near it."""
_READ_BYTES = 256 * 1024


def encode_insert(insert: Insert) -> tuple[bytes, bytes]:
    """The frame that carries ``insert``: its header and its payload."""
    payload = marshal.dumps((insert.origin, insert.row, insert.content, insert.body_file))
    return _HEADER.pack(len(payload)), payload


def _decode_insert(payload: bytes | memoryview) -> Insert:
    """The ``Insert`` a frame's payload carries; ``ValueError`` when it carries none."""
    try:
        origin, row, content, body_file = marshal.loads(payload)  # noqa: S302 - our own peer
    except (EOFError, TypeError, ValueError) as error:
        raise ValueError(f"undecodable frame: {error}") from error
    if not (
        isinstance(origin, str)
        and isinstance(row, tuple)
        and row
        and isinstance(row[0], str)
        and (content is None or isinstance(content, bytes))
        and (body_file is None or isinstance(body_file, str))
    ):
        raise ValueError("a frame that is not a new message")
    return Insert(row, content, body_file, origin)


class CommitClient(asyncio.Protocol):
    """One event loop's connection to the commit process.

    ``on_stored`` is called on the loop with the ids of the messages the
    server committed, in the order they were sent.  Made on that loop.
    """

    def __init__(self, on_stored: Callable[[list[MessageId]], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._on_stored = on_stored
        self._transport: asyncio.Transport | None = None
        self._waiting: collections.deque[tuple[asyncio.Future[MessageId], MessageId]] = (
            collections.deque()
        )
        self._unsent: list[bytes] = []  # frames of this turn of the event loop

    @property
    def connected(self) -> bool:
        """True until the connection ends."""
        return self._transport is not None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def commit(self, insert: Insert) -> asyncio.Future[MessageId]:
        """Send the new message; the future resolves to its id once it is committed."""
        transport = self._transport
        if transport is None:
            raise StoreError("the commit process is not connected")
        loop = self._loop
        future: asyncio.Future[MessageId] = loop.create_future()
        if not self._unsent:
            # One write for every message this turn of the loop ends: one wake-up there.
            loop.call_soon(self._send)
        self._unsent += encode_insert(insert)
        self._waiting.append((future, MessageId(insert.row[0])))
        return future

    def _send(self) -> None:
        unsent, self._unsent = self._unsent, []
        if self._transport is not None:  # else connection_lost failed their futures
            self._transport.write(b"".join(unsent))

    def data_received(self, data: bytes) -> None:
        waiting = self._waiting
        if len(data) > len(waiting):
            log.error("the commit process answered more than it was sent: disconnecting")
            self.close()
            return
        stored: list[MessageId] = []
        for status in data:
            future, message_id = waiting.popleft()
            if status == COMMITTED:
                stored.append(message_id)
                if not future.done():  # a cancelled waiter: the message stays stored
                    future.set_result(message_id)
            elif not future.done():
                future.set_exception(
                    StoreError("could not write to the message store (the commit process says why)")
                )
        if stored:
            self._on_stored(stored)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        waiting, self._waiting = self._waiting, collections.deque()
        if waiting:
            log.error(
                "lost the commit process with %d commits unconfirmed: they fail", len(waiting)
            )
        for future, _ in waiting:
            if not future.done():
                future.set_exception(
                    StoreError("the commit process ended before confirming the message")
                )

    def close(self) -> None:
        """End the connection; unconfirmed commits fail."""
        if self._transport is not None:
            self._transport.close()


class _Peer:
    """One connected client, as the server sees it."""

    __slots__ = ("inbox", "outbox", "sock", "writing")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbox = bytearray()
        self.outbox = bytearray()
        self.writing = False


_ACCEPT = object()
_STOP = object()


class CommitServer:
    """Commits new mail its clients send, until ``stop_fd`` is readable or reaches its end.

    Single-threaded: it reads every frame that is ready, commits them all in
    one transaction, answers, and reads again; what arrives during a commit
    makes the next one.  When no frame is ready it adds new mail to the search
    index, a chunk at a time (``Committer.index_wait``).  Run ``serve`` on
    one thread.
    """

    def __init__(self, committer: Committer, listener: socket.socket, stop_fd: int) -> None:
        self._committer = committer
        self._listener = listener
        self._stop_fd = stop_fd
        self._selector = selectors.DefaultSelector()
        self._peers: dict[socket.socket, _Peer] = {}

    def serve(self) -> None:
        """Serve until told to stop; commit and answer what was read before returning."""
        selector = self._selector
        self._listener.setblocking(False)
        selector.register(self._listener, selectors.EVENT_READ, _ACCEPT)
        selector.register(self._stop_fd, selectors.EVENT_READ, _STOP)
        committer = self._committer
        stopping = False
        try:
            while not stopping:
                received: list[tuple[_Peer, Insert]] = []
                ready = selector.select(committer.index_wait())
                if not ready:  # idle: index what is new, then look again
                    committer.index()
                    continue
                for key, mask in ready:
                    if key.data is _STOP:
                        stopping = True
                    elif key.data is _ACCEPT:
                        self._accept()
                    else:
                        peer: _Peer = key.data
                        if mask & selectors.EVENT_WRITE:
                            self._flush(peer)
                        if mask & selectors.EVENT_READ:
                            self._receive(peer, received)
                for start in range(0, len(received), MAX_BATCH_OPERATIONS):
                    self._commit(received[start : start + MAX_BATCH_OPERATIONS])
                committer.catch_up()
        finally:
            for peer in list(self._peers.values()):
                self._drop(peer)
            selector.close()

    def _accept(self) -> None:
        try:
            sock, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        sock.setblocking(False)
        peer = _Peer(sock)
        self._peers[sock] = peer
        self._selector.register(sock, selectors.EVENT_READ, peer)

    def _receive(self, peer: _Peer, received: list[tuple[_Peer, Insert]]) -> None:
        """Read what ``peer`` sent, adding each whole frame to ``received``."""
        inbox = peer.inbox
        while True:
            try:
                data = peer.sock.recv(_READ_BYTES)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as error:
                log.warning("commit client failed: %s", error)
                data = b""
            if not data:
                self._drop(peer)  # what it sent in full is still committed
                break
            inbox += data
            if len(data) < _READ_BYTES:
                break
        position, end = 0, len(inbox)
        with memoryview(inbox) as view:  # frames decoded in place, not copied out first
            while end - position >= _HEADER.size:
                (length,) = _HEADER.unpack_from(view, position)
                if length > MAX_FRAME_BYTES:
                    log.error("a commit client sent a frame of %d bytes: disconnecting it", length)
                    self._drop(peer)
                    return
                if end - position - _HEADER.size < length:
                    break
                start = position + _HEADER.size
                try:
                    with view[start : start + length] as frame:
                        insert = _decode_insert(frame)
                except ValueError as error:
                    log.error("a commit client sent %s: disconnecting it", error)
                    self._drop(peer)
                    return
                received.append((peer, insert))
                position = start + length
        del inbox[:position]

    def _commit(self, received: list[tuple[_Peer, Insert]]) -> None:
        committer = self._committer
        with committer.turns:
            outcome = committer.commit([insert for _, insert in received])
        for (peer, _), result in zip(received, outcome.results, strict=True):
            peer.outbox.append(FAILED if isinstance(result, BaseException) else COMMITTED)
        for peer in {peer for peer, _ in received}:
            self._flush(peer)

    def _flush(self, peer: _Peer) -> None:
        if peer.sock not in self._peers:
            peer.outbox.clear()  # gone: nobody is waiting for these answers
            return
        if peer.outbox:
            try:
                sent = peer.sock.send(peer.outbox)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as error:
                log.warning("commit client failed: %s", error)
                self._drop(peer)
                return
            del peer.outbox[:sent]
        writing = bool(peer.outbox)
        if writing != peer.writing:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if writing else 0)
            self._selector.modify(peer.sock, events, peer)
            peer.writing = writing

    def _drop(self, peer: _Peer) -> None:
        if self._peers.pop(peer.sock, None) is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(peer.sock)
        peer.sock.close()
