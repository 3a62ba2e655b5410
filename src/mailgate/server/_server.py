"""The SMTP listener: accepts connections, enforces limits, shuts down gracefully.

Connection limits are checked before the greeting: a client over the
overall or per-address limit gets ``421`` and is closed; the log has one
line per client address a minute for those, with a count.  When every
slot is taken, a session that has long made no progress gives way to the
newcomer; the server's sweep holds sessions to their deadlines
(``server._deadlines``).  ``aclose`` stops
accepting, says ``421`` to idle sessions at once, lets sessions inside a
transaction finish within the grace period, then closes what is left.
What it and its sessions count is in ``counters`` (``server._counters``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import ssl
from collections import Counter
from datetime import UTC, datetime

from mailgate import MailgateError
from mailgate.chaos import Chaos
from mailgate.config import Listen, Settings
from mailgate.ports import Authenticator, AuthThrottle, Clock, MailSink
from mailgate.protocol import MECHANISMS, ConnectionSettings, Reply
from mailgate.server._context import Listener, ServedSession, SessionContext
from mailgate.server._counters import SMTPCounters
from mailgate.server._deadlines import Deadlines
from mailgate.server._log import RefusalLog
from mailgate.server._policy import RecipientPolicy
from mailgate.server._session import Session

__all__ = ["ListenError", "Listener", "SMTPServer", "ServerConfigError"]

log = logging.getLogger("mailgate.smtp")

CUT_OFF_SECONDS = 1.0
"""How long ``aclose`` waits for the connections it cut off last to end."""


class ServerConfigError(MailgateError):
    """The settings ask for something the server cannot do; one line, naming the flag."""


class ListenError(MailgateError):
    """A listening address could not be bound; one line."""

    @classmethod
    def from_os_error(cls, name: str, listen: Listen, error: OSError) -> ListenError:
        """``cannot listen for NAME on HOST:PORT: PROBLEM`` for a failed bind."""
        # asyncio's message repeats the address; the errno says what went wrong.
        problem = os.strerror(error.errno) if error.errno else str(error)
        return cls(f"cannot listen for {name} on {listen}: {problem}")


class _WallClock:
    """The real time, as a ``ports.Clock``: the default when none is injected."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class SMTPServer:
    """mailgate's SMTP service on one or more listeners.

    ``sink`` receives every accepted message; ``tls_context``, when given,
    makes STARTTLS (and the ``smtps`` listener) available; ``authenticator``
    makes AUTH available, after TLS, its failures counted per client address
    by ``auth_throttle`` when given; ``clock`` stamps each message's received
    time (give the one the sink uses, so that a message has one); ``chaos`` holds
    the chaos triggers its sessions obey (``policy.chaos``; none armed by default).

    Raises ``ServerConfigError`` when a listener cannot work as configured
    (submission without TLS or users, say).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        sink: MailSink,
        tls_context: ssl.SSLContext | None = None,
        authenticator: Authenticator | None = None,
        clock: Clock | None = None,
        auth_throttle: AuthThrottle | None = None,
        chaos: Chaos | None = None,
    ) -> None:
        limits = settings.limits
        self.settings = settings
        self.sink = sink
        self.authenticator = authenticator
        self.auth_throttle = auth_throttle
        self.policy = RecipientPolicy(settings, chaos)
        self.hostname = settings.hostname or socket.getfqdn()
        self.idle_timeout = limits.idle_timeout
        self.tls_context = tls_context
        self.clock: Clock = clock if clock is not None else _WallClock()
        base = ConnectionSettings(
            hostname=self.hostname,
            max_message_size=limits.max_message_size,
            max_recipients=limits.max_recipients,
            max_text_line=limits.max_line_length,
            error_budget=limits.error_budget,
            bare_line_endings=settings.bare_line_endings,
            starttls=tls_context is not None,
            auth_mechanisms=MECHANISMS if authenticator is not None else (),
        )
        # Worker processes each bind every listener; the kernel spreads connections among them.
        self.reuse_port = settings.workers > 1
        if self.reuse_port and not hasattr(socket, "SO_REUSEPORT"):
            raise ServerConfigError("--workers above 1 needs SO_REUSEPORT, which this system lacks")
        self.listeners = [Listener("smtp", settings.smtp, base)]
        for name, listen in (("submission", settings.submission), ("smtps", settings.smtps)):
            if listen is None:
                continue
            if tls_context is None:
                raise ServerConfigError(
                    f"--{name} needs TLS: give --tls-cert and --tls-key, or --tls-self-signed"
                )
            if authenticator is None:
                raise ServerConfigError(f"--{name} needs --users (or --auth-accept-any)")
            implicit = name == "smtps"
            connection = (
                dataclasses.replace(base, starttls=False, tls_active=True) if implicit else base
            )
            self.listeners.append(
                Listener(name, listen, connection, require_auth=True, implicit_tls=implicit)
            )
        self.closing = False
        self.shutdown_reply = Reply(421, "4.3.2", f"{self.hostname} Shutting down")
        """What every session is told when the server stops."""
        self.counters = SMTPCounters()
        """This process's SMTP counts, for ``/metrics``; they only grow."""
        self._sessions: set[ServedSession] = set()
        self._per_address: Counter[str] = Counter()
        self._deadlines = Deadlines(limits, self.counters)
        self._sweeping: asyncio.Handle | None = None
        self._refusal_log = RefusalLog(log)
        self._bound: dict[str, asyncio.Server] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = asyncio.Event()

    async def start(self, *, serve: bool = True) -> None:
        """Bind every listener, and accept connections unless ``serve`` is false.

        With ``serve`` false the addresses are bound but refuse connections
        until ``start_serving``: SMTP worker processes bind the same ports
        meanwhile, and connections made before they could would all stay here.
        Raises ``ListenError`` (one line) when an address cannot be bound.
        """
        loop = asyncio.get_running_loop()
        for listener in self.listeners:
            try:
                server = await self._bind(loop, listener)
            except OSError as error:
                raise ListenError.from_os_error(listener.name, listener.listen, error) from error
            self._bound[listener.name] = server
        if serve:
            await self.start_serving()

    async def start_serving(self) -> None:
        """Accept connections on every bound listener."""
        for server in self._bound.values():
            await server.start_serving()
        if self._sweeping is None:
            self._sweeping = asyncio.get_running_loop().call_soon(self._sweep)

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        self._deadlines.sweep(self._sessions, loop.time())
        self._sweeping = loop.call_later(self._deadlines.period, self._sweep)

    def session_context(self, listener: Listener) -> SessionContext:
        """What each session accepted on ``listener`` is given."""
        return SessionContext(
            listener=listener,
            hostname=self.hostname,
            policy=self.policy,
            sink=self.sink,
            authenticator=self.authenticator,
            tls_context=self.tls_context,
            limits=self.settings.limits,
            clock=self.clock,
            host=self,
            shutdown_reply=self.shutdown_reply,
            auth_throttle=self.auth_throttle,
            counters=self.counters,
        )

    async def _bind(self, loop: asyncio.AbstractEventLoop, listener: Listener) -> asyncio.Server:
        context = self.session_context(listener)
        return await loop.create_server(
            lambda: Session(context),
            host=listener.listen.host or None,
            port=listener.listen.port,
            reuse_address=True,
            reuse_port=self.reuse_port or None,
            backlog=1024,
            # Implicit TLS too is done by the session itself (server._tls.TLSLayer).
            start_serving=False,
        )

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The bound (host, port) pairs of every listener, real ports for 0."""
        return [address for name in self._bound for address in self.addresses_of(name)]

    def addresses_of(self, name: str) -> list[tuple[str, int]]:
        """The bound (host, port) pairs of one listener (``smtp``, ``submission``...)."""
        server = self._bound.get(name)
        if server is None:
            return []
        found: list[tuple[str, int]] = []
        for sock in server.sockets:
            address = sock.getsockname()
            found.append((str(address[0]), int(address[1])))
        return found

    @property
    def session_count(self) -> int:
        """Sessions currently connected."""
        return len(self._sessions)

    def register(self, session: ServedSession) -> str | None:
        """Admit a new session, or say why not (sent with a 421)."""
        limits = self.settings.limits
        address = session.peer[0]
        refused = self.counters.connections_refused
        if self.closing:
            refused["shutting_down"] += 1
            return "Shutting down"
        refusal = None
        if self._per_address[address] >= limits.max_connections_per_ip:
            refusal = "Too many connections from your address, try again later"
            refused["per_address"] += 1
        elif len(self._sessions) >= limits.max_connections:
            now = asyncio.get_running_loop().time()
            stalled = self._deadlines.give_way(self._sessions, self._per_address, address, now)
            if stalled is None:
                refusal = "Too many connections, try again later"
                refused["too_many"] += 1
            else:  # it gives its slot to the newcomer
                self.counters.cut_offs["evicted"] += 1
                stalled.time_out("Idle timeout")
        if refusal is not None:
            # A flood of these would flood the log: one line per address a minute.
            self._refusal_log.refused(address, f"421 4.7.0 {refusal}")
            return refusal
        self.counters.admitted += 1
        self._sessions.add(session)
        self._per_address[address] += 1
        return None

    def unregister(self, session: ServedSession) -> bool:
        """Forget a session whose connection is gone; say whether it had been admitted."""
        if session not in self._sessions:
            return False
        self._sessions.discard(session)
        address = session.peer[0]
        self._per_address[address] -= 1
        if self._per_address[address] <= 0:
            del self._per_address[address]
        return True

    def track(self, task: asyncio.Task[None]) -> None:
        """Keep a session's background step alive until it finishes."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """Stop accepting, let open transactions finish (bounded), close all."""
        if self.closing:
            await self._closed.wait()
            return
        self.closing = True
        if self._sweeping is not None:
            self._sweeping.cancel()
        for listener in self._bound.values():
            listener.close()
        bye = self.shutdown_reply
        for session in list(self._sessions):
            if not session.in_transaction:
                session.shutdown(bye)
        pending = [s.closed for s in self._sessions]
        if pending:
            await asyncio.wait(pending, timeout=self.settings.limits.shutdown_grace)
        for session in list(self._sessions):
            session.shutdown(bye)
        if self._sessions:  # cut off just now, or lingering: their connections end soon
            await asyncio.wait([s.closed for s in self._sessions], timeout=CUT_OFF_SECONDS)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self.settings.limits.shutdown_grace)
        for listener in self._bound.values():
            await listener.wait_closed()
        self._refusal_log.flush()
        self._closed.set()

    async def wait_closed(self) -> None:
        """Wait until ``aclose`` has finished."""
        await self._closed.wait()
