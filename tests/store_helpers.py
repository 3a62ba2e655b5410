"""Helpers for the SQLite store's tests."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

TIMEOUT = 10.0


def index_state(path: Path) -> tuple[int, int]:
    """(rows in the search index, messages waiting for it), read by a connection of its own."""
    connection = sqlite3.connect(path)
    try:
        (indexed,) = connection.execute("SELECT count(*) FROM message_search").fetchone()
        (waiting,) = connection.execute("SELECT count(*) FROM unindexed").fetchone()
    finally:
        connection.close()
    return indexed, waiting


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait for ``condition``, checking every few milliseconds, up to ``TIMEOUT``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while not condition():
        assert loop.time() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.005)
