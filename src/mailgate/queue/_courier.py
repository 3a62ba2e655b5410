"""The courier: one attempt to deliver a message to one destination, over SMTP.

``SMTPCourier.deliver`` resolves the destination's route (MX, implicit MX,
an address literal, or the smarthost), then tries its hosts in order (RFC
5321 5.1): a host that cannot be reached, times out, greets with anything
but ``220`` or fails TLS where the policy requires it is skipped for the
next one.  The first host that takes the transaction decides every
recipient's reply; when none does, every recipient gets the last failure,
made temporary (a dead MX says nothing about the mailbox).

A connection that ended its transaction well is kept for the next message
to the same host (after ``RSET``), for ``IDLE_SECONDS`` at most, as
Postfix's connection cache does: a queue that drains to one destination
pays one connection, not one a message.

TLS: the policy of the destination's domain (``tls_policies``), else
``tls``; to a smarthost with AUTH credentials at least ``encrypt``, since
AUTH goes only over TLS; ``verify`` to the hosts an MTA-STS policy in
``enforce`` mode names, and no other host (``_mta_sts``).  A certificate
failure under ``verify`` is a temporary failure, never a fall back to
plaintext.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mailgate.protocol import Recipient, Reply
from mailgate.queue._mta_sts import MTASTS, STSPolicy
from mailgate.queue._routes import Route, RouteError, RouteResolver, RouteSettings, Smarthost
from mailgate.queue._runner import Attempt, AttemptResult, RecipientResult
from mailgate.queue._smtp import (
    DeliveryError,
    SMTPClient,
    SMTPClientSettings,
    TLSPolicy,
    Transaction,
    connect,
)

__all__ = ["CourierSettings", "SMTPCourier"]

log = logging.getLogger("mailgate.queue")

CONNECT_TIMEOUT_SECONDS = 30.0  # Postfix's smtp_connect_timeout (RFC 5321 allows 5 min)
IDLE_SECONDS = 5.0
"""How long a connection that delivered waits for the next message to its host."""
MAX_REUSES = 100
"""Messages one connection carries at most before it is closed."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CourierSettings:
    """How the courier reaches other servers.

    ``hostname`` is our EHLO name; ``smarthost`` (with ``smarthost_auth``)
    takes every message instead of the destination's MX; ``tls`` is the
    default policy and ``tls_policies`` per destination domain; ``ca_file``
    the CA certificates ``verify`` trusts (``None``: the system's).
    """

    hostname: str
    routes: RouteSettings = field(default_factory=RouteSettings)
    smarthost: Smarthost | None = None
    smarthost_auth: tuple[str, str] | None = None
    tls: TLSPolicy = "may"
    tls_policies: Mapping[str, TLSPolicy] = field(default_factory=dict)
    ca_file: Path | None = None
    connect_timeout: float = CONNECT_TIMEOUT_SECONDS
    mta_sts: bool = True
    """Honour the MTA-STS policies domains publish (RFC 8461)."""
    mta_sts_port: int = 443
    """The HTTPS port of policy hosts (443; tests change it)."""


_Key = tuple[str, int, TLSPolicy]


@dataclass(slots=True)
class _Idle:
    client: SMTPClient
    since: float
    uses: int


def _relay(host: str, address: str, port: int) -> str:
    """``mx.example.net[192.0.2.1]:25``, as log lines and the queue name a host."""
    return f"{host}[{address}]:{port}"


def _temporary(reply: Reply) -> Reply:
    """A failure to reach a host, as a temporary reply whatever its code."""
    if reply.code < 500:
        return reply
    return Reply(451, "4.4.0", f"{reply.code} {reply.text}".replace("\n", " "))


