"""Whether a store's commits go through: what ``/readyz``'s ``commits`` check reports.

A store that cannot commit (a damaged database, a full disk) answers every
new message ``451``, and clients try again for days: without this, nothing
tells an operator.  Each writer (the SQLite store's writer thread, its
commit service, the PostgreSQL store's writer task) records in a
``WriteHealth`` whether each transaction committed.  The check fails from
the first failed commit on, while the latest failure is less than
``RECENT_FAILURE_SECONDS`` old, and for good once ``FAILURES_IN_A_ROW``
failed; either way it passes again with the first commit that succeeds.  So
a failure that one retry cured is reported for a minute at most, and a
store that stays broken stays reported, even when no mail comes.

The commit service writes in a process of its own, while ``/readyz`` is
served by the process that started it: it sends its ``WriteState`` there,
as one line (``to_line``, ``from_line``), whenever the state changes; the
count of failures in a row only up to ``FAILURES_IN_A_ROW``, so a broken
store sends a few lines, not one a commit.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["FAILURES_IN_A_ROW", "RECENT_FAILURE_SECONDS", "WriteHealth", "WriteState"]

FAILURES_IN_A_ROW = 3
"""Commits failed in a row, none succeeding since, after which the check fails until one
succeeds, however long ago the last failure was."""
RECENT_FAILURE_SECONDS = 60.0
"""How long one failed commit, none succeeding since, fails the check."""
_PREFIX = "write-state "


@dataclass(frozen=True, slots=True)
class WriteState:
    """How a writer's commits went: ``failures`` in a row since the last that succeeded
    (counted up to ``FAILURES_IN_A_ROW``), and the one-line error of the latest."""

    failures: int = 0
    error: str = ""

    def to_line(self) -> str:
        """The state as one line of text, for the process that serves ``/readyz``."""
        return _PREFIX + json.dumps({"failures": self.failures, "error": self.error})

    @classmethod
    def from_line(cls, line: str) -> WriteState:
        """The state ``to_line`` wrote; raises ``ValueError`` for anything else."""
        if not line.startswith(_PREFIX):
            raise ValueError(f"not a write state: {line[:80]!r}")
        data = json.loads(line.removeprefix(_PREFIX))
        if not isinstance(data, dict):
            raise ValueError(f"not a write state: {line[:80]!r}")
        failures, error = data.get("failures"), data.get("error")
        if not isinstance(failures, int) or failures < 0 or not isinstance(error, str):
            raise ValueError(f"not a write state: {line[:80]!r}")
        return cls(failures, error.replace("\n", " "))


class WriteHealth:
    """The outcomes of one writer's commits, as the ``commits`` check sees them.

    Thread-safe: a writer thread records, the event loop asks.
    ``on_change`` is called, on the recording thread, with each new state.
    """

    def __init__(
        self,
        on_change: Callable[[WriteState], None] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._on_change = on_change
        self._clock = clock
        self._lock = threading.Lock()
        self._state = WriteState()
        self._failed_at = 0.0

    @property
    def state(self) -> WriteState:
        """The state now."""
        return self._state

    def succeeded(self) -> None:
        """A commit went through."""
        if self._state.failures:  # read without the lock: only the recording thread writes
            self._set(WriteState())

    def failed(self, error: str) -> None:
        """A commit failed; ``error`` says why in one line."""
        state = self._state
        failures = min(state.failures + 1, FAILURES_IN_A_ROW)
        self._set(WriteState(failures, error.replace("\n", " ")), failed=True)

    def adopt(self, state: WriteState) -> None:
        """Take the state another process's writer reported (``WriteState.from_line``)."""
        self._set(state, failed=state.failures > 0)

    def _set(self, state: WriteState, *, failed: bool = False) -> None:
        with self._lock:
            changed = state != self._state
            self._state = state
            if failed:
                self._failed_at = self._clock()
        if changed and self._on_change is not None:
            self._on_change(state)

    def problem(self) -> str | None:
        """Why the ``commits`` check fails now, in one line; ``None`` while it passes."""
        with self._lock:
            state, age = self._state, self._clock() - self._failed_at
        if not state.failures:
            return None
        if state.failures >= FAILURES_IN_A_ROW:
            return f"the last {state.failures} commits failed: {state.error}"
        if age < RECENT_FAILURE_SECONDS:
            return f"a commit failed {age:.0f} s ago and none has succeeded since: {state.error}"
        return None
