"""How every connection to the database is made, and how a write transaction runs.

Every connection is in autocommit mode (``isolation_level=None``), so a
transaction is exactly what ``write_transaction`` or an explicit ``BEGIN``
makes it; runs with ``synchronous = FULL``, so ``COMMIT`` returns once the WAL
is synced; waits up to ``BUSY_TIMEOUT_MS`` for another writer; and has the SQL
functions the search index uses (``mailgate_lower``: see ``_search``).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

__all__ = ["BUSY_TIMEOUT_MS", "connect", "register_functions", "write_transaction"]

BUSY_TIMEOUT_MS = 10_000

_SQLValue = str | bytes | int | float | None


def connect(path: Path, *, query_only: bool = False) -> sqlite3.Connection:
    """A connection to the database at ``path``, usable from any thread (one at a time).

    Raises ``sqlite3.Error`` when the database cannot be opened.
    """
    connection = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
    )
    try:
        connection.execute("PRAGMA synchronous = FULL")
        if query_only:
            connection.execute("PRAGMA query_only = 1")
        register_functions(connection)
    except BaseException:
        connection.close()
        raise
    return connection


def _lower(value: _SQLValue) -> _SQLValue:
    return value.lower() if isinstance(value, str) else value


def register_functions(connection: sqlite3.Connection) -> None:
    """Give ``connection`` the SQL functions the search index and searches use."""
    connection.create_function("mailgate_lower", 1, _lower, deterministic=True)


@contextlib.contextmanager
def write_transaction(connection: sqlite3.Connection) -> Iterator[None]:
    """One write transaction: ``BEGIN IMMEDIATE``, then ``COMMIT`` when the block ends,
    or ``ROLLBACK`` when it (or the commit) raises."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
