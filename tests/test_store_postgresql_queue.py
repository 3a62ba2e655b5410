"""The PostgreSQL outbound queue: the conformance suite, and claims by several nodes at once.

Each test has a database of its own (``postgresql_helpers.fresh_database``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from mailgate.delivery import Acceptor, DeliverySettings
from mailgate.model import DeliveryOutcome, DeliveryState, MessageId, QueuedDelivery
from mailgate.ports import StoreError
from mailgate.stores.postgresql import PostgreSQLStore
from mailgate.stores.postgresql._queue import QueueOperations
from mailgate.testing.stores import EPOCH, make_envelope, make_message
from postgresql_helpers import fresh_database

LEASE = timedelta(minutes=2)
NOW = EPOCH + LEASE
NODES = 4
MESSAGES = 500
RECIPIENTS_PER_MESSAGE = 4
CLAIM_LIMIT = 50
"""Messages a claim takes at most: 4 nodes claim 2,000 recipients over 500 messages."""


@pytest.fixture
def database() -> Iterator[str]:
    with fresh_database() as url:
        yield url


async def queue_many(store: PostgreSQLStore, tmp_path: Path) -> set[tuple[MessageId, str]]:
    """Store ``MESSAGES`` messages to ``RECIPIENTS_PER_MESSAGE`` outbound recipients each;
    return every (message, recipient) queued."""
    acceptor = Acceptor(store, DeliverySettings(hostname="mx.test", spool_dir=tmp_path / "spool"))
    recipients = tuple(f"r{n}@remote.test" for n in range(RECIPIENTS_PER_MESSAGE))
    envelope = dataclasses.replace(make_envelope(*recipients), outbound=recipients)

    async def one(number: int) -> MessageId:
        spool = acceptor.begin(envelope)
        spool.write(make_message(f"m{number}"))
        return await acceptor.commit(spool)

    try:
        ids = await asyncio.gather(*(one(n) for n in range(MESSAGES)))
    finally:
        acceptor.close()
    return {(message_id, recipient) for message_id in ids for recipient in recipients}


@dataclasses.dataclass
class Claims:
    """What every node claimed, and who holds what now: a claim of a row another node
    holds fails at once."""

    made: list[tuple[MessageId, str]] = dataclasses.field(default_factory=list)
    held: dict[tuple[MessageId, str], str] = dataclasses.field(default_factory=dict)

    def take(self, owner: str, rows: list[QueuedDelivery]) -> None:
        for row in rows:
            key = (row.message_id, row.recipient)
            holder = self.held.setdefault(key, owner)
            assert holder == owner, f"{owner} claimed {key}, which {holder} holds"
            self.made.append(key)

    def give_up(self, rows: list[QueuedDelivery]) -> None:
        for row in rows:
            del self.held[(row.message_id, row.recipient)]


async def run_node(
    store: PostgreSQLStore, owner: str, claims: Claims, *, now: datetime, attempts: int
) -> None:
    """Claim and attempt until nothing is due at ``now``: each recipient is deferred, due at
    once, until its last attempt, which delivers it."""
    while claimed := await store.claim(owner, now=now, lease=LEASE, limit=CLAIM_LIMIT):
        assert len({row.message_id for row in claimed}) <= CLAIM_LIMIT
        claims.take(owner, claimed)
        await asyncio.sleep(0)  # the other nodes claim while this one delivers
        outcomes = [
            DeliveryOutcome(row.message_id, row.recipient, DeliveryState.DELIVERED, now, "250 ok")
            if row.attempts + 1 == attempts
            else DeliveryOutcome(
                row.message_id, row.recipient, DeliveryState.DEFERRED, now, "451 busy", "", now
            )
            for row in claimed
        ]
        claims.give_up(claimed)  # before the outcome commits: then another may claim them
        assert await store.record(owner, outcomes) == len(outcomes)


async def claim_on_nodes(
    stores: list[PostgreSQLStore], *, now: datetime = NOW, attempts: int = 1
) -> tuple[Claims, float]:
    """Every node's claims, the nodes claiming at once, and how long it took (seconds)."""
    claims = Claims()
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.gather(
        *(
            run_node(store, f"node{n}", claims, now=now, attempts=attempts)
            for n, store in enumerate(stores)
        )
    )
    return claims, loop.time() - started


@contextlib.asynccontextmanager
async def nodes(url: str) -> AsyncIterator[list[PostgreSQLStore]]:
    stores = list(await asyncio.gather(*(PostgreSQLStore.open(url) for _ in range(NODES))))
    try:
        yield stores
    finally:
        for store in stores:
            await store.aclose()


