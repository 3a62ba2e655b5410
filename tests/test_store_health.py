"""``/readyz``'s ``commits`` check as a writer records it (``mailgate.stores.WriteHealth``).

Time is a counter the test moves, so no test sleeps.
"""

from __future__ import annotations

import pytest

from mailgate.stores import WriteHealth, WriteState
from mailgate.stores._health import FAILURES_IN_A_ROW, RECENT_FAILURE_SECONDS


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_one_failure_fails_the_check_for_a_minute_or_until_a_commit_succeeds() -> None:
    clock = Clock()
    health = WriteHealth(clock=clock)
    assert health.problem() is None
    health.failed("database disk image is malformed")
    assert health.problem() == (
        "a commit failed 0 s ago and none has succeeded since: database disk image is malformed"
    )
    clock.now += RECENT_FAILURE_SECONDS - 1
    assert health.problem() is not None
    clock.now += 1
    assert health.problem() is None  # one failure, long ago: a passing fault
    health.failed("database is locked")
    assert health.problem() is not None
    health.succeeded()
    assert health.problem() is None


def test_failures_in_a_row_fail_the_check_until_a_commit_succeeds() -> None:
    clock = Clock()
    health = WriteHealth(clock=clock)
    for _ in range(FAILURES_IN_A_ROW + 2):
        health.failed("database or disk is full")
    clock.now += 24 * 3600  # no mail for a day: still broken, still said
    assert health.problem() == (
        f"the last {FAILURES_IN_A_ROW} commits failed: database or disk is full"
    )
    health.succeeded()
    assert health.problem() is None


def test_a_state_is_reported_when_it_changes_and_a_broken_store_reports_a_few_times() -> None:
    reported: list[WriteState] = []
    health = WriteHealth(reported.append)
    health.succeeded()
    assert reported == []
    for _ in range(100):
        health.failed("database disk image is malformed")
    assert reported == [
        WriteState(n, "database disk image is malformed") for n in range(1, FAILURES_IN_A_ROW + 1)
    ]
    health.failed("database or disk\nis full")
    health.succeeded()
    health.succeeded()
    assert reported[-2:] == [
        WriteState(FAILURES_IN_A_ROW, "database or disk is full"),
        WriteState(),
    ]


def test_another_process_reports_its_state_in_one_line() -> None:
    clock = Clock()
    state = WriteState(2, "no such table: main.changes")
    line = state.to_line()
    assert "\n" not in line
    assert WriteState.from_line(line) == state
    mirror = WriteHealth(clock=clock)
    mirror.adopt(WriteState.from_line(line))
    assert mirror.problem() == (
        "a commit failed 0 s ago and none has succeeded since: no such table: main.changes"
    )
    mirror.adopt(WriteState.from_line(WriteState().to_line()))
    assert mirror.problem() is None


@pytest.mark.parametrize(
    "line",
    [
        "ready",
        "write-state",
        "write-state []",
        'write-state {"failures": -1, "error": ""}',
        'write-state {"failures": "1", "error": ""}',
        'write-state {"failures": 1}',
    ],
)
def test_anything_else_is_no_state(line: str) -> None:
    with pytest.raises(ValueError):
        WriteState.from_line(line)
