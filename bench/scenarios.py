"""The scenarios, and the loop that runs them interleaved across servers.

Each run starts a server fresh in its own directory, drives one load, asks the
server what it kept, stops it and removes its directory. Runs of a scenario
are interleaved: run 1 on every server, then run 2 (in a rotated order), so
slow drifts of a shared machine fall on all servers alike.

Every run that sends mail compares the count the server kept with what the
client saw acknowledged. A shortfall is flagged on the run; a flagged run is
never used in a median or a ratio.
"""

from __future__ import annotations

import os
import shutil
import statistics
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import _proc, load
from bench.servers import DELIVERED_TO_SINK, Mailgate, Running, Server, SmtpSink


@dataclass
class Settings:
    """Counts and limits for one invocation of the harness."""

    runs: int = 3
    msgs_1k: int = 5_000  # per smtp-source round; 50 sessions x 100 with -d
    rounds_1k: int = 2
    msgs_per_conn: int = 5_000
    msgs_100k: int = 2_000
    size_100k: int = 102_400
    idle_sessions: int = 10_000
    idle_concurrency: int = 200
    idle_timeout_s: float = 10.0
    idle_deadline_s: float = 45.0
    big_bytes: int = 50 * 1024 * 1024
    latency_duration_s: float = 10.0
    latency_warmup_s: float = 2.0
    http_messages: int = 100_000
    http_requests: int = 20
    relay_messages: int = 2_000
    relay_sessions: int = 50
    relay_stall_s: float = 30.0  # no message reached the sink for this long: give up
    settle_timeout_s: float = 300.0
    source_timeout_s: float = 600.0

    @classmethod
    def quick(cls) -> Settings:
        return cls(
            runs=1,
            msgs_1k=1_000,
            rounds_1k=1,
            msgs_per_conn=500,
            msgs_100k=200,
            idle_sessions=500,
            idle_deadline_s=20.0,
            big_bytes=10 * 1024 * 1024,
            latency_duration_s=3.0,
            latency_warmup_s=0.5,
            http_messages=2_000,
            http_requests=5,
            relay_messages=500,
            settle_timeout_s=60.0,
            source_timeout_s=120.0,
        )


@dataclass
class Outcome:
    """One run of one scenario on one server."""

    scenario: str
    server: str
    run: int
    ok: bool = True
    metrics: dict[str, Any] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    error: str = ""
    server_log: str = ""  # the end of the server's log, kept when the run went wrong

    def flag(self, text: str, *, fails: bool = True) -> None:
        self.flags.append(text)
        if fails:
            self.ok = False


@dataclass
class Context:
    settings: Settings
    workdir: Path
    servers: dict[str, Server]
    outcomes: list[Outcome] = field(default_factory=list)
    commands: dict[str, list[str]] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)
    peaks: dict[str, float] = field(default_factory=dict)
    log: Callable[[str], None] = print

    def command(self, scenario: str, text: str) -> None:
        shown = self.commands.setdefault(scenario, [])
        if text not in shown:
            shown.append(text)

    def note(self, scenario: str, text: str) -> None:
        notes = self.notes.setdefault(scenario, [])
        if text not in notes:
            notes.append(text)

    def rundir(self, scenario: str, server: str, run: int) -> Path:
        return self.workdir / f"{scenario}-{server}-{run}"


# --- helpers ---------------------------------------------------------------


def last_line(src: load.SourceRun) -> str:
    lines = src.stderr.splitlines()
    return lines[-1] if lines else f"exit status {src.status}"


def check_count(out: Outcome, server: Server, acked: int | None, kept: int | None) -> None:
    """Compare what the server kept with what the client saw acknowledged."""
    out.metrics["acked"] = acked
    out.metrics["kept"] = kept
    if kept is None:
        out.flag("the server's count could not be read")
        return
    if acked is None:
        return
    if kept < acked:
        verb = "stored" if server.durable else "counted"
        out.flag(f"LOST: {acked - kept} of {acked} acknowledged messages not {verb}")
    elif kept > acked:
        # The probe transaction of the idle scenario is the one expected extra.
        out.flag(f"{kept - acked} more messages kept than acknowledged", fails=False)


