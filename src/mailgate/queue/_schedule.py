"""When to try a deferred recipient again, and when to give up.

The schedule is data, kept with each recipient as its next attempt, so it
survives a restart and shows in ``mailgate queue list``; nothing here reads
a clock or sleeps: the caller passes ``now`` (tests pass any time they like).

Defaults follow what the busiest MTAs do rather than RFC 5321 4.5.4.1's
floor of 30 minutes: retry soon at first (most temporary failures are
greylisting and busy servers, over in minutes), then back off to every
four hours, and give up after five days (Postfix's ``maximal_queue_lifetime``).
A little jitter keeps recipients deferred together from coming due in the
same instant again.  Senders who asked for DELAY notices (RFC 3461 4.1) get
one once a recipient has waited ``delay_notice``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

__all__ = [
    "DEFAULT_DELAY_NOTICE",
    "DEFAULT_QUEUE_LIFETIME",
    "DEFAULT_RETRY_INTERVALS",
    "RetrySchedule",
]

DEFAULT_RETRY_INTERVALS = tuple(
    timedelta(minutes=m) for m in (1, 5, 10, 30, 60, 120, 240)
)  # the last repeats until the lifetime ends
DEFAULT_QUEUE_LIFETIME = timedelta(days=5)  # RFC 5321 4.5.4.1: give up after 4-5 days
DEFAULT_DELAY_NOTICE = timedelta(hours=4)
DEFAULT_JITTER = 0.1
"""Each interval is lengthened by up to this fraction of itself, at random."""


@dataclass(frozen=True, slots=True)
class RetrySchedule:
    """The intervals between attempts (the last one repeats), the lifetime and the jitter."""

    intervals: tuple[timedelta, ...] = DEFAULT_RETRY_INTERVALS
    lifetime: timedelta = DEFAULT_QUEUE_LIFETIME
    delay_notice: timedelta = DEFAULT_DELAY_NOTICE
    jitter: float = DEFAULT_JITTER

    def __post_init__(self) -> None:
        if not self.intervals or any(i <= timedelta(0) for i in self.intervals):
            raise ValueError("a retry schedule needs one or more positive intervals")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter is a fraction between 0 and 1")

    def next_attempt(
        self, attempts: int, queued_at: datetime, now: datetime, rng: random.Random
    ) -> datetime | None:
        """When to try again after the ``attempts``-th attempt failed at ``now``; ``None``
        when the recipient has been queued for ``lifetime`` and is to be bounced.

        The last attempt falls at the end of the lifetime, so none is wasted
        by stopping early and none is made late.
        """
        expires = queued_at + self.lifetime
        if now >= expires:
            return None
        interval = self.intervals[min(max(attempts, 1), len(self.intervals)) - 1]
        interval += interval * self.jitter * rng.random()
        return min(now + interval, expires)

    def expired(self, queued_at: datetime, now: datetime) -> bool:
        """Whether a recipient queued at ``queued_at`` has outlived the lifetime."""
        return now >= queued_at + self.lifetime

    def delay_notice_due(self, queued_at: datetime, now: datetime) -> bool:
        """Whether a recipient still pending at ``now`` has waited long enough for a delay
        notice."""
        return now >= queued_at + self.delay_notice
