"""The exception hierarchy shared by every layer.

``MailgateError`` is the one root.  The engine raises ``RemoteProtocolError``
for input from the peer it cannot make sense of and ``LocalProtocolError``
when the application drives it wrongly (sending a reply nobody asked for).
"""

from __future__ import annotations

__all__ = ["LocalProtocolError", "MailgateError", "RemoteProtocolError"]


class MailgateError(Exception):
    """The root of every exception mailgate raises on purpose."""


class LocalProtocolError(MailgateError):
    """The application used the engine out of turn (a bug in the caller)."""


class RemoteProtocolError(MailgateError):
    """The peer sent something the engine cannot accept.

    The engine answers most bad input itself with an SMTP reply; it raises
    this only where it cannot go on (a client engine reading a garbled reply).
    """
