"""A small internet on loopback, for delivery tests: DNS and the MTAs it names.

``DnsZone`` is an authoritative DNS server (dnslib, in process) on
127.0.0.1, UDP and TCP on one free port, answering from records the test
edits while it runs.  Unlike dnslib's ``ZoneResolver`` it answers NODATA
(NOERROR, empty answer) for a name that exists without the type asked,
which the implicit MX rule of RFC 5321 5.1 turns on; NXDOMAIN only for
names that do not exist.  Faults are per name: ``fail`` answers SERVFAIL,
``drop`` never answers.  Every query is logged in ``queries``.

``ReceivingMTAs`` (from ``loopback_smtp``) starts aiosmtpd servers on
127.0.0.2, 127.0.0.3, ...: on port 25 as root, as in CI, else on one free
port shared by all of them, which the resolver's port override targets.

``mta_for`` starts an MTA and makes it a domain's MX in a zone;
``relay_flags`` are the ``mailgate serve`` flags of a mail server for
here.test that relays to such MTAs.  ``HttpSite`` is a web server on
127.0.0.1 whose every request a test answers: a webhook's receiver, the
sites a message links to.

Both are exposed to tests as factory fixtures, ``dns_zone`` and
``receiving_mta``, which stop everything they started at teardown::

    def test_delivery(dns_zone, receiving_mta):
        mx = receiving_mta(replies={"b@example.test": "450 4.2.1 Try later"})
        zone = dns_zone()
        zone.mx("example.test", (10, "mx.example.test"))
        zone.a("mx.example.test", mx.host)
        ...  # deliver with RouteSettings(nameserver=zone.nameserver, smtp_port=mx.port)
        [message] = mx.messages
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from dnslib import AAAA, CNAME, MX, QTYPE, RCODE, RR, TXT, A, DNSError, DNSRecord
from dnslib.server import DNSLogger, DNSServer

from loopback_smtp import ReceivedMessage, ReceivingMTA, ReceivingMTAs, Refusal

__all__ = [
    "DnsQuery",
    "DnsZone",
    "HttpSite",
    "ReceivedMessage",
    "ReceivingMTA",
    "ReceivingMTAs",
    "Refusal",
    "dns_zone",
    "mta_for",
    "receiving_mta",
    "relay_flags",
]

_log = logging.getLogger(__name__)

TTL_SECONDS = 60
MAX_CNAME_CHAIN = 8  # more links than any sane zone has; stops loops

RecordValue = str | tuple[int, str]  # an address, text or name; (preference, exchange) for MX
_RTYPES = frozenset({"A", "AAAA", "MX", "TXT", "CNAME"})


# -- DNS ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DnsQuery:
    """One query the server received: the name (lower case, no final dot), type, transport."""

    name: str
    rtype: str
    transport: str  # "udp" or "tcp"


class _Dropped(DNSError):
    """Raised to dnslib's handler, which then sends nothing: the query is lost."""


