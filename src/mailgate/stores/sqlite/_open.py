"""Opening the store: its files, the schema and its upgrades, the open lock and the sweep.

A store is one database file and three names beside it (``StorePaths``): the
bodies directory, the open lock and the write lock.  Opening
(``open_database``) creates the bodies directory, puts the database in WAL
mode, creates or upgrades the schema, builds the search index if it is
missing, then takes the open lock.

Every open store holds ``<database>-lock`` shared (``OpenLock``).  One that
opens when no other store holds it takes it exclusively first, and removes,
while it holds it so, the body files no row names: left by a crash between
moving a file in and committing its row.  A store that finds another open
skips that sweep, as the other may be between those two steps.  Without
``fcntl`` (not POSIX) there is no lock and no sweep.

Upgrades: a database of an older ``SCHEMA_VERSION`` runs ``upgrade(version)`` then
``SCHEMA`` in one transaction, so a second store opening at once sees all
of it or nothing; one of a newer version is refused.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from mailgate.ports import StoreError
from mailgate.stores._health import WriteHealth
from mailgate.stores.sqlite._bodies import BodyFiles
from mailgate.stores.sqlite._connection import connect
from mailgate.stores.sqlite._schema import SCHEMA, SCHEMA_VERSION, upgrade
from mailgate.stores.sqlite._search import ensure_search_schema
from mailgate.stores.sqlite._transactions import WriteConnection, WriteTurns

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = ["OpenLock", "StorePaths", "open_database", "open_write_connection"]


@dataclass(frozen=True, slots=True)
class StorePaths:
    """The database file and the names beside it."""

    database: Path

    def _beside(self, suffix: str) -> Path:
        return self.database.with_name(self.database.name + suffix)

    @property
    def bodies(self) -> Path:
        """The directory of body files."""
        return self._beside("-bodies")

    @property
    def open_lock(self) -> Path:
        """Held shared by every open store; exclusively by one that sweeps."""
        return self._beside("-lock")

    @property
    def write_lock(self) -> Path:
        """Where writers take turns (``_transactions.WriteTurns``)."""
        return self._beside("-write-lock")

    def disk_usage(self) -> int:
        """Octets of the database, its write-ahead log and the body files, now.

        A file that goes while it is counted counts nothing; so does a
        directory that cannot be read.
        """
        total = 0
        for path in (self.database, self._beside("-wal")):
            with contextlib.suppress(OSError):
                total += path.stat().st_size
        with contextlib.suppress(OSError), os.scandir(self.bodies) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    total += entry.stat().st_size
        return total


class OpenLock:
    """This store's share of the open lock; the sweep, when no other store is open."""

    def __init__(self, paths: StorePaths, connection: sqlite3.Connection, bodies: BodyFiles):
        """Take the lock shared, sweeping first if it can be had exclusively.

        Raises ``OSError`` or ``sqlite3.Error`` when the lock file cannot be
        opened or the rows cannot be read; then no lock is held.
        """
        self._file: IO[bytes] | None = None
        if fcntl is None:
            return
        lock_file = open(paths.open_lock, "ab")  # noqa: SIM115 - held while the store is open
        try:
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                # Another store is live and may be between moving a file in and committing.
                fcntl.flock(lock_file, fcntl.LOCK_SH)  # waits only while another store sweeps
            else:
                named = {
                    name
                    for (name,) in connection.execute(
                        "SELECT body_file FROM messages WHERE body_file IS NOT NULL"
                    )
                }
                bodies.remove_unnamed(named)
                fcntl.flock(lock_file, fcntl.LOCK_SH)
        except BaseException:
            lock_file.close()
            raise
        self._file = lock_file

    def release(self) -> None:
        """Let go of the lock; harmless to call again."""
        if self._file is not None:
            self._file.close()  # closing releases the flock
            self._file = None


def _prepare(paths: StorePaths, connection: sqlite3.Connection) -> None:
    """WAL mode, and the schema of this version: created, or upgraded from an older one."""
    (mode,) = connection.execute("PRAGMA journal_mode = WAL").fetchone()
    if mode != "wal":
        raise StoreError(f"cannot open message store {paths.database}: WAL mode unavailable")
    (version,) = connection.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"message store {paths.database} has schema {version};"
            f" this mailgate knows up to {SCHEMA_VERSION}"
        )
    if version < SCHEMA_VERSION:
        # One transaction, so a second store opening at once sees all or nothing.
        connection.executescript(
            f"BEGIN IMMEDIATE; {upgrade(version)} {SCHEMA};"
            f" PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
        )


def open_database(
    paths: StorePaths, bodies: BodyFiles
) -> tuple[sqlite3.Connection, OpenLock, WriteTurns]:
    """Open the database for a store: its write connection, its open lock, its write turns.

    Creates what is missing and sweeps when alone (see the module's notes).
    Raises ``StoreError`` (one line) when the store cannot be opened: a
    missing or unwritable directory, a file that is not a database, a schema
    from a newer mailgate.
    """
    try:
        bodies.directory.mkdir(exist_ok=True)
        connection = connect(paths.database)
    except (OSError, sqlite3.Error) as error:
        raise StoreError(f"cannot open message store {paths.database}: {error}") from error
    lock: OpenLock | None = None
    try:
        try:
            _prepare(paths, connection)
            ensure_search_schema(connection)
            lock = OpenLock(paths, connection, bodies)
            turns = WriteTurns(paths.write_lock)
        except (OSError, sqlite3.Error) as error:
            raise StoreError(f"cannot open message store {paths.database}: {error}") from error
    except BaseException:
        connection.close()
        if lock is not None:
            lock.release()
        raise
    return connection, lock, turns


def open_write_connection(
    paths: StorePaths, bodies: BodyFiles, origin: str, health: WriteHealth | None = None
) -> WriteConnection:
    """Another write connection to an open store, taking turns with its other writers;
    ``health`` records its commits.

    Raises ``StoreError`` when the database or the write lock cannot be opened.
    """
    try:
        turns = WriteTurns(paths.write_lock)
    except OSError as error:
        raise StoreError(f"cannot open message store {paths.database}: {error}") from error
    try:
        connection = connect(paths.database)
    except sqlite3.Error as error:
        turns.close()
        raise StoreError(f"cannot open message store {paths.database}: {error}") from error
    return WriteConnection(connection, bodies, origin, turns, health)
