"""The SQLite store's one writer thread, and group commit.

Every change a store makes goes through one thread that drives the store's
``_transactions.WriteConnection``; so does its new mail, unless the store
sends it to the commit service (every SMTP process's store in a node: see
``_store.SQLiteStore._route``).  Callers submit an operation and
await the future it returns.  The thread takes everything queued, commits it
all in ONE transaction (one fsync of the WAL), then resolves every future of
the batch on its event loop.  While one batch is being synced, the next one
gathers in the queue, so the busier the store, the more messages share an
fsync.  With several processes on one database, writers take turns
(``WriteTurns``); what queued while this one waited for its turn joins its
transaction too.

A future resolves only after the COMMIT holding its change returned; the
thread publishes the events of each transaction to its store's subscribers
right after resolving them.  When no work comes, the thread adds new mail to
the search index (``WriteConnection.index_wait`` says when).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mailgate.model import StoreEvent
from mailgate.stores.sqlite._transactions import (
    MAX_BATCH_OPERATIONS,
    Operation,
    Outcome,
    WriteConnection,
)

__all__ = ["Writer"]


@dataclass(slots=True)
class _Job:
    operation: Operation
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


class Writer:
    """Drives a write connection: applies queued operations in group commits on its thread."""

    def __init__(
        self, connection: WriteConnection, publish: Callable[[list[StoreEvent]], None]
    ) -> None:
        """Start the thread; it closes ``connection`` when it ends (``stop``)."""
        self._connection = connection
        self._publish = publish
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.stats = connection.stats
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
        connection = self._connection
        stopping = False
        while not stopping:
            try:
                first = get(timeout=connection.index_wait())
            except queue.Empty:  # idle: index what is new, then look again
                connection.index()
                continue
            if first is None:
                break
            jobs = [first]
            stopping = self._gather(jobs)
            with connection.turns:
                # What arrived while another writer had its turn joins this transaction.
                if not stopping:
                    stopping = self._gather(jobs)
                outcome = connection.commit([job.operation for job in jobs])
            self._finish(jobs, outcome)
            connection.catch_up()
        connection.close()

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
