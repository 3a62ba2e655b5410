"""The commit service: the one writer of new mail for every SMTP process of a node.

A store's writer thread shares its process's GIL with the event loop.  After
each step of a transaction it waits for the GIL while a busy loop runs
compiled code that never offers it, and with several SMTP processes each
transaction also waits for the other processes' turns on the write lock.
Both add milliseconds to the reply after the final dot at moderate load.  So
a mailgate node stores the new mail of its SMTP processes in a process of its
own, the commit service, as Postfix's smtpd hands every message to cleanup:
each SMTP process's store sends every new message's ``NewMessageRecord``
there (``CommitServiceClient``, on its event loop, with no thread), and one
single-threaded loop (``CommitService``) commits what every process sent in
one transaction, then answers.  A store reaches the service through a
``CommitServiceLink``, which keeps the connection up; while the service
cannot be reached the store refuses new mail (``StoreError``, so the SMTP
client is told ``451`` and sends it again): there is no second route for new
mail (``_store.SQLiteStore._route``).

Wire protocol, over a Unix stream socket in a directory only this user can
enter:

- client to service: frames, each a 4-byte big-endian length and then a
  ``NewMessageRecord.to_wire`` payload;
- service to client: one byte a frame, in the order the frames came:
  ``COMMITTED``, or ``FAILED`` (the service logs why).

Invariants:

- a frame is answered only after the COMMIT holding it returned;
- the body file a frame names was synced and moved into the bodies
  directory by the client; the service syncs the directory before the commit
  (``WriteConnection``);
- each change is logged under the sending store's origin, and that store
  tells its own subscribers when the answer arrives, so its follower skips
  it and every other store's follower publishes it once;
- a client whose connection ends fails every unanswered message with
  ``StoreError``: the message may or may not be stored, and the SMTP client,
  told ``451``, sends it again.  Until the link connects again (it tries every
  ``RECONNECT_SECONDS``) every new message is refused the same way.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import selectors
import socket
import struct
from collections.abc import Callable

from mailgate.model import MessageId
from mailgate.ports import StoreError
from mailgate.stores.sqlite._records import NewMessageRecord
from mailgate.stores.sqlite._transactions import MAX_BATCH_OPERATIONS, WriteConnection

__all__ = [
    "COMMITTED",
    "FAILED",
    "RECONNECT_SECONDS",
    "CommitService",
    "CommitServiceClient",
    "CommitServiceLink",
    "frame",
]

log = logging.getLogger(__name__)

COMMITTED = 1
FAILED = 0
_HEADER = struct.Struct("!I")
MAX_FRAME_BYTES = 256 * 1024 * 1024
"""A frame longer than this ends the connection: no message kept in memory is near it."""
_READ_BYTES = 256 * 1024


RECONNECT_SECONDS = 0.1
"""How long a link waits, after losing or failing to reach the commit service, before it
tries again: a failed try is one ``connect`` on a Unix socket."""


def frame(record: NewMessageRecord) -> tuple[bytes, bytes]:
    """The frame that carries ``record``: its header and its payload."""
    payload = record.to_wire()
    return _HEADER.pack(len(payload)), payload


class CommitServiceClient(asyncio.Protocol):
    """One event loop's connection to the commit service.

    ``on_stored`` is called on the loop with the ids of the messages the
    service committed, in the order they were sent; ``on_lost`` once the
    connection has ended.  Made on that loop.
    """

    def __init__(
        self, on_stored: Callable[[list[MessageId]], None], on_lost: Callable[[], None]
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._on_stored = on_stored
        self._on_lost = on_lost
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

    def submit(self, record: NewMessageRecord) -> asyncio.Future[MessageId]:
        """Send the new message; the future resolves to its id once it is committed.

        Raises ``StoreError`` when the connection has ended; the future fails
        with ``StoreError`` when the service fails the message or the
        connection ends before the answer.
        """
        transport = self._transport
        if transport is None:
            raise StoreError("the commit service is not connected")
        loop = self._loop
        future: asyncio.Future[MessageId] = loop.create_future()
        if not self._unsent:
            # One write for every message this turn of the loop ends: one wake-up there.
            loop.call_soon(self._send)
        self._unsent += frame(record)
        self._waiting.append((future, record.id))
        return future

    def _send(self) -> None:
        unsent, self._unsent = self._unsent, []
        if self._transport is not None:  # else connection_lost failed their futures
            self._transport.write(b"".join(unsent))

    def data_received(self, data: bytes) -> None:
        waiting = self._waiting
        if len(data) > len(waiting):
            log.error("the commit service answered more than it was sent: disconnecting")
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
                    StoreError("could not write to the message store (the commit service says why)")
                )
        if stored:
            self._on_stored(stored)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        waiting, self._waiting = self._waiting, collections.deque()
        if waiting:
            log.error(
                "lost the commit service with %d messages unconfirmed: they fail", len(waiting)
            )
        for future, _ in waiting:
            if not future.done():
                future.set_exception(
                    StoreError("the commit service ended before confirming the message")
                )
        self._on_lost()

    def close(self) -> None:
        """End the connection; unconfirmed messages fail."""
        if self._transport is not None:
            self._transport.close()


class _Peer:
    """One connected client, as the service sees it."""

    __slots__ = ("inbox", "outbox", "sock", "writing")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbox = bytearray()
        self.outbox = bytearray()
        self.writing = False


_ACCEPT = object()
_STOP = object()


class CommitService:
    """Commits the new mail its clients send, until ``stop_fd`` is readable or reaches its end.

    Single-threaded: it reads every frame that is ready, commits them all in
    one transaction, answers, and reads again; what arrives during a commit
    makes the next one.  When no frame is ready it adds new mail to the search
    index, a chunk at a time (``WriteConnection.index_wait``).  Run ``serve``
    on one thread.
    """

    def __init__(self, connection: WriteConnection, listener: socket.socket, stop_fd: int) -> None:
        self._connection = connection
        self._listener = listener
        self._stop_fd = stop_fd
        self._selector = selectors.DefaultSelector()
        self._peers: dict[socket.socket, _Peer] = {}
        # Read into, again and again: a new 256 KiB object for every read was a mapping
        # made, shrunk and unmapped each time (malloc maps blocks that large).
        self._buffer = memoryview(bytearray(_READ_BYTES))

    def serve(self) -> None:
        """Serve until told to stop; commit and answer what was read before returning."""
        selector = self._selector
        self._listener.setblocking(False)
        selector.register(self._listener, selectors.EVENT_READ, _ACCEPT)
        selector.register(self._stop_fd, selectors.EVENT_READ, _STOP)
        connection = self._connection
        stopping = False
        try:
            while not stopping:
                received: list[tuple[_Peer, NewMessageRecord]] = []
                ready = selector.select(connection.index_wait())
                if not ready:  # idle: index what is new, then look again
                    connection.index()
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
                    self._commit_and_answer(received[start : start + MAX_BATCH_OPERATIONS])
                connection.catch_up()
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

    def _receive(self, peer: _Peer, received: list[tuple[_Peer, NewMessageRecord]]) -> None:
        """Read what ``peer`` sent, adding each whole frame to ``received``."""
        inbox = peer.inbox
        buffer = self._buffer
        while True:
            try:
                count = peer.sock.recv_into(buffer)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as error:
                log.warning("commit client failed: %s", error)
                count = 0
            if not count:
                self._drop(peer)  # what it sent in full is still committed
                break
            inbox += buffer[:count]
            if count < _READ_BYTES:
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
                    with view[start : start + length] as payload:
                        record = NewMessageRecord.from_wire(payload)
                except ValueError as error:
                    log.error("a commit client sent %s: disconnecting it", error)
                    self._drop(peer)
                    return
                received.append((peer, record))
                position = start + length
        del inbox[:position]

    def _commit_and_answer(self, received: list[tuple[_Peer, NewMessageRecord]]) -> None:
        """Commit what was received in one transaction; answer each message's sender."""
        connection = self._connection
        with connection.turns:
            outcome = connection.commit([record for _, record in received])
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


