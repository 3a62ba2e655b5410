"""Routes for outbound mail: which hosts to try for a domain, in which order.

``RouteResolver.resolve(domain)`` turns a recipient domain into a ``Route``,
the ordered hosts of RFC 5321 5.1, each with its addresses:

- MX records sorted by preference, equal preferences shuffled so load
  spreads over them as the RFC asks (with an injected ``random.Random``, so
  tests can seed it);
- no MX records (NOERROR, empty answer) means the implicit MX: the domain's
  own A/AAAA records at preference 0;
- a null MX (RFC 7505: the single record ``0 .``) means the domain accepts
  no mail, a permanent failure;
- an address literal (``[192.0.2.1]``, ``[IPv6:2001:db8::1]``, RFC 5321
  4.1.3) is its own route, with no DNS at all.

Invariants: a returned ``Route`` has at least one host and every host at
least one address (IPv4 first, then IPv6, none twice in a route); every
failure is one ``RouteError`` carrying the ``Reply`` the queue records
for the recipients, a 4xx to try again later or a 5xx to bounce.  Only a
definite answer from DNS (NXDOMAIN, null MX) is permanent; SERVFAIL, a
timeout or a name server that never answers is temporary.  Internationalised
domains are looked up by their A-labels (IDNA 2008 with UTS #46 mapping).

``RouteResolver.resolve_smarthost`` is the route of ``--relay-host``: the
named host's A/AAAA records, no MX.  Every failure of a smarthost is
temporary, since the relay host is the operator's configuration and a typo
there must not bounce everyone's mail.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import itertools
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdata
import dns.rdatatype
import dns.resolver
from dns.rdtypes.ANY.MX import MX
from dns.rdtypes.ANY.TXT import TXT
from dns.rdtypes.IN.A import A
from dns.rdtypes.IN.AAAA import AAAA

from mailgate.protocol import MailgateError, Reply

__all__ = [
    "DEFAULT_DNS_TIMEOUT_SECONDS",
    "DEFAULT_MAX_MX_HOSTS",
    "DEFAULT_SMTP_PORT",
    "Route",
    "RouteError",
    "RouteHost",
    "RouteKind",
    "RouteResolver",
    "RouteSettings",
    "Smarthost",
]

DEFAULT_SMTP_PORT = 25  # RFC 5321 4.5.4.2: the SMTP port assigned by IANA
DNS_PORT = 53  # RFC 1035 4.2
DEFAULT_MAX_MX_HOSTS = 5  # as Postfix's smtp_mx_address_limit and Stalwart's max_mx_hosts
DEFAULT_DNS_TIMEOUT_SECONDS = 5.0  # per lookup, retries included (dnspython's lifetime)
_PER_TRY_TIMEOUT_SECONDS = 2.0  # one query to one name server before retrying

_IDNA = dns.name.IDNA_2008_Practical  # RFC 5890 A-labels, after UTS #46 mapping


class RouteKind(enum.Enum):
    """How a route was found."""

    MX = "mx"
    IMPLICIT_MX = "implicit-mx"  # RFC 5321 5.1: no MX, the domain's own addresses
    ADDRESS_LITERAL = "address-literal"  # RFC 5321 4.1.3
    SMARTHOST = "smarthost"


@dataclass(frozen=True, slots=True)
class RouteHost:
    """One host to try: its name (an A-label, lower case), preference and addresses."""

    name: str
    preference: int
    addresses: tuple[str, ...]
    port: int


@dataclass(frozen=True, slots=True)
class Route:
    """The hosts to try for ``domain``, in order; never empty."""

    domain: str
    kind: RouteKind
    hosts: tuple[RouteHost, ...]

    def targets(self) -> Iterator[tuple[RouteHost, str]]:
        """Each (host, address) pair in the order delivery should try them."""
        for host in self.hosts:
            for address in host.addresses:
                yield host, address


class RouteError(MailgateError):
    """No route for a domain, now (a 4xx reply) or ever (a 5xx reply).

    ``reply`` is what the queue records for each recipient of the domain,
    and what a bounce reports.
    """

    def __init__(self, reply: Reply) -> None:
        super().__init__(f"{reply.code} {reply.enhanced} {reply.text}")
        self.reply = reply

    @property
    def permanent(self) -> bool:
        """True when trying again cannot help: the recipients bounce."""
        return self.reply.code >= 500

    @property
    def temporary(self) -> bool:
        """True when a later attempt may succeed: the recipients are deferred."""
        return not self.permanent


@dataclass(frozen=True, slots=True)
class Smarthost:
    """A relay host that takes all outbound mail (``--relay-host HOST:PORT``).

    ``host`` is a name or an IP address; no MX lookup is done for it.
    """

    host: str
    port: int = DEFAULT_SMTP_PORT

    @classmethod
    def parse(cls, text: str) -> Smarthost:
        """``host:port``, ``[host]:port``, ``192.0.2.1:587`` or ``[2001:db8::1]:25``.

        The port defaults to 25.  Raises ``ValueError`` for an empty host, a
        bare IPv6 address (it needs brackets) or a port outside 1-65535.
        """
        host, port = _split_host_port(text, DEFAULT_SMTP_PORT)
        return cls(host, port)


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteSettings:
    """How routes are resolved.

    ``nameserver`` is ``HOST:PORT`` (``--resolver``; the host an IP address,
    an IPv6 one in brackets; the port defaults to 53), or ``None`` for the
    system's resolvers (``/etc/resolv.conf``).  ``timeout`` bounds each DNS
    lookup, retries included, in seconds.  ``smtp_port`` is the port of
    every MX, implicit MX and address-literal host (25; tests override it).
    ``max_mx_hosts`` caps the hosts of a route.  ``rng`` shuffles MX hosts
    of equal preference.

    Raises ``ValueError`` for a malformed nameserver, a timeout that is not
    positive, a port outside 1-65535 or a host limit below 1.
    """

    nameserver: str | None = None
    timeout: float = DEFAULT_DNS_TIMEOUT_SECONDS
    smtp_port: int = DEFAULT_SMTP_PORT
    max_mx_hosts: int = DEFAULT_MAX_MX_HOSTS
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.nameserver is not None:
            host, _ = _split_host_port(self.nameserver, DNS_PORT)
            try:
                ipaddress.ip_address(host)
            except ValueError:
                raise ValueError(
                    f"the resolver must be an IP address, not {self.nameserver!r}"
                ) from None
        if not self.timeout > 0:
            raise ValueError(f"the DNS timeout must be positive, not {self.timeout!r}")
        if not 1 <= self.smtp_port <= 65535:
            raise ValueError(f"the SMTP port {self.smtp_port} is outside 1-65535")
        if self.max_mx_hosts < 1:
            raise ValueError(f"the MX host limit must be at least 1, not {self.max_mx_hosts}")


class _Outcome(enum.Enum):
    FOUND = enum.auto()
    NODATA = enum.auto()  # the name exists without records of the type asked
    NXDOMAIN = enum.auto()
    FAILED = enum.auto()  # SERVFAIL, REFUSED, a timeout: nothing definite


class RouteResolver:
    """Resolves domains and smarthosts to routes over ``dns.asyncresolver``.

    Lookups are not cached here: DNS answers are cached by the resolvers
    that the system (or ``--resolver``) points at.

    Raises ``dns.resolver.NoResolverConfiguration`` when ``nameserver`` is
    ``None`` and the system has no resolver configured.
    """

    def __init__(self, settings: RouteSettings | None = None) -> None:
        self._settings = settings if settings is not None else RouteSettings()
        self._dns = _dns_resolver(self._settings)

    @property
    def settings(self) -> RouteSettings:
        """The settings this resolver was made with."""
        return self._settings

    async def resolve(self, domain: str) -> Route:
        """The route for mail to ``domain`` (RFC 5321 5.1).

        ``domain`` is a domain name (a U-label or an A-label, a final dot
        allowed) or an address literal.  Raises ``RouteError``: permanent
        ``556 5.1.10`` for a null MX (RFC 7505 3), ``550 5.1.2`` for a domain
        that does not exist or is not a valid name or literal; temporary
        ``451 4.4.3`` when DNS gives no definite answer, ``451 4.4.4`` when
        no host of the domain has an address.
        """
        if domain.startswith("["):
            return self._literal_route(domain)
        name = _domain_name(domain)
        shown = _text(name)
        outcome, records = await self._lookup(name, dns.rdatatype.MX)
        if outcome is _Outcome.NXDOMAIN:
            raise RouteError(Reply(550, "5.1.2", f"domain {shown} does not exist"))
        if outcome is _Outcome.FAILED:
            raise RouteError(_dns_failure(shown))
        if outcome is _Outcome.NODATA:
            # RFC 5321 5.1: no MX records, so the domain itself is the host.
            addresses = await self._addresses(name)
            if not addresses:
                raise RouteError(_no_address(shown))
            host = RouteHost(shown, 0, addresses, self._settings.smtp_port)
            return Route(domain, RouteKind.IMPLICIT_MX, (host,))
        exchanges = [(r.preference, r.exchange) for r in records if isinstance(r, MX)]
        if all(exchange == dns.name.root for _, exchange in exchanges):
            # RFC 7505 3 has the null MX alone, at preference 0; a lone "." at
            # another preference names no host either, so it means the same.
            raise RouteError(
                Reply(556, "5.1.10", f"domain {shown} accepts no mail (null MX, RFC 7505)")
            )
        hosts = await self._mx_hosts(exchanges)
        if not hosts:
            raise RouteError(_no_address(shown))
        return Route(domain, RouteKind.MX, hosts)

    async def resolve_smarthost(self, smarthost: Smarthost) -> Route:
        """The route to a relay host: its A/AAAA records, or its address.

        Raises ``RouteError``, always temporary: ``451 4.4.3`` when DNS gives
        no answer, ``451 4.4.4`` when the host has no address (NXDOMAIN
        included) or is not a valid name.
        """
        try:
            literal = ipaddress.ip_address(smarthost.host)
        except ValueError:
            pass
        else:
            host = RouteHost(smarthost.host, 0, (literal.compressed,), smarthost.port)
            return Route(smarthost.host, RouteKind.SMARTHOST, (host,))
        try:
            name = _domain_name(smarthost.host)
        except RouteError:
            raise RouteError(
                Reply(451, "4.4.4", f"relay host {smarthost.host!a} is not a valid name")
            ) from None
        shown = _text(name)
        (v4, a), (v6, aaaa) = await asyncio.gather(
            self._lookup(name, dns.rdatatype.A), self._lookup(name, dns.rdatatype.AAAA)
        )
        addresses = _unique(a, aaaa)
        if not addresses:
            if _Outcome.FAILED in (v4, v6):
                raise RouteError(_dns_failure(f"relay host {shown}"))
            raise RouteError(Reply(451, "4.4.4", f"relay host {shown} has no address"))
        host = RouteHost(shown, 0, addresses, smarthost.port)
        return Route(smarthost.host, RouteKind.SMARTHOST, (host,))

    async def text_records(self, name: str) -> list[str] | None:
        """The TXT records of ``name``, each joined into one string; ``[]`` when it has none
        (or does not exist), ``None`` when DNS gives no definite answer.

        Raises ``RouteError`` (``550 5.1.2``) for a name that is not valid.
        """
        outcome, records = await self._lookup(_domain_name(name), dns.rdatatype.TXT)
        if outcome is _Outcome.FAILED:
            return None
        return [
            b"".join(record.strings).decode("utf-8", "replace")
            for record in records
            if isinstance(record, TXT)
        ]

    async def addresses(self, name: str) -> tuple[str, ...]:
        """IPv4 then IPv6 addresses of ``name``; none when it has none or DNS fails.

        Raises ``RouteError`` (``550 5.1.2``) for a name that is not valid.
        """
        return await self._addresses(_domain_name(name))

    def _literal_route(self, domain: str) -> Route:
        address = _literal_address(domain)
        host = RouteHost(domain, 0, (address,), self._settings.smtp_port)
        return Route(domain, RouteKind.ADDRESS_LITERAL, (host,))

    async def _mx_hosts(
        self, exchanges: Sequence[tuple[int, dns.name.Name]]
    ) -> tuple[RouteHost, ...]:
        limit = self._settings.max_mx_hosts
        pending = _mx_order(exchanges, self._settings.rng)
        hosts: list[RouteHost] = []
        seen: set[str] = set()
        # Look up as many hosts as the limit still wants, all at once; hosts
        # without addresses are skipped, so look further if some were.
        while pending and len(hosts) < limit:
            wanted = limit - len(hosts)
            batch, pending = pending[:wanted], pending[wanted:]
            found = await asyncio.gather(*(self._addresses(name) for _, name in batch))
            for (preference, name), addresses in zip(batch, found, strict=True):
                # An address reached through an earlier host is not tried twice.
                fresh = tuple(address for address in addresses if address not in seen)
                if fresh:
                    seen.update(fresh)
                    hosts.append(
                        RouteHost(_text(name), preference, fresh, self._settings.smtp_port)
                    )
        return tuple(hosts)

    async def _addresses(self, name: dns.name.Name) -> tuple[str, ...]:
        """IPv4 then IPv6 addresses of ``name``; none when it has none or DNS fails."""
        (_, a), (_, aaaa) = await asyncio.gather(
            self._lookup(name, dns.rdatatype.A), self._lookup(name, dns.rdatatype.AAAA)
        )
        return _unique(a, aaaa)

    async def _lookup(
        self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType
    ) -> tuple[_Outcome, list[dns.rdata.Rdata]]:
        try:
            answer = await self._dns.resolve(name, rdtype, search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return _Outcome.NXDOMAIN, []
        except (dns.exception.DNSException, OSError):
            # NoNameservers (SERVFAIL, REFUSED), LifetimeTimeout, YXDOMAIN, and
            # network errors: nothing here says the domain has no mail host.
            return _Outcome.FAILED, []
        if answer.rrset is None:
            return _Outcome.NODATA, []
        return _Outcome.FOUND, list(answer.rrset)


def _dns_resolver(settings: RouteSettings) -> dns.asyncresolver.Resolver:
    if settings.nameserver is None:
        resolver = dns.asyncresolver.Resolver(configure=True)
    else:
        host, port = _split_host_port(settings.nameserver, DNS_PORT)
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver(host, port)]
    resolver.lifetime = settings.timeout
    resolver.timeout = min(settings.timeout, _PER_TRY_TIMEOUT_SECONDS)
    return resolver


def _mx_order(
    exchanges: Sequence[tuple[int, dns.name.Name]], rng: random.Random
) -> list[tuple[int, dns.name.Name]]:
    """RFC 5321 5.1: by preference, equal preferences in random order, each name once."""
    # Sorting by name first makes the order depend on the seed alone, not on
    # the order the records came in.
    ordered = sorted((p, n) for p, n in exchanges if n != dns.name.root)
    result: list[tuple[int, dns.name.Name]] = []
    for _, group in itertools.groupby(ordered, key=lambda record: record[0]):
        equals = list(group)
        rng.shuffle(equals)
        result.extend(equals)
    first: dict[dns.name.Name, tuple[int, dns.name.Name]] = {}
    for record in result:
        first.setdefault(record[1], record)  # a name listed twice keeps its best preference
    return list(first.values())


def _domain_name(domain: str) -> dns.name.Name:
    """The absolute DNS name of ``domain``, by A-labels; ``RouteError`` if it is none."""
    text = domain[:-1] if domain.endswith(".") else domain
    if not text:
        raise RouteError(Reply(550, "5.1.2", "an empty domain is not a valid domain name"))
    try:
        return dns.name.from_unicode(text, origin=dns.name.root, idna_codec=_IDNA)
    except dns.name.NoIDNA2008:
        raise RouteError(
            Reply(451, "4.3.5", f"cannot encode {domain!a}: the idna package is missing")
        ) from None
    except (dns.exception.DNSException, UnicodeError):
        raise RouteError(Reply(550, "5.1.2", f"{domain!a} is not a valid domain name")) from None


def _literal_address(domain: str) -> str:
    """The address of an RFC 5321 4.1.3 address literal; ``RouteError`` if it is none."""
    inner = domain[1:-1] if domain.endswith("]") else ""
    tag, colon, rest = inner.partition(":")
    try:
        if colon and tag.lower() == "ipv6":
            return ipaddress.IPv6Address(rest).compressed
        if not colon:
            return ipaddress.IPv4Address(inner).compressed
    except ValueError:
        pass
    raise RouteError(Reply(550, "5.1.2", f"{domain!a} is not an address literal we route"))


def _split_host_port(text: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port``, ``[host]`` or ``[host]:port``; ``ValueError`` otherwise."""
    port_text = ""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"malformed HOST:PORT {text!r}")
        port_text = rest[1:] if rest else ""
        has_port = bool(rest)
    else:
        if text.count(":") > 1:
            raise ValueError(f"an IPv6 address needs brackets: {text!r}")
        host, colon, port_text = text.partition(":")
        has_port = bool(colon)
    if not host:
        raise ValueError(f"no host in {text!r}")
    if not has_port:
        return host, default_port
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"the port of {text!r} is not in 1-65535")
    return host, int(port_text)


def _unique(*groups: Sequence[dns.rdata.Rdata]) -> tuple[str, ...]:
    """The addresses of A then AAAA records, each once, in order."""
    addresses = (
        ipaddress.ip_address(record.address).compressed
        for group in groups
        for record in group
        if isinstance(record, A | AAAA)
    )
    return tuple(dict.fromkeys(addresses))


def _text(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower()


def _dns_failure(what: str) -> Reply:
    return Reply(451, "4.4.3", f"DNS lookup for {what} failed; will try again")


def _no_address(domain: str) -> Reply:
    return Reply(451, "4.4.4", f"no mail host of {domain} has an address")
