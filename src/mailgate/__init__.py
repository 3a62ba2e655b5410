"""mailgate: a fast, durable, standards-complete ESMTP mail server and developer inbox."""

from __future__ import annotations

from mailgate.protocol import LocalProtocolError, MailgateError, RemoteProtocolError

__all__ = ["LocalProtocolError", "MailgateError", "RemoteProtocolError", "__version__"]

__version__ = "0.1.0"
