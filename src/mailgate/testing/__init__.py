"""Public test helpers: a real mailgate for your tests, and store conformance checks.

``MailgateServer`` runs a real server in a thread.  The pytest plugin
(registered automatically when mailgate is installed) offers it as the
``mailgate_server`` fixture.
"""

from __future__ import annotations

from mailgate.testing._server import MailgateServer

__all__ = ["MailgateServer"]
