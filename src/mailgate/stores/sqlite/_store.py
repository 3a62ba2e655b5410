"""``SQLiteStore``: the store's public face, handing each job to the part that owns it.

Opening is ``_open``'s; changes are written by ``_writer``'s thread, and so is
new mail, unless the store sends it to the commit service
(``SQLiteStore._route``); reads are ``_reads``'; large bodies are
``_bodies``'; subscribers are ``_events``'.  This class only holds the parts
together, checks that the store is open, and decides which writer stores a
new message.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path

from mailgate.model import (
    DeliveryOutcome,
    MessageId,
    MessagePage,
    QueuedDelivery,
    StoredMessage,
    StoreEvent,
    StoreEventKind,
)
from mailgate.ports import HealthCheck, NewMessage, RawStream, StoreError
from mailgate.query import Query
from mailgate.stores._health import WriteHealth, WriteState
from mailgate.stores.sqlite import _queue
from mailgate.stores.sqlite._bodies import BodyFiles
from mailgate.stores.sqlite._commit_service import (
    CommitService,
    CommitServiceClient,
    CommitServiceLink,
)
from mailgate.stores.sqlite._events import Subscriptions
from mailgate.stores.sqlite._open import StorePaths, open_database, open_write_connection
from mailgate.stores.sqlite._prune import anything_to_prune
from mailgate.stores.sqlite._reads import Reads
from mailgate.stores.sqlite._records import QueuedRecipient
from mailgate.stores.sqlite._schema import millis, new_message_record
from mailgate.stores.sqlite._search import delete_tag, rename_tag, set_tags
from mailgate.stores.sqlite._transactions import (
    Apply,
    ChangeQueue,
    Delete,
    MarkRead,
    Prune,
    WriteConnection,
    WriterStats,
)
from mailgate.stores.sqlite._writer import Writer

__all__ = ["MAX_INLINE_CONTENT_OCTETS", "SQLiteStore"]

MAX_INLINE_CONTENT_OCTETS = 96 * 1024
"""Larger content held in memory is kept in a body file, not in the message's row.

