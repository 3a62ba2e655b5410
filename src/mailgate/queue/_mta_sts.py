"""MTA-STS (RFC 8461): a domain's published promise that its MX hosts speak verified TLS.

A domain that publishes ``_mta-sts.<domain> TXT "v=STSv1; id=..."`` serves a
policy at ``https://mta-sts.<domain>/.well-known/mta-sts.txt``: a mode
(``enforce``, ``testing`` or ``none``), the MX host patterns it allows and a
``max_age``.  Under ``enforce`` mail goes only to MX hosts the policy names,
only over TLS with a certificate valid for the host's name; a host that
fails that is skipped, never tried in plaintext (RFC 8461 5).  Under
``testing`` delivery goes on as usual and the failure is only logged.

``MTASTS.policy(domain)`` finds, fetches and caches policies: a policy is
kept until its ``max_age`` (capped at a year) and fetched again when the TXT
record's ``id`` changes (RFC 8461 3.3); a domain without a TXT record is
remembered as having no policy for ``NO_POLICY_SECONDS``.  When the record
cannot be read or the policy cannot be fetched, a cached policy still
applies, else none does (RFC 8461 3.3: a failed fetch is no policy).

The policy is fetched over HTTPS from the ``mta-sts`` host's addresses as the
route resolver finds them (so a test's DNS server answers for it too), with
the certificate verified for ``mta-sts.<domain>`` (RFC 8461 3.3), a size
limit of 64 KiB and a deadline.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from mailgate.queue._routes import RouteError, RouteResolver

__all__ = ["MAX_POLICY_OCTETS", "MTASTS", "STSPolicy", "parse_policy"]

log = logging.getLogger("mailgate.queue")

MAX_POLICY_OCTETS = 64 * 1024  # RFC 8461 3.2: senders may refuse larger policies
MAX_AGE_SECONDS = 31_557_600  # RFC 8461 3.2: max_age is at most about a year
NO_POLICY_SECONDS = 300.0
"""How long a domain found without an MTA-STS record is remembered so."""
RECHECK_SECONDS = 60.0
"""How often the TXT record of a domain with a cached policy is read again for a new id."""
FETCH_TIMEOUT_SECONDS = 10.0
_TXT = re.compile(r"v=STSv1;\s*id=([A-Za-z0-9]{1,32})\s*;?\s*(?:;.*)?\Z")
_MODE = ("enforce", "testing", "none")


@dataclass(frozen=True, slots=True)
class STSPolicy:
    """A domain's MTA-STS policy (RFC 8461 3.2)."""

    mode: Literal["enforce", "testing", "none"]
    mx: tuple[str, ...]
    max_age: int
    id: str = ""

    def allows(self, host: str) -> bool:
        """Whether ``host`` matches one of the policy's ``mx`` patterns (RFC 8461 4.1): a
        name exactly, or ``*.example.net`` for one more label on the left."""
        host = host.lower().rstrip(".")
        for pattern in self.mx:
            if pattern.startswith("*."):
                head, dot, tail = host.partition(".")
                if dot and head and tail == pattern[2:]:
                    return True
            elif host == pattern:
                return True
        return False


def parse_policy(text: str, policy_id: str = "") -> STSPolicy:
    """The policy a ``mta-sts.txt`` body states (RFC 8461 3.2).

    Raises ``ValueError`` for a body that is not a valid STSv1 policy.
    """
    fields: dict[str, list[str]] = {}
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            continue
        key, colon, value = line.partition(":")
        if not colon:
            raise ValueError(f"not a policy line: {line[:40]!r}")
        fields.setdefault(key.strip(), []).append(value.strip())
    if fields.get("version") != ["STSv1"]:
        raise ValueError("not an STSv1 policy")
    (mode,) = fields.get("mode", [""])[:1] or [""]
    if mode not in _MODE:
        raise ValueError(f"unknown mode {mode!r}")
    max_age_text = (fields.get("max_age") or [""])[0]
    if not max_age_text.isdigit():
        raise ValueError("max_age is not a number")
    mx = tuple(p.lower().rstrip(".") for p in fields.get("mx", []))
    if mode != "none" and not mx:
        raise ValueError("a policy that is not none names MX hosts")
    return STSPolicy(mode, mx, min(int(max_age_text), MAX_AGE_SECONDS), policy_id)  # type: ignore[arg-type]


