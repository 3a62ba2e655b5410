"""The asyncio SMTP shell around the sans-I/O engine."""

from __future__ import annotations

from mailgate.server._policy import RecipientPolicy
from mailgate.server._server import Listener, ListenError, ServerConfigError, SMTPServer
from mailgate.server._session import Session
from mailgate.server._tls import TLSConfigError, ensure_self_signed, server_context

__all__ = [
    "ListenError",
    "Listener",
    "RecipientPolicy",
    "SMTPServer",
    "ServerConfigError",
    "Session",
    "TLSConfigError",
    "ensure_self_signed",
    "server_context",
]
