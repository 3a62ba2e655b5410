"""Turn the harness's results (bench/results/*.json) into Markdown and a chart.

Only runs that kept every acknowledged message count towards a median or a
ratio; the others are listed with their flags.
"""

# ruff: noqa: RUF001, RUF002 - the report uses en dashes and multiplication signs
from __future__ import annotations

import statistics
import textwrap
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ORDER = [
    "mailgate",
    "mailgate-1",
    "aiosmtpd-maildir",
    "mailgate-postgresql",
    "mailgate-postgresql-2",
    "postfix",
    "aiosmtpd-discard",
    "smtp-sink",
]
REFERENCES = [
    ("aiosmtpd-maildir", "mailgate / aiosmtpd+Maildir"),
    ("postfix", "mailgate / Postfix"),
    ("smtp-sink", "mailgate / smtp-sink"),
]
THROUGHPUT = ["s1", "s2", "s3"]
RELAY = "s8"
POSTGRESQL = "s9"
RELAY_LABELS = {"postfix": "Postfix → relayhost"}  # its label names the other scenarios' Maildir


def num(value: float | None, unit: str = "", *, integer: bool = False) -> str:
    if value is None:
        return "—"
    if integer or abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return text + unit


def spread(values: list[float], unit: str = "", *, integer: bool = False) -> str:
    """``median (min–max)``, or just the value for a single run."""
    if not values:
        return "—"
    med = statistics.median(values)
    if len(values) == 1 or min(values) == max(values):
        return num(med, unit, integer=integer)
    low, high = num(min(values), integer=integer), num(max(values), integer=integer)
    return f"{num(med, unit, integer=integer)} ({low}–{high})"


class Results:
    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.outcomes: list[dict[str, Any]] = data["outcomes"]
        self.servers: dict[str, dict[str, Any]] = data["servers"]

    def label(self, key: str) -> str:
        return str(self.servers[key]["label"])

    def measured(self, scenario: str) -> list[str]:
        keys = {o["server"] for o in self.outcomes if o["scenario"] == scenario}
        return [k for k in ORDER if k in keys]

    def runs(self, scenario: str, server: str) -> list[dict[str, Any]]:
        return [o for o in self.outcomes if o["scenario"] == scenario and o["server"] == server]

    def good(self, scenario: str, server: str) -> list[dict[str, Any]]:
        return [o for o in self.runs(scenario, server) if o["ok"]]

    def values(self, scenario: str, server: str, metric: str) -> list[float]:
        return [
            float(o["metrics"][metric])
            for o in self.good(scenario, server)
            if o["metrics"].get(metric) is not None
        ]

    def median(self, scenario: str, server: str, metric: str) -> float | None:
        values = self.values(scenario, server, metric)
        return statistics.median(values) if values else None

    def lost(self, scenario: str, server: str) -> bool:
        return any(
            flag.startswith("LOST") for o in self.runs(scenario, server) for flag in o["flags"]
        )

    def flags(self, scenario: str, server: str) -> list[str]:
        found: list[str] = []
        for o in self.runs(scenario, server):
            for text in [*o["flags"], *([o["error"]] if o["error"] else [])]:
                item = f"run {o['run']}: {text}"
                if item not in found:
                    found.append(item)
        return found

    def kept_text(self, scenario: str, server: str) -> str:
        runs = self.runs(scenario, server)
        if not runs:
            return "—"
        if self.lost(scenario, server):
            return "**LOST MAIL** (see flags)"
        kept = [o["metrics"].get("kept") for o in runs]
        acked = [o["metrics"].get("acked") for o in runs]
        if any(k is None for k in kept) or any(a is None for a in acked):
            return "not checked (run failed)"
        verb = "stored" if self.servers[server]["durable"] else "received"
        return f"{sum(kept):,} of {sum(acked):,} {verb}"


def _table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _notes(data: dict[str, Any], scenario: str) -> list[str]:
    notes = data["notes"].get(scenario, [])
    return ["", *[f"- {note}" for note in notes]] if notes else []


def _flag_lines(res: Results, scenario: str) -> list[str]:
    lines = []
    for server in res.measured(scenario):
        for item in res.flags(scenario, server):
            lines.append(f"- {res.label(server)}, {item}")
    return ["", "Flags:", "", *lines] if lines else []