class DnsZone:
    """An authoritative DNS server answering from mutable records.

    Names are ASCII (A-labels for internationalised names), case-insensitive,
    with or without the final dot.  ``nameserver`` is ``127.0.0.1:PORT``
    once started, the form ``--resolver`` takes.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, dict[str, list[RecordValue]]] = {}
        self._failing: set[str] = set()
        self._dropped: set[str] = set()
        self.queries: list[DnsQuery] = []
        self._servers: list[DNSServer] = []
        self.port = 0

    @property
    def nameserver(self) -> str:
        """``127.0.0.1:PORT``."""
        assert self.port, "the zone's server is not running"
        return f"127.0.0.1:{self.port}"

    # -- records ------------------------------------------------------------------------------

    def add(self, name: str, rtype: str, *values: RecordValue) -> None:
        """Add records of one type to ``name``; an MX value is ``(preference, exchange)``."""
        assert rtype in _RTYPES, rtype
        with self._lock:
            self._records.setdefault(_key(name), {}).setdefault(rtype, []).extend(values)

    def mx(self, domain: str, *exchanges: tuple[int, str]) -> None:
        """MX records; ``zone.mx("x.test", (0, "."))`` is a null MX (RFC 7505)."""
        self.add(domain, "MX", *exchanges)

    def a(self, name: str, *addresses: str) -> None:
        """A records."""
        self.add(name, "A", *addresses)

    def aaaa(self, name: str, *addresses: str) -> None:
        """AAAA records."""
        self.add(name, "AAAA", *addresses)

    def txt(self, name: str, *texts: str) -> None:
        """TXT records, one string each."""
        self.add(name, "TXT", *texts)

    def cname(self, name: str, target: str) -> None:
        """A CNAME record."""
        self.add(name, "CNAME", target)

    def remove(self, name: str, rtype: str | None = None) -> None:
        """Remove the records of one type of ``name``, or all of them (it then stops existing)."""
        with self._lock:
            records = self._records.get(_key(name), {})
            if rtype is None:
                records.clear()
            else:
                records.pop(rtype, None)
            if not records:
                self._records.pop(_key(name), None)

    # -- faults -------------------------------------------------------------------------------

    def fail(self, name: str) -> None:
        """Answer SERVFAIL to every query for ``name``."""
        with self._lock:
            self._failing.add(_key(name))

    def drop(self, name: str) -> None:
        """Never answer a query for ``name``, as a lost packet or a dead server."""
        with self._lock:
            self._dropped.add(_key(name))

    def heal(self, name: str) -> None:
        """Answer queries for ``name`` again."""
        with self._lock:
            self._failing.discard(_key(name))
            self._dropped.discard(_key(name))

    def queried(self, name: str) -> list[str]:
        """The types asked for ``name``, in order."""
        return [query.rtype for query in list(self.queries) if query.name == _key(name)]

    # -- the dnslib resolver interface --------------------------------------------------------

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        """Answer one query (called by dnslib's server threads)."""
        qname = str(request.q.qname)
        name, rtype = _key(qname), str(QTYPE.get(request.q.qtype))
        self.queries.append(DnsQuery(name, rtype, handler.protocol))
        reply = request.reply()
        with self._lock:
            if name in self._dropped:
                raise _Dropped(f"dropped the query for {name}")
            if name in self._failing:
                reply.header.rcode = RCODE.SERVFAIL
                return reply
            # Follow CNAMEs within the zone, as an authoritative server does.
            for _ in range(MAX_CNAME_CHAIN):
                records = self._records.get(name)
                if records is None:
                    if not self._exists(name):
                        reply.header.rcode = RCODE.NXDOMAIN
                    return reply  # else NODATA: an empty non-terminal
                if rtype in records:
                    for value in records[rtype]:
                        reply.add_answer(_rr(qname, rtype, value))
                    return reply
                if "CNAME" not in records:
                    return reply  # NODATA: the name exists, without this type
                [target] = records["CNAME"]
                assert isinstance(target, str)
                reply.add_answer(_rr(qname, "CNAME", target))
                qname, name = target, _key(target)
        return reply

    def _exists(self, name: str) -> bool:
        return any(key.endswith(f".{name}") for key in self._records)

    # -- the server ---------------------------------------------------------------------------

    def start(self) -> None:
        """Serve on 127.0.0.1, UDP and TCP on the same free port."""
        logger = DNSLogger(log="error", prefix=False, logf=_log.debug)
        for _ in range(20):
            udp = DNSServer(self, address="127.0.0.1", port=0, logger=logger)
            port = udp.server.server_address[1]
            try:
                tcp = DNSServer(self, address="127.0.0.1", port=port, tcp=True, logger=logger)
            except OSError as error:
                udp.server.server_close()
                if error.errno != errno.EADDRINUSE:
                    raise
                continue
            break
        else:
            raise RuntimeError("no port free for both UDP and TCP")
        self._servers = [udp, tcp]
        for server in self._servers:
            # A short poll interval, so that stopping takes milliseconds, not half a second.
            server.thread = threading.Thread(
                target=server.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
            )
            server.thread.start()
        self.port = port

    def stop(self) -> None:
        """Stop serving and close both sockets."""
        for server in self._servers:
            server.server.shutdown()
            server.server.server_close()
            server.thread.join()
        self._servers = []


def _key(name: str) -> str:
    key = name.lower().removesuffix(".")
    assert key.isascii(), f"zone names are A-labels: {name!r}"
    return key


def _rr(name: str, rtype: str, value: RecordValue) -> RR:
    if rtype == "MX":
        assert isinstance(value, tuple), value
        preference, exchange = value
        return RR(name, QTYPE.MX, rdata=MX(exchange, preference), ttl=TTL_SECONDS)
    assert isinstance(value, str), value
    rdata = {"A": A, "AAAA": AAAA, "TXT": TXT, "CNAME": CNAME}[rtype](value)
    return RR(name, getattr(QTYPE, rtype), rdata=rdata, ttl=TTL_SECONDS)


# -- a domain's MTA, and a server that relays to it ----------------------------------------------


def mta_for(zone: DnsZone, mtas: ReceivingMTAs, domain: str, **options: Any) -> ReceivingMTA:
    """A receiving MTA ``mx.DOMAIN`` (``options`` as ``mtas`` takes them: ``replies``, ...),
    named in ``zone`` as the one MX of ``domain``."""
    hostname = f"mx.{domain}"
    mta = mtas(hostname=hostname, **options)
    zone.mx(domain, (10, hostname))
    zone.a(hostname, mta.host)
    return mta


def relay_flags(zone: DnsZone, mtas: ReceivingMTAs, hostname: str = "mx.here.test") -> list[str]:
    """``mailgate serve`` flags for the mail server ``hostname`` of here.test, relaying for
    clients on 127.0.0.0/8: it resolves through ``zone`` and delivers to the port of ``mtas``."""
    return [
        "--hostname", hostname, "--domain", "here.test", "--relay-network", "127.0.0.0/8",
        "--resolver", zone.nameserver, "--outbound-port", str(mtas.port or 25),
    ]  # fmt: skip


# -- HTTP ---------------------------------------------------------------------------------------


class HttpSite:
    """An HTTP/1.1 server on 127.0.0.1, on a free port, a thread a request.

    Every request, whatever its method, goes to ``respond``, which reads it
    from the handler (``command``, ``path``, ``headers``, ``rfile``) and
    answers on it; it may block, as a slow site does, and ``close`` does not
    wait for it.
    """

    def __init__(self, respond: Callable[[BaseHTTPRequestHandler], None]) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                respond(self)

            do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

            def log_message(self, format: str, *args: object) -> None:
                pass  # what was asked is the test's to record, not stderr's

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving and close the socket."""
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()


# -- fixtures (registered in conftest.py) -------------------------------------------------------


@pytest.fixture
def dns_zone() -> Iterator[Callable[[], DnsZone]]:
    """A factory of running ``DnsZone`` servers; all are stopped at teardown."""
    zones: list[DnsZone] = []

    def start() -> DnsZone:
        zone = DnsZone()
        zone.start()
        zones.append(zone)
        return zone

    yield start
    for zone in zones:
        zone.stop()


@pytest.fixture
def receiving_mta() -> Iterator[ReceivingMTAs]:
    """A factory of receiving MTAs (call it); every one is stopped at teardown."""
    mtas = ReceivingMTAs()
    yield mtas
    mtas.close()
