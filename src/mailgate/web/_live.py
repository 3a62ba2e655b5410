"""mailgate's own endpoints: live events, waiting for a message, health, message views.

``GET /api/v1/events`` is a server-sent event stream.  Each event's name is
its type and its data a JSON object ``{"v": 1, "type": ..., "ids": [...]}``:

- ``ready``: the stream is live; every change after it is reported.
- ``stored``: new messages; ``messages`` holds their summaries, as in a listing.
- ``read``, ``unread``, ``deleted``: ``ids`` changed; ``[]`` means every message.
- ``overflow``: this client fell behind and events were lost: list again.

A comment line is sent every ``KEEPALIVE_SECONDS`` so proxies keep the
stream open.

``GET /api/v1/wait?query=...&timeout=30&since=...`` answers with the newest
message that matches ``query`` (Mailpit's search language; empty matches
any message) as soon as one exists (``_search.wait_for_match``: no
polling), as the full ``Message`` JSON, without marking it read.
``since`` (RFC 3339) ignores messages received before it.  When none
arrives within ``timeout`` seconds (at most ``MAX_WAIT_SECONDS``) it
answers ``408`` with ``{"Error": ...}``; ``503`` when the server is
shutting down.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import BaseRoute, Route

from mailgate.model import StoreEventKind
from mailgate.ports import StoreError
from mailgate.query import Bound, BoundTerm, Query
from mailgate.web._api import sandbox_headers
from mailgate.web._context import BadRequest, Inbox, json_error, query_param, text_error
from mailgate.web._events import EVENTS_VERSION, InboxEvent
from mailgate.web._json import message_json, summary_json
from mailgate.web._search import EventsEndedError, wait_for_match

__all__ = ["VIEW_CSP", "VIEW_CSP_REMOTE", "live_routes"]

KEEPALIVE_SECONDS = 15.0
DEFAULT_WAIT_SECONDS = 30.0
MAX_WAIT_SECONDS = 300.0

VIEW_CSP = (
    "default-src 'none'; img-src data: cid:; style-src 'unsafe-inline'; font-src data:;"
    " base-uri 'none'; form-action 'none'; frame-ancestors 'self'; sandbox"
)
"""The HTML of a message: no script, no request anywhere, inline styles and images only."""
VIEW_CSP_REMOTE = VIEW_CSP.replace("img-src data: cid:", "img-src data: cid: http: https:")
"""The same, once the reader asked for remote images."""


def _sse(event: InboxEvent | None, kind: str | None = None) -> str:
    if event is None:
        data: dict[str, object] = {"v": EVENTS_VERSION, "type": kind, "ids": []}
    else:
        kind = str(event.kind)
        data = {"v": EVENTS_VERSION, "type": kind, "ids": list(event.message_ids)}
        if event.kind is StoreEventKind.STORED:
            data["messages"] = [summary_json(s) for s in event.messages]
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def events(inbox: Inbox, request: Request) -> Response:
    async def stream() -> AsyncIterator[str]:
        with inbox.hub.listen() as listener:
            yield "retry: 2000\n" + _sse(None, "ready")
            iterator = aiter(listener)
            while True:
                try:
                    async with asyncio.timeout(KEEPALIVE_SECONDS):
                        event = await anext(iterator)
                except TimeoutError:
                    yield ": keepalive\n\n"
                    continue
                except StopAsyncIteration:
                    return
                yield _sse(event)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _timeout(request: Request) -> float:
    value = request.query_params.get("timeout", "")
    if not value:
        return DEFAULT_WAIT_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        raise BadRequest("timeout must be a number of seconds") from None
    if not 0 <= seconds < float("inf"):
        raise BadRequest("timeout must be a number of seconds")
    return min(seconds, MAX_WAIT_SECONDS)


def _since(request: Request) -> datetime | None:
    value = request.query_params.get("since", "")
    if not value:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest("since must be an RFC 3339 time") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


async def wait(inbox: Inbox, request: Request) -> Response:
    try:
        query = query_param(request, required=False)
        timeout = _timeout(request)
        since = _since(request)
    except BadRequest as error:
        return json_error(400, str(error))
    if since is not None:
        query = Query((*query.terms, BoundTerm(Bound.AFTER, when=since)))
    try:
        found = await wait_for_match(inbox.store, inbox.hub, query, timeout)
    except EventsEndedError as error:
        return json_error(503, str(error))
    if found is None:
        return json_error(408, f"no matching message arrived within {timeout:g} seconds")
    loaded = await inbox.load(found.id)
    if loaded is None:
        return json_error(404, "the matching message was deleted")
    stored, raw = loaded
    return JSONResponse(message_json(stored, await inbox.parse(raw)))


async def livez(inbox: Inbox, request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(inbox: Inbox, request: Request) -> Response:
    """Whether this node can take mail: ``store`` answers a read, and each check of
    ``inbox.health`` passes (``commits``, ``disk``).

    ``200 {"status": "ready", "checks": {name: "ok", ...}}``, or ``503`` with
    ``"status": "not ready"``, ``failed`` and ``error`` naming the first
    failing check and its one-line error, and ``checks`` giving each one's
    error or ``"ok"``.  Nothing is remembered here: once the store commits
    again, it is ready again.
    """
    if inbox.closing.is_set():
        return JSONResponse({"status": "shutting down"}, status_code=503)
    checks: dict[str, str | None] = {"store": None}
    try:
        await inbox.store.list(limit=0)
    except StoreError as error:
        checks["store"] = str(error)
    for check in inbox.health.health() if inbox.health is not None else ():
        if checks.get(check.name) is None:  # the first failure of a name says why
            checks[check.name] = check.error
    failed = [(name, error) for name, error in checks.items() if error is not None]
    shown = {name: error or "ok" for name, error in checks.items()}
    if not failed:
        return JSONResponse({"status": "ready", "checks": shown})
    name, why = failed[0]
    body = {"status": "not ready", "failed": name, "error": why, "checks": shown}
    return JSONResponse(body, status_code=503)


async def view_html(inbox: Inbox, request: Request) -> Response:
    loaded = await inbox.load(request.path_params["id"])
    if loaded is None:
        return text_error(404, "message not found")
    parsed = await inbox.parse(loaded[1])
    if not parsed.html:
        return text_error(404, "this message has no HTML part")
    headers = sandbox_headers()
    remote = request.query_params.get("remote") == "1"
    headers["Content-Security-Policy"] = VIEW_CSP_REMOTE if remote else VIEW_CSP
    return HTMLResponse(parsed.html_with_inline_images(), headers=headers)


async def view_text(inbox: Inbox, request: Request) -> Response:
    loaded = await inbox.load(request.path_params["id"])
    if loaded is None:
        return text_error(404, "message not found")
    parsed = await inbox.parse(loaded[1])
    return PlainTextResponse(parsed.text, headers=sandbox_headers())


Work = Callable[[Inbox, Request], Awaitable[Response]]


def live_routes(inbox: Inbox) -> list[BaseRoute]:
    """mailgate's own routes beside the Mailpit API."""

    def bind(work: Work) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            return await work(inbox, request)

        return endpoint

    return [
        Route("/api/v1/events", bind(events), methods=["GET"]),
        Route("/api/v1/wait", bind(wait), methods=["GET"]),
        Route("/livez", bind(livez), methods=["GET"]),
        Route("/readyz", bind(readyz), methods=["GET"]),
        Route("/view/{id}.html", bind(view_html), methods=["GET"]),
        Route("/view/{id}.txt", bind(view_text), methods=["GET"]),
    ]
