"""Paced load: time from the final ``.`` of DATA to the server's ``250``.

    python -m bench.latency_client --port PORT --rate 800 --duration 10

Messages are started on a fixed schedule (``--rate`` per second, open loop)
over ``--connections`` sessions (shared out between the ports when ``--port`` is
given more than once: nodes that act as one server). When every session is busy the message waits
for one, and that wait is reported as schedule lag, so a server that falls
behind shows it instead of hiding it. Latency is measured from just before the
write of the last chunk (the end of the body and ``.<CRLF>``) to the ``250``
line; the first ``--warmup`` seconds are left out.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

from bench._smtp_client import ReplyError, message, read_reply, use_uvloop


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of sorted ``values``."""
    if not values:
        return float("nan")
    rank = max(0, min(len(values) - 1, round(fraction * len(values) + 0.5) - 1))
    return values[rank]


async def pace(args: argparse.Namespace) -> dict[str, object]:
    body = message(args.size)
    # The clock starts just before "<CRLF>.<CRLF>" is written: what follows is
    # the server's work after the final dot.
    head, tail = body[:-5], body[-5:]
    sessions: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    writers = []
    for index in range(args.connections):
        port = args.port[index % len(args.port)]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await read_reply(reader, 220)
        writer.write(b"EHLO paced.client.test\r\n")
        await read_reply(reader, 250)
        sessions.put_nowait((reader, writer))
        writers.append(writer)

    latencies: list[float] = []
    lags: list[float] = []
    errors: dict[str, int] = {}
    acked = 0
    loop = asyncio.get_running_loop()
    total = int(args.rate * args.duration)
    start = loop.time() + 0.1
    measured_from = start + args.warmup

    async def send(
        session: tuple[asyncio.StreamReader, asyncio.StreamWriter], scheduled: float
    ) -> None:
        nonlocal acked
        reader, writer = session
        try:
            async with asyncio.timeout(args.timeout):
                writer.write(b"MAIL FROM:<bench@client.test>\r\n")
                await read_reply(reader, 250)
                writer.write(b"RCPT TO:<sink@bench.test>\r\n")
                await read_reply(reader, 250)
                writer.write(b"DATA\r\n")
                await read_reply(reader, 354)
                writer.write(head)
                await writer.drain()
                sent_dot = time.perf_counter()
                writer.write(tail)
                await read_reply(reader, 250)
                elapsed = time.perf_counter() - sent_dot
        except (TimeoutError, ReplyError, OSError) as exc:
            key = type(exc).__name__
            errors[key] = errors.get(key, 0) + 1
            writer.transport.abort()
            return  # the session is lost; the pool shrinks
        acked += 1
        if scheduled >= measured_from:
            latencies.append(elapsed)
        sessions.put_nowait(session)

    tasks = set()
    for i in range(total):
        scheduled = start + i / args.rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        session = await sessions.get()
        if scheduled >= measured_from:
            lags.append(max(0.0, loop.time() - scheduled))
        task = asyncio.create_task(send(session, scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    finished = loop.time()
    for writer in writers:
        writer.transport.abort()

    latencies.sort()
    lags.sort()
    ms = 1000.0
    return {
        "offered_rate": args.rate,
        "achieved_rate": round(total / (finished - start), 1),
        "messages": total,
        "acked": acked,
        "errors": errors,
        "samples": len(latencies),
        "p50_ms": round(percentile(latencies, 0.50) * ms, 3),
        "p90_ms": round(percentile(latencies, 0.90) * ms, 3),
        "p99_ms": round(percentile(latencies, 0.99) * ms, 3),
        "max_ms": round(latencies[-1] * ms, 3) if latencies else None,
        "mean_ms": round(statistics.fmean(latencies) * ms, 3) if latencies else None,
        "lag_p99_ms": round(percentile(lags, 0.99) * ms, 3),
        # The client shares the machine's CPUs with the server: show its share.
        "client_cpu_pct": round(100.0 * time.process_time() / (finished - start), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--port", type=int, action="append", required=True, help="repeat for several nodes"
    )
    parser.add_argument("--rate", type=float, required=True, help="messages per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds not measured")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--size", type=int, default=1024, help="body octets")
    parser.add_argument("--timeout", type=float, default=30.0, help="per message")
    args = parser.parse_args()
    use_uvloop()
    print(json.dumps(asyncio.run(pace(args))), flush=True)


if __name__ == "__main__":
    main()
