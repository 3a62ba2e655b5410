"""Following the changes other processes commit to the SQLite store.

Every writer appends the events of each transaction to the ``changes`` log,
tagged with its store's random ``origin`` (see ``_transactions``), and
publishes them to its own store's subscribers itself.  While a store has
subscribers, a ``Follower`` thread with its own read connection polls
``PRAGMA data_version`` every ``FOLLOW_INTERVAL_SECONDS``; the number moves
whenever another connection commits.  Then it reads the rows after the last
one it saw and publishes the events of those from other origins.

Invariants:
- rows are read in ``seq`` order, which is commit order (writers take turns:
  ``BEGIN IMMEDIATE``), and ``last_seen`` only grows, so each foreign change
  is published once, in commit order;
- rows of this store's own origin are never published here: its writer did;
- ``seq`` is consecutive, as writers prune only the oldest rows and always
  keep the newest, so a first row after ``last_seen`` that is not
  ``last_seen + 1`` means the follower fell behind the pruned log: it
  publishes one ``OVERFLOW`` ("list again") in place of what it read;
- the starting point is read when the follower is created, on the thread
  that subscribes, so no change committed after ``subscribe`` returned is
  missed.  ``data_version`` is read before the rows, so a commit between the
  two is read now or noticed on the next tick.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

from mailgate.model import StoreEvent, StoreEventKind
from mailgate.stores.sqlite._schema import event_from_change

__all__ = ["FOLLOW_INTERVAL_SECONDS", "ChangeReader", "Follower"]

log = logging.getLogger(__name__)

FOLLOW_INTERVAL_SECONDS = 0.050
"""How often a follower looks for changes; also its read connection's busy timeout."""


class ChangeReader:
    """The changes other stores committed since the last read, as events; no thread.

    Raises ``sqlite3.Error`` from every method when the database cannot be
    read; the next call tries again from where the last good one ended.
    """

    def __init__(self, connection: sqlite3.Connection, origin: str) -> None:
        self._connection = connection
        self._origin = origin
        self._data_version: int | None = None
        self.last_seen: int | None = None
        """The ``seq`` of the newest row read, or ``None`` until ``start`` succeeded."""

    def start(self) -> None:
        """Start from the newest change: what a later ``read`` returns is committed after now."""
        (version,) = self._connection.execute("PRAGMA data_version").fetchone()
        (newest,) = self._connection.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()
        self._data_version, self.last_seen = version, newest

    def read(self) -> list[StoreEvent]:
        """The events of other origins committed since the last read, oldest first."""
        last_seen = self.last_seen
        if last_seen is None:
            self.start()
            return []
        (version,) = self._connection.execute("PRAGMA data_version").fetchone()
        if version == self._data_version:
            return []
        rows = self._connection.execute(
            "SELECT seq, origin, kind, ids FROM changes WHERE seq > ? ORDER BY seq", (last_seen,)
        ).fetchall()
        self._data_version = version
        if not rows:
            return []
        self.last_seen = rows[-1][0]
        if rows[0][0] != last_seen + 1:
            return [StoreEvent(StoreEventKind.OVERFLOW)]
        events: list[StoreEvent] = []
        for _, origin, kind, ids in rows:
            if origin == self._origin:
                continue
            event = event_from_change(kind, ids)
            if event is None:
                log.debug("skipping a change of unknown kind %r", kind)
            else:
                events.append(event)
        return events


class Follower:
    """A thread publishing the changes other stores commit, until stopped.

    ``publish`` is called on the thread with the follower and a non-empty
    list of events.
    """

    def __init__(
        self,
        path: Path,
        origin: str,
        publish: Callable[[Follower, list[StoreEvent]], None],
    ) -> None:
        """Open a read connection to ``path``, note the newest change, and start the thread.

        Raises ``sqlite3.Error`` when the database cannot be opened.
        """
        self._publish = publish
        self._stopping = threading.Event()
        connection = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=FOLLOW_INTERVAL_SECONDS
        )
        connection.execute("PRAGMA query_only = 1")
        self._connection = connection
        self._reader = ChangeReader(connection, origin)
        try:
            self._reader.start()
        except sqlite3.Error as error:
            # Rare (the database is busy being recovered): start from the first good read.
            log.debug("could not read where the change log ends; trying again: %s", error)
        self._thread = threading.Thread(
            target=self._run, name="mailgate-sqlite-follower", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end; it does within a tick, closing its connection.  Never blocks."""
        self._stopping.set()

    def join(self) -> None:
        """Wait for the thread to end (after ``stop``)."""
        self._thread.join()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        try:
            while not self._stopping.wait(FOLLOW_INTERVAL_SECONDS):
                try:
                    events = self._reader.read()
                except sqlite3.Error as error:
                    log.debug("could not read the change log; trying again: %s", error)
                    continue
                if events:
                    self._publish(self, events)
        finally:
            self._connection.close()