def clear_away(path: Path) -> None:
    """Remove a run's directory and flush the file system before the next run starts.

    A server's files are deleted as soon as its run ends; without the ``sync`` the
    kernel writes back, journals and discards them while the next server runs, and
    its fsyncs wait behind them (a p99 several times its own on a quiet disk).
    """
    shutil.rmtree(path, ignore_errors=True)
    os.sync()


def finish(out: Outcome, server: Server, run: Running) -> int | None:
    """Stop the server, note an unclean stop, and return its count."""
    server.stop(run)
    out.server_log = run.log_tail(20)  # dropped again if the run went well
    if run.clean_stop is False:
        out.flag("did not exit within 60 s of the stop signal (killed)", fails=False)
    try:
        return server.count(run)
    except Exception as exc:
        out.error = f"count failed: {exc}"
        return None
    finally:
        server.discard(run)


class RssSampler:
    """Samples the summed RSS of a process tree every few milliseconds."""

    def __init__(self, root_pid: int, interval_s: float = 0.02) -> None:
        self.root_pid = root_pid
        self.interval_s = interval_s
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, _proc.rss_kib(_proc.tree(self.root_pid)))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _mib(kib: float) -> float:
    return round(kib / 1024.0, 1)


# --- scenarios ---------------------------------------------------------------


def throughput(
    ctx: Context,
    out: Outcome,
    server: Server,
    *,
    size: int,
    messages: int,
    rounds: int,
    per_session: bool,
) -> None:
    """smtp-source with 50 sessions; msg/s over all rounds; server CPU per message."""
    s = ctx.settings
    os.sync()  # earlier runs' writeback should not land on this one
    run = server.start(ctx.rundir(out.scenario, server.key, out.run))
    kept = None
    acked: int | None = 0
    try:
        cpu0 = _proc.cpu_s(run.pids())
        helpers0 = {pid: _proc.cpu_s([pid]) for pid in server.helper_pids(run)}
        elapsed = 0.0
        for _ in range(rounds):
            src = load.smtp_source_split(
                run.ports,
                messages=messages,
                size=size,
                per_session=per_session,
                timeout_s=s.source_timeout_s,
            )
            ctx.command(out.scenario, src.template(run.port))
            elapsed += src.elapsed_s
            if not src.ok:
                acked = None
                out.flag(f"smtp-source failed: {last_line(src)}")
                break
            acked = (acked or 0) + messages
        sent = messages * rounds
        out.metrics["settle_s"] = round(server.settle(run, sent, s.settle_timeout_s), 2)
        cpu1 = _proc.cpu_s(run.pids())
        helpers = server.helper_pids(run)
        # Helpers that ended during the load are missed; those started during it count whole.
        helper_cpu = sum(_proc.cpu_s([pid]) - helpers0.get(pid, 0.0) for pid in helpers)
        if acked:
            out.metrics["rate"] = round(acked / elapsed, 1)
            out.metrics["cpu_ms_per_msg"] = round((cpu1 - cpu0) * 1000.0 / acked, 3)
            if helpers:
                out.metrics["helper_cpu_ms_per_msg"] = round(helper_cpu * 1000.0 / acked, 3)
        out.metrics["elapsed_s"] = round(elapsed, 3)
        out.metrics["messages"] = sent
    finally:
        kept = finish(out, server, run)
    check_count(out, server, acked, kept)


