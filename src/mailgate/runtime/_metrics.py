"""What a node counts, for ``/metrics``: ``NodeMetrics``, and how SMTP workers report theirs.

Each SMTP process counts in its own memory: the server's ``SMTPCounters``
(connections, refusals, TLS, AUTH, cut-offs) and the sink's counts and
``commit_times`` (messages stored, the commit histogram).  They are plain
integers, shared with nobody and written nowhere on a message's way: the
hot path pays an increment.  The serving process, which serves ``/metrics``,
reads its own counts when scraped.

SMTP workers (``--workers``) report theirs to it over the channel they
already have: a child's stdout, each line of which after ``ready`` is a
report for its parent (``_supervisor``).  Once a second, if anything
changed, a worker writes its counts as one line (``ProcessCounts``); the
serving process keeps each worker's latest (``WorkerCounts``) and adds
them up when scraped, so a scrape sees a worker as it was at most a second
before.  That channel rather than files: it is there already, the
supervisor reading it knows which process lives and which has died (no
files of dead processes to judge by a process id that may be reused, no
writes to the disk), and it costs a busy worker one write of about 2 KB a
second and an idle one nothing.

Counters never go back while the serving process lives.  A worker's counts
only grow, and a report is taken only from the process now running under
its number; when a worker dies its last reported counters are kept
(``retired``) and its successor counts from zero on top of them.  What the
dead one counted after its last report (under a second's worth) is lost,
and its gauges (its open sessions) go with it.  Dropping its counters
instead would make a sum fall, which ``rate`` and ``increase`` read as a
reset of every counter of the node: worse than a second's worth missing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

from mailgate.delivery import COMMIT_SECONDS_BUCKETS, Acceptor
from mailgate.model import DeliveryState
from mailgate.ports import (
    MessageStore,
    MetricFamily,
    MetricKind,
    MetricSample,
    QueueStore,
    StoreError,
)
from mailgate.queue import QueueRunner
from mailgate.runtime._process import answer_parent
from mailgate.server import SMTPServer

__all__ = [
    "FAMILIES",
    "REPORT_SECONDS",
    "NodeMetrics",
    "ProcessCounts",
    "WorkerCounts",
    "report_counts",
]

log = logging.getLogger("mailgate")

REPORT_SECONDS = 1.0
"""How often a worker reports its counts, when they changed."""
_PREFIX = "counts "

FAMILIES: dict[str, tuple[MetricKind, str]] = {
    "mailgate_smtp_connections_admitted": ("counter", "SMTP connections admitted (greeted)."),
    "mailgate_smtp_connections_refused": (
        "counter",
        "SMTP connections refused with 421 before the greeting, by reason: too_many"
        " (--max-connections), per_address (--max-connections-per-ip), shutting_down.",
    ),
    "mailgate_smtp_sessions": ("gauge", "SMTP sessions open now."),
    "mailgate_smtp_processes": (
        "gauge",
        "SMTP processes counted in these sums: the serving process and each worker that"
        " has reported.",
    ),
    "mailgate_smtp_messages_accepted": (
        "counter",
        "Messages received over SMTP and stored (answered 250).",
    ),
    "mailgate_smtp_accepted_bytes": (
        "counter",
        "Octets of the messages received over SMTP and stored, trace header included.",
    ),
    "mailgate_smtp_refusals": (
        "counter",
        "Commands and messages refused, by reason: relay_denied, unknown_user, auth_required,"
        " too_big, bad_content, loop, no_room, store_failure, other (a refused RCPT counts"
        " once).",
    ),
    "mailgate_smtp_tls_handshakes": (
        "counter",
        "TLS handshakes (STARTTLS and implicit TLS) by result: ok, failed (an error, a"
        " timeout, or the connection's end).",
    ),
    "mailgate_smtp_tls_sessions": (
        "counter",
        "Sessions whose TLS handshake succeeded, by protocol version.",
    ),
    "mailgate_smtp_auth_attempts": (
        "counter",
        "AUTH exchanges by result: ok, failed (wrong credentials), blocked (the address"
        " failed too often), throttled (too soon after a failure), unavailable (not"
        " checked: the authenticator failed or was busy).",
    ),
    "mailgate_smtp_cutoffs": (
        "counter",
        "Sessions cut off with 421 4.4.2, by reason: idle (--idle-timeout), slow_transfer"
        " (--min-data-rate), session_too_long (--max-session-time), evicted (stalled while"
        " every slot was taken).",
    ),
    "mailgate_store_commit_seconds": (
        "histogram",
        "Seconds from the end of a message's data to the store's answer, for messages"
        " received over SMTP and stored.",
    ),
    "mailgate_store_commit_errors": (
        "counter",
        "Commits of messages received over SMTP that the store refused, by reason: no_room, error.",
    ),
    "mailgate_queue_recipients": (
        "gauge",
        "Recipients in the outbound queue now, by state: queued, deferred, held.",
    ),
    "mailgate_queue_delivery_attempts": (
        "counter",
        "Outbound recipients a delivery was attempted for (each attempt counts).",
    ),
    "mailgate_queue_deliveries": (
        "counter",
        "Outcomes of outbound recipients, by outcome: delivered, deferred, bounced (tried or"
        " not: an operator's bounce, a suspended destination).",
    ),
}
"""Every metric of a node: its name, kind and help text."""
_GAUGES = frozenset(name for name, (kind, _) in FAMILIES.items() if kind == "gauge")
_SUFFIXES = ("_total", "_bucket", "_sum", "_count")
_QUEUE_STATES = (DeliveryState.QUEUED, DeliveryState.DEFERRED, DeliveryState.HELD)

Labels = tuple[tuple[str, str], ...]
SampleKey = tuple[str, Labels]
"""A sample's name (``mailgate_smtp_refusals_total``) and labels."""
Counts = dict[SampleKey, float]


