"""Helpers for the SQLite store's tests."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from mailgate.model import Address, MessageId, MessageSummary
from mailgate.stores.sqlite._records import NewMessageRecord, QueuedRecipient
from mailgate.stores.sqlite._schema import new_message_record
from mailgate.testing.stores import make_envelope

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


def summary(number: int) -> MessageSummary:
    """The summary of made-up message ``number``, subject ``ledger <number>``."""
    return MessageSummary(
        id=MessageId(f"01HX{number:022d}"),
        received_at=datetime(2026, 12, 1, tzinfo=UTC),
        size=100,
        sender=Address("Alice", "alice@example.com"),
        to=(Address("", "bob@example.org"),),
        subject=f"ledger {number}",
        message_id=f"{number}@example.com",
        snippet="hello",
    )


def record(
    number: int,
    *,
    origin: str = "origin",
    queued: tuple[QueuedRecipient, ...] = (),
    tags: tuple[str, ...] = (),
    content: bytes = b"x",
) -> NewMessageRecord:
    """The record that stores made-up message ``number``, its content inline."""
    return new_message_record(
        dataclasses.replace(summary(number), tags=tags),
        make_envelope(),
        body_file=None,
        content=content,
        origin=origin,
        queued=queued,
    )
