"""Durable 1 KiB commits into the PostgreSQL store, in process: two builds in turns.

    .venv/bin/python bench/pg_commit.py HEAD~1 HEAD
    .venv/bin/python bench/pg_commit.py /tmp/before /tmp/after --rounds 9 --concurrency 32

Each build (a git revision, or a directory holding ``src/mailgate``) runs in a
process of its own, its source first on ``PYTHONPATH``, on a fresh database of
the server ``BENCH_POSTGRESQL`` names (default
``postgresql://postgres@127.0.0.1:5432``), dropped after.  ``--concurrency``
tasks each hand messages of 1 KiB to ``delivery.Acceptor`` (the spool, the
summary, the store's commit, which returns once PostgreSQL has flushed it)
until ``--messages`` are stored, after a warm-up.  What is timed is the store's
hot path for small mail, group commit included, without SMTP sessions or the
kernel's sockets: messages a second, and this process's CPU microseconds a
message (PostgreSQL's own CPU is not counted).  The builds run in turns (A, B,
B, A...) so that a busy spell of a shared machine falls on both; the medians
are printed, with each round.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from _turns import in_turns

SERVER = os.environ.get("BENCH_POSTGRESQL", "postgresql://postgres@127.0.0.1:5432")
CONTENT = (
    b"From: bench@client.test\r\nTo: sink@bench.test\r\nSubject: a kibibyte\r\n\r\n"
    + (b"x" * 78 + b"\r\n") * 12
)


async def _measure(messages: int, concurrency: int) -> tuple[float, float]:
    """Messages a second, and CPU microseconds a message, after a warm-up."""
    import psycopg  # noqa: PLC0415 - the child's, with the build under test

    from mailgate.delivery import Acceptor, DeliverySettings  # noqa: PLC0415
    from mailgate.model import Envelope  # noqa: PLC0415
    from mailgate.stores.postgresql import PostgreSQLStore  # noqa: PLC0415

    name = f"mailgate_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
    try:
        store = await PostgreSQLStore.open(f"{SERVER}/{name}")
        with tempfile.TemporaryDirectory(prefix="mailgate-pg-") as tmp:
            acceptor = Acceptor(store, DeliverySettings(hostname="bench.test", spool_dir=Path(tmp)))
            envelope = Envelope(
                mail_from="bench@client.test",
                rcpt_to=("sink@bench.test",),
                received_at=datetime.now(UTC),
            )

            async def deliver(count: int) -> None:
                left = [count]

                async def worker() -> None:
                    while left[0] > 0:
                        left[0] -= 1
                        spool = acceptor.begin(envelope)
                        spool.write(CONTENT)
                        await acceptor.commit(spool)

                await asyncio.gather(*(worker() for _ in range(concurrency)))

            await deliver(max(messages // 10, 200))
            started, cpu = time.perf_counter(), time.process_time()
            await deliver(messages)
            elapsed, spent = time.perf_counter() - started, time.process_time() - cpu
            acceptor.close()
        await store.aclose()
    finally:
        with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')  # type: ignore[arg-type]
    return messages / elapsed, spent / messages * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("a", help="the build before: a git revision or a directory")
    parser.add_argument("b", help="the build after")
    parser.add_argument("--rounds", type=int, default=7, help="rounds of each (default 7)")
    parser.add_argument("--messages", type=int, default=3000, help="a round (default 3000)")
    parser.add_argument("--concurrency", type=int, default=32, help="tasks at once (default 32)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        rate, cpu = asyncio.run(_measure(args.messages, args.concurrency))
        print(f"{rate:.1f} {cpu:.1f}")
        return 0
    results: dict[str, list[tuple[float, float]]] = {"A": [], "B": []}
    with tempfile.TemporaryDirectory(prefix="mailgate-pg-") as tmp:
        child = ["--messages", str(args.messages), "--concurrency", str(args.concurrency)]
        turns = in_turns(__file__, args.a, args.b, rounds=args.rounds, child=child, work=Path(tmp))
        for round_number, name, printed in turns:
            rate, cpu = (float(value) for value in printed.split())
            results[name].append((rate, cpu))
            print(f"round {round_number} {name}: {rate:.0f} msg/s, {cpu:.0f} µs CPU a message")
    for name, build in (("A", args.a), ("B", args.b)):
        rate = statistics.median(r for r, _ in results[name])
        cpu = statistics.median(c for _, c in results[name])
        print(f"{name} {build}: median {rate:.0f} msg/s, {cpu:.0f} µs CPU a message", end="")
        print(f" ({args.rounds} rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