def family_of(sample: str) -> str:
    """The family a sample belongs to: its name without ``_total``, ``_bucket``..."""
    for suffix in _SUFFIXES:
        if sample.endswith(suffix) and sample[: -len(suffix)] in FAMILIES:
            return sample[: -len(suffix)]
    return sample


def _le(bound: float) -> str:
    """A bucket's bound as Prometheus writes it: ``0.005``, ``1.0``, ``+Inf``."""
    return "+Inf" if math.isinf(bound) else repr(bound)


def _put(counts: Counts, name: str, label: str, values: Mapping[str, int]) -> None:
    for value, count in values.items():
        counts[(name, ((label, value),))] = count


def _add(total: Counts, more: Mapping[SampleKey, float]) -> None:
    for key, value in more.items():
        total[key] = total.get(key, 0) + value


def smtp_process_counts(server: SMTPServer, sink: Acceptor) -> Counts:
    """What one SMTP process has counted since it started, as samples."""
    counters = server.counters
    counts: Counts = {
        ("mailgate_smtp_connections_admitted_total", ()): counters.admitted,
        ("mailgate_smtp_sessions", ()): server.session_count,
    }
    _put(counts, "mailgate_smtp_connections_refused_total", "reason", counters.connections_refused)
    received = sink.counts
    counts[("mailgate_smtp_messages_accepted_total", ())] = received.accepted
    counts[("mailgate_smtp_accepted_bytes_total", ())] = received.accepted_octets
    _put(counts, "mailgate_smtp_refusals_total", "reason", counters.refusals)
    _put(counts, "mailgate_smtp_tls_handshakes_total", "result", counters.tls_handshakes)
    _put(counts, "mailgate_smtp_tls_sessions_total", "version", counters.tls_versions)
    _put(counts, "mailgate_smtp_auth_attempts_total", "result", counters.auth)
    _put(counts, "mailgate_smtp_cutoffs_total", "reason", counters.cut_offs)
    times = sink.commit_times
    stored = 0
    for bound, count in zip((*COMMIT_SECONDS_BUCKETS, math.inf), times.counts, strict=True):
        stored += count  # Prometheus's buckets are cumulative
        counts[("mailgate_store_commit_seconds_bucket", (("le", _le(bound)),))] = stored
    counts[("mailgate_store_commit_seconds_count", ())] = stored
    counts[("mailgate_store_commit_seconds_sum", ())] = times.seconds
    errors = {"no_room": times.no_room, "error": times.failed - times.no_room}
    _put(counts, "mailgate_store_commit_errors_total", "reason", errors)
    return counts


@dataclass(frozen=True)
class ProcessCounts:
    """One SMTP worker's counts, as it reports them to the serving process: a line."""

    pid: int
    counts: Mapping[SampleKey, float]

    def to_line(self) -> str:
        """The counts as one line of text (JSON after a prefix)."""
        samples = [[name, dict(labels), value] for (name, labels), value in self.counts.items()]
        return _PREFIX + json.dumps({"pid": self.pid, "samples": samples}, separators=(",", ":"))

    @classmethod
    def from_line(cls, line: str) -> ProcessCounts:
        """The counts ``to_line`` wrote; raises ``ValueError`` for anything else."""
        if not line.startswith(_PREFIX):
            raise ValueError(f"not a report of counts: {line[:80]!r}")
        data = json.loads(line.removeprefix(_PREFIX))
        pid = data.get("pid") if isinstance(data, dict) else None
        samples = data.get("samples") if isinstance(data, dict) else None
        if not isinstance(pid, int) or not isinstance(samples, list):
            raise ValueError(f"not a report of counts: {line[:80]!r}")
        counts: Counts = {}
        for sample in samples:
            if not _is_sample(sample):
                raise ValueError(f"not a sample: {str(sample)[:80]!r}")
            name, labels, value = sample
            counts[(name, tuple(sorted(labels.items())))] = value
        return cls(pid, counts)


