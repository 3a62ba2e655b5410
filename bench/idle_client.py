"""Open many SMTP sessions, greet each with EHLO, then hold them idle.

    python -m bench.idle_client --port PORT --count 10000

At most ``--concurrency`` sessions are being opened at once; a session counts
as served when it got the 220 greeting and the 250 reply to EHLO within
``--timeout`` seconds. Opening stops at ``--deadline`` seconds, or once no
session has been served for ``--stall`` seconds (a server at its limit).

It prints one JSON line ``{"event": "held", ...}`` once opening is over, then
waits for a line on stdin (the harness measures the server meanwhile), sends
NOOP on every held session to see which are still alive, prints
``{"event": "done", ...}`` and closes them all.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter

from bench import _proc
from bench._smtp_client import ReplyError, read_reply, use_uvloop


async def hold(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    deadline = loop.time() + args.deadline
    gate = asyncio.Semaphore(args.concurrency)
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    outcome: Counter[str] = Counter()
    last_served = loop.time()

    async def open_one() -> None:
        nonlocal last_served
        async with gate:
            left = deadline - loop.time()
            if left <= 0:
                outcome["not attempted before the deadline"] += 1
                return
            if loop.time() - last_served > args.stall:
                outcome["not attempted: no session served for a while"] += 1
                return
            writer = None
            try:
                async with asyncio.timeout(min(args.timeout, left)):
                    reader, writer = await asyncio.open_connection("127.0.0.1", args.port)
                    await read_reply(reader, 220)
                    writer.write(b"EHLO idle.client.test\r\n")
                    await read_reply(reader, 250)
            except TimeoutError:
                outcome["timed out"] += 1
            except ReplyError as exc:
                outcome[f"refused with {exc.code}"] += 1
            except OSError as exc:
                outcome[f"error {type(exc).__name__}"] += 1
            else:
                held.append((reader, writer))
                last_served = loop.time()
                return
            if writer is not None:
                writer.transport.abort()

    await asyncio.gather(*(open_one() for _ in range(args.count)))
    open_s = time.perf_counter() - started
    report = {
        "event": "held",
        "wanted": args.count,
        "served": len(held),
        "open_s": round(open_s, 3),
        "failures": dict(outcome),
    }
    print(json.dumps(report), flush=True)

    await loop.run_in_executor(None, sys.stdin.readline)

    alive = 0

    async def noop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal alive
        async with gate:
            try:
                async with asyncio.timeout(args.timeout):
                    writer.write(b"NOOP\r\n")
                    await read_reply(reader, 250)
            except (TimeoutError, ReplyError, OSError):
                return
            alive += 1

    await asyncio.gather(*(noop(r, w) for r, w in held))
    print(json.dumps({"event": "done", "alive_after_hold": alive}), flush=True)
    for _reader, writer in held:
        writer.transport.abort()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--deadline", type=float, default=60.0)
    parser.add_argument(
        "--stall", type=float, default=15.0, help="stop opening when none was served this long"
    )
    args = parser.parse_args()
    _proc.raise_nofile(args.count + 1_000)
    use_uvloop()
    asyncio.run(hold(args))


if __name__ == "__main__":
    main()
