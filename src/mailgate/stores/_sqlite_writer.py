"""The SQLite store's one writer thread, and group commit.

Every change a store makes goes through one thread that owns the store's
write connection (new mail may instead go to the commit process, below).
Callers enqueue an operation with a future and await it.  The thread takes
everything queued, applies it all in ONE transaction and commits it (one
fsync of the WAL, ``synchronous=FULL``), then resolves every future of the
batch on its event loop.  While one batch is being synced, the next one
gathers in the queue, so the busier the store, the more messages share an
fsync.  With several processes on one database, writers take turns (see
``WriteTurns``); what queued while this one waited for its turn joins its
transaction too.

Invariants, so that a crash (SIGKILL, power loss) at any moment loses no
acknowledged message and shows no partial one:
- a future resolves only after the COMMIT holding its change returned;
- a body file is synced, moved into the bodies directory, and the directory
  synced, before the transaction whose row names it commits (the store
  syncs the file; this thread syncs the directory, once per batch);
- a body file is unlinked only after the transaction deleting its row
  committed.  A body file without a row is garbage the store sweeps at open.

Each transaction that changes messages also appends its events to the
``changes`` log, tagged with this store's ``origin``, so that stores in other
processes can follow them (``_sqlite_follow``); this thread publishes them
itself, to its own store's subscribers, right after the commit.  Every
``CHANGE_LOG_KEEP // 10`` rows this thread appended, and in its first
transaction, it prunes the log to the newest ``CHANGE_LOG_KEEP`` rows, in the
same transaction: a range delete on the primary key, about a millisecond
every thousand rows.

The transactions themselves are a ``Committer``'s, which has no thread: the
writer thread drives one, and so does the commit process
(``_sqlite_commits``), which commits new mail for the SMTP processes of
``mailgate serve``.  An ``Insert`` may carry the ``origin`` of the store that
submitted it elsewhere; its change-log row is then tagged with that origin,
and that store, not this one, tells its subscribers.

A batch of new mail alone, the common case, is ONE statement outside any
explicit transaction: an INSERT through the ``incoming`` view whose last row
also logs the change.  SQLite commits it on its own, so the thread gives up
the GIL (and, on a busy process, waits to get it back) once a transaction
rather than four times (BEGIN, INSERT, change log, COMMIT).

New mail reaches the search index later (``Committer.index``), in chunks:
FTS5 costs about twice as much a message indexed four at a time as sixteen
at a time.  Whoever drives a committer waits for work no longer than
``Committer.index_wait`` says, and indexes when that wait ends with nothing
to commit: at once once a chunk is waiting, after ``INDEX_PAUSE_SECONDS``
with less.  After every commit it calls ``Committer.catch_up``, which, while
more than ``INDEX_BACKLOG`` messages wait, indexes as many as that commit
stored and a chunk more: so a server kept busy without a pause still gets
its backlog down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

from mailgate.model import MessageId, StoreEvent, StoreEventKind
from mailgate.ports import StoreError
from mailgate.stores._sqlite_query import index_unindexed, write_transaction
from mailgate.stores._sqlite_schema import (
    INSERT_CHANGE,
    MAX_ROWS_PER_INSERT,
    MessageRow,
    change_row,
    encode_ids,
    insert_messages,
)

__all__ = [
    "CHANGE_LOG_KEEP",
    "INDEX_BACKLOG",
    "Apply",
    "Committer",
    "Delete",
    "Insert",
    "MarkRead",
    "Outcome",
    "WriteTurns",
    "Writer",
    "WriterStats",
    "sync_directory",
]

log = logging.getLogger(__name__)

MAX_BATCH_OPERATIONS = 2000
"""Operations in one transaction at most, so one batch's latency stays bounded."""
CHANGE_LOG_KEEP = 10_000
"""Rows of ``changes`` kept (at least 1); a follower further behind gets ``OVERFLOW``."""
INDEX_CHUNK = 16
"""Messages one transaction adds to the search index at most, and the fewest it waits for
while mail keeps coming: mail that arrives meanwhile waits for it, about 50 microseconds a
message."""
INDEX_PAUSE_SECONDS = 0.1
"""How long no work must come before fewer than ``INDEX_CHUNK`` new messages are indexed."""
INDEX_BACKLOG = 512
"""Messages waiting for the search index past which a committer indexes after every commit."""


