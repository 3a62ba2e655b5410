"""Public test helpers: a real mailgate for your tests, and store conformance checks.

``MailgateServer`` runs a real server in a thread; ``wait_for(query)`` on it
returns the ``Message`` a search matches as soon as it is stored, or raises
``WaitTimeoutError``.  The pytest plugin (registered automatically when
mailgate is installed) offers it as the ``mailgate_server`` and
``mailgate_server_factory`` fixtures.
"""

from __future__ import annotations

from mailgate.testing._message import Headers, Message
from mailgate.testing._server import MailgateServer, WaitTimeoutError

__all__ = ["Headers", "MailgateServer", "Message", "WaitTimeoutError"]
