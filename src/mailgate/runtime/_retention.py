"""The retention service of a node: it prunes the store down to ``--max-messages`` and
``--max-age``, so that a catcher left running does not fill the disk.

One owner a store, as with the queue: the serving process runs it, never an
SMTP worker or the commit service.  Nodes sharing a PostgreSQL store each run
one; the store lets one prune at a time (an advisory lock taken without
waiting), and a prune is idempotent in any case: a round deletes what is over
the limits now, each message once however many ask (``ports.PrunableStore``).

When: a round every ``CHECK_INTERVAL_SECONDS``, and ``CATCH_UP_DELAY_SECONDS``
after new mail is stored (the store's ``STORED`` events, from every process
and node), so a burst past ``--max-messages`` goes within a second; the mail
that arrives meanwhile joins the same round.  A round that finds nothing over
the limits is one read.

How much: batches of ``PRUNE_BATCH`` messages, each its own short transaction,
``BATCH_PAUSE_SECONDS`` apart, so that new mail commits and the inbox reads
between them: a store far over the limits (a limit just lowered) gets down to
them in steps rather than in one long transaction that everything waits for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

from mailgate.config import Settings
from mailgate.model import StoreEvent, StoreEventKind
from mailgate.ports import Clock, MessageStore, PrunableStore, StoreError

__all__ = [
    "BATCH_PAUSE_SECONDS",
    "CATCH_UP_DELAY_SECONDS",
    "CHECK_INTERVAL_SECONDS",
    "PRUNE_BATCH",
    "RetentionService",
    "describe_duration",
    "retention_for",
]

log = logging.getLogger("mailgate")

CHECK_INTERVAL_SECONDS = 5.0
"""How often a round runs when no new mail prompts one: for ``--max-age``, and for mail
whose event was missed."""
CATCH_UP_DELAY_SECONDS = 0.5
"""How long after new mail is stored a round runs: the mail of a burst shares it."""
PRUNE_BATCH = 200
"""Messages one transaction prunes at most, which a commit of new mail may wait for: 200 of
them, with their bodies, search entries and tags, took about 10 ms in SQLite and 16 ms in
PostgreSQL (a store of 10,000 messages, a tenth of them in body files; 2 CPUs)."""
BATCH_PAUSE_SECONDS = 0.05
"""The pause between batches of one round, in which new mail commits and the inbox reads."""

_UNITS = (("d", 86400), ("h", 3600), ("m", 60))


def describe_duration(seconds: float) -> str:
    """``7d``, ``12h``, ``90m``, ``2s``, ``1.5s``: the largest unit that fits whole."""
    for unit, size in _UNITS:
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def retention_for(settings: Settings, store: MessageStore, clock: Clock) -> RetentionService | None:
    """The retention service the settings ask of ``store``, or ``None`` when they set no
    limit (``Settings.messages_kept``, ``Retention.max_age``).

    A store that cannot prune is told of in the log, and kept whole.
    """
    keep_newest, max_age = settings.messages_kept, settings.retention.max_age
    if not keep_newest and not max_age:
        return None
    if not isinstance(store, PrunableStore):
        log.warning("retention: %s cannot prune: every message is kept", type(store).__name__)
        return None
    return RetentionService(store, clock, keep_newest=keep_newest, max_age=max_age)


class RetentionService:
    """Prunes ``store`` to the newest ``keep_newest`` messages (0: no such limit) and to
    those received in the last ``max_age`` seconds (0: no such limit), until ``aclose``.

    ``pruned`` counts the messages it deleted since it started (``/api/v1/info``).
    """

    def __init__(
        self, store: PrunableStore, clock: Clock, *, keep_newest: int, max_age: float
    ) -> None:
        self._store = store
        self._clock = clock
        self.keep_newest = keep_newest
        self.max_age = max_age
        self.pruned = 0
        self._wake = asyncio.Event()
        self._prompt: asyncio.TimerHandle | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def describe(self) -> str:
        """What is kept, for the log: ``the newest 5000 messages, none older than 7d``."""
        kept = [f"the newest {self.keep_newest} messages"] if self.keep_newest else []
        if self.max_age:
            age = describe_duration(self.max_age)
            kept.append(f"none older than {age}" if kept else f"messages of the last {age}")
        return ", ".join(kept)

    async def start(self) -> None:
        """Run a first round soon, then rounds as new mail and time call for them.

        Raises ``StoreError`` when the store cannot be subscribed to.
        """
        if self.keep_newest:  # only a count limit can be passed by new mail
            events = self._store.subscribe()
            self._tasks.append(asyncio.create_task(self._watch(events)))
        self._tasks.append(asyncio.create_task(self._run()))
        self._wake.set()
        log.info("retention: keeping %s; older ones are deleted", self.describe())

    async def aclose(self) -> None:
        """Stop; a batch being committed commits all the same."""
        if self._prompt is not None:
            self._prompt.cancel()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _watch(self, events: AsyncIterator[StoreEvent]) -> None:
        """Prompt a round shortly after new mail (or after events were lost)."""
        try:
            async for event in events:
                if event.kind in (StoreEventKind.STORED, StoreEventKind.OVERFLOW):
                    self._prompt_soon()
        except StoreError as error:
            log.warning("retention: no longer told of new mail (%s); pruning on a timer", error)

    def _prompt_soon(self) -> None:
        if self._prompt is None:
            loop = asyncio.get_running_loop()
            self._prompt = loop.call_later(CATCH_UP_DELAY_SECONDS, self._prompted)

    def _prompted(self) -> None:
        self._prompt = None
        self._wake.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CHECK_INTERVAL_SECONDS):
                    await self._wake.wait()
            self._wake.clear()
            await self.prune_round()

    def _older_than(self) -> datetime | None:
        if not self.max_age:
            return None
        return self._clock.now() - timedelta(seconds=self.max_age)

    async def prune_round(self) -> int:
        """Prune batch after batch until nothing is over the limits; return how many went.

        A store that fails is logged, and the next round tries again.
        """
        total = 0
        while True:
            try:
                count = await self._store.prune(
                    keep_newest=self.keep_newest or None,
                    older_than=self._older_than(),
                    limit=PRUNE_BATCH,
                )
            except StoreError as error:
                log.warning("retention: could not prune the store: %s", error)
                return total
            if not count:
                return total
            total += count
            self.pruned += count
            log.info(
                "retention: pruned %d message%s, keeping %s (%d pruned since start)",
                count,
                "" if count == 1 else "s",
                self.describe(),
                self.pruned,
            )
            if count < PRUNE_BATCH:
                return total
            await asyncio.sleep(BATCH_PAUSE_SECONDS)
