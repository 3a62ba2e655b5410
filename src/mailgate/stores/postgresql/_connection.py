"""How the PostgreSQL store reaches its database: the URL, the pool, and errors in one line.

The store URL is a libpq URI (``postgresql://user@host:port/db?...``, or
``postgres://``), passed to libpq as it is, with ``connect_timeout`` added
when it names none.  Every connection runs with ``synchronous_commit = on``
whatever the server's default, so a COMMIT returns only once durable, and in
autocommit mode: reads are single statements, writes open a transaction
(``connection.transaction()``).

The pool (``StorePool``) opens itself on first use on the store's event loop,
so that a store can be made by a plain constructor (``PostgreSQLStore``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool

from mailgate.ports import InsufficientStorageError, StoreError

__all__ = [
    "PostgreSQLSettings",
    "StorePool",
    "connection_options",
    "describe",
    "first_line",
    "store_error",
]


@dataclass(frozen=True, slots=True)
class PostgreSQLSettings:
    """How a PostgreSQL store uses its database."""

    max_connections: int = 8
    """Connections the store's pool holds at most (its follower holds one more)."""
    connect_timeout: float = 5.0
    """Seconds to wait for the database: to connect, and for a free pooled connection."""


def describe(url: str) -> str:
    """The URL without its password, fit for a message."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def connection_options(url: str, settings: PostgreSQLSettings) -> dict[str, Any]:
    """Keyword arguments for ``psycopg.connect`` besides the URL.

    Raises ``StoreError`` for a URL libpq cannot read.
    """
    try:
        given = conninfo_to_dict(url)
    except psycopg.ProgrammingError as error:
        raise StoreError(f"bad message store URL {describe(url)!r}: {first_line(error)}") from error
    options: dict[str, Any] = {"autocommit": True}
    if "connect_timeout" not in given:
        options["connect_timeout"] = max(1, round(settings.connect_timeout))
    return options


def first_line(error: BaseException) -> str:
    """The first line of an error's message (libpq's run over several)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def store_error(doing: str, error: BaseException) -> StoreError:
    """A one-line ``StoreError`` for a database error while ``doing`` (``read``, ``write``).

    A full disk (``53100``) is an ``InsufficientStorageError``: the client
    is told to try again later.
    """
    cls = InsufficientStorageError if isinstance(error, psycopg.errors.DiskFull) else StoreError
    failure = cls(f"could not {doing} the message store: {first_line(error)}")
    failure.__cause__ = error
    return failure


async def _configure(connection: AsyncConnection[Any]) -> None:
    await connection.execute("SET synchronous_commit = on")


class StorePool(AsyncConnectionPool[AsyncConnection[Any]]):
    """A pool that opens on first use, from the loop using it."""

    def __init__(self, url: str, settings: PostgreSQLSettings) -> None:
        super().__init__(
            url,
            kwargs=connection_options(url, settings),
            min_size=1,
            max_size=max(settings.max_connections, 1),
            open=False,
            configure=_configure,
            timeout=settings.connect_timeout,
            name="mailgate-store",
        )

    async def getconn(self, timeout: float | None = None) -> AsyncConnection[Any]:
        if self.closed:
            await self.open()
        return await super().getconn(timeout)
