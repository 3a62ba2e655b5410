"""Password guessing limited per client address, across connections and services.

One ``Throttle`` serves every service of a process (SMTP AUTH and HTTP
basic auth), so a client cannot spread its guesses over many connections,
or over both.  It is pure bookkeeping over an injected monotonic clock: the
services do the waiting.

For each client address (an IPv6 address by its /64, which one host
usually holds whole) it keeps the recent failures.  A failure is answered
after a delay that doubles with each one (``base_delay``, twice that, ...,
at most ``MAX_DELAY_DOUBLINGS`` doublings), and no further check from that
address starts before the failure is answered; more than
``MAX_CHECKS_AT_ONCE`` checks at once are refused too, so parallel
connections gain nothing.  A check is admitted only while the failures it
could add stay below ``block_after``; the one that reaches it blocks the
address for ``block_time`` seconds.  The delay also grows with the
failures for the user name (from any address), which slows down guessing
one user's password from many addresses without ever blocking the user
out.  A success clears nothing: an attacker holding one account of their
own could otherwise wipe out their failures between guesses.

Failures are forgotten ``block_time`` seconds after the last one.  The
tables are LRU-bounded (``max_entries`` each), so a flood of addresses or
user names costs bounded memory.  Each failure and each block is logged as
one line (logger ``mailgate.auth``); refusals are not, or a client would
choose how much is logged.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from mailgate.config import Limits
from mailgate.ports import AuthAdmission, AuthFailure

__all__ = ["MAX_CHECKS_AT_ONCE", "MAX_DELAY_DOUBLINGS", "Throttle", "client_key"]

log = logging.getLogger("mailgate.auth")

MAX_DELAY_DOUBLINGS = 4
"""The delay before answering a failure stops growing at 2**4 times the first (1 s to 16 s)."""
MAX_CHECKS_AT_ONCE = 2
"""Checks from one address in progress at once; further ones are told to come back."""
MAX_ENTRIES = 10_000
"""Addresses (and, apart, user names) whose failures are remembered; the least recent go."""
IPV6_PREFIX_BITS = 64
MAX_LOGGED_NAME_CHARS = 64


@dataclass(slots=True)
class _Record:
    failures: int = 0
    last_failure: float = 0.0
    answer_at: float = 0.0
    """When the last failure is answered: no check starts before."""
    blocked_until: float = 0.0
    checking: int = 0


def client_key(address: str) -> str:
    """Whose failures ``address`` counts as: itself, or its /64 for IPv6."""
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_PREFIX_BITS), strict=False))
    return str(ip)


def _loggable(name: str) -> str:
    head = name[:MAX_LOGGED_NAME_CHARS]
    text = "".join(c if c.isprintable() and not c.isspace() else "?" for c in head)
    return text + ("..." if len(name) > MAX_LOGGED_NAME_CHARS else "")


class Throttle:
    """Counts failed password checks per client address and user name (an ``AuthThrottle``).

    ``base_delay`` seconds answer the first failure (0: no delays);
    ``block_after`` failures within ``block_time`` seconds block the
    address for ``block_time`` seconds; ``clock`` gives monotonic seconds.
    """

    def __init__(
        self,
        *,
        base_delay: float = 1.0,
        block_after: int = 10,
        block_time: float = 600.0,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._base_delay = base_delay
        self._block_after = max(block_after, 1)
        self._block_time = block_time
        self._max_entries = max_entries
        self._clock = clock
        self._clients: OrderedDict[str, _Record] = OrderedDict()
        self._users: OrderedDict[str, _Record] = OrderedDict()

    @classmethod
    def from_limits(cls, limits: Limits) -> Throttle:
        """The throttle ``limits`` describe (``auth_failure_delay``, ``auth_block_*``)."""
        return cls(
            base_delay=limits.auth_failure_delay,
            block_after=limits.auth_block_after,
            block_time=limits.auth_block_time,
        )

    def __len__(self) -> int:
        """Addresses remembered."""
        return len(self._clients)

    def delay_after(self, failures: int) -> float:
        """Seconds before answering the ``failures``-th failure in a row."""
        if failures <= 0:
            return 0.0
        return self._base_delay * (1 << min(failures - 1, MAX_DELAY_DOUBLINGS))

    def _expired(self, record: _Record, now: float) -> bool:
        return (
            record.checking == 0
            and now >= record.blocked_until
            and (record.failures == 0 or now - record.last_failure >= self._block_time)
        )

    def _record(self, table: OrderedDict[str, _Record], key: str, now: float) -> _Record:
        record = table.get(key)
        if record is None or self._expired(record, now):
            record = table[key] = _Record()
        table.move_to_end(key)
        while len(table) > self._max_entries:
            table.popitem(last=False)
        return record

    def admit(self, client: str) -> AuthAdmission:
        """Whether credentials from ``client`` may be checked now; see the module's docstring."""
        now = self._clock()
        record = self._record(self._clients, client_key(client), now)
        if now < record.blocked_until:
            return AuthAdmission(False, record.blocked_until - now, blocked=True)
        if now < record.answer_at:
            return AuthAdmission(False, record.answer_at - now)
        if (
            record.checking >= MAX_CHECKS_AT_ONCE
            or record.failures + record.checking >= self._block_after
        ):
            # Come back once those checks are answered: one base delay, or a second.
            return AuthAdmission(False, self._base_delay or 1.0)
        record.checking += 1
        return AuthAdmission(True)

    def _settle(self, client: str, now: float) -> tuple[str, _Record]:
        key = client_key(client)
        record = self._record(self._clients, key, now)
        record.checking = max(record.checking - 1, 0)
        return key, record

    def succeeded(self, client: str) -> None:
        """The admitted check from ``client`` succeeded: it clears no failures."""
        now = self._clock()
        key, record = self._settle(client, now)
        if self._expired(record, now):
            del self._clients[key]

    def withdrawn(self, client: str) -> None:
        """The admitted check from ``client`` was not made (the checker was busy, say)."""
        self.succeeded(client)

    def failed(self, client: str, username: str, service: str) -> AuthFailure:
        """The admitted check from ``client`` for ``username`` failed: count and log it."""
        now = self._clock()
        key, record = self._settle(client, now)
        record.failures += 1
        record.last_failure = now
        user = self._record(self._users, username.casefold(), now)
        user.failures += 1
        user.last_failure = now
        delay = self.delay_after(max(record.failures, user.failures))
        record.answer_at = max(record.answer_at, now + delay)
        fields: dict[str, object] = {
            "user": _loggable(username),
            "client": client,
            "failures": record.failures,
            "service": service,
        }
        log.warning(
            "auth failed user=%s client=[%s] failures=%d service=%s",
            *fields.values(),
            extra={"fields": fields},
        )
        blocked_for = 0.0
        if record.failures >= self._block_after and now >= record.blocked_until:
            blocked_for = self._block_time
            record.blocked_until = now + delay + blocked_for
            seconds = math.ceil(blocked_for)
            block_fields: dict[str, object] = {"client": key, "seconds": seconds}
            log.warning(
                "auth blocked client=[%s] for %ds", key, seconds, extra={"fields": block_fields}
            )
        return AuthFailure(delay, record.failures, blocked_for)
