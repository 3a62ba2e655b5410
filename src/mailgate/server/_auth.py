"""AUTH on one session: checking credentials, slowing down guessing, giving up.

The engine runs the SASL exchange and hands over the credentials; this
decides the answer.  A failure is answered after a delay that grows with
each failure on the session (at most ``MAX_AUTH_DELAY_SECONDS``), and after
``max_auth_failures`` of them (never fewer than 3, RFC 4954 9) the session
is ended.  The address and user name are logged, never the password.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from mailgate.config import Limits
from mailgate.ports import Authenticator
from mailgate.protocol import AuthCredentials, Reply

__all__ = ["AUTH_FAILED", "AuthAttempts", "AuthOutcome"]

log = logging.getLogger("mailgate.smtp")

AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")
AUTH_UNAVAILABLE = Reply(454, "4.7.0", "Temporary authentication failure")
MAX_AUTH_DELAY_SECONDS = 10.0
MIN_AUTH_FAILURES_BEFORE_CLOSING = 3  # RFC 4954 9: SHOULD NOT close before 3 failures


@dataclass(frozen=True, slots=True)
class AuthOutcome:
    """The reply to an AUTH exchange, who authenticated (if anyone), and whether to end."""

    reply: Reply
    user: str | None = None
    give_up: bool = False


class AuthAttempts:
    """The AUTH attempts of one session from ``client``."""

    def __init__(self, authenticator: Authenticator, limits: Limits, client: str) -> None:
        self._authenticator = authenticator
        self._limits = limits
        self._client = client
        self.failures = 0

    async def check(self, credentials: AuthCredentials) -> AuthOutcome:
        """Check ``credentials``; a failure is answered only after its delay."""
        try:
            ok = await self._authenticator.authenticate(credentials.username, credentials.password)
        except Exception:
            log.exception("authenticating %s failed", self._client)
            return AuthOutcome(AUTH_UNAVAILABLE)
        if ok:
            log.info("%s authenticated as %s", self._client, credentials.username)
            return AuthOutcome(AUTH_OK, user=credentials.username)
        self.failures += 1
        log.warning(
            "authentication failure %d from %s for user %r",
            self.failures,
            self._client,
            credentials.username[:64],
        )
        limits = self._limits
        delay = min(limits.auth_failure_delay * self.failures, MAX_AUTH_DELAY_SECONDS)
        if delay > 0:
            await asyncio.sleep(delay)
        most = max(limits.max_auth_failures, MIN_AUTH_FAILURES_BEFORE_CLOSING)
        return AuthOutcome(AUTH_FAILED, give_up=self.failures >= most)
