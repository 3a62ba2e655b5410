"""The asyncio SMTP shell around the sans-I/O engine."""

from __future__ import annotations

from mailgate.server._context import Listener, SessionContext, SessionHost
from mailgate.server._counters import SMTPCounters
from mailgate.server._policy import RecipientPolicy
from mailgate.server._server import ListenError, ServerConfigError, SMTPServer
from mailgate.server._session import Session
from mailgate.server._tls import TLSConfigError, ensure_self_signed, server_context

__all__ = [
    "ListenError",
    "Listener",
    "RecipientPolicy",
    "SMTPCounters",
    "SMTPServer",
    "ServerConfigError",
    "Session",
    "SessionContext",
    "SessionHost",
    "TLSConfigError",
    "ensure_self_signed",
    "server_context",
]