class WriteTurns:
    """Writers sharing one database, in this process or in others, take turns on a lock file.

    SQLite serializes writers itself, but one that finds the database locked
    polls, sleeping 1 ms, then 2, then 5 and more, between tries; with SMTP
    workers in several processes most transactions would wait so.  An
    exclusive ``flock`` held from ``BEGIN`` to ``COMMIT`` queues them in the
    kernel instead, which wakes the next writer the moment the lock is free.
    The kernel releases it when a process dies.  Without ``fcntl`` (not
    POSIX) SQLite's own waiting is all there is.
    """

    def __init__(self, path: Path) -> None:
        """Raises ``OSError`` when the lock file cannot be opened or created."""
        self._fd = -1
        if fcntl is not None:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def __enter__(self) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc_info: object) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Close the lock file (a turn held is released)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def sync_directory(path: Path) -> None:
    """fsync a directory, making the entries renamed into it durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(slots=True)
class Insert:
    """Store a new message: its row, and its content inline or as a file already in place.

    ``origin`` is the store whose subscribers learn of it, when that is not the
    writer's own (a message committed for another process).
    """

    row: MessageRow
    content: bytes | None
    body_file: str | None
    origin: str | None = None


@dataclass(slots=True)
class Delete:
    """Delete these messages, or all for ``None``."""

    ids: Sequence[MessageId] | None


@dataclass(slots=True)
class MarkRead:
    """Set the read flag of these messages, or all for ``None``."""

    ids: Sequence[MessageId] | None
    read: bool


@dataclass(slots=True)
class Apply:
    """Run ``work`` on the write connection inside the batch's transaction; return its result.

    For changes that publish no event (tags).  ``work`` must not commit.
    """

    work: Callable[[sqlite3.Connection], object]


Operation = Insert | Delete | MarkRead | Apply


@dataclass(slots=True)
class _Job:
    operation: Operation
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


@dataclass(slots=True)
class WriterStats:
    """What the writer has done since the store opened: for tests and metrics.

    With ``synchronous=FULL`` each transaction is one fsync of the WAL.  Adding
    messages to the search index takes transactions of its own, not counted in
    ``transactions`` and not synced.
    """

    transactions: int = 0
    messages: int = 0
    directory_syncs: int = 0
    indexed: int = 0


@dataclass(slots=True)
class _Batch:
    """What one transaction did, for after it commits."""

    results: list[object] = field(default_factory=list)
    events: list[StoreEvent] = field(default_factory=list)  # this store's, to publish
    stored: int = 0
    unlink: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Outcome:
    """What a ``Committer`` did with a list of operations.

    ``results`` has, for each operation in order, its result (the message id,
    a count, what an ``Apply`` returned) or the ``StoreError`` it failed with;
    ``events`` is what committed, for the subscribers of the committer's store.
    """

    results: list[object]
    events: list[StoreEvent]


class Writer:
    """Owns the write connection; applies queued operations in group commits on its thread."""

    def __init__(
        self,
        connection: sqlite3.Connection,
        bodies: Path,
        publish: Callable[[list[StoreEvent]], None],
        origin: str,
        turns: WriteTurns,
    ) -> None:
        self._committer = Committer(connection, bodies, origin, turns)
        self._publish = publish
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.stats = self._committer.stats
        # A daemon, so a store never closed cannot hang the interpreter at exit; what it
        # had not committed yet was never acknowledged either.
        self._thread = threading.Thread(
            target=self._run, name="mailgate-sqlite-writer", daemon=True
        )
        self._thread.start()

    def submit(self, operation: Operation) -> asyncio.Future[Any]:
        """Queue an operation; the future resolves once it is committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.put(_Job(operation, future, loop))
        return future

    def stop(self) -> None:
        """Finish every queued operation, then close the connection and end the thread."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        get = self._queue.get
        committer = self._committer
        stopping = False
        while not stopping:
            try:
                first = get(timeout=committer.index_wait())
            except queue.Empty:  # idle: index what is new, then look again
                committer.index()
                continue
            if first is None:
                break
            jobs = [first]
            stopping = self._gather(jobs)
            with committer.turns:
                # What arrived while another writer had its turn joins this transaction.
                if not stopping:
                    stopping = self._gather(jobs)
                outcome = committer.commit([job.operation for job in jobs])
            self._finish(jobs, outcome)
            committer.catch_up()
        committer.close()

    def _gather(self, jobs: list[_Job]) -> bool:
        """Add what is queued to ``jobs``, up to the batch limit; True when told to stop."""
        get_nowait = self._queue.get_nowait
        while len(jobs) < MAX_BATCH_OPERATIONS:
            try:
                job = get_nowait()
            except queue.Empty:
                return False
            if job is None:
                return True
            jobs.append(job)
        return False

    def _finish(self, jobs: list[_Job], outcome: Outcome) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], object]]] = {}
        for job, result in zip(jobs, outcome.results, strict=True):
            by_loop.setdefault(job.loop, []).append((job.future, result))
        for loop, outcomes in by_loop.items():
            _call_soon(loop, _resolve, outcomes)
        if outcome.events:
            self._publish(outcome.events)


class Committer:
    """The write connection and its transactions, for whichever thread drives it.

    ``commit`` must be called with ``turns`` held, by one thread at a time.
    """

    def __init__(
        self, connection: sqlite3.Connection, bodies: Path, origin: str, turns: WriteTurns
    ) -> None:
        self._connection = connection
        self.turns = turns
        self._bodies = bodies
        self._origin = origin
        self._unpruned: int | None = None  # rows appended since the last prune; None: never
        self._last_stored = 0  # new messages in the last transaction
        self.unindexed = 1
        """Messages waiting for the search index, as far as this committer knows: those
        it stored, and at first one, so that it looks."""
        self.stats = WriterStats()

    def close(self) -> None:
        """Close the connection and the lock file."""
        self._connection.close()
        self.turns.close()

    def commit(self, operations: list[Operation]) -> Outcome:
        """Apply the operations in one transaction; when that fails, each in its own.

        One bad operation must not fail its neighbours: it alone gets a ``StoreError``.
        """
        try:
            batch = self._transaction(operations)
        except (sqlite3.Error, OSError) as error:
            if len(operations) == 1:
                return Outcome([self._failed(operations[0], error)], [])
            results: list[object] = []
            events: list[StoreEvent] = []
            for operation in operations:
                alone = self.commit([operation])
                results += alone.results
                events += alone.events
            return Outcome(results, events)
        for name in batch.unlink:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._bodies / name)
        return Outcome(batch.results, batch.events)

    def _failed(self, operation: Operation, error: Exception) -> StoreError:
        log.error("store write failed: %s", error)
        if isinstance(operation, Insert) and operation.body_file is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._bodies / operation.body_file)
        failure = StoreError(f"could not write to the message store: {error}")
        failure.__cause__ = error
        return failure

    def _transaction(self, operations: list[Operation]) -> _Batch:
        """Apply the operations in one transaction and commit it; raise if any fails."""
        if any(isinstance(op, Insert) and op.body_file is not None for op in operations):
            sync_directory(self._bodies)
            self.stats.directory_syncs += 1
        batch = self._transaction_in_turn(operations)
        self.stats.transactions += 1
        self.stats.messages += batch.stored
        self.unindexed += batch.stored
        self._last_stored = batch.stored
        return batch

    def catch_up(self) -> None:
        """After a commit: while more than ``INDEX_BACKLOG`` messages wait for the search
        index, index as many as that commit stored and a chunk more."""
        if self.unindexed > INDEX_BACKLOG:
            self.index(self._last_stored + INDEX_CHUNK)

    def index_wait(self) -> float | None:
        """How long to wait for work before calling ``index``: ``None`` for as long as it takes."""
        unindexed = self.unindexed
        if unindexed >= INDEX_CHUNK:
            return 0.0
        return INDEX_PAUSE_SECONDS if unindexed else None

    def index(self, limit: int = INDEX_CHUNK) -> int:
        """Add up to ``limit`` new messages to the search index; return how many.

        It takes ``turns`` itself, unlike ``commit``, whose driver gathers work
        while it holds them.  The transaction is not synced: if a crash loses
        it, ``unindexed`` still lists those messages, and the next synced
        commit makes it durable along with itself.  A failure is logged; the
        next commit tries again.
        """
        connection = self._connection
        with self.turns:
            connection.execute("PRAGMA synchronous = NORMAL")
            try:
                with write_transaction(connection):
                    count = index_unindexed(connection, limit)
            except sqlite3.Error as error:
                log.warning("could not add new mail to the search index: %s", error)
                self.unindexed = 0
                return 0
            finally:
                connection.execute("PRAGMA synchronous = FULL")
        self.unindexed = 0 if count < limit else max(self.unindexed - count, 1)
        self.stats.indexed += count
        return count

    def _transaction_in_turn(self, operations: list[Operation]) -> _Batch:
        inserts = [op for op in operations if isinstance(op, Insert)]
        stored = self._stored_by_origin(inserts)
        if len(inserts) == len(operations) <= MAX_ROWS_PER_INSERT and self._logged_without_pruning(
            len(stored)
        ):
            return self._insert_alone(inserts, stored)
        connection = self._connection
        batch = _Batch()
        with write_transaction(connection):
            pending: list[Insert] = []  # inserted together, up to the next other operation
            for operation in operations:
                if isinstance(operation, Insert):
                    pending.append(operation)
                    batch.results.append(operation.row[0])
                    continue
                self._insert(pending, batch)
                pending = []
                if isinstance(operation, Delete):
                    batch.results.append(self._delete(operation, batch))
                elif isinstance(operation, Apply):
                    batch.results.append(operation.work(connection))
                else:
                    batch.results.append(self._mark_read(operation, batch))
            self._insert(pending, batch)
            logged = [(self._origin, event) for event in batch.events]
            for origin, ids in stored.items():
                event = StoreEvent(StoreEventKind.STORED, tuple(ids))
                logged.insert(0, (origin, event))
                if origin == self._origin:
                    batch.events.insert(0, event)
            if logged:
                self._log_changes(logged)
        return batch

    def _stored_by_origin(self, inserts: list[Insert]) -> dict[str, list[MessageId]]:
        """The ids of the new messages by the origin their change is logged under."""
        stored: dict[str, list[MessageId]] = {}
        own = self._origin
        for op in inserts:
            stored.setdefault(op.origin or own, []).append(op.row[0])
        return stored

    def _log_changes(self, logged: list[tuple[str, StoreEvent]]) -> None:
        """Append the events to ``changes``, each under its origin; prune the log now and then."""
        self._connection.executemany(
            INSERT_CHANGE, [change_row(origin, event) for origin, event in logged]
        )
        if self._logged_without_pruning(len(logged)):
            return
        # The newest row always stays, so a new seq is always max(seq) + 1: no reuse.
        self._connection.execute(
            "DELETE FROM changes WHERE seq <= (SELECT max(seq) FROM changes) - ?",
            (max(CHANGE_LOG_KEEP, 1),),
        )
        self._unpruned = 0

    def _logged_without_pruning(self, rows: int) -> bool:
        """Count ``rows`` more change-log rows and say True, unless the log is due a prune."""
        unpruned = self._unpruned
        if unpruned is None or unpruned + rows >= CHANGE_LOG_KEEP // 10:
            return False
        self._unpruned = unpruned + rows
        return True

    def _insert_alone(self, inserts: list[Insert], stored: dict[str, list[MessageId]]) -> _Batch:
        """New mail and nothing else: one statement, its own transaction.

        The last row of each origin's messages logs their change.
        """
        values = _insert_values(inserts)
        per_row = len(values) // len(inserts)
        last = {op.origin or self._origin: index for index, op in enumerate(inserts)}
        for origin, index in last.items():
            end = (index + 1) * per_row
            values[end - 2 : end] = (origin, encode_ids(stored[origin]))
        self._connection.execute(insert_messages(len(inserts)), values)
        own = stored.get(self._origin)
        events = [StoreEvent(StoreEventKind.STORED, tuple(own))] if own else []
        return _Batch(results=[op.row[0] for op in inserts], events=events, stored=len(inserts))

    def _insert(self, inserts: list[Insert], batch: _Batch) -> None:
        if not inserts:
            return
        for start in range(0, len(inserts), MAX_ROWS_PER_INSERT):
            chunk = inserts[start : start + MAX_ROWS_PER_INSERT]
            self._connection.execute(insert_messages(len(chunk)), _insert_values(chunk))
        batch.stored += len(inserts)

    def _delete(self, operation: Delete, batch: _Batch) -> int:
        connection = self._connection
        if operation.ids is None:
            batch.unlink.extend(
                name
                for (name,) in connection.execute(
                    "SELECT body_file FROM messages WHERE body_file IS NOT NULL"
                )
            )
            count = connection.execute("DELETE FROM messages").rowcount
            if count:
                batch.events.append(StoreEvent(StoreEventKind.DELETED))
            return count
        rows = connection.execute(
            "DELETE FROM messages WHERE id IN (SELECT value FROM json_each(?))"
            " RETURNING id, body_file",
            (json.dumps(list(operation.ids)),),
        ).fetchall()
        batch.unlink.extend(name for _, name in rows if name is not None)
        if rows:
            deleted = tuple(MessageId(message_id) for message_id, _ in rows)
            batch.events.append(StoreEvent(StoreEventKind.DELETED, deleted))
        return len(rows)

    def _mark_read(self, operation: MarkRead, batch: _Batch) -> int:
        connection = self._connection
        read = int(operation.read)
        kind = StoreEventKind.READ if read else StoreEventKind.UNREAD
        if operation.ids is None:
            count = connection.execute(
                "UPDATE messages SET read = ? WHERE read != ?", (read, read)
            ).rowcount
            if count:
                batch.events.append(StoreEvent(kind))
            return count
        rows = connection.execute(
            "UPDATE messages SET read = ?"
            " WHERE read != ? AND id IN (SELECT value FROM json_each(?)) RETURNING id",
            (read, read, json.dumps(list(operation.ids))),
        ).fetchall()
        if rows:
            batch.events.append(StoreEvent(kind, tuple(MessageId(r[0]) for r in rows)))
        return len(rows)


def _insert_values(inserts: list[Insert]) -> list[object]:
    """The values of ``insert_messages`` for these messages, none of them logging the change."""
    values: list[object] = []
    for op in inserts:
        values.extend(op.row)
        values += (op.content, None, None)
    return values


def _resolve(outcomes: list[tuple[asyncio.Future[Any], object]]) -> None:
    for future, outcome in outcomes:
        if future.done():  # the awaiting task was cancelled; the change stands
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


def _call_soon(
    loop: asyncio.AbstractEventLoop,
    callback: Callable[[list[tuple[asyncio.Future[Any], object]]], None],
    outcomes: list[tuple[asyncio.Future[Any], object]],
) -> None:
    try:
        loop.call_soon_threadsafe(callback, outcomes)
    except RuntimeError:  # that event loop is closed: nobody is waiting any more
        pass