def idle(ctx: Context, out: Outcome, server: Server) -> None:
    """Hold many idle sessions; served count and RSS before/after."""
    s = ctx.settings
    run = server.start(
        ctx.rundir(out.scenario, server.key, out.run), connections=s.idle_sessions + 100
    )
    if isinstance(server, Mailgate) and server.scenario_flags(run):
        ctx.note(
            out.scenario,
            "mailgate ran with `"
            + " ".join(server.scenario_flags(run))
            + "` (its defaults are 1,000 sessions, 100 per client address)",
        )
    try:
        time.sleep(0.5)
        pids = run.pids()
        before, pss_before = _proc.rss_kib(pids), _proc.pss_kib(pids)
        client = load.IdleClient(
            run.port,
            s.idle_sessions,
            concurrency=s.idle_concurrency,
            timeout_s=s.idle_timeout_s,
            deadline_s=s.idle_deadline_s,
        )
        ctx.command(out.scenario, client.template())
        try:
            held = client.held()
            time.sleep(1.0)
            pids = run.pids()
            after, pss_after = _proc.rss_kib(pids), _proc.pss_kib(pids)
            probe_ms, probe_error = load.timed_transaction(run.port)
            done = client.release()
        finally:
            client.close()
        served = int(held["served"])
        out.metrics.update(
            wanted=s.idle_sessions,
            served=served,
            open_s=held["open_s"],
            failures=held["failures"],
            alive_after_hold=done.get("alive_after_hold"),
            rss_before_mib=_mib(before),
            rss_after_mib=_mib(after),
            kib_per_session=round((after - before) / served, 1) if served else None,
            pss_before_mib=_mib(pss_before),
            pss_after_mib=_mib(pss_after),
            pss_kib_per_session=round((pss_after - pss_before) / served, 1) if served else None,
            processes=len(pids),
            probe_ms=round(probe_ms, 1) if probe_ms is not None else None,
            probe_error=probe_error,
        )
        if served < s.idle_sessions:
            out.flag(f"served {served} of {s.idle_sessions}", fails=False)
        if probe_ms is None:
            out.flag(f"a transaction alongside failed: {probe_error}", fails=False)
    finally:
        finish(out, server, run)


def big_message(ctx: Context, out: Outcome, server: Server) -> None:
    """One large message; growth of the server's memory while receiving it."""
    s = ctx.settings
    run = server.start(ctx.rundir(out.scenario, server.key, out.run), big=True)
    if isinstance(server, Mailgate) and server.scenario_flags(run):
        ctx.note(
            out.scenario,
            "mailgate ran with `"
            + " ".join(server.scenario_flags(run))
            + "` (its default limit is 25 MiB)",
        )
    acked: int | None = None
    try:
        time.sleep(0.3)
        pids = run.pids()
        base_rss = _proc.rss_kib(pids)
        base_hwm = {pid: _proc.status_kib(pid, "VmHWM") or 0 for pid in pids}
        with RssSampler(run.proc.pid) as sampler:
            src = load.smtp_source(
                run.port,
                messages=1,
                sessions=1,
                size=s.big_bytes,
                per_session=False,
                timeout_s=s.source_timeout_s,
            )
            ctx.command(out.scenario, src.template(run.port))
            out.metrics["settle_s"] = round(server.settle(run, 1, s.settle_timeout_s), 2)
        # VmHWM is each process's own peak: growth of the old ones, all of the new.
        hwm_growth = 0
        for pid in run.pids():
            hwm = _proc.status_kib(pid, "VmHWM") or 0
            hwm_growth += max(0, hwm - base_hwm.get(pid, 0))
        out.metrics.update(
            size_bytes=s.big_bytes,
            elapsed_s=round(src.elapsed_s, 3),
            rss_before_mib=_mib(base_rss),
            hwm_growth_mib=_mib(hwm_growth),
            sampled_peak_growth_mib=_mib(max(0, sampler.peak_kib - base_rss)),
            memory_ratio=round(hwm_growth * 1024 / s.big_bytes, 2),
        )
        if src.ok:
            acked = 1
        else:
            acked = 0
            out.flag(f"refused or failed: {last_line(src)}")
    finally:
        kept = finish(out, server, run)
    check_count(out, server, acked, kept)


