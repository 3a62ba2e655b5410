"""AUTH on one session: checking credentials, slowing down guessing, giving up.

The engine runs the SASL exchange and hands over the credentials; this
decides the answer.  With the process's ``AuthThrottle`` (``mailgate
serve`` always gives one) failures are counted per client address across
connections: a check the throttle does not admit gets ``454 4.7.0`` without
being made, and the session ends when the address is blocked; a failure is
answered after the delay the throttle sets.  Without one, the delay grows
with each failure on the session (``auth_failure_delay`` times their number,
at most ``MAX_AUTH_DELAY_SECONDS``).  Either way the session ends after
``max_auth_failures`` failures or refusals (never fewer than 3, RFC 4954 9).
An authenticator with too many checks in hand gets ``454 4.7.0`` too.  The
address and user name are logged, never the password.  Each exchange's outcome
is counted in the process's ``SMTPCounters.auth``.  An armed chaos trigger
(``server._policy``) may refuse an exchange before anything is checked: that is
no failure of the client's, and is counted and logged as a refusal.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass

from mailgate.ports import Authenticator, AuthenticatorBusyError, AuthThrottle
from mailgate.protocol import AuthCredentials, Reply
from mailgate.server._context import SessionContext
from mailgate.server._log import LogFields, clean
from mailgate.server._policy import chaos_refusal

__all__ = ["AUTH_FAILED", "AuthAttempts", "AuthOutcome"]

log = logging.getLogger("mailgate.smtp")

AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")
AUTH_UNAVAILABLE = Reply(454, "4.7.0", "Temporary authentication failure")
AUTH_BUSY = Reply(454, "4.7.0", "Try again later")
MAX_AUTH_DELAY_SECONDS = 10.0
MIN_AUTH_FAILURES_BEFORE_CLOSING = 3  # RFC 4954 9: SHOULD NOT close before 3 failures
MAX_LOGGED_USER_CHARS = 64


@dataclass(frozen=True, slots=True)
class AuthOutcome:
    """The reply to an AUTH exchange, who authenticated (if anyone), and whether to end."""

    reply: Reply
    user: str | None = None
    give_up: bool = False


class AuthAttempts:
    """The AUTH attempts of one session from ``client``."""

    def __init__(self, authenticator: Authenticator, context: SessionContext, client: str) -> None:
        self._authenticator = authenticator
        self._limits = context.limits
        self._throttle: AuthThrottle | None = context.auth_throttle
        self._chaos = context.policy.chaos
        self._counters = context.counters
        self._counted = context.counters.auth
        self._client = client
        self.failures = 0

    def _enough(self) -> bool:
        most = max(self._limits.max_auth_failures, MIN_AUTH_FAILURES_BEFORE_CLOSING)
        return self.failures >= most

    async def check(self, credentials: AuthCredentials) -> AuthOutcome:
        """Check ``credentials``; a failure is answered only after its delay."""
        armed = self._chaos.armed
        if armed is not None and (refusal := chaos_refusal(armed.authentication, "authentication")):
            self._counters.refusals["chaos"] += 1
            user = clean(credentials.username, MAX_LOGGED_USER_CHARS)
            fields = LogFields(
                user=user, client=self._client, reply=f"{refusal.code} {refusal.lines[0]}"
            )
            log.info("refused AUTH %s", fields, extra={"fields": fields})
            return AuthOutcome(refusal)
        throttle = self._throttle
        if throttle is not None:
            admission = throttle.admit(self._client)
            if not admission.allowed:
                self.failures += 1
                seconds = math.ceil(admission.retry_after)
                if admission.blocked:
                    self._counted["blocked"] += 1
                    text = f"Too many authentication failures, try again in {seconds} seconds"
                    return AuthOutcome(Reply(454, "4.7.0", text), give_up=True)
                self._counted["throttled"] += 1
                return AuthOutcome(AUTH_BUSY, give_up=self._enough())
        try:
            ok = await self._authenticator.authenticate(credentials.username, credentials.password)
        except AuthenticatorBusyError:
            if throttle is not None:
                throttle.withdrawn(self._client)
            self._counted["unavailable"] += 1
            return AuthOutcome(AUTH_BUSY)
        except Exception:
            if throttle is not None:
                throttle.withdrawn(self._client)
            log.exception("authenticating %s failed", self._client)
            self._counted["unavailable"] += 1
            return AuthOutcome(AUTH_UNAVAILABLE)
        if ok:
            if throttle is not None:
                throttle.succeeded(self._client)
            log.info("%s authenticated as %s", self._client, credentials.username)
            self._counted["ok"] += 1
            return AuthOutcome(AUTH_OK, user=credentials.username)
        self.failures += 1
        self._counted["failed"] += 1
        if throttle is not None:
            failure = throttle.failed(self._client, credentials.username, "smtp")
            delay, blocked = failure.delay, failure.blocked_for > 0
        else:
            log.warning(
                "auth failed user=%s client=[%s] failures=%d service=smtp",
                clean(credentials.username, MAX_LOGGED_USER_CHARS),
                self._client,
                self.failures,
            )
            delay = min(self._limits.auth_failure_delay * self.failures, MAX_AUTH_DELAY_SECONDS)
            blocked = False
        if delay > 0:
            await asyncio.sleep(delay)
        return AuthOutcome(AUTH_FAILED, give_up=blocked or self._enough())
