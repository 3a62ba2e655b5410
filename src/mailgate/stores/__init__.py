"""Message stores, chosen by URL.

``open_store("sqlite:///var/lib/mailgate/mail.db")`` opens the embedded
default (``mailgate.stores.sqlite.SQLiteStore``);
``open_store("postgresql://mail@db.example/mail")`` (or ``postgres://``) a
database several nodes share (``mailgate.stores.postgresql.PostgreSQLStore``).
Each URL scheme a store answers to has an opener in ``_OPENERS``;
``maildir://`` is planned, and refused with a clear message until its store
exists.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import SplitResult, unquote, urlsplit

from mailgate.ports import MessageStore, StoreError
from mailgate.stores._health import WriteHealth, WriteState
from mailgate.stores.sqlite import INTEGRITY_CHECK_SECONDS, Integrity, SQLiteStore, check_integrity

__all__ = [
    "INTEGRITY_CHECK_SECONDS",
    "Integrity",
    "SQLiteStore",
    "StoreError",
    "StoreURLError",
    "WriteHealth",
    "WriteState",
    "check_integrity",
    "check_store",
    "open_store",
]

SQLITE_URL_EXAMPLE = "sqlite:///path/to/mail.db"
PLANNED_SCHEMES = frozenset({"maildir"})
"""Schemes of stores to come: refused as not supported yet rather than unknown."""


class StoreURLError(StoreError):
    """A store URL names no store this mailgate can open."""


async def open_store(url: str) -> MessageStore:
    """Open the store a URL names, creating it (and its directory) if need be.

    The opening itself (files, schema, a sweep of leftovers) runs in a worker
    thread, off the event loop.
    ``sqlite:///path/to/mail.db`` is an absolute path; ``sqlite:mail.db``
    is relative to the working directory.  Raises ``StoreURLError`` for a
    URL naming no known store, ``StoreError`` when the store cannot be
    opened; both with a one-line message.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    opener = _OPENERS.get(scheme)
    if opener is None:
        raise StoreURLError(
            f"{scheme} message stores are not supported yet: use {SQLITE_URL_EXAMPLE}"
            if scheme in PLANNED_SCHEMES
            else f"unknown message store URL {url!r}: expected {SQLITE_URL_EXAMPLE}"
        )
    return await opener(url, parts)


async def check_store(url: str) -> Integrity | None:
    """Check the store a URL names before a server opens it, off the event loop.

    For SQLite, ``stores.sqlite.check_integrity`` (at most
    ``INTEGRITY_CHECK_SECONDS``), whose findings short of damage it returns;
    ``None`` for PostgreSQL, whose server checks its own pages.  Raises
    ``StoreError`` (one line, naming the file and what is damaged) for a
    damaged database, ``StoreURLError`` for a URL naming no known store.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() != "sqlite":
        return None
    return await asyncio.to_thread(check_integrity, _sqlite_path(url, parts))


def _sqlite_path(url: str, parts: SplitResult) -> Path:
    if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
        raise StoreURLError(f"bad message store URL {url!r}: expected {SQLITE_URL_EXAMPLE}")
    path = Path(unquote(parts.path))
    if not parts.path or path.name in ("", ".", "..") or parts.path.endswith("/"):
        raise StoreURLError(f"message store URL {url!r} names no database file")
    return path


async def _open_sqlite(url: str, parts: SplitResult) -> MessageStore:
    return await asyncio.to_thread(_sqlite_store, _sqlite_path(url, parts))


def _sqlite_store(path: Path) -> SQLiteStore:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StoreError(f"cannot create directory for message store {path}: {error}") from error
    return SQLiteStore(path)


async def _open_postgresql(url: str, parts: SplitResult) -> MessageStore:
    if not parts.path.strip("/") and not parts.query:
        raise StoreURLError(f"message store URL {url!r} names no database")
    try:  # psycopg is an optional dependency: imported only when asked for
        from mailgate.stores.postgresql import PostgreSQLStore  # noqa: PLC0415
    except ImportError as error:
        raise StoreError(
            f"PostgreSQL message stores need psycopg: pip install 'mailgate[postgresql]' ({error})"
        ) from error
    return await PostgreSQLStore.open(url)


_OPENERS: dict[str, Callable[[str, SplitResult], Awaitable[MessageStore]]] = {
    "sqlite": _open_sqlite,
    "postgresql": _open_postgresql,
    "postgres": _open_postgresql,
}
"""The opener of each URL scheme (lower case): given the URL and its parts, the open store.

An opener raises ``StoreURLError`` for a URL it cannot read, ``StoreError``
when the store cannot be opened."""
