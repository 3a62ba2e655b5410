"""The write transactions of the SQLite store, for whichever thread drives them.

A ``WriteConnection`` owns one write connection.  ``commit`` applies a list of
operations (new messages as ``_records.NewMessageRecord``, ``Delete``,
``Prune``, ``MarkRead``, ``Apply``) in ONE transaction and commits it: one fsync of the
WAL (``synchronous = FULL``) for all of them.  A store's writer thread drives
one (``_writer``, group commit); so does the commit service
(``_commit_service``), the one writer of new mail for every SMTP process of
a node.  Writers in this process or others take turns (``WriteTurns``).

Invariants, so that a crash (SIGKILL, power loss) at any moment loses no
acknowledged message and shows no partial one:
- ``commit`` returns only after the COMMIT holding the operations returned;
- a body file is synced and moved into the bodies directory before it is
  submitted (``_bodies.BodyFiles.adopt``), and the directory is synced here,
  once per transaction, before the COMMIT whose rows name it;
- a body file is unlinked only after the transaction deleting its row
  committed.  A body file without a row is garbage the store sweeps at open;
- a message's outbound queue rows (``NewMessageRecord.queued``) and tags
  (``NewMessageRecord.tags``) are durable in the same transaction as the message
  (``_queue.insert_queued``, ``_search.insert_tags``).

Each transaction that changes messages also appends its events to the
``changes`` log, each under the ``origin`` of the store whose subscribers hear
of it: this connection's own, or, for a new message, the one its record names
(another store when the commit service stores it: that store tells its
subscribers itself).
Stores in other processes follow the log (``_follow``).  Every
``CHANGE_LOG_KEEP // 10`` rows appended, and in the first transaction, the
log is pruned to the newest ``CHANGE_LOG_KEEP`` rows, in the same transaction:
a range delete on the primary key, about a millisecond every thousand rows.

A batch of new mail alone, none of it with queue rows or tags, the common case,
is ONE statement outside any explicit transaction: an INSERT through the
``incoming`` view whose last row of each origin also logs the change
(``_schema.incoming_values``).  SQLite
commits it on its own, so the driving thread gives up the GIL (and, on a busy
process, waits to get it back) once a transaction rather than four times
(BEGIN, INSERT, change log, COMMIT).

New mail reaches the search index later (``WriteConnection.index``), in
chunks: FTS5 costs about twice as much a message indexed four at a time as
sixteen at a time, and less again at 64 and 256.  Whoever drives a write
connection waits for work no longer than ``index_wait`` says, and indexes
every message waiting (up to ``INDEX_MOST``) when that wait ends with nothing
to commit: at once once a chunk is waiting, after ``INDEX_PAUSE_SECONDS``
with less.  After every commit it calls ``catch_up``, which, while more than
``INDEX_BACKLOG`` messages wait, indexes as many as that commit stored and a
chunk more: so a server kept busy without a pause still gets its backlog down.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

from mailgate.model import MessageId, StoreEvent, StoreEventKind
from mailgate.ports import StoreError
from mailgate.stores._health import WriteHealth
from mailgate.stores.sqlite._bodies import BodyFiles
from mailgate.stores.sqlite._connection import write_transaction
from mailgate.stores.sqlite._prune import prune
from mailgate.stores.sqlite._queue import insert_queued
from mailgate.stores.sqlite._records import NewMessageRecord
from mailgate.stores.sqlite._schema import (
    INSERT_CHANGE,
    MAX_ROWS_PER_INSERT,
    change_row,
    encode_ids,
    incoming_values,
    insert_messages,
)
from mailgate.stores.sqlite._search import index_unindexed, insert_tags

__all__ = [
    "CHANGE_LOG_KEEP",
    "INDEX_BACKLOG",
    "INDEX_CHUNK",
    "INDEX_MOST",
    "INDEX_PAUSE_SECONDS",
    "MAX_BATCH_OPERATIONS",
    "Apply",
    "ChangeQueue",
    "Delete",
    "MarkRead",
    "Operation",
    "Outcome",
    "Prune",
    "WriteConnection",
    "WriteTurns",
    "WriterStats",
]

log = logging.getLogger(__name__)

MAX_BATCH_OPERATIONS = 2000
"""Operations in one transaction at most, so one batch's latency stays bounded."""
CHANGE_LOG_KEEP = 10_000
"""Rows of ``changes`` kept (at least 1); a follower further behind gets ``OVERFLOW``."""
INDEX_CHUNK = 64
"""The fewest new messages indexing waits for while mail keeps coming."""
INDEX_MOST = 256
"""Messages one transaction adds to the search index at most: all that wait, up to this.
Mail that arrives meanwhile waits for it, about 11 microseconds a message: under a
millisecond for a chunk, three at most, which only a backlog (a server at its peak) brings
about (docs/design/performance.md)."""
INDEX_PAUSE_SECONDS = 0.1
"""How long no work must come before fewer than ``INDEX_CHUNK`` new messages are indexed."""
INDEX_BACKLOG = 512
"""Messages waiting for the search index past which a writer indexes after every commit."""


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


