"""The outbound queue: routes, the SMTP client's asyncio shell, retries and reports.

Mail for other domains waits here, one row per recipient, until it is
delivered, bounced or deleted.  The queue runner (``mailgate.runtime``) claims
due recipients grouped by destination, resolves their route (MX, implicit MX,
a smarthost), drives ``mailgate.protocol.ClientConnection`` over one
connection per destination, and records each recipient's outcome.
"""

from __future__ import annotations

__all__: list[str] = []
