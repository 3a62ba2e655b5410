"""The retry schedule, on an injected clock: attempts at the configured offsets, then a bounce."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta

import pytest

from mailgate.queue._schedule import RetrySchedule

QUEUED = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


class NoJitter(random.Random):
    def random(self) -> float:
        return 0.0


def attempts_until_bounce(schedule: RetrySchedule, rng: random.Random) -> list[datetime]:
    """Every attempt time, each one failing, from the first (at once) to the bounce."""
    times = [QUEUED]
    while True:
        following = schedule.next_attempt(len(times), QUEUED, times[-1], rng)
        if following is None:
            return times
        times.append(following)


def test_the_default_schedule_tries_at_1_5_10_30_minutes_1_2_4_hours_then_every_4() -> None:
    times = attempts_until_bounce(RetrySchedule(), NoJitter())
    gaps = [(b - a) / timedelta(minutes=1) for a, b in itertools.pairwise(times)]
    assert gaps[:7] == [1, 5, 10, 30, 60, 120, 240]
    assert set(gaps[7:-1]) == {240}
    assert times[-1] == QUEUED + timedelta(days=5)  # the last attempt, at the lifetime's end
    assert 0 < gaps[-1] <= 240
    assert len(times) == 1 + 7 + 28 + 1  # at once, 7 growing gaps, 28 of 4 h, the last


def test_jitter_only_lengthens_an_interval_by_up_to_a_tenth() -> None:
    schedule = RetrySchedule()
    for seed in range(200):
        rng = random.Random(seed)
        following = schedule.next_attempt(3, QUEUED, QUEUED, rng)
        assert following is not None
        assert timedelta(minutes=10) <= following - QUEUED <= timedelta(minutes=11)
    seen = {schedule.next_attempt(1, QUEUED, QUEUED, random.Random(s)) for s in range(20)}
    assert len(seen) > 10  # recipients deferred together spread out


def test_a_configured_schedule_and_lifetime() -> None:
    schedule = RetrySchedule(
        intervals=(timedelta(seconds=10), timedelta(seconds=30)),
        lifetime=timedelta(minutes=2),
        jitter=0,
    )
    times = attempts_until_bounce(schedule, random.Random(1))
    offsets = [(t - QUEUED).total_seconds() for t in times]
    assert offsets == [0, 10, 40, 70, 100, 120]
    assert schedule.expired(QUEUED, QUEUED + timedelta(minutes=2))
    assert not schedule.expired(QUEUED, QUEUED + timedelta(seconds=119))


def test_a_delay_notice_is_due_after_four_hours() -> None:
    schedule = RetrySchedule()
    assert not schedule.delay_notice_due(QUEUED, QUEUED + timedelta(hours=3, minutes=59))
    assert schedule.delay_notice_due(QUEUED, QUEUED + timedelta(hours=4))


@pytest.mark.parametrize(
    ("intervals", "jitter"),
    [((), 0.1), ((timedelta(0),), 0.1), ((timedelta(seconds=-1),), 0.1), ((timedelta(1),), 2.0)],
)
def test_a_schedule_that_cannot_work_is_refused(
    intervals: tuple[timedelta, ...], jitter: float
) -> None:
    with pytest.raises(ValueError, match=r"interval|jitter"):
        RetrySchedule(intervals=intervals, jitter=jitter)
