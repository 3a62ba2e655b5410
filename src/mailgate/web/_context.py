"""What every request handler shares: the store, the event hub, settings, helpers."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Any
from urllib.parse import parse_qs
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from mailgate.chaos import Chaos
from mailgate.model import MessageId, StoredMessage
from mailgate.ports import HealthReporter, MailSink, MessageStore
from mailgate.query import Query, QueryError, parse_query
from mailgate.web._events import EventHub
from mailgate.web._mime import ParsedMessage, parse_message

__all__ = [
    "BadRequest",
    "Inbox",
    "WebSettings",
    "json_error",
    "text_error",
]

DEFAULT_PAGE = 50
MAX_PAGE = 5000


@dataclass(frozen=True, slots=True, kw_only=True)
class WebSettings:
    """How the web inbox and API behave.

    ``http_auth`` is ``(user, password)`` to require HTTP basic auth on
    everything but ``/livez`` and ``/readyz``; ``label`` names this instance
    in the page title and ``/api/v1/webui``; ``database`` is what
    ``/api/v1/info`` reports as the database (the store's URL or path);
    ``release_allowed`` whether the API may queue stored mail for delivery
    elsewhere (``POST /api/v1/message/{id}/release``): only behind
    ``http_auth`` or in catch-all development mode on a loopback address;
    ``hostname`` names this server in messages the API builds.
    """

    http_auth: tuple[str, str] | None = None
    label: str = ""
    database: str = ""
    release_allowed: bool = False
    hostname: str = "localhost"
    allowed_hosts: frozenset[str] | None = None
    """Host names requests may name besides IP addresses (``Host``); ``None``: any (an app
    embedded behind a proxy that checks them).  ``mailgate serve`` always sets them."""
    cors_origins: tuple[str, ...] = ()
    """Origins (or ``*``) whose pages may call the API and open its websocket (CORS)."""
    webroot: str = "/"
    """The path the app is served below (``/mail/``), with a slash at each end."""
    allow_internal_http_requests: bool = False
    """Whether the link check may ask loopback and private addresses (Mailpit's flag)."""
    link_check_timeout: float = 5.0
    """Seconds the link check gives one link, redirects included."""


class BadRequest(Exception):
    """A request the API refuses with ``400``; the message is shown to the client."""


def text_error(status: int, message: str) -> Response:
    """An error as Mailpit's API gives it: the message as plain text."""
    return PlainTextResponse(message, status_code=status)


def json_error(status: int, message: str) -> Response:
    """An error of mailgate's own endpoints: ``{"Error": message}``."""
    return JSONResponse({"Error": message}, status_code=status)


def int_param(request: Request, name: str, default: int, maximum: int = MAX_PAGE) -> int:
    """A non-negative integer query parameter; raises ``BadRequest``."""
    value = request.query_params.get(name, "")
    if value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise BadRequest(f"{name} must be a whole number") from None
    if number < 0:
        raise BadRequest(f"{name} must not be negative")
    return min(number, maximum)


def zone_param(request: Request) -> tzinfo | None:
    """The ``tz`` parameter as a time zone, or ``None``; raises ``BadRequest``."""
    name = request.query_params.get("tz", "")
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise BadRequest(f"unknown time zone {name!r}") from None


def query_param(request: Request, *, required: bool = True) -> Query:
    """The ``query`` parameter, parsed; raises ``BadRequest``."""
    text = request.query_params.get("query", "")
    if required and not text.strip():
        raise BadRequest("query is required")
    return parse_search(text, request)


def parse_search(text: str, request: Request) -> Query:
    """A search in the request's time zone; raises ``BadRequest``."""
    zone = zone_param(request)
    try:
        return parse_query(text) if zone is None else parse_query(text, tz=zone)
    except QueryError as error:
        raise BadRequest(str(error)) from None


async def body_fields(request: Request) -> dict[str, Any]:
    """The request body as a dict with lower-case keys.

    JSON (Go's decoder, so Mailpit, matches keys without regard to case) or
    a form (``ids=a&ids=b``, as some clients send).  An empty body is
    ``{}``.  Raises ``BadRequest`` for a body that is neither.
    """
    raw = await request.body()
    if not raw.strip():
        return {}
    content_type = request.headers.get("content-type", "")
    if "application/x-www-form-urlencoded" in content_type:
        form = parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)
        return {key.lower(): values for key, values in form.items()}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the body is not JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    return {str(key).lower(): value for key, value in data.items()}


def string_list(fields: Mapping[str, Any], name: str) -> list[str]:
    """A list of strings from a body field; raises ``BadRequest``."""
    value = fields.get(name)
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest(f"{name} must be a list of strings")
    return value


def boolean(fields: Mapping[str, Any], name: str) -> bool:
    """A boolean from a body field (JSON ``true`` or a form's ``true``/``1``)."""
    value = fields.get(name, False)
    if isinstance(value, list):
        value = value[-1] if value else ""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "on")
    return value is True


def _everyone_is_local(address: str) -> bool:
    return True


@dataclass(slots=True, eq=False)
class Inbox:
    """The state of one web app.

    ``sink`` takes mail the API builds (``POST /api/v1/send``), when there is
    one; ``is_local`` says whether a recipient's mail stays here (catch-all:
    every recipient) or is queued for delivery elsewhere.
    """

    store: MessageStore
    settings: WebSettings
    hub: EventHub
    sink: MailSink | None = None
    is_local: Callable[[str], bool] = _everyone_is_local
    health: HealthReporter | None = None
    """What ``/readyz`` asks besides the store's read: its commits, the disk."""
    started: float = field(default_factory=time.monotonic)
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    deleted: int = 0
    """Messages this app deleted since it started (``/api/v1/info``'s ``MessagesDeleted``)."""
    pruned: Callable[[], int] = lambda: 0
    """Messages the node's retention pruned since it started (counted in ``MessagesDeleted``
    too: they were deleted all the same)."""
    chaos: Chaos | None = None
    """The node's chaos triggers, which ``/api/v1/chaos`` shows and sets; ``None``: chaos
    is not enabled."""

    async def resolve(self, message_id: str) -> MessageId | None:
        """``latest`` as the newest message's id; any other id as it is."""
        if message_id != "latest":
            return MessageId(message_id)
        page = await self.store.list(limit=1)
        return page.messages[0].id if page.messages else None

    async def load(self, message_id: str) -> tuple[StoredMessage, bytes] | None:
        """A message and its raw bytes, or ``None`` when there is no such message."""
        resolved = await self.resolve(message_id)
        if resolved is None:
            return None
        stored = await self.store.get(resolved)
        if stored is None:
            return None
        raw = await self.store.raw(resolved)
        return None if raw is None else (stored, raw)

    async def parse(self, raw: bytes) -> ParsedMessage:
        """Parse off the event loop: a message may be many megabytes."""
        return await asyncio.to_thread(parse_message, raw)

    async def close(self) -> None:
        """End live streams and waits, so the server can stop."""
        self.closing.set()
        await self.hub.aclose()