class SMTPCourier:
    """A ``Courier`` over SMTP, keeping connections that delivered for the next message."""

    def __init__(self, settings: CourierSettings) -> None:
        self.settings = settings
        self._routes = RouteResolver(settings.routes)
        self._verify: ssl.SSLContext | None = None
        self._sts: MTASTS | None = None
        self._idle: dict[_Key, list[_Idle]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self.connections = 0
        """Connections opened so far (for tests and metrics)."""

    def _verifying_context(self) -> ssl.SSLContext:
        if self._verify is None:
            ca = self.settings.ca_file
            self._verify = ssl.create_default_context(cafile=str(ca) if ca else None)
        return self._verify

    def _policy(self, domain: str) -> TLSPolicy:
        settings = self.settings
        if settings.smarthost is not None:
            if settings.smarthost_auth is not None and settings.tls in ("none", "may"):
                return "encrypt"
            return settings.tls
        return settings.tls_policies.get(domain, settings.tls)

    async def _route(self, domain: str) -> Route:
        smarthost = self.settings.smarthost
        if smarthost is not None:
            return await self._routes.resolve_smarthost(smarthost)
        return await self._routes.resolve(domain)

    async def _sts_policy(self, domain: str) -> STSPolicy | None:
        settings = self.settings
        if not settings.mta_sts or settings.smarthost is not None:
            return None
        if self._sts is None:
            self._sts = MTASTS(
                self._routes, context=self._verifying_context(), port=settings.mta_sts_port
            )
        return await self._sts.policy(domain)

    async def deliver(self, attempt: Attempt) -> AttemptResult:
        """Every recipient's reply for this attempt; never raises for the network's failures."""
        recipients = [r.address for r in attempt.recipients]
        try:
            route = await self._route(attempt.domain)
        except RouteError as error:
            return AttemptResult(
                tuple(RecipientResult(r, error.reply) for r in recipients),
                unreachable=error.temporary,
            )
        transaction = self._transaction(attempt)
        if isinstance(transaction, Reply):
            return AttemptResult(tuple(RecipientResult(r, transaction) for r in recipients))
        policy = self._policy(attempt.domain)
        targets = list(route.targets())
        sts = await self._sts_policy(attempt.domain)
        if sts is not None and sts.mode == "enforce":
            # RFC 8461 5: only the hosts the policy names, only over verified TLS.
            policy = "verify"
            targets = [(host, address) for host, address in targets if sts.allows(host.name)]
            if not targets:
                refused = Reply(
                    451, "4.7.5", f"no MX host of {route.domain} matches its MTA-STS policy"
                )
                return AttemptResult(
                    tuple(RecipientResult(r, refused) for r in recipients), unreachable=True
                )
        elif sts is not None and sts.mode == "testing":
            for host, _ in targets:
                if not sts.allows(host.name):
                    log.info(
                        "queue: MTA-STS (testing) of %s does not name %s", route.domain, host.name
                    )
        failure = Reply(451, "4.4.0", f"no host of {route.domain} could be tried")
        relay = ""
        for host, address in targets:
            relay = _relay(host.name, address, host.port)
            try:
                client, uses = await self._client(host.name, address, host.port, policy)
            except DeliveryError as error:
                failure = _temporary(error.reply)
                log.info("queue: %s: %s; trying the next host", relay, error)
                continue
            try:
                result = await client.send(transaction)
            except DeliveryError as error:
                await client.aclose()
                if not error.temporary:  # nothing was sent: SIZE, 8BITMIME, SMTPUTF8
                    replies = tuple(RecipientResult(r, error.reply, relay) for r in recipients)
                    return AttemptResult(replies)
                failure = error.reply
                if uses > 1:  # a kept connection the server had dropped: not the host's fault
                    failure = Reply(451, "4.4.2", f"{error.reply.text}")
                log.info("queue: %s: %s; trying the next host", relay, error)
                continue
            dsn = "DSN" in client.extensions
            await self._keep(client, (address, host.port, policy), uses, result.reply)
            return AttemptResult(
                tuple(RecipientResult(r, reply, relay) for r, reply in result.recipients),
                dsn_offered=dsn,
            )
        return AttemptResult(
            tuple(RecipientResult(r, failure, relay) for r in recipients), unreachable=True
        )

    def _transaction(self, attempt: Attempt) -> Transaction | Reply:
        params = attempt.mail_params
        ret = (params.get("RET") or "").upper()
        try:
            return Transaction.of(
                attempt.content,
                sender=attempt.sender,
                recipients=[Recipient(r.address, r.notify, r.orcpt) for r in attempt.recipients],
                ret="FULL" if ret == "FULL" else "HDRS" if ret == "HDRS" else None,
                envid=params.get("ENVID"),
            )
        except ValueError as error:  # checked on receipt: a store another version wrote
            return Reply(554, "5.5.4", f"cannot relay this envelope: {error}")

    async def _client(
        self, host: str, address: str, port: int, policy: TLSPolicy
    ) -> tuple[SMTPClient, int]:
        """A connection to ``address`` and how many messages it has now carried: one kept from
        an earlier message, or a new one."""
        loop = asyncio.get_running_loop()
        kept = self._idle.get((address, port, policy), [])
        while kept:
            idle = kept.pop()
            if loop.time() - idle.since > IDLE_SECONDS:
                await idle.client.aclose()
                continue
            try:
                await idle.client.reset()
            except DeliveryError:
                await idle.client.aclose()
                continue
            return idle.client, idle.uses + 1
        settings = self.settings
        client = await connect(
            address,
            port,
            SMTPClientSettings(
                hostname=settings.hostname,
                tls=policy,
                tls_context=self._verifying_context() if policy == "verify" else None,
                tls_server_name=host,
                connect_timeout=settings.connect_timeout,
            ),
        )
        self.connections += 1
        if settings.smarthost is not None and settings.smarthost_auth is not None:
            user, password = settings.smarthost_auth
            try:
                await client.login(user, password)
            except DeliveryError:
                await client.aclose()
                raise
        return client, 1

    async def _keep(self, client: SMTPClient, key: _Key, uses: int, reply: Reply) -> None:
        if reply.code >= 400 or uses >= MAX_REUSES:
            await client.aclose()
            return
        loop = asyncio.get_running_loop()
        self._idle.setdefault(key, []).append(_Idle(client, loop.time(), uses))
        loop.call_later(IDLE_SECONDS + 0.1, self._expire)

    def _expire(self) -> None:
        """Close connections idle past ``IDLE_SECONDS``."""
        loop = asyncio.get_running_loop()
        for key, kept in list(self._idle.items()):
            fresh = [i for i in kept if loop.time() - i.since <= IDLE_SECONDS]
            for idle in kept:
                if idle not in fresh:
                    task = loop.create_task(idle.client.aclose())
                    self._closing.add(task)
                    task.add_done_callback(self._closing.discard)
            if fresh:
                self._idle[key] = fresh
            else:
                del self._idle[key]

    async def aclose(self) -> None:
        """Close every kept connection."""
        kept = [idle for group in self._idle.values() for idle in group]
        self._idle.clear()
        for idle in kept:
            with contextlib.suppress(Exception):
                await idle.client.aclose()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
