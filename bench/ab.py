"""Two builds of mailgate under the same load, in turns: what one change bought.

    .venv/bin/python bench/ab.py HEAD~1 HEAD                # 1 KiB, 50 sessions, 5 runs each
    .venv/bin/python bench/ab.py main my-branch --workers 2 --runs 7
    .venv/bin/python bench/ab.py HEAD HEAD --workers 1 --workers-b 2   # one build, two settings
    .venv/bin/python bench/ab.py HEAD HEAD --flags-b="--log-level warning"

Each revision is built from git into the wheel a user would install (its hot
path compiled, where that revision's build compiles it), then the two run one after
the other (A, B, A, B, ...) under ``smtp-source -d -s 50 -l SIZE`` on
loopback, so that a busy spell of a shared machine falls on both alike.
Every run counts what the store kept; a run that lost mail is reported and
left out.  Each run also gives the server's CPU time a message (all its
processes, and each kind of process apart: the serving process, SMTP workers,
the commit service), which a busy machine disturbs less than throughput.  Prints each
run and the medians.  What changes measured this way bought is recorded in the
dated logs under docs/log/; docs/design/performance.md says what each mechanism
kept buys and costs.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _proc, load
from bench.servers import Mailgate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("a", help="a git revision: the build before")
    parser.add_argument("b", help="a git revision: the build after")
    parser.add_argument("--workers", default="1", help="--workers for both (default 1)")
    parser.add_argument("--workers-b", help="--workers for B, when it differs")
    parser.add_argument("--flags-a", default="", help="more serve flags for A")
    parser.add_argument("--flags-b", default="", help="more serve flags for B")
    parser.add_argument("--runs", type=int, default=5, help="runs of each (default 5)")
    parser.add_argument("--messages", type=int, default=10_000, help="per run (default 10000)")
    parser.add_argument("--size", type=int, default=1024, help="octets a message (default 1024)")
    args = parser.parse_args(argv)
    if not load.SMTP_SOURCE.exists():
        parser.error("smtp-source not found: run bench/setup.sh")

    with tempfile.TemporaryDirectory(prefix="mailgate-ab-") as tmp:
        work = Path(tmp)
        builds: dict[str, Mailgate] = {}
        workers = {"A": args.workers, "B": args.workers_b or args.workers}
        flags = {"A": tuple(shlex.split(args.flags_a)), "B": tuple(shlex.split(args.flags_b))}
        for name, revision in (("A", args.a), ("B", args.b)):
            server = Mailgate(workers=workers[name], flags=flags[name])
            server.snapshot(work / f"src-{name}", revision)
            builds[name] = server
            print(
                f"{name}: {revision} = {server.source_note}, --workers {workers[name]}"
                + "".join(f" {flag}" for flag in flags[name]),
                flush=True,
            )
        rates: dict[str, list[float]] = {name: [] for name in builds}
        cpu: dict[str, list[float]] = {name: [] for name in builds}
        roles: dict[str, dict[str, list[float]]] = {name: {} for name in builds}
        for number in range(1, args.runs + 1):
            for name, server in builds.items():
                result = _one_run(server, work / f"run-{name}-{number}", args.messages, args.size)
                if result is None:
                    shown = "lost mail or failed"
                else:
                    rates[name].append(result[0])
                    cpu[name].append(result[1])
                    for role, used in result[2].items():
                        roles[name].setdefault(role, []).append(used)
                    apart = ", ".join(f"{role} {used:,.0f}" for role, used in result[2].items())
                    shown = f"{result[0]:,.0f} msg/s, {result[1]:,.0f} us CPU a message ({apart})"
                print(f"run {number} {name}: {shown}", flush=True)
    for name, values in rates.items():
        if values:
            print(
                f"{name}: median {statistics.median(values):,.0f} msg/s"
                f" ({min(values):,.0f}-{max(values):,.0f}, {len(values)} good runs),"
                f" {statistics.median(cpu[name]):,.0f} us CPU a message"
                f" ({min(cpu[name]):,.0f}-{max(cpu[name]):,.0f}); "
                + ", ".join(
                    f"{role} {statistics.median(used):,.0f}" for role, used in roles[name].items()
                )
            )
    if rates["A"] and rates["B"]:
        ratio = statistics.median(rates["B"]) / statistics.median(rates["A"])
        cpu_ratio = statistics.median(cpu["B"]) / statistics.median(cpu["A"])
        print(f"B / A: {ratio:.2f}x the throughput, {cpu_ratio:.2f}x the CPU a message")
    return 0


def _one_run(
    server: Mailgate, workdir: Path, messages: int, size: int
) -> tuple[float, float, dict[str, float]] | None:
    """Messages a second, the server's CPU microseconds a message, and those of each kind of
    process (summed over its processes); None if mail was lost."""
    run = server.start(workdir)
    try:
        pids = run.pids()
        before = {pid: _proc.cpu_s([pid]) for pid in pids}
        source = load.smtp_source(run.port, messages=messages, size=size)
        used = {pid: _proc.cpu_s([pid]) - before[pid] for pid in pids}
        kinds = {pid: _kind(pid) for pid in pids}
    finally:
        server.stop(run)
    kept = server.count(run)
    if not source.ok or kept != messages:
        return None
    apart: dict[str, float] = {}
    for pid, seconds in used.items():
        apart[kinds[pid]] = apart.get(kinds[pid], 0.0) + seconds / messages * 1e6
    return messages / source.elapsed_s, sum(used.values()) / messages * 1e6, apart


def _kind(pid: int) -> str:
    """What a process of ``mailgate serve`` is, from its command line."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "gone"
    if b"commit-service" in argv:
        return "commit service"
    if b"worker" in argv:
        return "SMTP workers"
    return "serving process"


if __name__ == "__main__":
    sys.exit(main())
