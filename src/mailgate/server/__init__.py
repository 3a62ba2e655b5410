"""The asyncio SMTP shell around the sans-I/O engine."""

from __future__ import annotations

from mailgate.server._policy import RecipientPolicy
from mailgate.server._server import SMTPServer
from mailgate.server._session import Session

__all__ = ["RecipientPolicy", "SMTPServer", "Session"]
