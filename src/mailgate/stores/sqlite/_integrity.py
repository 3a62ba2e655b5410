"""The check a server makes of its SQLite database before it takes mail: ``check_integrity``.

A database damaged by a disk fault opens, and the store answers reads, but
every commit that touches a damaged b-tree fails: the server would answer
``451`` to every message, for ever.  So ``mailgate serve`` runs SQLite's
``PRAGMA quick_check`` (every b-tree's pages, and every row's NOT NULL
columns; not the content of indexes) before it opens the store, and
refuses to start, with one line naming the file and what is damaged, when
a b-tree is damaged or a table of the schema is missing.  Why refuse rather
than start and report it on ``/readyz``: a damaged b-tree is written to only
at the risk of spreading the damage to good pages, every message would be
refused anyway, and a server that does not start is what a service manager
and an operator see first.  What is damaged is found by checking each table
(with its indexes) on its own once the whole check failed.

Pages that no b-tree owns and the free list lacks ("Page N is never used":
a table dropped by hand, say) hold nothing and are never handed out: the
server starts, and says so in its log (``VACUUM`` gives the space back).

The check reads every page: 0.3 to 0.9 s for 100,000 messages (508 MB) in
the page cache, 6.0 s from a cold disk
(docs/log/2026-12-06-a-failing-store-says-so.md).  It stops after
``INTEGRITY_CHECK_SECONDS``; what it did not reach is then left to the
``commits`` check of ``/readyz``, and the log says so.  Commands other than
``serve`` do not check: they are how mail is read out of a damaged store.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from mailgate.ports import StoreError
from mailgate.stores.sqlite._schema import SCHEMA

__all__ = ["INTEGRITY_CHECK_SECONDS", "Integrity", "check_integrity"]

INTEGRITY_CHECK_SECONDS = 10.0
"""How long the check at start-up may take: a cold read of about 150,000 messages."""
MAX_PROBLEMS = 20
"""Problems ``quick_check`` lists at most; the first names the damage well enough."""
_INTERRUPT_SECONDS = 0.01
_TABLES = tuple(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", SCHEMA))
_UNUSED_PAGE = re.compile(r"Page \d+ is never used")
_REMEDY = "restore it from a backup, or recover its mail with sqlite3's .recover"


@dataclass(frozen=True, slots=True)
class Integrity:
    """What the check found in a database that is not damaged."""

    database: Path
    seconds: float
    finished: bool
    """False when it stopped at its time limit."""
    unused_pages: int = 0
    """Pages no b-tree owns (space lost, nothing at risk)."""


def check_integrity(database: Path, limit: float = INTEGRITY_CHECK_SECONDS) -> Integrity:
    """Check the database file at ``database`` (read only), for at most ``limit`` seconds.

    A file that does not exist yet passes.  Raises ``StoreError`` (one line,
    naming the file and what is damaged) when a b-tree is damaged or a table
    of the schema is missing, or when the file cannot be read as a database.
    Blocks: run it off the event loop.
    """
    started = time.monotonic()
    if not database.exists():
        return Integrity(database, 0.0, finished=True)
    try:
        connection = sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as error:
        raise StoreError(f"cannot check message store {database}: {error}") from error
    done = threading.Event()
    watchdog = threading.Thread(
        target=_interrupt_after,
        args=(connection, started + limit, done),
        name="mailgate-integrity-limit",
        daemon=True,
    )
    watchdog.start()
    try:
        damage = _damage(connection)
    except sqlite3.OperationalError as error:
        if error.sqlite_errorcode != sqlite3.SQLITE_INTERRUPT:
            raise StoreError(f"cannot check message store {database}: {error}") from error
        return Integrity(database, time.monotonic() - started, finished=False)
    finally:
        done.set()
        watchdog.join()
        connection.close()
    seconds = time.monotonic() - started
    if isinstance(damage, int):
        return Integrity(database, seconds, finished=True, unused_pages=damage)
    raise StoreError(f"message store {database} is damaged: {damage}; {_REMEDY}")


def _interrupt_after(
    connection: sqlite3.Connection, deadline: float, done: threading.Event
) -> None:
    """From ``deadline`` on, interrupt the check until it is ``done`` (an interrupt between
    two statements is lost, so it is sent again every ``_INTERRUPT_SECONDS``)."""
    if done.wait(max(deadline - time.monotonic(), 0.0)):
        return
    while True:
        connection.interrupt()
        if done.wait(_INTERRUPT_SECONDS):
            return


def _damage(connection: sqlite3.Connection) -> str | int:
    """What is damaged, in a few words; else the count of pages no b-tree owns.

    Raises ``sqlite3.OperationalError`` (``SQLITE_INTERRUPT``) when interrupted.
    """
    try:
        trees = connection.execute(_LIST_TREES).fetchall()
    except sqlite3.DatabaseError as error:
        _raise_if_interrupted(error)
        return f"its schema cannot be read ({error})"
    tables = [name for name, table, _, kind in trees if kind == "table" and name == table]
    roots = {root: (name, table, kind) for name, table, root, kind in trees}
    missing = [name for name in _TABLES if name not in tables]
    if missing:
        return f"table {', '.join(missing)} is missing"
    try:
        problems = _quick_check(connection)
    except sqlite3.DatabaseError as error:
        _raise_if_interrupted(error)
        problems = [str(error)]
    if not problems:
        return 0
    if all(_UNUSED_PAGE.fullmatch(problem) for problem in problems):
        return len(problems)
    damaged: list[str] = []
    for table in tables:
        try:
            found = _quick_check(connection, table)
        except sqlite3.DatabaseError as error:
            _raise_if_interrupted(error)
            found = [str(error)]
        if found:
            damaged.append(f"{_tree(found[0], table, roots)} ({found[0]})")
    return "; ".join(damaged) if damaged else f"its pages ({problems[0]})"


_LIST_TREES = "SELECT name, tbl_name, rootpage, type FROM sqlite_master WHERE rootpage > 0"
_ROOT_PAGE = re.compile(r"Page (\d+): ")


def _tree(problem: str, table: str, roots: dict[int, tuple[str, str, str]]) -> str:
    """The b-tree ``problem`` is in: the one whose root page it names, else ``table``'s."""
    match = _ROOT_PAGE.match(problem)
    named = roots.get(int(match[1])) if match else None
    if named is not None and named[1] == table:
        name, _, kind = named
        return f"table {name}" if kind == "table" else f"index {name} of table {table}"
    if any(kind == "index" and of == table for _, of, kind in roots.values()):
        return f"table {table} or an index of it"
    return f"table {table}"


def _quick_check(connection: sqlite3.Connection, table: str | None = None) -> list[str]:
    """``PRAGMA quick_check``'s problems (none: ``[]``), of the whole file or one table."""
    argument = str(MAX_PROBLEMS) if table is None else '"' + table.replace('"', '""') + '"'
    lines = [
        line
        for (text,) in connection.execute(f"PRAGMA quick_check({argument})")
        for line in str(text).splitlines()
        if not line.startswith("*** in database")
    ]
    return [] if lines == ["ok"] else lines


def _raise_if_interrupted(error: sqlite3.DatabaseError) -> None:
    if getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_INTERRUPT:
        raise error
