"""The check of an SQLite store's file a server makes before it opens it.

``check_integrity`` passes a sound file, refuses a damaged one in one line
naming the file and the b-tree, and stops at its time limit on a file too
big to read through in time.  How ``mailgate serve`` uses it, over files a
disk fault damaged, is in ``test_serve_store_faults``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

import pytest

from mailgate.ports import StoreError
from mailgate.stores import SQLiteStore, check_integrity, check_store


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "mail.db"
    asyncio.run(SQLiteStore(path).aclose())
    return path


def fill_bodies(path: Path, rows: int) -> None:
    """Rows of 4 KiB in the bodies table: pages for the check to read."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as connection:
        connection.execute("BEGIN")
        connection.executemany(
            "INSERT INTO bodies (seq, data) VALUES (?, ?)",
            ((n, bytes(4096)) for n in range(1, rows + 1)),
        )
        connection.execute("COMMIT")


def test_a_sound_file_and_a_missing_one_pass(database: Path) -> None:
    fill_bodies(database, 100)
    integrity = check_integrity(database)
    assert (integrity.database, integrity.finished, integrity.unused_pages) == (database, True, 0)
    assert check_integrity(database.with_name("none.db")).finished


def test_a_damaged_b_tree_is_named_in_one_line(database: Path) -> None:
    fill_bodies(database, 100)
    with contextlib.closing(sqlite3.connect(database)) as connection:
        (root,) = connection.execute("SELECT rootpage FROM sqlite_master WHERE name = 'bodies'")
        (size,) = connection.execute("PRAGMA page_size").fetchone()
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with database.open("r+b") as file:
        file.seek((root[0] - 1) * size)
        file.write(b"\xa5" * size)
    with pytest.raises(StoreError) as raised:
        check_integrity(database)
    assert str(raised.value) == (
        f"message store {database} is damaged: table bodies (database disk image is"
        " malformed); restore it from a backup, or recover its mail with sqlite3's .recover"
    )
    with pytest.raises(StoreError, match="is damaged: table bodies"):
        asyncio.run(check_store(f"sqlite://{database}"))


def test_the_check_stops_at_its_time_limit(database: Path) -> None:
    fill_bodies(database, 20_000)  # 80 MB: far more than a millisecond's reading
    integrity = check_integrity(database, limit=0.001)
    assert not integrity.finished


def test_a_store_whose_server_checks_itself_is_not_checked_here() -> None:
    assert asyncio.run(check_store("postgresql://nobody@127.0.0.1:1/none")) is None
