"""A mailgate node: every concrete part of a running mailgate, wired once.

``Mailgate`` opens the store, builds the accept path, the TLS context and
the authenticator the settings ask for, and starts the SMTP listeners, the
SMTP workers (``_workers``) and the web inbox; with an SQLite store, first
the commit service (``_commit_service``), the one writer of the node's new
mail, which every SMTP process sends its new mail to; and the queue service
(``_queue_service``), the one owner of delivery attempts; and, with
``--webhook-url``, the webhook (``_webhook``), which posts the mail the node
accepts (the node's token, drawn here and handed to its workers, marks that
mail's envelopes).  Shutdown runs the other way: SMTP first (transactions in
flight finish, in the workers too), then the webhook, the web service, the
store and, last, the commit service.  ``mailgate serve`` and the test helper
``mailgate.testing.MailgateServer`` both run exactly this.

The serving process also runs the retention service (``_retention``), the
one owner of pruning, which keeps the store to ``--max-messages`` and
``--max-age``: stopped before the store closes.

With chaos enabled (``--enable-chaos``, ``--chaos-triggers``) each process of
the node holds its triggers in one ``chaos.Chaos``, which its SMTP sessions
obey; in the serving process the web API changes it, and the workers follow
(``_workers``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import os
import secrets
import ssl
from types import TracebackType
from typing import Self

from mailgate.auth import AcceptAnyAuthenticator, Throttle, UsersFile
from mailgate.chaos import Chaos, ChaosTriggers
from mailgate.config import MAX_WORKERS, Settings
from mailgate.delivery import Acceptor, DeliverySettings, SystemClock
from mailgate.ports import Authenticator, HealthReporter, MessageStore, QueueStore, StoreError
from mailgate.runtime._commit_service import CommitService
from mailgate.runtime._health import DiskRoom, NodeHealth
from mailgate.runtime._metrics import NodeMetrics
from mailgate.runtime._queue_service import QueueService
from mailgate.runtime._retention import RetentionService, retention_for
from mailgate.runtime._webhook import WebhookService, WebhookSettings
from mailgate.runtime._workers import WorkerPool, worker_settings
from mailgate.server import (
    ListenError,
    ServerConfigError,
    SMTPServer,
    ensure_self_signed,
    server_context,
)
from mailgate.stores import Integrity, SQLiteStore, check_store, open_store
from mailgate.web import HTTPService, WebSettings, create_app

__all__ = ["Mailgate"]

log = logging.getLogger("mailgate")

SLOW_CHECK_SECONDS = 1.0
"""A check of the store at start-up that takes this long is logged (a big store, a cold
disk), so a slow start says why."""


def tls_context_for(settings: Settings) -> ssl.SSLContext | None:
    """The server TLS context the settings describe, or ``None``.

    Raises ``TLSConfigError`` for missing or unusable certificate files.
    """
    tls = settings.tls
    if tls.cert is not None and tls.key is not None:
        return server_context(tls.cert, tls.key)
    if tls.self_signed:
        cert, key = ensure_self_signed(settings.data_dir, settings.hostname or "localhost")
        log.warning("using a self-signed certificate (%s): for development only", cert)
        return server_context(cert, key)
    return None


def authenticator_for(settings: Settings) -> Authenticator | None:
    """The authenticator the settings describe, or ``None`` (no AUTH)."""
    if settings.auth_accept_any:
        log.warning("--auth-accept-any: every user name and password is accepted")
        return AcceptAnyAuthenticator()
    if settings.users is not None:
        users = UsersFile(settings.users)
        users.names()  # read it now, so a broken file fails at start-up
        return users
    return None


def release_allowed(settings: Settings) -> bool:
    """Whether the HTTP API may send stored mail onward (Mailpit's release): only when it
    asks for a password, or in catch-all development mode on a loopback address."""
    if settings.http_auth is not None:
        return True
    http = settings.http
    if not settings.catch_all or http is None:
        return False
    try:
        return ipaddress.ip_address(http.host).is_loopback
    except ValueError:
        return http.host == "localhost"


def _report_integrity(integrity: Integrity | None) -> None:
    """Log what the check of the store at start-up found short of damage (which it raises)."""
    if integrity is None:
        return
    where = integrity.database
    if not integrity.finished:
        log.warning(
            "the integrity check of %s stopped after %.1f s, before its end: damage it did not"
            " reach shows on /readyz once a commit fails",
            where,
            integrity.seconds,
        )
    elif integrity.unused_pages:
        log.error(
            "%s has %d pages that no table uses (space lost, no mail at risk): VACUUM it"
            " while mailgate is stopped to get the space back",
            where,
            integrity.unused_pages,
        )
    else:  # said when it made the start slow to see
        level = logging.INFO if integrity.seconds >= SLOW_CHECK_SECONDS else logging.DEBUG
        log.log(level, "checked the integrity of %s in %.2f s", where, integrity.seconds)


class Mailgate:
    """A running mailgate: ``async with Mailgate(settings) as app: ...``.

    ``tls_context`` and ``authenticator`` replace what the settings would
    build (tests use throwaway certificates and cheap password hashes).
    With ``settings.workers`` above 1 it also starts that many SMTP worker
    processes less one (see ``_workers``); ``worker`` is the number of the
    worker this is, which serves SMTP only.  With an SQLite store the node
    starts the commit service and sends it all new mail; a worker is given
    its socket as ``commit_service_socket``.  Before it opens an SQLite store
    it checks the file (``stores.check_store``): a damaged one is refused.
    ``start`` raises ``StoreError``, ``TLSConfigError``, ``ServerConfigError``,
    ``ChildStartError`` (a worker or the commit service could not start) or
    ``OSError`` (an address in use) with a one-line message.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        tls_context: ssl.SSLContext | None = None,
        authenticator: Authenticator | None = None,
        worker: int = 0,
        commit_service_socket: str | None = None,
        node: str | None = None,
    ) -> None:
        if settings.workers == 0:
            settings = dataclasses.replace(settings, workers=min(os.cpu_count() or 1, MAX_WORKERS))
        if settings.workers > 1 and (tls_context or authenticator):
            raise ServerConfigError(
                "SMTP workers build TLS and AUTH from the settings: give no tls_context"
                " or authenticator with workers above 1"
            )
        self.settings = settings
        self.worker = worker
        self.node = node or secrets.token_hex(8)
        """The token on the envelopes of the mail this node accepts (``Envelope.node``)."""
        self.chaos = Chaos(settings.chaos_triggers) if settings.chaos_enabled else None
        """The chaos triggers this process's SMTP sessions obey, with chaos enabled."""
        self._commit_service_socket = commit_service_socket
        self._commit_service: CommitService | None = None
        self._workers: WorkerPool | None = None
        self._sink: Acceptor | None = None
        self._tls_context = tls_context
        self._authenticator = authenticator
        self._store: MessageStore | None = None
        self._server: SMTPServer | None = None
        self._http: HTTPService | None = None
        self._queue: QueueService | None = None
        self._webhook: WebhookService | None = None
        self._retention: RetentionService | None = None
        self._metrics: NodeMetrics | None = None

    @property
    def store(self) -> MessageStore:
        """The open store."""
        assert self._store is not None, "not started"
        return self._store

    @property
    def http(self) -> HTTPService | None:
        """The web inbox and API service, unless HTTP is off."""
        return self._http

    @property
    def workers(self) -> WorkerPool | None:
        """The SMTP worker processes this process started, if any."""
        return self._workers

    @property
    def queue(self) -> QueueService | None:
        """The queue service (runner and courier), when the store keeps a queue."""
        return self._queue

    @property
    def metrics(self) -> NodeMetrics:
        """What the node counts (``_metrics``): this process's, and in the serving process its
        workers' and its queue's too, as ``/metrics`` shows them."""
        assert self._metrics is not None, "not started"
        return self._metrics

    @property
    def retention(self) -> RetentionService | None:
        """The retention service, when the settings set a limit and the store prunes."""
        return self._retention

    @property
    def server(self) -> SMTPServer:
        """The SMTP server."""
        assert self._server is not None, "not started"
        return self._server

    async def start(self) -> None:
        """Open, wire and start everything; on failure close what was opened."""
        settings = self.settings
        tls_context = self._tls_context or tls_context_for(settings)
        authenticator = self._authenticator or authenticator_for(settings)
        if not self.worker:  # the serving process checks, before anything writes
            _report_integrity(await check_store(settings.store_url))
        self._store = await open_store(settings.store_url)
        try:
            await self._reach_commit_service(self._store)
            clock = SystemClock()  # one clock for the node: a message has one received time
            # One for SMTP AUTH and HTTP basic auth: guesses count alike, whichever they try.
            throttle = Throttle.from_limits(settings.limits)
            self._sink = sink = Acceptor(
                self._store,
                DeliverySettings(
                    hostname=settings.hostname or "localhost",
                    spool_dir=settings.data_dir / "spool",
                    min_free_space=settings.limits.free_space_floor,
                    spool_memory=settings.limits.spool_memory,
                    tags=settings.tags,
                    node=self.node,
                ),
                clock=clock,
            )
            if settings.webhook_url and not self.worker:  # following from before SMTP serves
                webhook = WebhookSettings(url=settings.webhook_url, limit=settings.webhook_limit)
                self._webhook = WebhookService(webhook, self._store, node=self.node)
                self._webhook.start()
            self._server = SMTPServer(
                settings,
                sink=sink,
                tls_context=tls_context,
                authenticator=authenticator,
                clock=clock,
                auth_throttle=throttle,
                chaos=self.chaos,
            )
            # With workers, accept only once they are all serving too (see SMTPServer.start).
            await self._server.start(serve=settings.workers <= 1 or bool(self.worker))
            self._metrics = metrics = NodeMetrics(self._server, sink, self._store)
            if self.worker:
                return
            if self.chaos is not None:
                log.warning(
                    "chaos is enabled: SMTP commands fail on purpose as its triggers say (%s),"
                    " which GET and PUT /api/v1/chaos show and set: for testing only",
                    self.chaos.triggers.text(),
                )
                self.chaos.follow(self._chaos_changed)
            if settings.workers > 1:
                self._workers = WorkerPool(
                    worker_settings(settings, self._server),
                    settings.workers - 1,
                    self._commit_service_socket,
                    node=self.node,
                    chaos=self.chaos,
                )
                await self._workers.start()
                metrics.workers = self._workers.counts
                await self._server.start_serving()
            if isinstance(self._store, QueueStore):
                self._queue = QueueService(settings, self._store, sink, clock)
                await self._queue.start()
                metrics.runner = self._queue.runner
            self._retention = retention_for(settings, self._store, clock)
            if self._retention is not None:
                await self._retention.start()
            if settings.http is not None:
                self._http = HTTPService(
                    create_app(
                        self._store,
                        pruned=self._pruned,
                        chaos=self.chaos,
                        health=self._health(),
                        sink=sink,
                        is_local=self._server.policy.is_local,
                        auth_throttle=throttle,
                        metrics=metrics,
                        settings=WebSettings(
                            http_auth=settings.http_auth,
                            database=settings.store_url,
                            release_allowed=release_allowed(settings),
                            hostname=settings.hostname or "localhost",
                            allowed_hosts=frozenset(
                                {"localhost", settings.hostname or "localhost"}
                                | set(settings.http_allowed_hosts)
                            ),
                            cors_origins=settings.api_cors,
                            webroot=settings.webroot,
                            allow_internal_http_requests=settings.allow_internal_http_requests,
                        ),
                    ),
                    settings.http,
                )
                try:
                    await self._http.start()
                except OSError as error:
                    raise ListenError.from_os_error("http", settings.http, error) from error
        except BaseException:
            await self.aclose()
            raise

    def _health(self) -> NodeHealth:
        """What ``/readyz`` asks besides a read of the store: the store's own writer, the
        commit service (new mail), and room on the spool's file system, as ``MAIL`` asks."""
        parts = [p for p in (self._store, self._commit_service) if isinstance(p, HealthReporter)]
        room = DiskRoom(self.settings.data_dir / "spool", self.settings.limits.free_space_floor)
        return NodeHealth([*parts, room])

    async def _chaos_changed(self, triggers: ChaosTriggers) -> None:
        log.info("chaos triggers set: %s", triggers.text())

    def _pruned(self) -> int:
        """Messages the retention service pruned since the node started."""
        return self._retention.pruned if self._retention is not None else 0

    async def _reach_commit_service(self, store: MessageStore) -> None:
        """Start the commit service (a worker: reach the serving process's) and send it new mail.

        A worker that cannot reach it now starts all the same: its store
        refuses new mail (``451``) until it has (``SQLiteStore._route``).
        """
        if not isinstance(store, SQLiteStore):
            return
        if self.worker:
            assert self._commit_service_socket is not None, "a worker is given the socket"
            try:
                await store.connect_commit_service(self._commit_service_socket)
            except StoreError as error:  # it may be starting again: reached later
                log.warning("%s; new mail gets 451 until it is reached", error)
            return
        service = CommitService(self.settings)
        await service.start()
        self._commit_service = service
        self._commit_service_socket = service.socket_path
        await store.connect_commit_service(service.socket_path)

    async def aclose(self) -> None:
        """Stop the listeners and the workers gracefully, then the web service, the store and,
        last, the commit service (this process's store has let go of it by then)."""
        try:
            stopping = [part.aclose() for part in (self._server, self._workers) if part]
            await asyncio.gather(*stopping)
        finally:
            self._workers = None
            try:
                if self._retention is not None:
                    await self._retention.aclose()
                    self._retention = None
                if self._queue is not None:
                    await self._queue.aclose()
                    self._queue = None
                if self._webhook is not None:
                    await self._webhook.aclose()
                    self._webhook = None
                if self._sink is not None:
                    self._sink.close()
                    self._sink = None
                if self._http is not None:
                    await self._http.aclose()
                    self._http = None
                if self._store is not None:
                    await self._store.aclose()
                    self._store = None
            finally:
                if self._commit_service is not None:
                    await self._commit_service.aclose()
                    self._commit_service = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