@dataclass(slots=True)
class _Cached:
    policy: STSPolicy | None
    expires: float
    checked: float


class MTASTS:
    """Finds, fetches and caches MTA-STS policies for the courier."""

    def __init__(
        self,
        routes: RouteResolver,
        *,
        context: ssl.SSLContext,
        port: int = 443,
        timeout: float = FETCH_TIMEOUT_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._routes = routes
        self._context = context
        self._port = port
        self._timeout = timeout
        self._monotonic = monotonic
        self._cache: dict[str, _Cached] = {}

    async def policy(self, domain: str) -> STSPolicy | None:
        """The policy ``domain`` publishes now, or ``None`` (none, or none could be had)."""
        domain = domain.lower().rstrip(".")
        if domain.startswith("["):
            return None  # an address literal has no policy
        now = self._monotonic()
        cached = self._cache.get(domain)
        if cached is not None and now < cached.expires and now - cached.checked < RECHECK_SECONDS:
            return cached.policy
        try:
            records = await self._routes.text_records(f"_mta-sts.{domain}")
        except RouteError:
            return None
        if records is None:  # DNS said nothing definite: keep what we know
            return cached.policy if cached is not None and now < cached.expires else None
        ids = [m[1] for m in (_TXT.match(r.strip()) for r in records) if m]
        if len(ids) != 1:  # none, or several (RFC 8461 3.1: then there is no policy)
            self._cache[domain] = _Cached(None, now + NO_POLICY_SECONDS, now)
            return None
        known = cached.policy if cached is not None and now < cached.expires else None
        if cached is not None and known is not None and known.id == ids[0]:
            cached.checked = now
            return known
        try:
            policy = parse_policy(await self._fetch(domain), ids[0])
        except (OSError, ValueError, TimeoutError, ssl.SSLError, RouteError) as error:
            log.info("queue: no MTA-STS policy for %s: %s", domain, error)
            if cached is not None and cached.policy is not None and now < cached.expires:
                return cached.policy
            return None
        self._cache[domain] = _Cached(policy, now + policy.max_age, now)
        return policy

    async def _fetch(self, domain: str) -> str:
        """The body of ``https://mta-sts.<domain>/.well-known/mta-sts.txt``."""
        host = f"mta-sts.{domain}"
        addresses = await self._routes.addresses(host)
        if not addresses:
            raise OSError(f"{host} has no address")
        async with asyncio.timeout(self._timeout):
            reader, writer = await asyncio.open_connection(
                addresses[0], self._port, ssl=self._context, server_hostname=host
            )
            try:
                writer.write(
                    f"GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: {host}\r\n"
                    "Connection: close\r\nAccept: text/plain\r\n\r\n".encode("ascii")
                )
                await writer.drain()
                response = await reader.read(MAX_POLICY_OCTETS + 4096)
                if await reader.read(1):
                    raise ValueError("the policy is larger than 64 KiB")
            finally:
                writer.close()
        head, _, body = response.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        if not lines[0].startswith(("HTTP/1.1 200", "HTTP/1.0 200")):
            raise ValueError(f"the policy server answered {lines[0][:40]!r}")
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])
        }
        if not headers.get("content-type", "").lower().startswith("text/plain"):
            raise ValueError("the policy is not text/plain")  # RFC 8461 3.2
        if "chunked" in headers.get("transfer-encoding", "").lower():
            raise ValueError("a chunked policy response is not supported")
        return body.decode("utf-8")
