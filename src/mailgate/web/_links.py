"""Mailpit's link check: ``GET /api/v1/message/{ID}/link-check[?follow=true]``.

The links are Mailpit's: in the HTML, ``<a href>``, ``<link rel=stylesheet
href>`` and ``<img src>``; in the text, every ``http(s)://`` run and every
``<http(s)://...>`` (RFC 3986 appendix C: such a link may be folded across
lines); HTML first, each once, at most ``MAX_LINKS``.  The answer is
Mailpit's ``{"Errors": n, "Links": [{"URL", "StatusCode", "Status"}]}``: a
link that failed has ``StatusCode`` 0 and the reason as ``Status``
(``connection refused``, ``timed out``...); ``Errors`` counts those and the
ones answered ``4xx`` or ``5xx``.

Each link is asked with ``HEAD``, as Mailpit does; where a server refuses
``HEAD`` (``405``, ``501``) it is asked again with ``GET``, whose body is not
read (Mailpit reports the ``405``).  A redirect is reported as it is unless
``follow`` is ``true`` or ``1``; then at most ``MAX_REDIRECTS`` are followed.

This is a server making requests on behalf of whoever calls the API, to
addresses taken from mail that anyone may have sent.  So:

- only ``http`` and ``https``, no proxy from the environment, and no
  response body is ever read;
- every name is resolved here, each address checked, and the request sent to
  the checked address (``Host`` and TLS name kept), so a name cannot resolve
  to a public address for the check and a private one for the request.  As
  in Mailpit, loopback, private (RFC 1918, unique local, CGNAT) and other
  non-global addresses are refused, ``451 Blocked private/reserved address``,
  unless ``WebSettings.allow_internal_http_requests``
  (``--allow-internal-http-requests``, Mailpit's flag) says otherwise, for a
  developer whose mail links to ``localhost``; link-local (where cloud
  metadata services answer), multicast and unspecified addresses are refused
  even then.  A redirect's target is checked the same way;
- one link takes at most ``WebSettings.link_check_timeout`` (5 seconds by
  default), redirects included; ``MAX_PARALLEL_LINKS`` are asked at once,
  at most ``PER_HOST`` of them of one host; the whole check ends after
  ``BUDGET_TIMEOUTS`` timeouts' worth of time, links not yet asked reported
  ``the check ran out of time``; and at most ``MAX_CHECKS_AT_ONCE`` checks run
  in one app (more get ``503``), so the API cannot be made a flood.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import itertools
import re
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from http import HTTPStatus

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mailgate import __version__
from mailgate.web._context import Inbox, text_error

__all__ = ["LinkStatus", "check_links", "extract_links", "link_check_endpoint"]

MAX_LINKS = 100  # Mailpit's maxUniqueLinks
MAX_REDIRECTS = 3
MAX_PARALLEL_LINKS = 8
PER_HOST = 2  # Mailpit's perDomainConcurrency
BUDGET_TIMEOUTS = 6
"""The whole check may take this many link timeouts (30 seconds by default)."""
MAX_CHECKS_AT_ONCE = 4
MAX_URL_CHARACTERS = 2048
BLOCKED = (451, "Blocked private/reserved address")  # Mailpit's answer
OUT_OF_TIME = "the check ran out of time"
REDIRECTS = frozenset({301, 302, 303, 307, 308})
HEAD_REFUSED = frozenset({405, 501})

_TEXT_LINK = re.compile(r"(?<![<\w])https?://[-\w@:%+'!.~#?,&/=;]+", re.IGNORECASE)
_FOLDED_LINK = re.compile(r"<(https?://[^<>\s]+(?:[ \t]*\r?\n[ \t]*[^<>\s]+)*)>", re.IGNORECASE)
_HTTP_URL = re.compile(r"https?://", re.IGNORECASE)
_TRAILING = ".,;:!?'"
"""Punctuation that ends a sentence rather than a link written in text."""
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class LinkStatus:
    """One link's result, as Mailpit's ``Link``: ``status_code`` 0 when none came."""

    url: str
    status_code: int
    status: str

    def to_json(self) -> dict[str, object]:
        return {"URL": self.url, "StatusCode": self.status_code, "Status": self.status}


# -- the links of a message ------------------------------------------------------------------


class _HTMLLinks(HTMLParser):
    """The URLs of Mailpit's selectors, in its order: ``a[href]``, then
    ``link[rel=stylesheet]``, then ``img[src]``."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.anchors: list[str] = []
        self.stylesheets: list[str] = []
        self.images: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "a":
            self.anchors.append(values.get("href", ""))
        elif tag == "link" and "stylesheet" in values.get("rel", "").lower().split():
            self.stylesheets.append(values.get("href", ""))
        elif tag == "img":
            self.images.append(values.get("src", ""))


