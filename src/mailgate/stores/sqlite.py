"""The embedded default store: one SQLite database plus a directory of large bodies.

The database runs in WAL mode with ``synchronous=FULL``: a commit is durable
once ``COMMIT`` returns.  All writes go through one writer thread doing
group commit (see ``_sqlite_writer``); reads use a small pool of separate
connections in worker threads, which WAL lets run alongside the writer.

Bodies of messages that stayed in memory while received are stored inline;
larger ones are files in ``<database>-bodies/``, named after the message.
Every open store holds the lock file ``<database>-lock`` shared; one that
opens when no other store holds it removes, first, the body files no row
names (left by a crash between moving a file in and committing its row).
The spool directory is swept the same way (``delivery.Acceptor``).  Writers,
in this process or others, take turns on ``<database>-write-lock`` (see
``_sqlite_writer.WriteTurns``).

``mailgate serve`` commits new mail in a process of its own: a store told
``connect_commit_process`` sends each new message there rather than to its
writer thread (see ``_sqlite_commits``), but for one whose content, held in
memory, is larger than ``MAX_CONTENT_SENT_OCTETS``; and it commits on its own
thread again while that process cannot be reached.

Several stores, in one process or many, may share the database.  Each
store's subscribers see every change any of them commits: its own writer's
changes straight from the writer, the others' from the ``changes`` log,
read by a follower thread while the store has subscribers (see
``_sqlite_follow``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import shutil
import socket
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import IO, TypeVar

from mailgate.model import MessageId, MessagePage, StoredMessage, StoreEvent, StoreEventKind
from mailgate.ports import NewMessage, StoreError
from mailgate.query import Query
from mailgate.stores._sqlite_commits import CommitClient, CommitServer
from mailgate.stores._sqlite_follow import Follower
from mailgate.stores._sqlite_query import (
    delete_tag,
    ensure_search_schema,
    register_functions,
    rename_tag,
    search_page,
    set_tags,
    tag_counts,
)
from mailgate.stores._sqlite_schema import (
    SCHEMA,
    SCHEMA_VERSION,
    SELECT_SUMMARY,
    UPGRADE,
    message_row,
    stored_message,
    summary_from_row,
)
from mailgate.stores._sqlite_writer import (
    Apply,
    Committer,
    Delete,
    Insert,
    MarkRead,
    Writer,
    WriterStats,
    WriteTurns,
)

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = ["SQLiteStore", "WriterStats"]

T = TypeVar("T")

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 10_000
MAX_SUBSCRIBER_BACKLOG = 10_000
"""Events a subscriber may fall behind by before it gets ``OVERFLOW`` instead."""
MAX_CONTENT_SENT_OCTETS = 16 * 1024
"""Larger content kept in memory is committed here, not copied to the commit process and
through the kernel twice more: for such a message that costs more than it saves."""
RECONNECT_SECONDS = 1.0
"""How long a store commits on its own writer after failing to reach the commit process."""
BODY_SUFFIX = ".eml"
PARTIAL_SUFFIX = ".partial"


def _connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
    )
    connection.execute("PRAGMA synchronous = FULL")
    register_functions(connection)
    return connection


class _Subscription:
    """One subscriber's events, delivered on its event loop."""

    def __init__(self, store: SQLiteStore) -> None:
        self._store = store
        self.loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[StoreEvent | None] = asyncio.Queue()

    def push(self, events: Sequence[StoreEvent | None]) -> None:
        queue = self._queue
        for event in events:
            if event is not None and queue.qsize() >= MAX_SUBSCRIBER_BACKLOG:
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(StoreEvent(StoreEventKind.OVERFLOW))
            else:
                queue.put_nowait(event)

    def __aiter__(self) -> _Subscription:
        return self

    async def __anext__(self) -> StoreEvent:
        event = await self._queue.get()
        if event is None:
            self._store._unsubscribe(self)
            raise StopAsyncIteration
        return event

    async def aclose(self) -> None:
        """Stop receiving events."""
        self._store._unsubscribe(self)