@dataclass(slots=True)
class Delete:
    """Delete these messages, or all for ``None``."""

    ids: Sequence[MessageId] | None


@dataclass(slots=True)
class Prune:
    """Delete up to ``limit`` of the oldest messages over the retention limits (``_prune``)."""

    keep_newest: int | None
    before_ms: int | None
    limit: int


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


@dataclass(slots=True)
class ChangeQueue:
    """Run ``work`` on the write connection inside the batch's transaction.

    ``work`` changes outbound queue rows and returns its result and the ids
    of the messages whose rows it changed; the transaction logs a ``QUEUE``
    event for those.  ``work`` must not commit.
    """

    work: Callable[[sqlite3.Connection], tuple[object, Sequence[MessageId]]]


Operation = NewMessageRecord | Delete | Prune | MarkRead | Apply | ChangeQueue
"""What one transaction applies: storing a new message (its result, the message's id),
or a change to stored ones (its result, a count, or what an ``Apply`` returned)."""


@dataclass(slots=True)
class WriterStats:
    """What a write connection has done since it opened: for tests and metrics.

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
    """What a ``WriteConnection`` did with a list of operations.

    ``results`` has, for each operation in order, its result (the message id,
    a count, what an ``Apply`` returned) or the ``StoreError`` it failed with;
    ``events`` is what committed, for the subscribers of the connection's store.
    """

    results: list[object]
    events: list[StoreEvent]


class WriteConnection:
    """The write connection and its transactions, for whichever thread drives it.

    ``commit`` must be called with ``turns`` held, by one thread at a time.
    """

    def __init__(
        self,
        connection: sqlite3.Connection,
        bodies: BodyFiles,
        origin: str,
        turns: WriteTurns,
        health: WriteHealth | None = None,
    ) -> None:
        self._connection = connection
        self.health = health or WriteHealth()
        """Whether this connection's commits go through (``/readyz``'s ``commits``)."""
        self.turns = turns
        self._bodies = bodies
        self._origin = origin
        self._unpruned: int | None = None  # rows appended since the last prune; None: never
        self._last_stored = 0  # new messages in the last transaction
        self.unindexed = 1
        """Messages waiting for the search index, as far as this connection knows: those
        it stored, and at first one, so that it looks."""
        self.stats = WriterStats()

    def close(self) -> None:
        """Close the connection and the lock file."""
        self._connection.close()
        self.turns.close()

    def commit(self, operations: list[Operation]) -> Outcome:
        """Apply the operations in one transaction; when that fails, each in its own.

        One bad operation must not fail its neighbours: it alone gets a ``StoreError``.
        ``health`` records whether any committed.
        """
        outcome = self._commit(operations)
        failures = [r for r in outcome.results if isinstance(r, BaseException)]
        if len(failures) < len(outcome.results):
            self.health.succeeded()
        elif failures:
            self.health.failed(str(failures[0]))
        return outcome

    def _commit(self, operations: list[Operation]) -> Outcome:
        try:
            batch = self._transaction(operations)
        except (sqlite3.Error, OSError, StoreError) as error:
            if len(operations) == 1:
                return Outcome([self._failed(operations[0], error)], [])
            results: list[object] = []
            events: list[StoreEvent] = []
            for operation in operations:
                alone = self._commit([operation])
                results += alone.results
                events += alone.events
            return Outcome(results, events)
        self._bodies.unlink(batch.unlink)
        return Outcome(batch.results, batch.events)

    def _failed(self, operation: Operation, error: Exception) -> StoreError:
        log.error("store write failed: %s", error)
        if isinstance(operation, NewMessageRecord) and operation.body_file is not None:
            self._bodies.unlink([operation.body_file])
        if isinstance(error, StoreError):
            return error
        failure = StoreError(f"could not write to the message store: {error}")
        failure.__cause__ = error
        return failure

    def _transaction(self, operations: list[Operation]) -> _Batch:
        """Apply the operations in one transaction and commit it; raise if any fails."""
        if any(isinstance(op, NewMessageRecord) and op.body_file is not None for op in operations):
            self._bodies.sync()
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

    def index(self, limit: int | None = None) -> int:
        """Add up to ``limit`` new messages to the search index; return how many.

        By default, all that wait, up to ``INDEX_MOST``.

        It takes ``turns`` itself, unlike ``commit``, whose driver gathers work
        while it holds them.  The transaction is not synced: if a crash loses
        it, ``unindexed`` still lists those messages, and the next synced
        commit makes it durable along with itself.  A failure is logged; the
        next commit tries again.
        """
        if limit is None:
            limit = min(max(self.unindexed, INDEX_CHUNK), INDEX_MOST)
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
        records = [op for op in operations if isinstance(op, NewMessageRecord)]
        stored = self._stored_by_origin(records)
        if (
            len(records) == len(operations) <= MAX_ROWS_PER_INSERT
            and not any(record.queued or record.tags for record in records)
            and self._logged_without_pruning(len(stored))
        ):
            return self._insert_alone(records, stored)
        connection = self._connection
        batch = _Batch()
        with write_transaction(connection):
            pending: list[NewMessageRecord] = []  # inserted together, up to the next other op
            for operation in operations:
                if isinstance(operation, NewMessageRecord):
                    pending.append(operation)
                    batch.results.append(operation.id)
                    continue
                self._insert(pending, batch)
                pending = []
                if isinstance(operation, Delete):
                    batch.results.append(self._delete(operation, batch))
                elif isinstance(operation, Prune):
                    pruned = prune(
                        connection, operation.keep_newest, operation.before_ms, operation.limit
                    )
                    batch.results.append(self._deleted(pruned, batch))
                elif isinstance(operation, Apply):
                    batch.results.append(operation.work(connection))
                elif isinstance(operation, ChangeQueue):
                    result, changed = operation.work(connection)
                    batch.results.append(result)
                    if changed:
                        batch.events.append(StoreEvent(StoreEventKind.QUEUE, tuple(changed)))
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

    def _stored_by_origin(self, records: list[NewMessageRecord]) -> dict[str, list[MessageId]]:
        """The ids of the new messages by the origin their change is logged under."""
        stored: dict[str, list[MessageId]] = {}
        for record in records:
            stored.setdefault(record.origin, []).append(record.id)
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

    def _insert_alone(
        self, records: list[NewMessageRecord], stored: dict[str, list[MessageId]]
    ) -> _Batch:
        """New mail and nothing else: one statement, its own transaction.

        The last record of each origin's messages logs their change.
        """
        last = {record.origin: index for index, record in enumerate(records)}
        change_logs = {
            index: (origin, encode_ids(stored[origin])) for origin, index in last.items()
        }
        self._connection.execute(
            insert_messages(len(records)), incoming_values(records, change_logs)
        )
        own = stored.get(self._origin)
        events = [StoreEvent(StoreEventKind.STORED, tuple(own))] if own else []
        return _Batch(results=[record.id for record in records], events=events, stored=len(records))

    def _insert(self, records: list[NewMessageRecord], batch: _Batch) -> None:
        """Insert the records, logging no change (the transaction logs them all at its end)."""
        if not records:
            return
        for start in range(0, len(records), MAX_ROWS_PER_INSERT):
            chunk = records[start : start + MAX_ROWS_PER_INSERT]
            self._connection.execute(insert_messages(len(chunk)), incoming_values(chunk, {}))
        insert_queued(self._connection, records)
        insert_tags(self._connection, records)
        batch.stored += len(records)

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
        return self._deleted(rows, batch)

    def _deleted(self, rows: Sequence[tuple[str, str | None]], batch: _Batch) -> int:
        """The messages ``rows`` names (id, body file) were deleted: unlink their body files
        once the transaction commits, and tell of them."""
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
