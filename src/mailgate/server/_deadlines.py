"""Deadlines: no client keeps a connection slot without making progress.

Slots are few (``--max-connections`` a process).  If any byte counted as
activity, a client sending one now and then (a "slowloris") would keep
its slot for ever at no cost to itself, and enough of them would shut
every real client out.  So only progress counts: a whole command line,
a chunk of a message's content, or a reply the server finished.  A sweep
the server runs about once a second (``Deadlines.sweep``) cuts off, with
``421 4.4.2`` and the open transaction abandoned (nothing partial is
stored), a session

- whose last progress is older than the idle timeout: a command line
  must be whole within it, as with Postfix's ``smtpd_per_record_deadline``;
- whose message content, past its first ``data_rate_grace`` seconds,
  averages fewer than ``min_data_rate`` octets a second;
- older than ``max_session_time``, however busy.

Under pressure, with three quarters of the slots taken, the idle timeout
and the grace drop to ``stress_timeout`` (Postfix's stress mode: 300 s to
10 s), and a newcomer that finds every slot taken is admitted in place of
the session that has gone longest without progress, once that is more
than ``EVICTABLE_AFTER_SECONDS``: slots go to clients that use them.
Failing that, a newcomer from an address holding fewer slots than the
address holding most takes one of that address's, its most stalled: a
crowd from a few addresses cannot keep everyone else out, even in the
moment after it has reconnected.

A session waiting on the server (a commit, a password check, a TLS
handshake, which has a deadline of its own) is not charged for the wait:
its clock starts again when the server answers.

Each cut-off is counted, by reason, in the process's ``SMTPCounters.cut_offs``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field

from mailgate.config import Limits
from mailgate.server._context import ServedSession
from mailgate.server._counters import SMTPCounters

__all__ = ["EVICTABLE_AFTER_SECONDS", "Deadlines"]

STRESS_SHARE = 0.75
"""The share of the slots taken from which the server is under stress."""
EVICTABLE_AFTER_SECONDS = 1.0
"""How long a session must have gone without progress to give its slot to a newcomer."""
SWEEP_SECONDS = 1.0
_COUNTED_AS = {
    "Session too long": "session_too_long",
    "Idle timeout": "idle",
    "Transfer too slow": "slow_transfer",
}


@dataclass(frozen=True, slots=True)
class Deadlines:
    """The time limits of sessions, as ``limits`` sets them; cut-offs counted in ``counters``."""

    limits: Limits
    counters: SMTPCounters = field(default_factory=SMTPCounters)

    @property
    def period(self) -> float:
        """How often to sweep: often enough for the shortest limit to hold within a quarter."""
        limits = self.limits
        shortest = min(limits.idle_timeout, limits.stress_timeout, limits.max_session_time)
        if limits.min_data_rate:
            shortest = min(shortest, max(limits.data_rate_grace, 0.1))
        return min(SWEEP_SECONDS, shortest / 4)

    def under_stress(self, sessions: int) -> bool:
        """Whether ``sessions`` connected take enough of the slots to shorten the limits."""
        return sessions >= math.ceil(self.limits.max_connections * STRESS_SHARE)

    def overdue(self, session: ServedSession, now: float, *, stressed: bool) -> str | None:
        """Why ``session`` is to be cut off at ``now``, or ``None``."""
        if session.waiting:
            return None
        limits = self.limits
        if now - session.admitted_at > limits.max_session_time:
            return "Session too long"
        idle = limits.idle_timeout
        grace = limits.data_rate_grace
        if stressed:
            idle = min(idle, limits.stress_timeout)
            grace = min(grace, limits.stress_timeout)
        if now - session.progress_at > idle:
            return "Idle timeout"
        content = session.content_progress
        if content is not None and limits.min_data_rate:
            started, octets = content
            elapsed = now - started
            if elapsed > grace and octets < limits.min_data_rate * elapsed:
                return "Transfer too slow"
        return None

    def sweep(self, sessions: Collection[ServedSession], now: float) -> int:
        """Cut off every session overdue at ``now``; how many were."""
        stressed = self.under_stress(len(sessions))
        overdue = [
            (session, reason)
            for session in sessions
            if (reason := self.overdue(session, now, stressed=stressed)) is not None
        ]
        cut_offs = self.counters.cut_offs
        for session, reason in overdue:
            cut_offs[_COUNTED_AS[reason]] += 1
            session.time_out(reason)
        return len(overdue)

    def give_way(
        self,
        sessions: Collection[ServedSession],
        per_address: Counter[str],
        newcomer: str,
        now: float,
    ) -> ServedSession | None:
        """The session that gives its slot to a newcomer from ``newcomer`` (see above)."""
        crowd, held = per_address.most_common(1)[0] if per_address else ("", 0)
        if held <= per_address[newcomer] + 1:
            crowd = ""  # the newcomer's address is as crowded: no fair share to claim
        stalled = in_crowd = None
        oldest = now - EVICTABLE_AFTER_SECONDS
        oldest_in_crowd = now
        for session in sessions:
            if session.waiting:
                continue
            progress_at = session.progress_at
            if progress_at < oldest:
                stalled, oldest = session, progress_at
            if progress_at < oldest_in_crowd and session.peer[0] == crowd:
                in_crowd, oldest_in_crowd = session, progress_at
        return stalled if stalled is not None else in_crowd
