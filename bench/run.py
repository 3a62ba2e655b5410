"""Run the benchmarks and write the report.

    .venv/bin/python bench/run.py              # everything, about 25 minutes
    .venv/bin/python bench/run.py --quick      # one short run, to try it
    .venv/bin/python bench/run.py --scenarios s1,s6 --servers mailgate,smtp-sink

Scenarios: s1 1 KiB x 100 per session, s2 1 KiB one per connection, s3 100 KiB,
s4 idle sessions, s5 one 50 MiB message, s6 latency at half the peak rate,
s7 HTTP API, s8 relaying to smtp-sink (mailgate and Postfix), s9 mailgate on
PostgreSQL (one node, two nodes) beside mailgate on SQLite and aiosmtpd + Maildir.
Servers: mailgate, aiosmtpd-maildir, mailgate-postgresql, mailgate-postgresql-2,
postfix, aiosmtpd-discard, smtp-sink. A server that cannot run here is skipped
with a note in the report.

Every process the harness starts is ended when it finishes, on Ctrl-C and on
SIGTERM.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from types import FrameType

if __package__ in (None, ""):  # run as a script: make the bench package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _proc, facts, report
from bench.scenarios import Context, Settings, outcome_dicts, run_all, scenarios
from bench.servers import REPO, Mailgate, all_servers

RESULTS = REPO / "bench" / "results"


def log(text: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    for line in text.rstrip().splitlines():
        print(f"{stamp} {line}", file=sys.stderr, flush=True)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    del frame
    raise KeyboardInterrupt(f"signal {signum}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    table = scenarios()
    servers = list(all_servers())
    parser = argparse.ArgumentParser(
        description="Benchmark mailgate against reference SMTP servers on loopback.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="scenarios:\n"
        + "\n".join(f"  {k}  {s.title}" for k, s in table.items())
        + "\nservers:\n  "
        + ", ".join(servers),
    )
    parser.add_argument("--quick", action="store_true", help="1 run, small counts")
    parser.add_argument("--runs", type=int, help="runs per scenario (default 3; quick 1)")
    parser.add_argument("--scenarios", default="all", help="comma-separated, or 'all'")
    parser.add_argument("--servers", default="all", help="comma-separated, or 'all'")
    parser.add_argument(
        "--report",
        type=Path,
        help="Markdown report to write "
        "(default docs/benchmarks.md; quick: bench/results/quick/benchmarks.md)",
    )
    parser.add_argument(
        "--results",
        type=Path,
        help="JSON results to write "
        "(default bench/results/latest.json; quick: bench/results/quick/)",
    )
    parser.add_argument(
        "--report-only",
        type=Path,
        metavar="JSON",
        help="only render the report from earlier results",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        help="where servers keep their files "
        "(default: a new directory under /tmp, removed at the end)",
    )
    parser.add_argument("--idle-sessions", type=int, help="sessions for s4 (default 10000)")
    parser.add_argument(
        "--relay-messages", type=int, help="messages relayed a run in s8 (default 2000)"
    )
    parser.add_argument(
        "--postfix-process-limit",
        type=int,
        help="Postfix default_process_limit (default: Postfix's own, 100)",
    )
    parser.add_argument(
        "--mailgate-source",
        choices=("head", "worktree"),
        default="head",
        help="run mailgate as committed at HEAD, built into its wheel when the run starts "
        "(default), or from the working tree (pure Python) as it is at each moment",
    )
    parser.add_argument("--no-chart", action="store_true", help="do not draw the PNG")
    args = parser.parse_args(argv)

    args.scenario_keys = list(table) if args.scenarios == "all" else args.scenarios.split(",")
    args.server_keys = servers if args.servers == "all" else args.servers.split(",")
    for key in args.scenario_keys:
        if key not in table:
            parser.error(f"unknown scenario {key!r}; choose from {', '.join(table)}")
    for key in args.server_keys:
        if key not in servers:
            parser.error(f"unknown server {key!r}; choose from {', '.join(servers)}")
    out = RESULTS / "quick" if args.quick else None
    args.report = args.report or (out / "benchmarks.md" if out else REPO / "docs/benchmarks.md")
    args.results = args.results or (out / "results.json" if out else RESULTS / "latest.json")
    return args


def write_report(data: dict[str, object], path: Path, *, draw: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    png = path.with_suffix(".png")
    name = report.chart(data, png) if draw else None
    if draw and name is None:
        log("no chart: matplotlib is missing (run bench/setup.sh) or nothing to draw")
        png.unlink(missing_ok=True)
    path.write_text(report.render(data, name))
    log(f"report: {path}" + (f", chart: {png}" if name else ""))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report_only:
        data = json.loads(args.report_only.read_text())
        write_report(data, args.report, draw=not args.no_chart)
        return 0

    settings = Settings.quick() if args.quick else Settings()
    if args.runs:
        settings.runs = args.runs
    if args.idle_sessions:
        settings.idle_sessions = args.idle_sessions
    if args.relay_messages:
        settings.relay_messages = args.relay_messages
    nofile = _proc.raise_nofile(settings.idle_sessions * 2 + 2_000)
    if nofile < settings.idle_sessions + 500:
        log(f"open files limit is {nofile}: s4 is limited to {nofile - 500} sessions")
        settings.idle_sessions = max(100, nofile - 500)

    own_workdir = args.workdir is None
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mailgate-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o755)  # Postfix's daemons and virtual(8) run unprivileged

    servers = all_servers(postfix_process_limit=args.postfix_process_limit)
    if args.mailgate_source == "head":
        snapshot = workdir / "mailgate-src"
        for key in args.server_keys:
            server = servers[key]
            if not isinstance(server, Mailgate):
                continue
            try:
                if server.source is None and not snapshot.exists():
                    server.snapshot(snapshot)
                else:
                    server.use_snapshot(snapshot)
            except (OSError, subprocess.SubprocessError) as exc:
                log(f"could not snapshot HEAD ({exc}); running the working tree")
    chosen: list[str] = []
    for key in args.server_keys:
        reason = servers[key].unavailable()
        if reason:
            log(f"skipping {servers[key].label}: {reason}")
        else:
            chosen.append(key)

    # SIGINT too: a shell that starts the harness in the background ignores it.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)

    ctx = Context(settings, workdir, servers, log=log)
    started = time.monotonic()
    started_at = dt.datetime.now(dt.UTC)
    machine = facts.collect(workdir, servers)
    interrupted = False
    log(
        f"servers: {', '.join(chosen)}; scenarios: {', '.join(args.scenario_keys)}; "
        f"runs: {settings.runs}; workdir: {workdir}"
    )
    try:
        run_all(ctx, args.scenario_keys, chosen)
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: stopping every process the harness started")
    finally:
        _proc.cleanup_all()
        if own_workdir:
            import shutil  # noqa: PLC0415

            shutil.rmtree(workdir, ignore_errors=True)

    machine["loadavg_end"] = " ".join(f"{load:.2f}" for load in os.getloadavg())
    shown_argv = " ".join([".venv/bin/python bench/run.py", *map(shlex.quote, sys.argv[1:])])
    data = {
        "argv": shown_argv.strip(),
        "quick": args.quick,
        "interrupted": interrupted,
        "started": started_at.isoformat(timespec="seconds"),
        "duration_s": round(time.monotonic() - started, 1),
        "facts": machine,
        "settings": asdict(settings),
        "postfix_process_limit": args.postfix_process_limit,
        "scenarios": {k: s.title for k, s in scenarios().items()},
        "servers": {
            key: {
                "label": server.label,
                "durable": server.durable,
                "command": server.command(),
                "version": server.version() if key in chosen else "",
                "unavailable": server.unavailable() if key in args.server_keys else None,
            }
            for key, server in servers.items()
            if key in args.server_keys
        },
        "commands": ctx.commands,
        "notes": ctx.notes,
        "outcomes": outcome_dicts(ctx),
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(data, indent=1) + "\n")
    log(f"results: {args.results}")
    write_report(data, args.report, draw=not args.no_chart)
    return 130 if interrupted else 0


if __name__ == "__main__":
    raise SystemExit(main())