The process that received the message writes and syncs the file on a thread
beside its event loop, so the commit service, which commits for every SMTP
process on one thread, writes only the row.  That costs a thread and an fsync
a message, and pays only for large content.  Two SMTP processes, the file
against the content in the frame: 0.56 times the messages a second and 1.38
times the CPU a message at 32 KiB, 0.82 and 1.35 at 64 KiB, 1.19 and 0.99 at
100 KiB (docs/log/2026-12-06-one-writer-of-new-mail.md)."""


class SQLiteStore:
    """A ``ports.SearchableStore``, ``ports.TaggableStore``, ``ports.QueueStore``,
    ``ports.PrunableStore``, ``ports.SizedStore`` and ``ports.HealthReporter`` in one
    SQLite database.

    Opening creates the database, its schema and the bodies directory as
    needed.  Use it from asyncio; one store may serve several event loops.
    """

    def __init__(self, path: Path | str) -> None:
        """Open (creating if need be) the store at ``path``.

        Raises ``StoreError`` (one line) when the database cannot be opened:
        a missing or unwritable directory, a file that is not a database, a
        schema from a newer mailgate.
        """
        self._paths = paths = StorePaths(Path(path))
        self.path = paths.database
        self.bodies = paths.bodies
        self._origin = os.urandom(8).hex()
        self._closed = False
        self._link: CommitServiceLink | None = None
        self._bodies = BodyFiles(paths.bodies)
        connection, self._open_lock, turns = open_database(paths, self._bodies)
        self._subscriptions = Subscriptions(self.path, self._origin)
        self._reads = Reads(self.path, self._bodies)
        self._write_health = WriteHealth()
        self._writer = Writer(
            WriteConnection(connection, self._bodies, self._origin, turns, self._write_health),
            self._subscriptions.publish,
        )

    @property
    def stats(self) -> WriterStats:
        """A snapshot of what the store's own writer has done since the store opened."""
        return dataclasses.replace(self._writer.stats)

    def health(self) -> list[HealthCheck]:
        """``commits``: whether this store's own writer commits (``ports.HealthReporter``).

        Its new mail, when it sends it to a commit service, is that service's
        to report (``serve_commit_service``).
        """
        return [HealthCheck("commits", self._write_health.problem())]

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"message store {self.path} is closed")

    # New mail

    def _route(self) -> CommitServiceClient | None:
        """The writer of new mail: the commit service's client, or ``None`` for this store's own.

        One writer of new mail a node, as Postfix's cleanup is for its smtpd:

        - a store told ``connect_commit_service`` (each SMTP process's store in
          a node: ``mailgate serve``, ``mailgate.testing.MailgateServer``) sends
          all its new mail to the commit service, whatever its size (content
          past ``MAX_INLINE_CONTENT_OCTETS`` in a body file).  While the
          service cannot be reached (it died and is being started again) this
          raises ``StoreError``: the SMTP client is told ``451`` and sends the
          message again, and the link reconnects in the background meanwhile.
          It raises too on another event loop than the one that connected (the
          connection belongs to that loop), which a node never does;
        - any other store (a command's, the commit service's own) is the one
          writer of its database's new mail and stores it on its own writer
          thread.

        Changes to stored mail (delete, read flags, tags) always take this
        store's own writer: they are not new mail.
        """
        link = self._link
        if link is None:
            return None
        return link.client()

    async def store(self, message: NewMessage) -> MessageId:
        """Store the message; return its id only once it is durable.

        Raises ``StoreError`` when it cannot be stored (among other reasons,
        while the commit service this store sends new mail to cannot be
        reached); then no trace of it remains, now or after a crash.
        """
        self._check_open()
        client = self._route()  # before any work: refused at once while the service is away
        content = message.content
        body_file: str | None = None
        if content is None or len(content) > MAX_INLINE_CONTENT_OCTETS:
            content = None
            body_file = self._bodies.name_for(message.id)
            try:
                await asyncio.to_thread(self._bodies.adopt, message, body_file)
            except OSError as error:
                raise StoreError(f"could not store the body of {message.id}: {error}") from error
            if client is not None:
                try:
                    client = self._route()  # it may have gone meanwhile
                except StoreError:
                    self._bodies.unlink([body_file])  # no row names it, and none will
                    raise
        envelope = message.envelope
        due = millis(envelope.received_at)
        record = new_message_record(
            message.summary,
            envelope,
            body_file=body_file,
            content=content,
            origin=self._origin,
            queued=tuple(QueuedRecipient(r, due) for r in envelope.outbound),
        )
        if client is not None:
            return await client.submit(record)
        stored: MessageId = await self._writer.submit(record)
        return stored

    # The commit service

    async def connect_commit_service(self, socket_path: str) -> None:
        """Send all new mail to the commit service listening at ``socket_path`` (a Unix socket).

        The connection belongs to the running event loop, and new mail must
        come from that loop.  Raises ``StoreError`` when it cannot connect
        now; the store keeps trying in the background, and refuses new mail
        with ``StoreError`` until it has reached the service (``_route``).
        """
        self._check_open()
        link = CommitServiceLink(socket_path, self._stored_elsewhere)
        self._link = link
        try:
            await link.connect()
        except OSError as error:
            raise StoreError(
                f"cannot reach the commit service at {socket_path}: {error}"
            ) from error

    def _stored_elsewhere(self, message_ids: list[MessageId]) -> None:
        """The commit service stored these messages of this store's."""
        self._subscriptions.publish([StoreEvent(StoreEventKind.STORED, tuple(message_ids))])

    def serve_commit_service(
        self,
        listener: socket.socket,
        stop_fd: int,
        on_health: Callable[[WriteState], None] | None = None,
    ) -> None:
        """Be the commit service: store the new mail clients send to ``listener``.

        Blocks until ``stop_fd`` is readable; run it on a thread of its own.  It
        writes on a connection of its own, taking turns with every other writer,
        and calls ``on_health``, on that thread, whenever whether its commits go
        through changes.  Raises ``StoreError`` when it cannot open that connection.
        """
        self._check_open()
        connection = open_write_connection(
            self._paths, self._bodies, self._origin, WriteHealth(on_health)
        )
        try:
            CommitService(connection, listener, stop_fd).serve()
        finally:
            connection.close()

    # Changes

    async def delete(self, message_ids: Sequence[MessageId] | None = None) -> int:
        """Delete these messages, or all of them for ``None``; return how many."""
        self._check_open()
        count: int = await self._writer.submit(
            Delete(None if message_ids is None else list(message_ids))
        )
        return count

    async def prune(
        self,
        *,
        keep_newest: int | None = None,
        older_than: datetime | None = None,
        limit: int,
    ) -> int:
        """Delete up to ``limit`` of the oldest messages over these limits, none still queued
        for delivery; return how many (``ports.PrunableStore``, ``_prune``).

        A read finds out first whether any is over them, so a check that finds
        none writes nothing.
        """
        self._check_open()
        before = None if older_than is None else millis(older_than)
        if not await self._reads.run(lambda c: anything_to_prune(c, keep_newest, before)):
            return 0
        count: int = await self._writer.submit(Prune(keep_newest, before, limit))
        return count

    async def mark_read(self, message_ids: Sequence[MessageId] | None, read: bool) -> int:
        """Set the read flag on these messages, or all for ``None``; return how many changed."""
        self._check_open()
        count: int = await self._writer.submit(
            MarkRead(None if message_ids is None else list(message_ids), read)
        )
        return count

    async def set_tags(self, message_ids: Sequence[MessageId], tags: Sequence[str]) -> int:
        """Replace the tags of these messages; return how many of them exist."""
        self._check_open()
        ids, wanted = list(message_ids), list(tags)
        count: int = await self._writer.submit(Apply(lambda c: set_tags(c, ids, wanted)))
        return count

    async def rename_tag(self, old: str, new: str) -> int:
        """Rename a tag on every message; return on how many it was."""
        self._check_open()
        count: int = await self._writer.submit(Apply(lambda c: rename_tag(c, old, new)))
        return count

    async def delete_tag(self, tag: str) -> int:
        """Remove a tag from every message; return from how many."""
        self._check_open()
        count: int = await self._writer.submit(Apply(lambda c: delete_tag(c, tag)))
        return count

    # The outbound queue (``_queue``)

    async def _change_queue(self, work: ChangeQueue) -> int:
        self._check_open()
        count: int = await self._writer.submit(work)
        return count

    async def claim(
        self, owner: str, *, now: datetime, lease: timedelta, limit: int
    ) -> list[QueuedDelivery]:
        """Lease up to ``limit`` messages' due recipients to ``owner`` (``ports.QueueStore``)."""
        self._check_open()
        if not await self._reads.run(lambda c: _queue.anything_due(c, now)):
            return []
        until = now + lease
        claimed: list[QueuedDelivery] = await self._writer.submit(
            ChangeQueue(lambda c: _queue.claim(c, owner, now, until, limit))
        )
        return claimed

    async def record(self, owner: str, outcomes: Sequence[DeliveryOutcome]) -> int:
        """Write the outcomes of recipients ``owner`` holds; return how many were written."""
        done = list(outcomes)
        return await self._change_queue(ChangeQueue(lambda c: _queue.record(c, owner, done)))

    async def renew_claims(self, owner: str, until: datetime) -> int:
        """Extend every lease ``owner`` holds to ``until``; return how many."""
        self._check_open()
        if not await self._reads.run(lambda c: _queue.holds_claims(c, owner)):
            return 0
        return await self._change_queue(ChangeQueue(lambda c: _queue.renew_claims(c, owner, until)))

    async def release_claims(self, owner: str) -> int:
        """Drop every lease ``owner`` holds; return how many."""
        self._check_open()
        if not await self._reads.run(lambda c: _queue.holds_claims(c, owner)):
            return 0
        return await self._change_queue(ChangeQueue(lambda c: _queue.release_claims(c, owner)))

    async def queued(
        self, message_id: MessageId | None = None, *, pending_only: bool = True
    ) -> list[QueuedDelivery]:
        """The queue's rows, oldest message first (pending ones only, unless told)."""
        self._check_open()
        return await self._reads.run(lambda c: _queue.queued(c, message_id, pending_only))

    async def enqueue(self, message_id: MessageId, recipients: Sequence[str], now: datetime) -> int:
        """Queue a stored message for delivery to ``recipients``; return how many rows were
        added (or queued again after they were done)."""
        wanted = list(recipients)
        return await self._change_queue(
            ChangeQueue(lambda c: _queue.enqueue(c, message_id, wanted, now))
        )

    async def retry(self, message_id: MessageId | None, now: datetime) -> int:
        """Make pending recipients (of one message, or all) due at ``now``."""
        return await self._change_queue(ChangeQueue(lambda c: _queue.retry(c, message_id, now)))

    async def hold(self, message_id: MessageId) -> int:
        """Hold a message's pending recipients until released."""
        return await self._change_queue(ChangeQueue(lambda c: _queue.hold(c, message_id)))

    async def release(self, message_id: MessageId, now: datetime) -> int:
        """Release a message's held recipients, due at ``now``."""
        return await self._change_queue(ChangeQueue(lambda c: _queue.release(c, message_id, now)))

    async def request_bounce(self, message_id: MessageId, now: datetime) -> int:
        """Have a message's pending recipients bounced at the next run."""
        return await self._change_queue(
            ChangeQueue(lambda c: _queue.request_bounce(c, message_id, now))
        )

    async def dequeue(self, message_id: MessageId) -> int:
        """Remove a message's pending recipients from the queue (no bounce)."""
        return await self._change_queue(ChangeQueue(lambda c: _queue.dequeue(c, message_id)))

    # Reads

    async def list(self, *, offset: int = 0, limit: int = 50) -> MessagePage:
        """A page of summaries, newest first, with the store's totals."""
        self._check_open()
        return await self._reads.list(offset=offset, limit=limit)

    async def get(self, message_id: MessageId) -> StoredMessage | None:
        """One message's summary and envelope, or ``None``."""
        self._check_open()
        return await self._reads.get(message_id)

    async def raw(self, message_id: MessageId) -> bytes | None:
        """The exact stored bytes (trace header included), or ``None``."""
        self._check_open()
        return await self._reads.raw(message_id)

    async def stream_raw(self, message_id: MessageId) -> RawStream | None:
        """The exact stored bytes a part at a time (``_reads.stream``), or ``None``."""
        self._check_open()
        return await self._reads.stream(message_id)

    async def search(self, query: Query, *, offset: int = 0, limit: int = 50) -> MessagePage:
        """Messages matching ``query``, newest first; ``total`` and ``unread`` count matches."""
        self._check_open()
        return await self._reads.search(query, offset=offset, limit=limit)

    async def tags(self) -> dict[str, int]:
        """Every tag in use, with how many messages carry it."""
        self._check_open()
        return await self._reads.tags()

    async def disk_usage(self) -> int:
        """Octets the database, its write-ahead log and the bodies directory's files take."""
        self._check_open()
        return await asyncio.to_thread(self._paths.disk_usage)

    # Events

    def subscribe(self) -> AsyncIterator[StoreEvent]:
        """Live events from now on, on the calling event loop; ends when the store closes.

        Every change committed to the database after this returns is seen,
        whichever process or store committed it: this store's own at once,
        others' within about 50 ms (``_follow.FOLLOW_INTERVAL_SECONDS``).
        A change committed just before may be seen too.

        Raises ``StoreError`` when the store is closed or cannot be read.
        """
        self._check_open()
        return self._subscriptions.subscribe()

    # Closing

    async def aclose(self) -> None:
        """Finish pending writes, end subscriptions, and close the database."""
        if self._closed:
            return
        self._closed = True
        followers = self._subscriptions.stop_following()
        if self._link is not None:
            await self._link.aclose()
        await asyncio.to_thread(self._writer.stop)
        for follower in followers:
            await asyncio.to_thread(follower.join)
        self._reads.close()
        self._subscriptions.end()
        self._open_lock.release()