def _html_links(html: str) -> list[str]:
    parser = _HTMLLinks()
    try:
        parser.feed(html)
        parser.close()
    except (AssertionError, ValueError):  # markup html.parser gives up on: the links so far
        pass
    found = (link.strip() for link in (*parser.anchors, *parser.stylesheets, *parser.images))
    return [link for link in found if _HTTP_URL.match(link)]


def _text_links(text: str) -> Iterator[str]:
    for match in itertools.islice(_TEXT_LINK.finditer(text), MAX_LINKS * 3):
        yield match[0].rstrip(_TRAILING)
    for match in itertools.islice(_FOLDED_LINK.finditer(text), MAX_LINKS * 3):
        yield "".join(match[1].split())


def extract_links(text: str, html: str) -> list[str]:
    """The links Mailpit checks in a message's text and HTML bodies, each once, in order."""
    found: dict[str, None] = {}
    for link in itertools.chain(_html_links(html), _text_links(text)):
        if len(found) == MAX_LINKS:
            break
        if len(link) <= MAX_URL_CHARACTERS:
            found.setdefault(link)
    return list(found)


# -- who may be asked ------------------------------------------------------------------------


class _Refused(Exception):
    """The link may not be asked; the message is its ``Status``."""

    def __init__(self, status: str, code: int = 0) -> None:
        super().__init__(status)
        self.code = code


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, Teredo, NAT64), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if any(address in network for network in _NAT64):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_refused(address: IPAddress, *, allow_internal: bool) -> bool:
    """Whether a link check may not connect to ``address``."""
    addresses: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        inner = _embedded_ipv4(address)
        if inner is not None:
            addresses.append(inner)
    for each in addresses:
        if each.is_link_local or each.is_multicast or each.is_unspecified:
            return True
        if not each.is_global and not allow_internal:
            return True
    return False


async def _addresses(host: str, port: int, *, allow_internal: bool) -> list[str]:
    """The addresses of ``host``, every one allowed; raises ``_Refused`` otherwise."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
    except (socket.gaierror, UnicodeError):
        raise _Refused("no such host") from None
    found = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not found:
        raise _Refused("no such host")
    for text in found:
        if is_refused(ipaddress.ip_address(text), allow_internal=allow_internal):
            raise _Refused(BLOCKED[1], BLOCKED[0])
    return found


# -- asking ----------------------------------------------------------------------------------


def _reason(error: BaseException) -> str:
    """A short reason for a failed request, as Mailpit's (``connection refused``)."""
    if isinstance(error, TimeoutError | httpx.TimeoutException):
        return "timed out"
    seen: BaseException | None = error
    for _ in range(8):  # the chain httpx and httpcore wrap the socket's error in
        if seen is None:
            break
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"TLS: {seen.verify_message or 'certificate verify failed'}"
        if isinstance(seen, ssl.SSLError):
            return f"TLS: {(seen.reason or 'handshake failed').lower().replace('_', ' ')}"
        if isinstance(seen, OSError) and seen.errno == errno.ECONNREFUSED:
            return "connection refused"
        if isinstance(seen, OSError) and seen.errno is not None and seen.strerror:
            return seen.strerror.lower()
        seen = seen.__cause__ or seen.__context__
    if isinstance(error, httpx.RemoteProtocolError | httpx.LocalProtocolError):
        return "not an HTTP answer"
    text = " ".join(str(error).split())
    return text[:200] or type(error).__name__


