"""The PostgreSQL outbound queue: claims by several nodes at once on one database."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from mailgate.model import DeliveryOutcome, DeliveryState
from mailgate.stores.postgresql._queue import QUEUE_SCHEMA, QueueOperations, insert_queued

SERVER = "postgresql://postgres@127.0.0.1:5432"
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
LEASE = timedelta(minutes=2)
NODES = 4
MESSAGES = 500
RECIPIENTS_PER_MESSAGE = 4
CLAIM_LIMIT = 50


@contextlib.asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    """The URL of a database of its own, dropped afterwards."""
    name = f"mailgate_test_{uuid.uuid4().hex}"
    try:
        admin = await psycopg.AsyncConnection.connect(f"{SERVER}/postgres", autocommit=True)
    except psycopg.OperationalError as error:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"PostgreSQL cannot be reached at {SERVER}: {error}")
    async with admin:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"{SERVER}/{name}"
        finally:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@contextlib.asynccontextmanager
async def opened_pool(url: str) -> AsyncIterator[AsyncConnectionPool[Any]]:
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(url, min_size=1, max_size=2, open=False)
    await pool.open(wait=True)
    try:
        yield pool
    finally:
        await pool.close()


MESSAGES_TABLE = 'CREATE TABLE messages (id text COLLATE "C" PRIMARY KEY, envelope jsonb NOT NULL)'


async def queue_many(url: str) -> list[tuple[str, str]]:
    """Store ``MESSAGES`` bare messages with their queue rows; return (message, recipient)s."""
    rows = [
        (f"m{m:04d}", f"r{r}@remote.test", NOW, NOW)
        for m in range(MESSAGES)
        for r in range(RECIPIENTS_PER_MESSAGE)
    ]
    async with await psycopg.AsyncConnection.connect(url) as connection:
        await connection.execute(MESSAGES_TABLE)
        await connection.execute(QUEUE_SCHEMA)
        async with connection.cursor() as cursor:
            await cursor.executemany(
                'INSERT INTO messages (id, envelope) VALUES (%s, \'{"mail_from": "s@a.test"}\')',
                [(f"m{m:04d}",) for m in range(MESSAGES)],
            )
            await insert_queued(cursor, rows)
    return [(m, r) for m, r, _, _ in rows]


async def run_node(
    queue: QueueOperations, owner: str, claims: list[tuple[str, str]], held: dict[Any, str]
) -> None:
    """Claim and deliver until nothing is left, checking that no one else holds a claimed row."""
    while claimed := await queue.claim(owner, now=NOW, lease=LEASE, limit=CLAIM_LIMIT):
        assert len({r.message_id for r in claimed}) <= CLAIM_LIMIT
        for row in claimed:
            key = (row.message_id, row.recipient)
            assert key not in held, f"{owner} claimed {key}, which {held.get(key)} holds"
            held[key] = owner
            claims.append(key)
        await asyncio.sleep(0)  # another node's turn while this one "delivers"
        outcomes = [
            DeliveryOutcome(row.message_id, row.recipient, DeliveryState.DELIVERED, NOW, "250 ok")
            for row in claimed
        ]
        for row in claimed:
            del held[(row.message_id, row.recipient)]
        assert await queue.record(owner, outcomes) == len(outcomes)


async def claim_on_nodes(url: str) -> tuple[list[tuple[str, str]], float]:
    """Every node's claims, and how long they took (seconds), ``NODES`` at once."""
    claims: list[tuple[str, str]] = []
    held: dict[Any, str] = {}
    async with contextlib.AsyncExitStack() as stack:
        pools = [await stack.enter_async_context(opened_pool(url)) for _ in range(NODES)]
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.gather(
            *(
                run_node(QueueOperations(pool), f"node{n}", claims, held)
                for n, pool in enumerate(pools)
            )
        )
        return claims, loop.time() - started


@pytest.mark.asyncio
async def test_nodes_claim_every_recipient_once() -> None:
    async with fresh_database() as url:
        queued = await queue_many(url)
        claims, _ = await claim_on_nodes(url)
        counts = Counter(claims)
        assert set(counts) == set(queued)
        assert [key for key, count in counts.items() if count > 1] == []
        async with opened_pool(url) as pool:
            queue = QueueOperations(pool)
            assert await queue.queued() == []
            assert await queue.claim("late", now=NOW + 2 * LEASE, lease=LEASE, limit=9) == []
            done = await queue.queued(pending_only=False)
        assert len(done) == len(queued)
        assert {(r.state, r.attempts, r.sender) for r in done} == {
            (DeliveryState.DELIVERED, 1, "s@a.test")
        }


class RecordingCursor(psycopg.AsyncCursor[Any]):
    """A cursor that notes every statement it runs, in ``statements``."""

    statements: list[str] = []

    async def execute(self, query: Any, *args: Any, **kwargs: Any) -> RecordingCursor:
        RecordingCursor.statements.append(str(query))
        await super().execute(query, *args, **kwargs)
        return self


async def recording(connection: psycopg.AsyncConnection[Any]) -> None:
    connection.cursor_factory = RecordingCursor


@pytest.mark.asyncio
async def test_an_idle_runner_only_reads() -> None:
    async with fresh_database() as url:
        await queue_many(url)
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            url, min_size=1, max_size=1, open=False, configure=recording
        )
        await pool.open(wait=True)
        try:
            queue = QueueOperations(pool)
            RecordingCursor.statements.clear()
            assert await queue.claim("a", now=NOW - LEASE, lease=LEASE, limit=9) == []
            assert await queue.renew_claims("a", NOW + LEASE) == 0
            assert await queue.release_claims("a") == 0
            statements = list(RecordingCursor.statements)
        finally:
            await pool.close()
        assert len(statements) == 3
        assert all(s.startswith("SELECT EXISTS (SELECT 1 FROM deliveries") for s in statements)