def _ratio(res: Results, scenario: str, ref: str, metric: str = "rate") -> str:
    if not res.runs(scenario, "mailgate") or not res.runs(scenario, ref):
        return "—"
    if res.lost(scenario, "mailgate"):
        return "— (mailgate lost mail)"
    mine, theirs = res.median(scenario, "mailgate", metric), res.median(scenario, ref, metric)
    if mine is None or theirs is None or theirs == 0:
        return "—"
    return f"{mine / theirs:.2f}×"


MAIN_METRIC = {
    "s1": ("rate", " msg/s"),
    "s2": ("rate", " msg/s"),
    "s3": ("rate", " msg/s"),
    "s4": ("served", " served"),
    "s5": ("hwm_growth_mib", " MiB growth"),
    "s6": ("p99_ms", " ms p99"),
    "s8": ("rate", " msg/s delivered"),
    "s9": ("rate", " msg/s"),
}


def _run_rows(res: Results) -> list[list[str]]:
    rows = []
    for o in res.outcomes:
        m = o["metrics"]
        metric, unit = MAIN_METRIC.get(o["scenario"], ("", ""))
        value = m.get(metric)
        result = num(float(value), unit) if isinstance(value, int | float) else "—"
        if o["scenario"] == "s7":
            result = m.get("not_measured") or (
                f"list {num(m['list']['median_ms'])} ms, search {num(m['search']['median_ms'])} ms"
                if "list" in m
                else "—"
            )
        kept = m.get("kept")
        acked = m.get("acked")
        rows.append(
            [
                o["scenario"],
                res.label(o["server"]),
                str(o["run"]),
                f"{m['load1']:.1f}" if "load1" in m else "—",
                result,
                f"{kept:,} / {acked:,}" if kept is not None and acked is not None else "—",
                "; ".join([*o["flags"], *([o["error"]] if o["error"] else [])]).replace("|", "/")
                or "—",
            ]
        )
    return rows


def _relay_section(data: dict[str, Any], res: Results) -> list[str]:
    settings: dict[str, Any] = data["settings"]
    out = [f"## {data['scenarios'][RELAY][:1].upper()}{data['scenarios'][RELAY][1:]}", ""]
    out.append(
        f"{settings['relay_messages']:,} messages of 1 KiB, each to one recipient at one "
        f"remote domain, sent by smtp-source over {settings['relay_sessions']} sessions to a "
        "server that relays them from its durable queue to a fresh smtp-sink (`smtp-sink -c`, "
        "counting). Delivered msg/s is the messages over the time from the start of "
        "smtp-source until the sink's counter shows them all; the server's CPU (all its "
        "processes: for mailgate the serving process, its SMTP workers and its commit service; "
        "for Postfix master, smtpd, cleanup, qmgr, smtp and the rest) runs from before the "
        "load until its queue is empty, every outcome recorded, and is divided by the messages "
        "delivered. mailgate sends through `--relay-host` (one connection per message and "
        "destination, kept for the next message); Postfix through `relayhost = "
        "[127.0.0.1]:SINK_PORT` with its default connection cache and concurrency. Both queue "
        "the message durably before their `250` (mailgate: the queue rows in the message's "
        "SQLite transaction, `synchronous=FULL`; Postfix: its fsynced queue file). After each "
        "run the server's own records are checked: every recipient `delivered` to the sink's "
        "port in mailgate's queue (`GET /api/v1/queue?all=true`), a `status=sent` line to the "
        "sink's port for every message in Postfix's log. Sink sessions are the connections the "
        "server opened to the sink."
    )
    out.append("")
    rows = []
    for key in res.measured(RELAY):
        rows.append(
            [
                RELAY_LABELS.get(key, res.label(key)),
                spread(res.values(RELAY, key, "rate")),
                f"{len(res.good(RELAY, key))}/{len(res.runs(RELAY, key))}",
                spread(res.values(RELAY, key, "cpu_us_per_msg"), integer=True),
                spread(res.values(RELAY, key, "accept_rate")),
                spread(res.values(RELAY, key, "drain_after_accept_s"), " s"),
                spread(res.values(RELAY, key, "sink_sessions"), integer=True),
                res.kept_text(RELAY, key).replace("stored", "delivered"),
            ]
        )
    out.extend(
        _table(
            [
                "server",
                "delivered msg/s",
                "good runs",
                "server CPU µs per delivered msg",
                "accepted msg/s",
                "last delivery after the last 250",
                "sink sessions",
                "delivered / acknowledged",
            ],
            rows,
        )
    )
    out.extend(_notes(data, RELAY))
    out.extend(_flag_lines(res, RELAY))
    out.append("")
    return out