@pytest.mark.asyncio
async def test_nodes_claiming_at_once_claim_each_recipient_once(
    database: str, tmp_path: Path
) -> None:
    async with nodes(database) as stores:
        queued = await queue_many(stores[0], tmp_path)
        assert len(queued) == MESSAGES * RECIPIENTS_PER_MESSAGE
        claims, _ = await claim_on_nodes(stores)
        counts = Counter(claims.made)
        assert [key for key, count in counts.items() if count > 1] == []
        assert set(counts) == queued
        assert claims.held == {}
        assert await stores[1].queued() == []
        done = await stores[2].queued(pending_only=False)
        assert len(done) == len(queued)
        assert {(row.state, row.attempts, row.sender) for row in done} == {
            (DeliveryState.DELIVERED, 1, "sender@client.test")
        }


class RecordingCursor(psycopg.AsyncCursor[Any]):
    """A cursor that notes every statement it runs."""

    statements: list[str] = []

    async def execute(self, query: Any, *args: Any, **kwargs: Any) -> RecordingCursor:
        RecordingCursor.statements.append(str(query))
        await super().execute(query, *args, **kwargs)
        return self


async def recording(connection: psycopg.AsyncConnection[Any]) -> None:
    connection.cursor_factory = RecordingCursor


@contextlib.asynccontextmanager
async def recorded_queue(url: str) -> AsyncIterator[QueueOperations]:
    """Queue operations on a pool of their own whose cursors are ``RecordingCursor``s."""
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        url, min_size=1, max_size=1, open=False, configure=recording, kwargs={"autocommit": True}
    )
    await pool.open(wait=True)
    RecordingCursor.statements.clear()
    try:
        yield QueueOperations(pool)
    finally:
        await pool.close()


@pytest.mark.asyncio
async def test_an_idle_runner_only_reads(database: str, tmp_path: Path) -> None:
    store = await PostgreSQLStore.open(database)
    try:
        await queue_many(store, tmp_path)
    finally:
        await store.aclose()
    async with recorded_queue(database) as queue:
        assert await queue.claim("a", now=EPOCH - LEASE, lease=LEASE, limit=9) == []
        assert await queue.renew_claims("a", EPOCH + LEASE) == 0
        assert await queue.release_claims("a") == 0
        statements = list(RecordingCursor.statements)
    assert len(statements) == 3
    assert all(s.startswith("SELECT EXISTS (SELECT 1 FROM deliveries") for s in statements)


@pytest.mark.asyncio
async def test_failures_are_store_errors(database: str) -> None:
    store = await PostgreSQLStore.open(database)
    await store.aclose()
    with pytest.raises(StoreError, match="closed"):
        await store.claim("a", now=EPOCH, lease=LEASE, limit=9)
    with pytest.raises(StoreError, match="closed"):
        await store.hold(MessageId("0" * 26))
    with psycopg.connect(database, autocommit=True) as connection:
        connection.execute("DROP TABLE deliveries")
    async with recorded_queue(database) as queue:
        with pytest.raises(StoreError, match='relation "deliveries" does not exist'):
            await queue.claim("a", now=EPOCH, lease=LEASE, limit=9)
        with pytest.raises(StoreError, match="could not write"):
            await queue.retry(None, EPOCH)


@pytest.mark.asyncio
async def test_nodes_claiming_again_never_hold_a_recipient_at_once(
    database: str, tmp_path: Path
) -> None:
    async with nodes(database) as stores:
        queued = await queue_many(stores[0], tmp_path)
        claims, _ = await claim_on_nodes(stores, attempts=3)
        assert Counter(claims.made) == dict.fromkeys(queued, 3)
        assert claims.held == {}
        done = await stores[3].queued(pending_only=False)
        assert {(row.state, row.attempts) for row in done} == {(DeliveryState.DELIVERED, 3)}


@pytest.mark.asyncio
async def test_a_dead_nodes_claims_go_to_the_others_once_its_lease_ran_out(
    database: str, tmp_path: Path
) -> None:
    async with nodes(database) as stores:
        queued = await queue_many(stores[0], tmp_path)
        dead, *alive = stores
        abandoned = await dead.claim("dead", now=NOW, lease=LEASE, limit=CLAIM_LIMIT)
        assert len(abandoned) == CLAIM_LIMIT * RECIPIENTS_PER_MESSAGE
        before, _ = await claim_on_nodes(alive)
        left = {(row.message_id, row.recipient) for row in await alive[0].queued()}
        assert left == {(row.message_id, row.recipient) for row in abandoned}
        after, _ = await claim_on_nodes(alive, now=NOW + LEASE)
        assert Counter(before.made + after.made) == dict.fromkeys(queued, 1)
        assert set(after.made) == left
        late = [
            DeliveryOutcome(row.message_id, row.recipient, DeliveryState.DELIVERED, NOW, "250 ok")
            for row in abandoned
        ]
        assert await dead.record("dead", late) == 0
        assert await alive[1].queued() == []