def _is_sample(sample: object) -> bool:
    """Whether ``sample`` is ``[name, {label: value...}, number]``, as ``to_line`` writes."""
    if not isinstance(sample, list) or len(sample) != 3:
        return False
    name, labels, value = sample
    return (
        isinstance(name, str)
        and isinstance(labels, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items())
        and isinstance(value, int | float)
        and not isinstance(value, bool)
    )


class WorkerCounts:
    """The counts of a node's SMTP workers: the latest each reported, and those of the
    workers that died (``retired``); see the module's docstring."""

    def __init__(self) -> None:
        self._pids: dict[int, int] = {}
        self._latest: dict[int, Mapping[SampleKey, float]] = {}
        self.retired: Counts = {}

    def started(self, number: int, pid: int) -> None:
        """Worker ``number`` runs now as process ``pid``, which has counted nothing yet."""
        self._pids[number] = pid

    def exited(self, number: int) -> None:
        """Worker ``number`` died: keep its last counters, forget its gauges."""
        self._pids.pop(number, None)
        last = self._latest.pop(number, {})
        _add(self.retired, {key: v for key, v in last.items() if key[0] not in _GAUGES})

    def reported(self, number: int, line: str) -> bool:
        """Take ``line`` from worker ``number`` if it reports counts; say whether it did.

        A report from a process that is no longer the one running as ``number``
        (a line read late) is ignored.
        """
        try:
            report = ProcessCounts.from_line(line)
        except ValueError:
            return False
        if self._pids.get(number) == report.pid:
            self._latest[number] = report.counts
        return True

    @property
    def reporting(self) -> int:
        """Workers running now that have reported their counts."""
        return len(self._latest)

    def total(self) -> Counts:
        """Every worker's counts added up, the dead ones' included."""
        total = dict(self.retired)
        for counts in self._latest.values():
            _add(total, counts)
        return total


async def report_counts(metrics: NodeMetrics, every: float = REPORT_SECONDS) -> None:
    """Be a worker: write this process's counts for the parent every ``every`` seconds in
    which they changed (``answer_parent``), until cancelled or the parent is gone."""
    pid = os.getpid()
    last = ""
    while True:
        line = ProcessCounts(pid, metrics.local()).to_line()
        if line != last:
            try:
                answer_parent(line)
            except OSError:  # the parent is gone: the worker stops on its stdin's end
                return
            last = line
        await asyncio.sleep(every)


class NodeMetrics:
    """A ``ports.MetricsSource``: this process's counts, its workers' (``workers``), the
    queue runner's (``runner``) and the queue's size, read from the store when asked."""

    def __init__(self, server: SMTPServer, sink: Acceptor, store: MessageStore) -> None:
        self._server = server
        self._sink = sink
        self._store = store
        self.workers: WorkerCounts | None = None
        self.runner: QueueRunner | None = None

    def local(self) -> Counts:
        """What this process's SMTP service and sink have counted."""
        return smtp_process_counts(self._server, self._sink)

    async def metrics(self) -> list[MetricFamily]:
        """Every family of ``FAMILIES`` that this node has, with its samples now."""
        counts = self.local()
        processes = 1
        if self.workers is not None:
            _add(counts, self.workers.total())
            processes += self.workers.reporting
        counts[("mailgate_smtp_processes", ())] = processes
        runner = self.runner
        if runner is not None:
            counts[("mailgate_queue_delivery_attempts_total", ())] = runner.attempts
            outcomes = {state.value: count for state, count in runner.outcomes.items()}
            _put(counts, "mailgate_queue_deliveries_total", "outcome", outcomes)
        if isinstance(self._store, QueueStore):
            await self._queue_sizes(self._store, counts)
        return _families(counts)

    @staticmethod
    async def _queue_sizes(store: QueueStore, counts: Counts) -> None:
        try:
            rows = await store.queued()
        except StoreError as error:  # shown without the queue; /readyz says what is wrong
            log.warning("/metrics: cannot read the queue: %s", error)
            return
        sizes = dict.fromkeys(_QUEUE_STATES, 0)
        for row in rows:
            if row.state in sizes:
                sizes[row.state] += 1
        _put(counts, "mailgate_queue_recipients", "state", {s.value: n for s, n in sizes.items()})


def _families(counts: Counts) -> list[MetricFamily]:
    """``counts`` as families, in the order of ``FAMILIES``; those without samples left out."""
    samples: dict[str, list[MetricSample]] = {name: [] for name in FAMILIES}
    for (name, labels), value in counts.items():
        family = samples.get(family_of(name))
        if family is not None:  # a name this version does not know: none yet
            family.append(MetricSample(name, labels, value))
    return [
        MetricFamily(name, FAMILIES[name][0], FAMILIES[name][1], tuple(found))
        for name, found in samples.items()
        if found
    ]