def _postgresql_section(data: dict[str, Any], res: Results) -> list[str]:
    settings: dict[str, Any] = data["settings"]
    title = data["scenarios"][POSTGRESQL]
    out = [f"## {title}", ""]
    out.append(
        "mailgate with the PostgreSQL store (`--store postgresql://…`), as one node and as two "
        "nodes on this machine sharing one database, beside mailgate on SQLite and aiosmtpd + "
        "Maildir, each run on a fresh server (and a fresh database, dropped afterwards). First "
        f"the load of the 1 KiB, 100-per-session scenario ({settings['rounds_1k']} × "
        f"{settings['msgs_1k']:,} messages over 50 sessions; for two nodes, two smtp-source "
        "at once, each with half the sessions and messages, one on each node's port): msg/s and "
        "the server's CPU a message (every process of every node; PostgreSQL's own server "
        "processes are not in it: the CPU of the backends serving the run's database is shown "
        "apart, that of PostgreSQL's shared processes, the WAL writer among them, nowhere). "
        "Then, on another fresh server, the paced client of the "
        "latency scenario at half the rate that run just reached (its 50 sessions shared "
        "between the nodes' ports), for "
        f"{settings['latency_duration_s']:g} s, the first {settings['latency_warmup_s']:g} s "
        "not counted: milliseconds from the final dot to `250`. Every `250` of mailgate on "
        "PostgreSQL follows the COMMIT of the message's transaction, `synchronous_commit = on`."
    )
    out.append("")
    rows = []
    for key in res.measured(POSTGRESQL):

        def paced(metric: str, key: str = key) -> list[float]:
            return [
                float(o["metrics"]["latency"][metric])
                for o in res.good(POSTGRESQL, key)
                if o["metrics"].get("latency", {}).get(metric) is not None
            ]

        rows.append(
            [
                res.label(key),
                spread(res.values(POSTGRESQL, key, "rate")),
                f"{len(res.good(POSTGRESQL, key))}/{len(res.runs(POSTGRESQL, key))}",
                spread(
                    [v * 1000.0 for v in res.values(POSTGRESQL, key, "cpu_ms_per_msg")],
                    integer=True,
                ),
                spread(
                    [v * 1000.0 for v in res.values(POSTGRESQL, key, "helper_cpu_ms_per_msg")],
                    integer=True,
                ),
                spread(paced("offered_rate")),
                spread(paced("achieved_rate")),
                spread(paced("p50_ms")),
                spread(paced("p99_ms")),
                spread(paced("server_cpu_pct"), " %"),
                res.kept_text(POSTGRESQL, key),
            ]
        )
    out.extend(
        _table(
            [
                "server",
                "msg/s",
                "good runs",
                "server CPU µs/msg",
                "PostgreSQL backends' CPU µs/msg",
                "paced: offered msg/s",
                "achieved msg/s",
                "p50 ms",
                "p99 ms",
                "server CPU",
                "kept / acknowledged (throughput)",
            ],
            rows,
        )
    )
    out.extend(_notes(data, POSTGRESQL))
    out.extend(_flag_lines(res, POSTGRESQL))
    out.append("")
    return out


