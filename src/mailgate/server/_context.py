"""What a session is given, and what it may ask of the server that accepted it.

A ``Session`` never reaches into ``SMTPServer``.  It is made with one
``SessionContext``, frozen and shared by every session of a listener: the
listener's rules, the policy, the ports it works through (the sink, the
authenticator, the one clock that stamps a message's received time), the
limits, the process's ``SMTPCounters``, and ``SessionHost``, the few calls back
into the server (admission, background tasks, whether it is shutting down).  The
server in turn sees a session only as a ``ServedSession``.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from typing import Protocol

from mailgate.config import Limits, Listen
from mailgate.ports import Authenticator, AuthThrottle, Clock, MailSink
from mailgate.protocol import ConnectionSettings, Reply
from mailgate.server._counters import SMTPCounters
from mailgate.server._policy import RecipientPolicy

__all__ = ["Listener", "ServedSession", "SessionContext", "SessionHost"]


@dataclass(frozen=True, slots=True)
class Listener:
    """One listening address and the rules of its port.

    ``smtp`` (port 25 style: STARTTLS offered, AUTH optional, relaying only
    for authenticated users and trusted networks), ``submission`` (RFC 6409:
    AUTH required before MAIL, and TLS before AUTH) and ``smtps`` (RFC 8314:
    TLS from the first byte, AUTH required).
    """

    name: str
    listen: Listen
    connection: ConnectionSettings
    require_auth: bool = False
    implicit_tls: bool = False


class ServedSession(Protocol):
    """A session, as the server that accepted it sees it."""

    @property
    def peer(self) -> tuple[str, int]:
        """The client's address and port."""
        ...

    @property
    def in_transaction(self) -> bool:
        """Whether a mail transaction is open (shutdown waits for it)."""
        ...

    @property
    def closed(self) -> asyncio.Future[None]:
        """Done once the connection is gone."""
        ...

    def shutdown(self, reply: Reply) -> None:
        """Say ``reply`` (a 421) and close, abandoning any open transaction."""
        ...

    # What the server's deadlines (server._deadlines) read, in the event loop's time.

    @property
    def admitted_at(self) -> float:
        """When the session was greeted."""
        ...

    @property
    def progress_at(self) -> float:
        """When the client last finished a command line or sent content, or the server
        last finished a reply it had to wait for."""
        ...

    @property
    def waiting(self) -> bool:
        """Whether the client waits on the server (a commit, a password check, a TLS
        handshake), or the session is closed already: no deadline runs then."""
        ...

    @property
    def content_progress(self) -> tuple[float, int] | None:
        """While a message's content arrives: when it began, and its octets so far."""
        ...

    def time_out(self, reason: str) -> None:
        """Say ``421 4.4.2`` with ``reason`` and close, abandoning any open transaction."""
        ...


class SessionHost(Protocol):
    """The server a session runs in, as the session sees it."""

    @property
    def closing(self) -> bool:
        """Whether the server is shutting down: an idle session then says goodbye."""
        ...

    def register(self, session: ServedSession) -> str | None:
        """Admit a new session, or say why not (sent with a 421)."""
        ...

    def unregister(self, session: ServedSession) -> bool:
        """Forget a session whose connection is gone; say whether it had been admitted."""
        ...

    def track(self, task: asyncio.Task[None]) -> None:
        """Keep a session's background step alive until it finishes."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionContext:
    """Everything a session of one listener works with; see the module's docstring."""

    listener: Listener
    hostname: str
    policy: RecipientPolicy
    sink: MailSink
    authenticator: Authenticator | None
    tls_context: ssl.SSLContext | None
    limits: Limits
    clock: Clock
    host: SessionHost
    shutdown_reply: Reply
    """What the session says when the server stops."""
    auth_throttle: AuthThrottle | None = None
    """Counts AUTH failures per client address across sessions (and other services)."""
    counters: SMTPCounters
    """What the process counts (refusals, TLS handshakes, AUTH outcomes), for ``/metrics``."""