@dataclass(slots=True)
class _Asker:
    client: httpx.AsyncClient
    allow_internal: bool

    async def status(self, url: httpx.URL, method: str) -> tuple[int, str | None]:
        """The status ``url`` answers ``method`` with, and where it redirects to."""
        if url.scheme not in ("http", "https") or not url.host:
            raise _Refused("invalid URL")
        host = url.raw_host.decode("ascii")
        port = url.port or (443 if url.scheme == "https" else 80)
        addresses = await _addresses(host, port, allow_internal=self.allow_internal)
        headers = {"Host": url.netloc.decode("ascii")}
        extensions = {"sni_hostname": host} if url.scheme == "https" else {}
        last: Exception | None = None
        for address in addresses[:3]:
            target = httpx.URL(scheme=url.scheme, host=address, port=port, raw_path=url.raw_path)
            request = self.client.build_request(
                method, target, headers=headers, extensions=extensions
            )
            try:
                response = await self.client.send(request, stream=True)
            except httpx.ConnectError as error:
                last = error  # the next address, as a browser would
                continue
            await response.aclose()  # never read a body
            return response.status_code, response.headers.get("location")
        assert last is not None
        raise last

    async def check(self, link: str, *, follow: bool) -> tuple[int, str]:
        try:
            url = httpx.URL(link)
        except httpx.InvalidURL:
            return 0, "invalid URL"
        for _ in range(MAX_REDIRECTS + 1):
            code, location = await self.status(url, "HEAD")
            if code in HEAD_REFUSED:
                code, location = await self.status(url, "GET")
            if not (follow and code in REDIRECTS and location):
                return code, _phrase(code)
            try:
                url = url.join(location)
            except httpx.InvalidURL:
                return 0, "redirect to an invalid URL"
        return 0, "too many redirects"


def _phrase(code: int) -> str:
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return ""


async def check_links(
    links: list[str], *, follow: bool, allow_internal: bool, timeout: float
) -> list[LinkStatus]:
    """Ask every link, within the limits this module's docstring gives."""
    results: dict[int, LinkStatus] = {}
    everyone = asyncio.Semaphore(MAX_PARALLEL_LINKS)
    hosts: dict[str, asyncio.Semaphore] = {}
    client = httpx.AsyncClient(
        timeout=httpx.Timeout(timeout),
        follow_redirects=False,
        trust_env=False,
        limits=httpx.Limits(max_connections=MAX_PARALLEL_LINKS, max_keepalive_connections=0),
        headers={"User-Agent": f"mailgate/{__version__} (link check)"},
    )
    asker = _Asker(client, allow_internal)

    async def one(index: int, link: str) -> None:
        host = _host_of(link)
        async with hosts.setdefault(host, asyncio.Semaphore(PER_HOST)), everyone:
            try:
                async with asyncio.timeout(timeout):
                    code, status = await asker.check(link, follow=follow)
            except _Refused as refused:
                code, status = refused.code, str(refused)
            except Exception as error:  # whatever a hostile URL or server makes of a request
                code, status = 0, _reason(error)
        results[index] = LinkStatus(link, code, status)

    async with client:
        tasks = [asyncio.create_task(one(i, link)) for i, link in enumerate(links)]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout * BUDGET_TIMEOUTS)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return [results.get(i) or LinkStatus(link, 0, OUT_OF_TIME) for i, link in enumerate(links)]


def _host_of(link: str) -> str:
    try:
        return httpx.URL(link).host.lower()
    except httpx.InvalidURL:
        return ""


# -- the endpoint ----------------------------------------------------------------------------


def link_check_endpoint() -> Callable[[Inbox, Request], Awaitable[Response]]:
    """The handler of ``GET /api/v1/message/{id}/link-check``, with its own count of checks
    running (one per app)."""
    running = 0

    async def link_check(inbox: Inbox, request: Request) -> Response:
        nonlocal running
        loaded = await inbox.load(request.path_params["id"])
        if loaded is None:
            return text_error(404, "message not found")
        if running >= MAX_CHECKS_AT_ONCE:
            busy = text_error(503, "too many link checks are running: try again in a moment")
            busy.headers["Retry-After"] = "5"
            return busy
        running += 1
        try:
            parsed = await inbox.parse(loaded[1])
            links = await asyncio.to_thread(extract_links, parsed.text, parsed.html)
            settings = inbox.settings
            statuses = await check_links(
                links,
                follow=request.query_params.get("follow", "").lower() in ("true", "1"),
                allow_internal=settings.allow_internal_http_requests,
                timeout=settings.link_check_timeout,
            )
        finally:
            running -= 1
        errors = sum(1 for s in statuses if s.status_code == 0 or s.status_code >= 400)
        return JSONResponse({"Errors": errors, "Links": [s.to_json() for s in statuses]})

    return link_check