def render(data: dict[str, Any], chart: str | None) -> str:
    res = Results(data)
    facts: dict[str, str] = data["facts"]
    settings: dict[str, Any] = data["settings"]
    titles: dict[str, str] = data["scenarios"]
    out: list[str] = []
    w = out.append

    w("# Benchmarks")
    w("")
    w(
        "<!-- Written by bench/run.py from bench/results/*.json: "
        "change the harness, not this file. -->"
    )
    w("")
    w(
        "mailgate and reference servers under the same load, one after another on one machine, "
        f"over loopback. Throughput figures are medians of {settings['runs']} interleaved runs "
        "with the minimum and maximum in brackets. Every run that sends mail counts what the "
        "server kept afterwards and compares it with what the client saw acknowledged; a run "
        "that lost acknowledged mail is flagged and left out of every median and ratio. "
        "Each run starts in a new directory once the run before it has stopped, its files "
        "have been deleted and the file system has been flushed (`sync`), so that no server "
        "waits on another's writes. "
        "The machine is shared and noisy: read the figures as ratios between servers measured "
        "in the same run."
    )
    w("")
    w(
        f"Measured {facts['date']} with `{data['argv']}`; the whole run took "
        f"{data['duration_s'] / 60:.1f} minutes."
    )
    loads = [o["metrics"]["load1"] for o in res.outcomes if "load1" in o["metrics"]]
    if loads:
        w("")
        w(
            f"The 1-minute load average before each run ranged from {min(loads):.1f} to "
            f"{max(loads):.1f} on {facts['nproc']} CPUs (the harness's own server and client "
            "count towards it; other work on the machine widens the min–max ranges)."
        )
    stolen = [o["metrics"]["stolen_pct"] for o in res.outcomes if "stolen_pct" in o["metrics"]]
    if stolen and max(stolen) > 0:
        w("")
        w(
            f"The hypervisor kept {min(stolen):.1f}% to {max(stolen):.1f}% of the machine's CPU "
            "time from individual runs (steal time, /proc/stat): work of other machines on the "
            "same host. A run that lost more is slower, and its latency tail longer; the "
            "latency table shows it for each server."
        )
    if data.get("quick"):
        w("")
        w("**Quick mode**: one run and small counts, for trying the harness, not for quoting.")
    if data.get("interrupted"):
        w("")
        w("**The run was interrupted**; the tables hold what was measured before that.")
    w("")

    skipped = {k: v["unavailable"] for k, v in res.servers.items() if v.get("unavailable")}
    for key, reason in skipped.items():
        w(f"> **{res.label(key)} was not measured**: {reason}.")
        w("")

    # --- summary --------------------------------------------------------------
    w("## Summary")
    w("")
    summarised = (*THROUGHPUT, RELAY)
    present = [
        k
        for k in ORDER
        if any(o["server"] == k and o["scenario"] in summarised for o in res.outcomes)
    ]
    header = ["load (msg/s)", *[res.label(k) for k in present]]
    rows = []
    for scenario in [*THROUGHPUT, RELAY]:
        if not any(o["scenario"] == scenario for o in res.outcomes):
            continue
        row = [titles[scenario]]
        for key in present:
            cell = spread(res.values(scenario, key, "rate"))
            if res.lost(scenario, key):
                cell += " ⚠ lost mail"
            row.append(cell)
        rows.append(row)
    if rows:
        out.extend(_table(header, rows))
        w("")
    if "mailgate" in present:
        ratio_rows = []
        for scenario in THROUGHPUT:
            if any(o["scenario"] == scenario for o in res.outcomes):
                ratio_rows.append(
                    [titles[scenario], *[_ratio(res, scenario, ref) for ref, _ in REFERENCES]]
                )
        if any(o["scenario"] == RELAY for o in res.outcomes):
            ratio_rows.append(
                [
                    "relay to smtp-sink: delivered msg/s",
                    *[_ratio(res, RELAY, r) for r, _ in REFERENCES],
                ]
            )
            ratio_rows.append(
                [
                    "relay to smtp-sink: server CPU a delivered message (lower is better)",
                    *[_ratio(res, RELAY, ref, "cpu_us_per_msg") for ref, _ in REFERENCES],
                ]
            )
        if any(o["scenario"] == "s6" for o in res.outcomes):
            ratio_rows.append(
                [
                    "p99 latency, each at half its own peak rate (lower is better)",
                    *[_ratio(res, "s6", ref, "p99_ms") for ref, _ in REFERENCES],
                ]
            )
        out.extend(_table(["ratio of medians", *[name for _, name in REFERENCES]], ratio_rows))
        w("")
    else:
        w(
            "Ratios mailgate / aiosmtpd+Maildir, mailgate / Postfix and mailgate / smtp-sink: "
            "**not measured**, mailgate was not part of this run."
        )
        w("")
    if chart:
        w(f"![Throughput and latency by server]({chart})")
        w("")

    # --- throughput -------------------------------------------------------------
    for scenario in THROUGHPUT:
        servers = res.measured(scenario)
        if not servers:
            continue
        w(f"## {titles[scenario]}")
        w("")
        rows = []
        for key in servers:
            rows.append(
                [
                    res.label(key),
                    spread(res.values(scenario, key, "rate")),
                    f"{len(res.good(scenario, key))}/{len(res.runs(scenario, key))}",
                    spread(res.values(scenario, key, "cpu_ms_per_msg")),
                    res.kept_text(scenario, key),
                    spread(res.values(scenario, key, "settle_s"), " s")
                    if key == "postfix"
                    else "—",
                ]
            )
        out.extend(
            _table(
                [
                    "server",
                    "msg/s",
                    "good runs",
                    "server CPU ms/msg",
                    "kept / acknowledged",
                    "queue drain after load",
                ],
                rows,
            )
        )
        out.extend(_flag_lines(res, scenario))
        w("")

    # --- idle ----------------------------------------------------------------------
    if res.measured("s4"):
        w(f"## {settings['idle_sessions']:,} idle sessions held")
        w("")
        w(
            f"Sessions are opened at most {settings['idle_concurrency']} at a time; a session is "
            f"served when its greeting and the reply to EHLO arrive within "
            f"{settings['idle_timeout_s']:.0f} s; opening stops after "
            f"{settings['idle_deadline_s']:.0f} s. RSS is summed over the server's processes, "
            "measured before the client starts and while every session is held; PSS (from "
            "/proc/PID/smaps_rollup) shares the pages that processes share, which is the fair "
            "figure for Postfix's one process per session. While they are "
            'held, one more client sends one message in a new session ("alongside").'
        )
        w("")
        rows = []
        for key in res.measured("s4"):
            runs = res.runs("s4", key)

            def col4(metric: str, runs: list[dict[str, Any]] = runs) -> list[float]:
                return [
                    float(o["metrics"][metric])
                    for o in runs
                    if o["metrics"].get(metric) is not None
                ]

            rows.append(
                [
                    res.label(key),
                    spread(col4("served"), integer=True),
                    spread(col4("open_s"), " s"),
                    f"{spread(col4('rss_before_mib'))} → {spread(col4('rss_after_mib'))}",
                    spread(col4("kib_per_session")),
                    f"{spread(col4('pss_before_mib'))} → {spread(col4('pss_after_mib'))}",
                    spread(col4("pss_kib_per_session")),
                    spread(col4("processes"), integer=True),
                    spread(col4("probe_ms"), " ms"),
                    spread(col4("alive_after_hold"), integer=True),
                ]
            )
        out.extend(
            _table(
                [
                    "server",
                    "served",
                    "time to open",
                    "RSS MiB before → held",
                    "KiB per session (RSS)",
                    "PSS MiB before → held",
                    "KiB per session (PSS)",
                    "processes",
                    "transaction alongside",
                    "alive after hold",
                ],
                rows,
            )
        )
        out.extend(_notes(data, "s4"))
        out.extend(_flag_lines(res, "s4"))
        w("")

    # --- big message --------------------------------------------------------------
    if res.measured("s5"):
        size_mib = settings["big_bytes"] / 1024 / 1024
        w(f"## One {size_mib:.0f} MiB message: server memory growth")
        w("")
        w(
            "VmHWM growth is the rise of each server process's peak RSS (VmHWM in "
            "/proc/PID/status) while the message is received, summed over its processes "
            "(a process started for the message counts whole). The sampled peak is the "
            "highest summed RSS seen every 20 ms, minus the RSS before."
        )
        w("")
        rows = []
        for key in res.measured("s5"):
            runs = res.runs("s5", key)

            def col(metric: str, runs: list[dict[str, Any]] = runs) -> list[float]:
                return [
                    float(o["metrics"][metric])
                    for o in runs
                    if o["metrics"].get(metric) is not None
                ]

            rows.append(
                [
                    res.label(key),
                    spread(col("elapsed_s"), " s"),
                    spread(col("hwm_growth_mib")),
                    spread(col("sampled_peak_growth_mib")),
                    spread(col("memory_ratio"), "×"),
                    res.kept_text("s5", key),
                ]
            )
        out.extend(
            _table(
                [
                    "server",
                    "time to 250",
                    "VmHWM growth (MiB)",
                    "sampled peak growth (MiB)",
                    "growth / message size",
                    "kept / acknowledged",
                ],
                rows,
            )
        )
        out.extend(_notes(data, "s5"))
        out.extend(_flag_lines(res, "s5"))
        w("")

    # --- latency ------------------------------------------------------------------
    if res.measured("s6"):
        w("## Latency from the final dot to 250, at half the peak rate")
        w("")
        w(
            f"A paced asyncio client (`bench/latency_client.py`) starts 1 KiB messages on a fixed "
            f"schedule over 50 sessions for {settings['latency_duration_s']:g} s (the first "
            f"{settings['latency_warmup_s']:g} s not counted), at half the server's median "
            "rate of the 1 KiB, 100-per-session scenario. A run whose client achieved less "
            "than 90% of the offered rate is flagged. "
            "The clock runs from just before `<CRLF>.<CRLF>` is written to the `250`. "
            "Schedule lag is how late a message started because every session was busy. "
            "CPU is the share of one CPU used by the server (all its processes) and by the "
            "client during the paced run: on two CPUs, a busy client slows the server it "
            "measures, so read the fast servers' latencies with the client's share in mind. "
            "CPU stolen is the share of the machine's CPU time the hypervisor gave other "
            "machines during the run."
        )
        w("")
        rows = []
        for key in res.measured("s6"):
            rows.append(
                [
                    res.label(key),
                    spread(res.values("s6", key, "peak_rate")),
                    spread(res.values("s6", key, "offered_rate")),
                    spread(res.values("s6", key, "achieved_rate")),
                    spread(res.values("s6", key, "p50_ms")),
                    spread(res.values("s6", key, "p99_ms")),
                    spread(res.values("s6", key, "max_ms")),
                    spread(res.values("s6", key, "lag_p99_ms")),
                    spread(res.values("s6", key, "server_cpu_pct"), " %"),
                    spread(res.values("s6", key, "client_cpu_pct"), " %"),
                    spread(res.values("s6", key, "stolen_pct"), " %"),
                    res.kept_text("s6", key),
                ]
            )
        out.extend(
            _table(
                [
                    "server",
                    "peak msg/s",
                    "offered msg/s",
                    "achieved msg/s",
                    "p50 ms",
                    "p99 ms",
                    "max ms",
                    "lag p99 ms",
                    "server CPU",
                    "client CPU",
                    "CPU stolen",
                    "kept / acknowledged",
                ],
                rows,
            )
        )
        out.extend(_notes(data, "s6"))
        out.extend(_flag_lines(res, "s6"))
        w("")

    # --- relay -------------------------------------------------------------------
    if res.measured(RELAY):
        out.extend(_relay_section(data, res))

    # --- PostgreSQL --------------------------------------------------------------
    if res.measured(POSTGRESQL):
        out.extend(_postgresql_section(data, res))

    # --- HTTP --------------------------------------------------------------------
    w("## HTTP API with many stored messages")
    w("")
    http_runs = res.runs("s7", "mailgate")
    measured_http = [o for o in http_runs if "list" in o["metrics"]]
    if measured_http:
        o = measured_http[0]
        stored = o["metrics"].get("stored_messages", 0)
        w(
            f"mailgate started with `--http 127.0.0.1:HTTP_PORT`, {stored:,} messages of 1 KiB "
            f"stored first ({max(1, stored // 100):,} with the subject `foo`), then each request "
            f"repeated {settings['http_requests']} times, one at a time."
        )
        w("")
        rows = []
        for name, path in (
            ("list", "GET /api/v1/messages?limit=50"),
            ("search", "GET /api/v1/search?query=subject:foo"),
        ):
            m = o["metrics"][name]
            rows.append(
                [
                    f"`{path}`",
                    f"{num(m['median_ms'])} ({num(m['min_ms'])}–{num(m['max_ms'])})",
                    f"{m['bytes']:,}",
                    str(m["statuses"]),
                ]
            )
        out.extend(_table(["request", "ms median (min–max)", "response octets", "status"], rows))
        out.extend(_flag_lines(res, "s7"))
    else:
        reason = next(
            (
                o["metrics"].get("not_measured")
                for o in http_runs
                if o["metrics"].get("not_measured")
            ),
            None,
        )
        if reason is None and http_runs:
            reason = "; ".join(res.flags("s7", "mailgate")) or "the run failed"
        if reason is None:
            reason = (
                "mailgate was not part of this run"
                if "mailgate" not in res.servers or res.servers["mailgate"].get("unavailable")
                else "this scenario (s7) was not selected"
            )
        w(
            "**Not measured in this run.** The scenario has `mailgate serve --http "
            "127.0.0.1:PORT` store "
            f"{settings['http_messages']:,} messages and times "
            "`GET /api/v1/messages?limit=50` and `GET /api/v1/search?query=subject:foo` "
            f"(medians of {settings['http_requests']} requests). This run: {reason}."
        )
    w("")

    # --- machine and method ----------------------------------------------------
    w("## Machine and software")
    w("")
    fact_rows = [
        ["nproc", facts["nproc"]],
        ["CPU", facts["cpu"]],
        ["memory", facts["memory"]],
        ["kernel", facts["kernel"]],
        ["OS", facts["os"]],
        ["filesystem of the server directories", facts["filesystem"]],
        ["Python", facts["python"]],
        ["Postfix (smtp-source, smtp-sink, Postfix)", facts["postfix"]],
        ["aiosmtpd", facts["aiosmtpd"]],
        ["PostgreSQL (for mailgate on PostgreSQL)", facts.get("postgresql", "—")],
        ["uvloop", facts["uvloop"]],
        ["event loop of the Python servers and clients", facts["event_loop"]],
        ["mailgate", facts.get("mailgate", "not part of this run")],
        ["tree (git describe)", facts["git"]],
        ["open files limit (servers and clients)", facts["nofile"]],
        ["load average (1, 5, 15 min) at start", facts["loadavg"]],
        ["load average at the end", facts.get("loadavg_end", "?")],
    ]
    out.extend(_table(["", ""], fact_rows))
    w("")
    w("## How each server runs")
    w("")
    for key in ORDER:
        if key not in res.servers:
            continue
        info = res.servers[key]
        w(f"- **{info['label']}** — {info['version'] or 'version unknown'}: `{info['command']}`")
    w("")
    w(
        "- Each run starts the server fresh, on a free 127.0.0.1 port, with an empty directory; "
        "it is stopped (SIGTERM; SIGINT for aiosmtpd) and its directory removed after the run."
    )
    w(
        "- aiosmtpd + Maildir (`bench/aiosmtpd_handlers.py`): `handle_DATA` writes the message "
        "to `tmp/`, fsyncs the file, renames it into `new/` and fsyncs the directory, then "
        "returns `250`; the file work runs in the event loop's thread pool so sessions overlap "
        "their fsyncs."
    )
    w(
        "- Postfix: a private instance (own `config_directory`, `queue_directory`, "
        "`data_directory` under the run's directory, chroot off, logging to a file) with "
        "`virtual(8)` delivering every recipient of `bench.test` to one Maildir and nothing "
        "relayed (but in the relay scenario, where `relayhost` is the sink). Its `250` "
        "means the message is fsynced in Postfix's queue; delivery to the "
        'Maildir follows, and the harness waits for it ("queue drain") before counting. CPU '
        "covers all its processes, delivery included. Process limit: "
        f"{data.get('postfix_process_limit') or 'the default (100)'}."
    )
    w("- smtp-sink and aiosmtpd discarding keep nothing; their count is of messages received.")
    w(
        "- Listen backlogs: aiosmtpd uses asyncio's default of 100, smtp-sink is given 100, "
        "Postfix uses its default of 100, mailgate its own."
    )
    w(
        "- Server CPU per message: user + system time of the server's processes (children that "
        "exited included) from before the load until its mail is in place, divided by the "
        "acknowledged messages. The load generator's CPU is not counted, but it shares the "
        "same two CPUs."
    )
    w(
        "- Kept counts: `mailgate messages --data DIR --count` after mailgate exits (with "
        "`--store postgresql://…/DB` for mailgate on PostgreSQL, before its database is "
        "dropped); files in "
        "`Maildir/new` for the Maildir servers; smtp-sink's `-c` counter; the discarding "
        "handler's counter."
    )
    w("")
    w("## Load commands")
    w("")
    for scenario, commands in data["commands"].items():
        w(f"{titles.get(scenario, scenario)}:")
        w("")
        w("```")
        out.extend(commands)
        w("```")
        w("")
    if any(o["scenario"] == "s1" for o in res.outcomes):
        rounds = settings["rounds_1k"]
        w(
            f"The 1 KiB, 100-per-session load is {rounds} round{'s' if rounds > 1 else ''} of the "
            f"command above per run ({rounds * settings['msgs_1k']:,} messages); msg/s is "
            "messages over the summed wall time of the rounds."
        )
        w("")
    w("## Reproduce")
    w("")
    w("```sh")
    w("sh bench/setup.sh                       # Postfix tools, aiosmtpd, uvloop, matplotlib")
    w(".venv/bin/python bench/run.py           # every scenario and server, about 25 minutes")
    w(".venv/bin/python bench/run.py --quick   # one short run, written to bench/results/quick/")
    w(".venv/bin/python bench/run.py --help    # choose scenarios, servers, runs")
    w("```")
    w("")
    w(
        "Each run writes every measurement to `bench/results/latest.json` (not committed); "
        "`bench/run.py --report-only FILE` renders this page from it again."
    )
    w("")
    w("<details><summary>Every run</summary>")
    w("")
    out.extend(
        _table(
            ["scenario", "server", "run", "load", "result", "kept / acked", "flags"], _run_rows(res)
        )
    )
    w("")
    w("</details>")
    w("")
    return "\n".join(out)