class CommitServiceLink:
    """A store's way to the commit service: one event loop's connection, kept up.

    The connection belongs to the loop that called ``connect``.  When it ends
    (the service died, or is being started again) or cannot be made, the link
    tries again every ``RECONNECT_SECONDS`` in the background, on that loop,
    until it is closed: meanwhile ``client`` raises ``StoreError``, and the
    service takes new mail again as soon as it is back.  ``on_stored`` is
    called on that loop with the ids of the messages the service committed.
    """

    def __init__(self, socket_path: str, on_stored: Callable[[list[MessageId]], None]) -> None:
        self.socket_path = socket_path
        self._on_stored = on_stored
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: CommitServiceClient | None = None
        self._reconnecting: asyncio.Task[None] | None = None
        self._closed = False

    async def connect(self) -> None:
        """Connect on the running loop, which the link then belongs to.

        Raises ``OSError`` when the service cannot be reached now; the link
        then keeps trying in the background.
        """
        self._loop = asyncio.get_running_loop()
        try:
            await self._connect()
        except OSError:
            self._reconnect_later()
            raise

    async def _connect(self) -> None:
        loop = self._loop
        assert loop is not None
        client = CommitServiceClient(self._on_stored, self._lost)
        await loop.create_unix_connection(lambda: client, self.socket_path)
        if self._closed:
            client.close()
            return
        self._client = client

    def client(self) -> CommitServiceClient:
        """The connection to send new mail on, from the loop the link belongs to.

        Raises ``StoreError`` while the service cannot be reached (the link is
        trying again meanwhile), and on any other event loop.
        """
        client = self._client
        if client is None or not client.connected:
            raise StoreError("the commit service cannot be reached now; it is starting again")
        if asyncio.get_running_loop() is not self._loop:
            raise StoreError("new mail for the commit service comes from another event loop")
        return client

    @property
    def connected(self) -> bool:
        """Whether new mail can be sent now."""
        return self._client is not None and self._client.connected

    def _lost(self) -> None:
        """The connection ended: new mail is refused until the link connects again."""
        if not self._closed:
            log.warning("lost the commit service: new mail gets 451 until it is back")
            self._reconnect_later()

    def _reconnect_later(self) -> None:
        if self._closed or (self._reconnecting is not None and not self._reconnecting.done()):
            return
        assert self._loop is not None
        self._reconnecting = self._loop.create_task(
            self._reconnect(), name="mailgate-commit-service-reconnect"
        )

    async def _reconnect(self) -> None:
        while not self._closed:
            await asyncio.sleep(RECONNECT_SECONDS)
            try:
                await self._connect()
            except OSError:
                continue
            log.info("reached the commit service again")
            return

    async def aclose(self) -> None:
        """End the connection (unconfirmed messages fail) and stop trying to reconnect."""
        self._closed = True
        reconnecting, self._reconnecting = self._reconnecting, None
        if reconnecting is not None and not reconnecting.done():
            if self._loop is asyncio.get_running_loop():
                reconnecting.cancel()
                await asyncio.gather(reconnecting, return_exceptions=True)
            elif self._loop is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(reconnecting.cancel)
        if self._client is not None:
            self._client.close()
            self._client = None