class _ReaderPool:
    """Read connections for worker threads, reused, closed with the store."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._idle: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            connection = self._idle.pop() if self._idle else None
        if connection is None:
            connection = _connect(self._path)
            connection.execute("PRAGMA query_only = 1")
        try:
            return work(connection)
        finally:
            with self._lock:
                if self._closed:
                    connection.close()
                else:
                    self._idle.append(connection)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


class SQLiteStore:
    """A ``ports.MessageStore`` in one SQLite database (the embedded default).

    Opening creates the database, its schema and the bodies directory as
    needed.  Use it from asyncio; one store may serve several event loops.
    """

    def __init__(self, path: Path | str) -> None:
        """Open (creating if need be) the store at ``path``.

        Raises ``StoreError`` (one line) when the database cannot be opened:
        a missing or unwritable directory, a file that is not a database, a
        schema from a newer mailgate.
        """
        self.path = Path(path)
        self.bodies = self.path.with_name(self.path.name + "-bodies")
        self._origin = os.urandom(8).hex()
        self._subscriptions: set[_Subscription] = set()
        self._subscriptions_lock = threading.Lock()  # also guards the followers
        self._follower: Follower | None = None
        self._stopped_followers: list[Follower] = []  # told to stop; maybe still ending
        self._closed = False
        self._lock_file: IO[bytes] | None = None
        self._commit_socket: str | None = None
        self._commit_client: CommitClient | None = None
        self._commit_loop: asyncio.AbstractEventLoop | None = None
        self._reconnect_at = 0.0
        try:
            self.bodies.mkdir(exist_ok=True)
            connection = _connect(self.path)
        except (OSError, sqlite3.Error) as error:
            raise StoreError(f"cannot open message store {self.path}: {error}") from error
        try:
            self._prepare(connection)
            ensure_search_schema(connection)
            self._sweep_if_alone(connection)
            turns = self._turns()
        except (OSError, sqlite3.Error) as error:
            connection.close()
            self._release_lock()
            raise StoreError(f"cannot open message store {self.path}: {error}") from error
        except BaseException:
            connection.close()
            self._release_lock()
            raise
        self._readers = _ReaderPool(self.path)
        self._writer = Writer(
            connection,
            self.bodies,
            self._publish,
            self._origin,
            turns,
        )

    def _turns(self) -> WriteTurns:
        return WriteTurns(self.path.with_name(self.path.name + "-write-lock"))

    def _prepare(self, connection: sqlite3.Connection) -> None:
        (mode,) = connection.execute("PRAGMA journal_mode = WAL").fetchone()
        if mode != "wal":
            raise StoreError(f"cannot open message store {self.path}: WAL mode unavailable")
        (version,) = connection.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"message store {self.path} has schema {version};"
                f" this mailgate knows up to {SCHEMA_VERSION}"
            )
        if version < SCHEMA_VERSION:
            # One transaction, so a second store opening at once sees all or nothing.
            connection.executescript(
                f"BEGIN IMMEDIATE; {UPGRADE} {SCHEMA};"
                f" PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            )

    def _sweep_if_alone(self, connection: sqlite3.Connection) -> None:
        """Remove body files without a row, when no other store has this database open."""
        if fcntl is None:
            return
        lock_file = open(self.path.with_name(self.path.name + "-lock"), "ab")  # noqa: SIM115
        self._lock_file = lock_file  # held shared while this store is open
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            # Another store is live and may be between moving a file in and committing.
            fcntl.flock(lock_file, fcntl.LOCK_SH)  # waits only while another store sweeps
            return
        referenced = {
            name
            for (name,) in connection.execute(
                "SELECT body_file FROM messages WHERE body_file IS NOT NULL"
            )
        }
        for entry in os.scandir(self.bodies):
            if entry.name not in referenced:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
        fcntl.flock(lock_file, fcntl.LOCK_SH)

    def _release_lock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing releases the flock
            self._lock_file = None

    @property
    def stats(self) -> WriterStats:
        """A snapshot of what the writer has done since the store opened."""
        return dataclasses.replace(self._writer.stats)

    # Writes

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"message store {self.path} is closed")

    async def commit(self, message: NewMessage) -> MessageId:
        """Store the message; return its id only once it is durable.

        Raises ``StoreError`` when it cannot be stored; then no trace of it
        remains, now or after a crash.
        """
        self._check_open()
        content = message.content
        body_file: str | None = None
        if content is None:
            body_file = message.id + BODY_SUFFIX
            try:
                await asyncio.to_thread(self._adopt_body, message, body_file)
            except OSError as error:
                raise StoreError(f"could not store the body of {message.id}: {error}") from error
        row = message_row(message.summary, message.envelope, body_file)
        client = self._commit_client
        if (
            client is not None
            and client.connected
            and self._commit_loop is asyncio.get_running_loop()
            and (content is None or len(content) <= MAX_CONTENT_SENT_OCTETS)
        ):
            return await client.commit(Insert(row, content, body_file, self._origin))
        if self._commit_socket is not None:
            await self._reconnect()
        result: MessageId = await self._writer.submit(Insert(row, content, body_file))
        return result

    # The commit process

    async def connect_commit_process(self, socket_path: str) -> None:
        """Commit new mail in the commit process listening at ``socket_path`` (a Unix socket).

        The connection belongs to the running event loop; commits from other
        loops, and all commits while the process cannot be reached, go to this
        store's own writer.  Raises ``StoreError`` when it cannot connect now.
        """
        self._check_open()
        self._commit_socket = socket_path
        self._commit_loop = asyncio.get_running_loop()
        try:
            await self._connect_commit_client()
        except OSError as error:
            raise StoreError(
                f"cannot reach the commit process at {socket_path}: {error}"
            ) from error

    async def _connect_commit_client(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._commit_socket is not None
        client = CommitClient(self._stored_elsewhere)
        await loop.create_unix_connection(lambda: client, self._commit_socket)
        self._commit_client = client

    async def _reconnect(self) -> None:
        """Try once a ``RECONNECT_SECONDS`` to reach the commit process again."""
        loop = asyncio.get_running_loop()
        if loop is not self._commit_loop or loop.time() < self._reconnect_at:
            return
        self._reconnect_at = loop.time() + RECONNECT_SECONDS
        try:
            await self._connect_commit_client()
        except OSError as error:
            log.warning("cannot reach the commit process; committing here: %s", error)
        else:
            log.info("reached the commit process again")

    def _stored_elsewhere(self, message_ids: list[MessageId]) -> None:
        """The commit process committed these messages of this store's."""
        self._publish([StoreEvent(StoreEventKind.STORED, tuple(message_ids))])

    def serve_commits(self, listener: socket.socket, stop_fd: int) -> None:
        """Be the commit process: commit the new mail clients send to ``listener``.

        Blocks until ``stop_fd`` is readable; run it on a thread of its own.  It
        writes on a connection of its own, taking turns with every other writer.
        Raises ``StoreError`` or ``OSError`` when it cannot open that connection.
        """
        self._check_open()
        turns = self._turns()
        try:
            connection = _connect(self.path)
        except sqlite3.Error as error:
            turns.close()
            raise StoreError(f"cannot open message store {self.path}: {error}") from error
        committer = Committer(connection, self.bodies, self._origin, turns)
        try:
            CommitServer(committer, listener, stop_fd).serve()
        finally:
            committer.close()

    def _adopt_body(self, message: NewMessage, name: str) -> None:
        """Make the body durable as ``name`` in the bodies directory (its entry unsynced)."""
        target = self.bodies / name
        source = message.path
        if source is not None:
            fd = os.open(source, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.rename(source, target)
                return
            except OSError as error:
                if error.errno != errno.EXDEV:
                    raise
        # Another file system, or no file at all: copy, sync, then move into place.
        partial = self.bodies / (name + PARTIAL_SUFFIX)
        try:
            with message.open() as reader, open(partial, "xb") as writer:
                shutil.copyfileobj(reader, writer)
                writer.flush()
                os.fsync(writer.fileno())
            os.rename(partial, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(partial)
            raise

    async def delete(self, message_ids: Sequence[MessageId] | None = None) -> int:
        """Delete these messages, or all of them for ``None``; return how many."""
        self._check_open()
        count: int = await self._writer.submit(
            Delete(None if message_ids is None else list(message_ids))
        )
        return count

    async def mark_read(self, message_ids: Sequence[MessageId] | None, read: bool) -> int:
        """Set the read flag on these messages, or all for ``None``; return how many changed."""
        self._check_open()
        count: int = await self._writer.submit(
            MarkRead(None if message_ids is None else list(message_ids), read)
        )
        return count

    # Reads

    async def _read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        self._check_open()
        try:
            return await asyncio.to_thread(self._readers.run, work)
        except sqlite3.Error as error:
            raise StoreError(f"could not read the message store: {error}") from error

    async def list(self, *, offset: int = 0, limit: int = 50) -> MessagePage:
        """A page of summaries, newest first, with the store's totals."""
        offset, limit = max(offset, 0), max(limit, 0)

        def work(connection: sqlite3.Connection) -> MessagePage:
            connection.execute("BEGIN")  # one snapshot for the page and the totals
            try:
                total, unread = connection.execute("SELECT total, unread FROM counts").fetchone()
                rows = connection.execute(
                    SELECT_SUMMARY + " ORDER BY id DESC LIMIT ? OFFSET ?", (limit, offset)
                ).fetchall()
            finally:
                connection.execute("COMMIT")
            return MessagePage(
                messages=tuple(summary_from_row(row) for row in rows),
                total=total,
                unread=unread,
                offset=offset,
            )

        return await self._read(work)

    async def get(self, message_id: MessageId) -> StoredMessage | None:
        """One message's summary and envelope, or ``None``."""

        def work(connection: sqlite3.Connection) -> StoredMessage | None:
            row = connection.execute(
                SELECT_SUMMARY.replace("FROM messages", ", envelope FROM messages")
                + " WHERE id = ?",
                (message_id,),
            ).fetchone()
            return None if row is None else stored_message(row[:-1], row[-1])

        return await self._read(work)

    async def raw(self, message_id: MessageId) -> bytes | None:
        """The exact stored bytes (trace header included), or ``None``."""

        def work(connection: sqlite3.Connection) -> bytes | None:
            row = connection.execute(
                "SELECT messages.body_file, bodies.data FROM messages"
                " LEFT JOIN bodies ON bodies.seq = messages.seq WHERE messages.id = ?",
                (message_id,),
            ).fetchone()
            if row is None:
                return None
            body_file, data = row
            if body_file is None:
                return bytes(data)
            try:
                return (self.bodies / str(body_file)).read_bytes()
            except FileNotFoundError:
                return None  # deleted since the row was read

        return await self._read(work)

    # Search and tags (see _sqlite_query)

    async def search(self, query: Query, *, offset: int = 0, limit: int = 50) -> MessagePage:
        """Messages matching ``query``, newest first; ``total`` and ``unread`` count matches."""
        return await self._read(
            lambda connection: search_page(connection, query, offset=offset, limit=limit)
        )

    async def tags(self) -> dict[str, int]:
        """Every tag in use, with how many messages carry it."""
        return await self._read(tag_counts)

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

    # Events

    def subscribe(self) -> AsyncIterator[StoreEvent]:
        """Live events from now on, on the calling event loop; ends when the store closes.

        Every change committed to the database after this returns is seen,
        whichever process or store committed it: this store's own at once,
        others' within about 50 ms (``_sqlite_follow.FOLLOW_INTERVAL_SECONDS``).
        A change committed just before may be seen too.

        Raises ``StoreError`` when the store is closed or cannot be read.
        """
        self._check_open()
        subscription = _Subscription(self)
        with self._subscriptions_lock:
            self._check_open()  # again, under the lock that aclose takes the follower with
            if self._follower is None:
                # Opens a connection and reads one row, on this thread, so that the
                # follower starts from now and not from whenever its thread first runs.
                try:
                    self._follower = Follower(self.path, self._origin, self._publish_followed)
                except sqlite3.Error as error:
                    raise StoreError(f"could not follow the message store: {error}") from error
            self._subscriptions.add(subscription)
        return subscription

    def _unsubscribe(self, subscription: _Subscription) -> None:
        with self._subscriptions_lock:
            self._subscriptions.discard(subscription)
            follower = self._follower
            if self._subscriptions or follower is None:
                return
            self._follower = None
            self._stopped_followers = [f for f in self._stopped_followers if f.is_alive()]
            self._stopped_followers.append(follower)
        follower.stop()

    def _publish(self, events: Sequence[StoreEvent | None]) -> None:
        """Called from the writer thread (and at close) with events for every subscriber."""
        with self._subscriptions_lock:
            subscriptions = list(self._subscriptions)
        self._push(subscriptions, events)

    def _publish_followed(self, follower: Follower, events: Sequence[StoreEvent]) -> None:
        """Called from a follower's thread with the events other stores committed."""
        with self._subscriptions_lock:
            # A follower told to stop may still be reading: its subscribers are gone,
            # and what the present ones are owed is the present follower's to read.
            if follower is not self._follower:
                return
            subscriptions = list(self._subscriptions)
        self._push(subscriptions, events)

    @staticmethod
    def _push(subscriptions: Sequence[_Subscription], events: Sequence[StoreEvent | None]) -> None:
        for subscription in subscriptions:
            with contextlib.suppress(RuntimeError):  # its event loop is closed
                subscription.loop.call_soon_threadsafe(subscription.push, events)

    # Closing

    async def aclose(self) -> None:
        """Finish pending commits, end subscriptions, and close the database."""
        if self._closed:
            return
        self._closed = True
        with self._subscriptions_lock:
            followers = [*self._stopped_followers]
            if self._follower is not None:
                followers.append(self._follower)
            self._follower, self._stopped_followers = None, []
        for follower in followers:
            follower.stop()
        if self._commit_client is not None:
            self._commit_client.close()
            self._commit_client = None
        await asyncio.to_thread(self._writer.stop)
        for follower in followers:
            await asyncio.to_thread(follower.join)
        self._readers.close()
        self._publish([None])
        self._release_lock()
