"""Password checks on threads of their own, a bounded number at once.

A scrypt check takes a CPU and 32 MiB for about a tenth of a second.  Run
on the event loop's default executor, as the stores' reads are, a crowd of
guesses would queue ahead of every read of the inbox; unbounded, it would
take every CPU and as much memory as it liked.  So checks run on
``threads`` threads of their own, with at most ``waiting`` more queued
behind them; one beyond that is refused at once with
``AuthenticatorBusyError`` (a temporary failure: ``454 4.7.0`` over SMTP)
rather than made to wait.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from mailgate.ports import AuthenticatorBusyError

__all__ = ["DEFAULT_CHECKS_WAITING", "DEFAULT_CHECK_THREADS", "SHARED_CHECKS", "PasswordChecks"]

DEFAULT_CHECK_THREADS = 2
DEFAULT_CHECKS_WAITING = 8


class PasswordChecks:
    """Runs password checks on ``threads`` threads of their own, ``waiting`` more queued."""

    def __init__(
        self, *, threads: int = DEFAULT_CHECK_THREADS, waiting: int = DEFAULT_CHECKS_WAITING
    ) -> None:
        self.threads = threads
        self.capacity = threads + waiting
        self._lock = threading.Lock()
        self._in_hand = 0
        self._executor: ThreadPoolExecutor | None = None

    @property
    def in_hand(self) -> int:
        """Checks running or queued."""
        return self._in_hand

    def _release(self, _: Future[bool]) -> None:
        with self._lock:
            self._in_hand -= 1

    async def run(self, check: Callable[[str, str], bool], username: str, password: str) -> bool:
        """``check(username, password)`` on a checking thread.

        Raises ``AuthenticatorBusyError`` when ``threads + waiting`` checks are in hand.
        """
        with self._lock:
            if self._in_hand >= self.capacity:
                raise AuthenticatorBusyError("too many password checks at once")
            self._in_hand += 1
            if self._executor is None:  # made on first use: most processes never check one
                self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="auth-check")
            executor = self._executor
        try:
            future = executor.submit(check, username, password)
        except BaseException:
            with self._lock:
                self._in_hand -= 1
            raise
        # Released when the thread is done, even if the caller stopped waiting.
        future.add_done_callback(self._release)
        return await asyncio.wrap_future(future)


SHARED_CHECKS = PasswordChecks()
"""The checks of every ``UsersFile`` of the process that is given none of its own."""