def peak_rate(ctx: Context, server: Server) -> float:
    """The server's 1 KiB peak rate: median of scenario 1 here, else measured now."""
    rates = [
        o.metrics["rate"]
        for o in ctx.outcomes
        if o.scenario == "s1" and o.server == server.key and o.ok and "rate" in o.metrics
    ]
    if rates:
        return float(statistics.median(rates))
    if server.key not in ctx.peaks:
        run = server.start(ctx.workdir / f"peak-{server.key}")
        try:
            src = load.smtp_source(run.port, messages=2_000, size=1024, timeout_s=120)
        finally:
            server.stop(run)
            server.discard(run)
            clear_away(run.workdir)
        ctx.peaks[server.key] = 2_000 / src.elapsed_s if src.ok else 200.0
        ctx.note("s6", f"{server.label}: peak measured separately (2,000 messages, 50 sessions)")
    return ctx.peaks[server.key]


def latency(ctx: Context, out: Outcome, server: Server, peak: float | None = None) -> None:
    """p50/p99 from the final dot to 250, at half the server's peak rate (``peak``, or
    :func:`peak_rate`'s)."""
    s = ctx.settings
    peak = peak_rate(ctx, server) if peak is None else peak
    rate = max(10.0, peak / 2.0)
    run = server.start(ctx.rundir(out.scenario, server.key, out.run))
    acked: int | None = None
    try:
        cpu0, began = _proc.cpu_s(run.pids()), time.monotonic()
        shown, report = load.paced_latency(
            run.ports,
            rate=rate,
            duration_s=s.latency_duration_s,
            warmup_s=s.latency_warmup_s,
        )
        cpu1, ended = _proc.cpu_s(run.pids()), time.monotonic()
        out.metrics["server_cpu_pct"] = round(100.0 * (cpu1 - cpu0) / (ended - began), 1)
        ctx.command(out.scenario, shown)
        out.metrics.update(report)
        out.metrics["peak_rate"] = round(peak, 1)
        acked = int(report["acked"])
        out.metrics["settle_s"] = round(server.settle(run, acked, s.settle_timeout_s), 2)
        if report["errors"]:
            out.flag(f"client errors: {report['errors']}")
        if float(report["achieved_rate"]) < 0.9 * rate:
            out.flag(f"achieved {report['achieved_rate']} msg/s of {rate:.0f} offered", fails=False)
    finally:
        kept = finish(out, server, run)
    check_count(out, server, acked, kept)