def chart(data: dict[str, Any], path: Path) -> str | None:
    """Draw throughput (log scale) and latency bars; return None if matplotlib is missing."""
    try:
        import matplotlib  # noqa: PLC0415 - optional

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return None
    res = Results(data)
    titles = {"s1": "1 KiB, 100/session", "s2": "1 KiB, 1/connection", "s3": "100 KiB, 40/session"}
    scenarios = [s for s in THROUGHPUT if res.measured(s)]
    servers = [k for k in ORDER if any(res.runs(s, k) for s in scenarios)]
    latency_servers = res.measured("s6")
    panels = bool(scenarios) + bool(latency_servers)
    if not panels:
        return None
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.8), squeeze=False)
    axes_iter = iter(axes[0])
    colors = {
        "mailgate": "#d62728",
        "mailgate-1": "#ff9896",
        "aiosmtpd-maildir": "#1f77b4",
        "postfix": "#2ca02c",
        "aiosmtpd-discard": "#9ecae1",
        "smtp-sink": "#7f7f7f",
    }

    width = 0.8 / max(1, len(servers))
    ax = next(axes_iter) if scenarios else None
    if ax is not None:
        for i, key in enumerate(servers):
            xs, meds, lows, highs = [], [], [], []
            marks = []
            for j, scenario in enumerate(scenarios):
                values = res.values(scenario, key, "rate")
                if not values:
                    continue
                med = statistics.median(values)
                marks.append(" ⚠ lost mail" if res.lost(scenario, key) else "")
                xs.append(j + (i - (len(servers) - 1) / 2) * width)
                meds.append(med)
                lows.append(med - min(values))
                highs.append(max(values) - med)
            bars = ax.bar(
                xs,
                meds,
                width,
                yerr=[lows, highs],
                capsize=2,
                label=res.label(key),
                color=colors.get(key),
            )
            for bar, med, mark in zip(bars, meds, marks, strict=True):
                ax.annotate(
                    f"{med:,.0f}{mark}",
                    (bar.get_x() + bar.get_width() / 2, med),
                    ha="center",
                    va="bottom",
                    fontsize=6,
                    rotation=90,
                    xytext=(0, 3),
                    textcoords="offset points",
                )
        ax.set_yscale("log")
        low, high = ax.get_ylim()
        ax.set_ylim(low, high * 3)  # room for the value labels
        ax.set_xticks(range(len(scenarios)), [titles[s] for s in scenarios], fontsize=8)
        ax.set_ylabel("messages per second (log scale)")
        ax.set_title("Throughput, 50 sessions: median, min–max", fontsize=10)
        ax.legend(fontsize=7, loc="upper right")
        ax.grid(axis="y", which="both", alpha=0.3)

    if latency_servers:
        ax = next(axes_iter)
        slots = range(len(latency_servers))
        p50 = [res.median("s6", k, "p50_ms") or 0 for k in latency_servers]
        p99 = [res.median("s6", k, "p99_ms") or 0 for k in latency_servers]
        ax.bar([x - 0.2 for x in slots], p50, 0.4, label="p50", color="#6baed6")
        ax.bar([x + 0.2 for x in slots], p99, 0.4, label="p99", color="#08519c")
        ax.set_xticks(
            list(slots),
            [textwrap.fill(res.label(k), 14) for k in latency_servers],
            fontsize=7,
        )
        ax.set_yscale("log")
        ax.set_ylabel("milliseconds, final dot to 250 (log scale)")
        ax.set_title("Latency at half of each server's peak rate (medians)", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)

    stamp = data["facts"]["date"] + (" — quick mode" if data.get("quick") else "")
    fig.suptitle(
        f"mailgate benchmarks, {data['facts']['nproc']} CPUs, loopback ({stamp})", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name
