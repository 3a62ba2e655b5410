"""The ASGI application: the inbox page, the JSON API, and optional basic auth."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import html
import ipaddress
import math
from collections.abc import Callable
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from mailgate.chaos import Chaos
from mailgate.ports import AuthThrottle, HealthReporter, MailSink, MessageStore, MetricsSource
from mailgate.web._api import api_routes
from mailgate.web._context import Inbox, WebSettings
from mailgate.web._events import EventHub
from mailgate.web._live import live_routes
from mailgate.web._metrics import metrics_routes
from mailgate.web._openapi import openapi_document
from mailgate.web._websocket import mailpit_events

__all__ = ["AllowedHosts", "ApiCors", "BasicAuth", "WebRoot", "create_app", "inbox_of"]

STATIC = Path(__file__).with_name("static")
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data:; frame-src 'self'; object-src 'none';"
    " base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)
UNAUTHENTICATED_PATHS = frozenset({"/livez", "/readyz"})


class BasicAuth:
    """ASGI middleware asking for HTTP basic auth (RFC 7617), compared in constant time.

    With ``throttle`` (``mailgate serve`` gives the one SMTP AUTH uses) wrong
    passwords are counted per client address: a failure is answered
    (``401``) after the throttle's delay, and a request the throttle does not
    admit gets ``429`` with ``Retry-After`` without being checked.  A request
    without credentials is not a failure: a browser asks so first.
    """

    def __init__(
        self,
        app: ASGIApp,
        user: str,
        password: str,
        realm: str = "mailgate",
        throttle: AuthThrottle | None = None,
    ) -> None:
        self._app = app
        self._user = user.encode()
        self._password = password.encode()
        self._realm = realm
        self._throttle = throttle

    def _check(self, header: bytes) -> tuple[str, bool]:
        """The user name the header gives, and whether the credentials are right."""
        scheme, _, encoded = header.partition(b" ")
        if scheme.lower() != b"basic":
            return "", False
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return "", False
        user, colon, password = decoded.partition(b":")
        # Both compared, always: the time taken says nothing about which one was wrong.
        user_ok = hmac.compare_digest(user, self._user)
        password_ok = hmac.compare_digest(password, self._password)
        return user.decode("utf-8", "replace"), bool(colon) and user_ok and password_ok

    async def _checked(self, scope: Scope, header: bytes) -> Response | None:
        """``None`` when the credentials are right, or the response refusing them."""
        throttle = self._throttle
        if throttle is None:
            return None if self._check(header)[1] else self._challenge()
        client = scope.get("client") or ("", 0)
        admission = throttle.admit(client[0])
        if not admission.allowed:
            return Response(
                "too many failed logins from your address, try again later\n"
                if admission.blocked
                else "try again later\n",
                status_code=429,
                media_type="text/plain",
                headers={"Retry-After": str(math.ceil(admission.retry_after))},
            )
        user, ok = self._check(header)
        if ok:
            throttle.succeeded(client[0])
            return None
        failure = throttle.failed(client[0], user, "http")
        if failure.delay > 0:
            await asyncio.sleep(failure.delay)
        return self._challenge()

    def _challenge(self) -> Response:
        return Response(
            "authentication required\n",
            status_code=401,
            media_type="text/plain",
            headers={"WWW-Authenticate": f'Basic realm="{self._realm}", charset="UTF-8"'},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in UNAUTHENTICATED_PATHS:
            await self._app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization", b"")
        refusal = await self._checked(scope, header) if header else self._challenge()
        if refusal is None:
            await self._app(scope, receive, send)
        elif scope["type"] == "websocket":  # closed before it is accepted: the handshake gets 403
            await send({"type": "websocket.close", "code": 1008})
        else:
            await refusal(scope, receive, send)


class ApiCors:
    """CORS (``Access-Control-Allow-Origin`` and preflights) for the API's paths only, for
    pages from ``origins`` (``*``: any); outside basic auth, as preflights carry none."""

    def __init__(self, app: ASGIApp, origins: tuple[str, ...]) -> None:
        self._app = app
        self._cors = CORSMiddleware(
            app,
            allow_origins=origins,
            allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
            allow_headers=["*"],
            # Credentials (basic auth) only to origins named one by one, never to any.
            allow_credentials="*" not in origins,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/api/"):
            await self._cors(scope, receive, send)
        else:
            await self._app(scope, receive, send)


class AllowedHosts:
    """ASGI middleware answering ``400`` to a request whose ``Host`` names neither an IP
    address nor an allowed name, before any handler runs.

    A web page whose name an attacker makes resolve to 127.0.0.1 (DNS
    rebinding) is same-origin with the inbox it reaches, and could read and
    delete mail; its requests name the attacker's host, which is not allowed.
    An IP address cannot be rebound, so any is allowed.
    """

    def __init__(self, app: ASGIApp, names: frozenset[str]) -> None:
        self._app = app
        self._names = frozenset(name.lower().rstrip(".") for name in names)

    def _allowed(self, host: str) -> bool:
        if host.startswith("["):  # [IPv6]:port
            name = host[1:].partition("]")[0]
        else:
            name = host.rpartition(":")[0] if ":" in host else host
        name = name.lower().rstrip(".")
        if name in self._names:
            return True
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self._app(scope, receive, send)
            return
        host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
        if self._allowed(host):
            await self._app(scope, receive, send)
            return
        response = Response(
            "this inbox does not answer to that host name (see --http-allowed-host)\n",
            status_code=400,
            media_type="text/plain",
        )
        await response(scope, receive, send)


class WebRoot:
    """ASGI middleware serving the app below ``root`` (``--webroot /mail/``), behind a proxy
    that passes the path on as it is: ``/mail/api/v1/messages`` reaches the app as
    ``/api/v1/messages``; ``/mail`` is redirected to ``/mail/``; any other path is ``404``.
    The page finds its root in its ``<base>``, which the app writes (``create_app``)."""

    def __init__(self, app: ASGIApp, root: str) -> None:
        self._app = app
        self._root = root

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self._app(scope, receive, send)
            return
        path: str = scope["path"]
        root = self._root
        if path.startswith(root):
            inner = "/" + path[len(root) :]
            await self._app({**scope, "path": inner, "raw_path": inner.encode()}, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        if path == root.rstrip("/"):
            query = scope.get("query_string", b"").decode("latin-1")
            location = root + ("?" + query if query else "")
            response = Response(status_code=308, headers={"Location": location})
        else:
            response = Response(
                f"not found: this inbox is at {root}\n", 404, media_type="text/plain"
            )
        await response(scope, receive, send)


def _page_headers() -> dict[str, str]:
    return {
        "Content-Security-Policy": PAGE_CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
        "Cache-Control": "no-cache",
    }


def create_app(
    store: MessageStore,
    *,
    settings: WebSettings | None = None,
    metrics: MetricsSource | None = None,
    sink: MailSink | None = None,
    is_local: Callable[[str], bool] | None = None,
    auth_throttle: AuthThrottle | None = None,
    health: HealthReporter | None = None,
    pruned: Callable[[], int] | None = None,
    chaos: Chaos | None = None,
) -> Starlette:
    """The web inbox and JSON API over ``store``, as an ASGI application.

    ``sink`` takes the mail ``POST /api/v1/send`` builds (without one that
    endpoint answers ``501``); ``is_local`` says which recipients are this
    server's (default: all of them, as in catch-all mode); ``auth_throttle``
    counts wrong basic-auth passwords per client address (see ``BasicAuth``);
    ``health`` is what ``/readyz`` checks besides a read of the store
    (default: the store's own checks, when it is a ``ports.HealthReporter``);
    ``pruned`` says how many messages the node's retention has pruned, for
    ``/api/v1/info``; ``chaos``, the node's chaos triggers, which ``/api/v1/chaos``
    shows and sets (without it, chaos is not enabled).

    The app subscribes to the store's events when the first live client
    arrives.  Call ``await inbox_of(app).close()`` (``HTTPService.aclose``
    does) before shutting the server down, so live streams end.

    ``GET /metrics`` shows what ``metrics`` counts, beside this process's
    own metrics (``web._metrics``); it asks for basic auth as the API does.
    """
    settings = settings or WebSettings()
    inbox = Inbox(store=store, settings=settings, hub=EventHub(store), sink=sink, chaos=chaos)
    if is_local is not None:
        inbox.is_local = is_local
    if pruned is not None:
        inbox.pruned = pruned
    inbox.health = health if health is not None or not isinstance(store, HealthReporter) else store

    # The page's <base> names where it is served, and so where its scripts find the API.
    page = (STATIC / "index.html").read_text(encoding="utf-8")
    page = page.replace('<base href="/">', f'<base href="{html.escape(settings.webroot)}">', 1)

    async def index(request: Request) -> Response:
        return HTMLResponse(page, headers=_page_headers())

    async def openapi(request: Request) -> Response:
        return JSONResponse(openapi_document())

    cors = settings.cors_origins

    async def websocket_events(websocket: WebSocket) -> None:
        await mailpit_events(inbox, websocket, lambda origin: "*" in cors or origin in cors)

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/api/v1/openapi.json", openapi, methods=["GET"]),
        *api_routes(inbox),
        *live_routes(inbox),
        *metrics_routes(metrics),
        WebSocketRoute("/api/events", websocket_events),
        # A message's own address in the page (Mailpit's); after /view/{id}.html and .txt.
        Route("/view/{id}", index, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes)
    app.state.inbox = inbox
    if settings.http_auth is not None:
        user, password = settings.http_auth
        app.add_middleware(BasicAuth, user=user, password=password, throttle=auth_throttle)
    if cors:
        app.add_middleware(ApiCors, origins=cors)
    if settings.webroot != "/":
        app.add_middleware(WebRoot, root=settings.webroot)
    if settings.allowed_hosts is not None:
        app.add_middleware(AllowedHosts, names=settings.allowed_hosts)  # outermost: first
    return app


def inbox_of(app: Starlette) -> Inbox:
    """The shared state of an app made by ``create_app``."""
    inbox: Inbox = app.state.inbox
    return inbox