def http_api(ctx: Context, out: Outcome, server: Server) -> None:
    """Mailgate's HTTP API with many stored messages (skipped when absent)."""
    s = ctx.settings
    assert isinstance(server, Mailgate)
    if not server.supports("--http"):
        out.metrics["not_measured"] = "`mailgate serve --help` lists no --http option"
        return
    http_port = _proc.free_port()
    run = server.start(ctx.rundir(out.scenario, server.key, out.run), http_port=http_port)
    acked = 0
    try:
        base = f"http://127.0.0.1:{http_port}/api/v1"
        status = 0
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not _proc.listening(http_port):
            time.sleep(0.1)
        try:
            status, _size, _ms = load.http_get(f"{base}/messages?limit=1", timeout_s=10)
        except OSError as exc:
            out.metrics["not_measured"] = f"GET /api/v1/messages failed: {exc}"
        if status != 200:
            out.metrics.setdefault("not_measured", f"GET /api/v1/messages answered {status}")
            return
        foo = max(1, s.http_messages // 100)
        for count, subject in ((s.http_messages - foo, "bench"), (foo, "foo")):
            src = load.smtp_source(
                run.port,
                messages=count,
                size=1024,
                subject=subject,
                timeout_s=s.source_timeout_s * 2,
            )
            ctx.command(out.scenario, src.template(run.port))
            if not src.ok:
                out.flag(f"loading failed: {last_line(src)}")
                return
            acked += count
        server.settle(run, acked, s.settle_timeout_s)
        for name, path in (
            ("list", "/messages?limit=50"),
            ("search", "/search?query=subject:foo"),
        ):
            times, sizes, statuses = [], [], set()
            for _ in range(s.http_requests):
                status, size, ms = load.http_get(base + path)
                times.append(ms)
                sizes.append(size)
                statuses.add(status)
            ctx.command(out.scenario, f"GET http://127.0.0.1:HTTP_PORT/api/v1{path}")
            out.metrics[name] = {
                "median_ms": round(statistics.median(times), 2),
                "min_ms": round(min(times), 2),
                "max_ms": round(max(times), 2),
                "bytes": int(statistics.median(sizes)),
                "statuses": sorted(statuses),
            }
            if statuses != {200}:
                out.flag(f"GET {path} answered {sorted(statuses)}")
        out.metrics["stored_messages"] = acked
    finally:
        kept = finish(out, server, run)
    if acked:
        check_count(out, server, acked, kept)


def _wait_for_sink(
    ctx: Context, sink: SmtpSink, sink_run: Running, run: Running, wanted: int
) -> tuple[int, int]:
    """Poll smtp-sink's counter until it has ``wanted`` messages; return (messages, sessions).

    Gives up when the server exits, when no message arrives for ``relay_stall_s``
    (a deferral: the next retry is minutes away) or after ``settle_timeout_s``.
    """
    s = ctx.settings
    start = last_change = time.monotonic()
    seen = (0, 0)
    while True:
        got = sink.received(sink_run)
        now = time.monotonic()
        if got[0] != seen[0]:
            last_change = now
        seen = got
        if got[0] >= wanted or run.proc.poll() is not None:
            return got
        if now - last_change > s.relay_stall_s or now - start > s.settle_timeout_s:
            return got
        time.sleep(0.01)


def _wait_drained(server: Server, run: Running, timeout_s: float) -> bool:
    """Wait until the server's outbound queue is empty: every outcome recorded."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.outbound_pending(run) == 0:
            return True
        time.sleep(0.05)
    return False


def relay(ctx: Context, out: Outcome, server: Server) -> None:
    """N messages to one remote domain, relayed from the server's durable queue to
    smtp-sink: delivered msg/s from the first message sent until the sink has all of
    them, and the server's CPU (all its processes) per delivered message."""
    s = ctx.settings
    wanted = s.relay_messages
    cannot = server.relays() or SmtpSink().unavailable()
    if cannot:
        out.metrics["not_measured"] = cannot
        return
    sink = SmtpSink()
    rundir = ctx.rundir(out.scenario, server.key, out.run)
    os.sync()
    sink_run = sink.start(rundir / "sink")
    acked: int | None = None
    delivered: int | None = None
    try:
        http_port = _proc.free_port() if isinstance(server, Mailgate) else None
        run = server.start(rundir / "server", http_port=http_port, relay_port=sink_run.port)
        try:
            if isinstance(server, Mailgate) and http_port is not None:
                ctx.note(
                    out.scenario,
                    "mailgate ran with `"
                    + " ".join(server.relay_flags(run)).replace(f":{sink_run.port}", ":SINK_PORT")
                    + " --http 127.0.0.1:HTTP_PORT` (the HTTP API tells when its queue is "
                    "empty, and each recipient's state)",
                )
                _proc.wait_listening(http_port, run.proc, 15)
            else:
                ctx.note(
                    out.scenario,
                    f"{server.label} ran with `relayhost = [127.0.0.1]:SINK_PORT`, "
                    "`default_transport = smtp` and an `smtp` service in master.cf, "
                    "otherwise as in the other scenarios",
                )
            cpu0 = _proc.cpu_s(run.pids())
            started = time.perf_counter()
            src = load.smtp_source(
                run.port,
                messages=wanted,
                size=1024,
                sessions=s.relay_sessions,
                recipient=load.RELAY_RECIPIENT,
                timeout_s=s.source_timeout_s,
            )
            ctx.command(out.scenario, src.template(run.port))
            if not src.ok:
                out.flag(f"smtp-source failed: {last_line(src)}")
            else:
                acked = wanted
            got, sessions = _wait_for_sink(ctx, sink, sink_run, run, wanted)
            reached = time.perf_counter()
            drained = _wait_drained(server, run, 30.0)
            cpu1 = _proc.cpu_s(run.pids())
            if not drained:
                out.flag("its outbound queue was not empty 30 s after the last delivery")
            out.metrics.update(
                messages=wanted,
                accept_s=round(src.elapsed_s, 3),
                elapsed_s=round(reached - started, 3),
                drain_after_accept_s=round(max(0.0, reached - started - src.elapsed_s), 3),
                sink_sessions=sessions,
            )
            if got >= wanted and acked:
                out.metrics["rate"] = round(got / (reached - started), 1)
                out.metrics["accept_rate"] = round(wanted / src.elapsed_s, 1)
                out.metrics["cpu_us_per_msg"] = round((cpu1 - cpu0) * 1e6 / got, 1)
            records = server.relay_check(run, wanted)
            out.metrics["server_records"] = records
            recorded = records.get(DELIVERED_TO_SINK, 0)
            if recorded < wanted:
                out.flag(f"the server's own records show {recorded} of {wanted} delivered")
        finally:
            finish(out, server, run)
    finally:
        sink.stop(sink_run)
        try:
            delivered = sink.count(sink_run)
        except OSError:
            delivered = None
    out.metrics["acked"] = acked
    out.metrics["kept"] = delivered
    if delivered is None:
        out.flag("smtp-sink's count could not be read")
    elif acked is not None and delivered < acked:
        out.flag(f"LOST: {acked - delivered} of {acked} acknowledged messages not delivered")
    elif acked is not None and delivered > acked:
        out.flag(f"{delivered - acked} more messages delivered than acknowledged", fails=False)


PACED = "-paced"  # the latency half of s9 runs under the scenario's key with this suffix


def postgresql(ctx: Context, out: Outcome, server: Server) -> None:
    """s1's load, then s6's paced latency at half the rate just measured, each on a
    fresh server (for mailgate on PostgreSQL, a fresh database too): msg/s and CPU a
    message, then p50/p99 from the final dot to 250 (metrics ``latency``)."""
    st = ctx.settings
    throughput(
        ctx, out, server, size=1024, messages=st.msgs_1k, rounds=st.rounds_1k, per_session=True
    )
    if "rate" not in out.metrics:
        return
    paced = Outcome(out.scenario + PACED, out.server, out.run)
    try:
        latency(ctx, paced, server, peak=float(out.metrics["rate"]))
    except Exception as exc:
        paced.ok = False
        paced.error = f"{type(exc).__name__}: {exc}"
    finally:
        clear_away(ctx.rundir(paced.scenario, server.key, out.run))
    out.metrics["latency"] = paced.metrics
    out.flags += [f"paced: {text}" for text in paced.flags]
    if paced.error:
        out.flags.append(f"paced: {paced.error}")
    out.ok = out.ok and paced.ok
    if not out.ok and not out.server_log:
        out.server_log = paced.server_log


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    servers: tuple[str, ...] | None  # None: every server
    body: Callable[[Context, Outcome, Server], None]
    runs: int | None = None  # None: Settings.runs


def scenarios() -> dict[str, Scenario]:
    def s1(ctx: Context, out: Outcome, server: Server) -> None:
        st = ctx.settings
        throughput(
            ctx, out, server, size=1024, messages=st.msgs_1k, rounds=st.rounds_1k, per_session=True
        )

    def s2(ctx: Context, out: Outcome, server: Server) -> None:
        throughput(
            ctx,
            out,
            server,
            size=1024,
            messages=ctx.settings.msgs_per_conn,
            rounds=1,
            per_session=False,
        )

    def s3(ctx: Context, out: Outcome, server: Server) -> None:
        st = ctx.settings
        throughput(
            ctx, out, server, size=st.size_100k, messages=st.msgs_100k, rounds=1, per_session=True
        )

    found = [
        Scenario("s1", "1 KiB messages, 50 sessions, 100 per session", None, s1),
        Scenario("s2", "1 KiB messages, 50 concurrent, one message per connection", None, s2),
        Scenario("s3", "100 KiB messages, 50 sessions, 40 per session", None, s3),
        Scenario("s4", "idle sessions held", None, idle),
        Scenario("s5", "one large message: server memory growth", None, big_message),
        Scenario("s6", "latency from the final dot to 250 at half the peak rate", None, latency),
        Scenario("s7", "HTTP API with many stored messages", ("mailgate",), http_api, runs=1),
        Scenario(
            "s8",
            "relay: 1 KiB messages to one remote domain, through to smtp-sink",
            ("mailgate", "mailgate-1", "postfix"),
            relay,
        ),
        Scenario(
            "s9",
            "PostgreSQL: 1 KiB messages, 50 sessions, 100 per session; latency at half that rate",
            ("mailgate", "aiosmtpd-maildir", "mailgate-postgresql", "mailgate-postgresql-2"),
            postgresql,
        ),
    ]
    return {scenario.key: scenario for scenario in found}


def run_all(ctx: Context, chosen: list[str], server_keys: list[str]) -> None:
    """Run each chosen scenario, its runs interleaved across ``server_keys``."""
    table = scenarios()
    for key in chosen:
        scenario = table[key]
        keys = [
            k
            for k in server_keys
            if (scenario.servers is None or k in scenario.servers)
            and (ctx.servers[k].scenarios is None or key in ctx.servers[k].scenarios)
        ]
        runs = scenario.runs or ctx.settings.runs
        for index in range(runs):
            order = keys[index % len(keys) :] + keys[: index % len(keys)] if keys else []
            for server_key in order:
                server = ctx.servers[server_key]
                out = Outcome(key, server_key, index + 1)
                out.metrics["load1"] = round(os.getloadavg()[0], 2)
                ctx.log(f"[{key} run {index + 1}/{runs}] {server.label} ...")
                started = time.monotonic()
                cpu0, stolen0 = _proc.machine_cpu_s()
                try:
                    scenario.body(ctx, out, server)
                except Exception as exc:
                    out.ok = False
                    out.error = f"{type(exc).__name__}: {exc}"
                    ctx.log(traceback.format_exc())
                finally:
                    clear_away(ctx.rundir(key, server_key, index + 1))
                out.metrics["wall_s"] = round(time.monotonic() - started, 1)
                cpu1, stolen1 = _proc.machine_cpu_s()
                if cpu1 > cpu0:
                    out.metrics["stolen_pct"] = round(
                        100.0 * (stolen1 - stolen0) / (cpu1 - cpu0), 1
                    )
                if out.ok and not out.flags and not out.error and "not_measured" not in out.metrics:
                    out.server_log = ""
                ctx.outcomes.append(out)
                ctx.log(f"    {summary(out)}")


def summary(out: Outcome) -> str:
    m = out.metrics
    parts = []
    for name in (
        "rate",
        "cpu_ms_per_msg",
        "cpu_us_per_msg",
        "served",
        "kib_per_session",
        "hwm_growth_mib",
        "p50_ms",
        "p99_ms",
        "achieved_rate",
        "acked",
        "kept",
        "wall_s",
    ):
        if name in m and m[name] is not None:
            parts.append(f"{name}={m[name]}")
    paced = m.get("latency") or {}
    for name in ("achieved_rate", "p50_ms", "p99_ms", "server_cpu_pct"):
        if paced.get(name) is not None:
            parts.append(f"paced_{name}={paced[name]}")
    if out.flags:
        parts.append("flags=" + "; ".join(out.flags))
    if out.error:
        parts.append("error=" + out.error)
    return " ".join(parts) or "(nothing measured)"


def outcome_dicts(ctx: Context) -> list[dict[str, Any]]:
    return [asdict(o) for o in ctx.outcomes]
