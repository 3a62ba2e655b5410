"""Mailpit's v1 JSON API, the same paths, parameters and shapes.

Errors of these endpoints are what Mailpit sends: ``400`` or ``404`` with
the message as plain text.  Endpoints for features mailgate lacks answer
``501`` with ``{"Error": ...}``.  A ``PUT`` or ``DELETE`` that succeeds
answers ``ok`` as plain text.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import resource
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from mailgate import __version__
from mailgate.model import MessageId, MessagePage, SinkCounts
from mailgate.ports import CountingSink, RawStream, SizedStore, TaggableStore
from mailgate.web._chaos import get_chaos, set_chaos
from mailgate.web._context import (
    DEFAULT_PAGE,
    BadRequest,
    Inbox,
    body_fields,
    boolean,
    int_param,
    json_error,
    parse_search,
    query_param,
    string_list,
    text_error,
)
from mailgate.web._json import message_json, messages_json
from mailgate.web._links import link_check_endpoint
from mailgate.web._queue import queue_endpoints
from mailgate.web._search import all_matching_ids, search_page
from mailgate.web._send import send_message
from mailgate.web._thumbs import thumbnail

__all__ = ["api_routes", "sandbox_headers"]

Handler = Callable[[Request], Awaitable[Response]]

NOT_FOUND = "message not found"
SANDBOX_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; sandbox"
"""For content from a message served as a page of our origin: it may run nothing."""


def sandbox_headers(disposition: str | None = None) -> dict[str, str]:
    """Headers that keep content from mail from acting in this origin."""
    headers = {
        "Content-Security-Policy": SANDBOX_CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
    if disposition:
        headers["Content-Disposition"] = disposition
    return headers


_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def content_disposition(kind: str, filename: str) -> str:
    """``attachment; filename="a.pdf"; filename*=UTF-8''a.pdf`` (RFC 6266).

    Control characters are left out of the name: a header cannot carry CR or
    LF (RFC 9110 5.5), and no file name needs any of them.
    """
    filename = _CONTROLS.sub("", filename)
    if not filename:
        return kind
    ascii_name = filename.encode("ascii", "replace").decode().replace('"', "'").replace("\\", "_")
    return f"{kind}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"


def _handler(inbox: Inbox, work: Callable[[Inbox, Request], Awaitable[Response]]) -> Handler:
    async def endpoint(request: Request) -> Response:
        try:
            return await work(inbox, request)
        except BadRequest as error:
            return text_error(400, str(error))

    return endpoint


async def _tags(inbox: Inbox) -> dict[str, int]:
    store = inbox.store
    return await store.tags() if isinstance(store, TaggableStore) else {}


async def _listing(inbox: Inbox, page: MessagePage, start: int) -> Response:
    totals = await inbox.store.list(limit=0)
    tags = sorted(await _tags(inbox), key=str.lower)
    return JSONResponse(
        messages_json(page, total=totals.total, unread=totals.unread, tags=tags, start=start)
    )


# -- messages --------------------------------------------------------------------------------


async def list_messages(inbox: Inbox, request: Request) -> Response:
    start = int_param(request, "start", 0, maximum=sys.maxsize)
    limit = int_param(request, "limit", DEFAULT_PAGE)
    page = await inbox.store.list(offset=start, limit=limit)
    return await _listing(inbox, page, start)


async def set_read(inbox: Inbox, request: Request) -> Response:
    fields = await body_fields(request)
    ids = string_list(fields, "ids")
    read = boolean(fields, "read")
    search = fields.get("search")
    if isinstance(search, list):
        search = search[-1] if search else ""
    if ids:
        await inbox.store.mark_read([MessageId(i) for i in ids], read)
    elif isinstance(search, str) and search.strip():
        query = parse_search(search, request)
        matching = await all_matching_ids(inbox.store, query)
        if matching:
            await inbox.store.mark_read(matching, read)
    else:
        await inbox.store.mark_read(None, read)
    return PlainTextResponse("ok")


async def delete_messages(inbox: Inbox, request: Request) -> Response:
    ids = string_list(await body_fields(request), "ids")
    inbox.deleted += await inbox.store.delete([MessageId(i) for i in ids] if ids else None)
    return PlainTextResponse("ok")


async def search(inbox: Inbox, request: Request) -> Response:
    query = query_param(request)
    start = int_param(request, "start", 0, maximum=sys.maxsize)
    limit = int_param(request, "limit", DEFAULT_PAGE)
    page = await search_page(inbox.store, query, offset=start, limit=limit)
    return await _listing(inbox, page, start)


async def delete_search(inbox: Inbox, request: Request) -> Response:
    query = query_param(request)
    matching = await all_matching_ids(inbox.store, query)
    if matching:
        inbox.deleted += await inbox.store.delete(matching)
    return PlainTextResponse("ok")


# -- one message -----------------------------------------------------------------------------


async def get_message(inbox: Inbox, request: Request) -> Response:
    loaded = await inbox.load(request.path_params["id"])
    if loaded is None:
        return text_error(404, NOT_FOUND)
    stored, raw = loaded
    parsed = await inbox.parse(raw)
    if not stored.summary.read:
        await inbox.store.mark_read([stored.summary.id], True)
        # Reading it marked it read: say so, as a listing now would.
        stored = dataclasses.replace(stored, summary=dataclasses.replace(stored.summary, read=True))
    return JSONResponse(message_json(stored, parsed))


async def get_headers(inbox: Inbox, request: Request) -> Response:
    loaded = await inbox.load(request.path_params["id"])
    if loaded is None:
        return text_error(404, NOT_FOUND)
    parsed = await inbox.parse(loaded[1])
    return JSONResponse(parsed.header_values())


async def get_raw(inbox: Inbox, request: Request) -> Response:
    """The stored bytes, streamed from the store a part at a time (``stream_raw``): a 50 MB
    message never sits whole in the process on its way out."""
    resolved = await inbox.resolve(request.path_params["id"])
    stored = None if resolved is None else await inbox.store.get(resolved)
    stream = None if stored is None else await inbox.store.stream_raw(stored.summary.id)
    if stored is None or stream is None:
        return text_error(404, NOT_FOUND)
    disposition = None
    if request.query_params.get("dl"):
        disposition = content_disposition("attachment", f"{stored.summary.id}.eml")
    headers = sandbox_headers(disposition) | {"Content-Length": str(stored.summary.size)}
    return StreamingResponse(
        _closing(stream), media_type="text/plain; charset=utf-8", headers=headers
    )


async def _closing(stream: RawStream) -> AsyncIterator[bytes]:
    """The stream's parts, closing it however the response ends (a client gone, say)."""
    async with contextlib.aclosing(stream):
        async for part in stream:
            yield part


async def get_part(inbox: Inbox, request: Request) -> Response:
    loaded = await inbox.load(request.path_params["id"])
    if loaded is None:
        return text_error(404, NOT_FOUND)
    parsed = await inbox.parse(loaded[1])
    part = parsed.part(request.path_params["part"])
    if part is None:
        return text_error(404, "part not found")
    kind = "inline" if part.inline else "attachment"
    headers = sandbox_headers(content_disposition(kind, part.filename))
    headers["Content-Type"] = part.media_type  # as the message says: no charset added
    return Response(part.data, headers=headers)


# -- tags ------------------------------------------------------------------------------------


def _taggable(inbox: Inbox) -> TaggableStore | None:
    store = inbox.store
    return store if isinstance(store, TaggableStore) else None


NO_TAGS = "this message store does not keep tags"


async def get_tags(inbox: Inbox, request: Request) -> Response:
    return JSONResponse(sorted(await _tags(inbox), key=str.lower))


async def set_tags(inbox: Inbox, request: Request) -> Response:
    store = _taggable(inbox)
    if store is None:
        return json_error(501, NO_TAGS)
    fields = await body_fields(request)
    ids = string_list(fields, "ids")
    tags = [t.strip() for t in string_list(fields, "tags") if t.strip()]
    if not ids:
        raise BadRequest("IDs is required")
    await store.set_tags([MessageId(i) for i in ids], sorted(set(tags)))
    return PlainTextResponse("ok")


async def rename_tag(inbox: Inbox, request: Request) -> Response:
    store = _taggable(inbox)
    if store is None:
        return json_error(501, NO_TAGS)
    name = (await body_fields(request)).get("name")
    if isinstance(name, list):
        name = name[-1] if name else ""
    if not isinstance(name, str) or not name.strip():
        raise BadRequest("Name is required")
    await store.rename_tag(request.path_params["tag"], name.strip())
    return PlainTextResponse("ok")


async def delete_tag(inbox: Inbox, request: Request) -> Response:
    store = _taggable(inbox)
    if store is None:
        return json_error(501, NO_TAGS)
    await store.delete_tag(request.path_params["tag"])
    return PlainTextResponse("ok")


# -- application -----------------------------------------------------------------------------


async def info(inbox: Inbox, request: Request) -> Response:
    store, sink = inbox.store, inbox.sink
    totals = await store.list(limit=0)
    memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    size = await store.disk_usage() if isinstance(store, SizedStore) else 0
    # The sink is this process's: what its SMTP sessions received.  SMTP workers (other
    # processes) receive with sinks of their own, which this process cannot see, so with
    # workers the counts are this process's share, not the node's.
    counts = sink.counts if isinstance(sink, CountingSink) else SinkCounts()
    return JSONResponse(
        {
            "Version": __version__,
            "LatestVersion": "",
            "Database": inbox.settings.database,
            "DatabaseSize": size,
            "Messages": totals.total,
            "Unread": totals.unread,
            "Tags": await _tags(inbox),
            "RuntimeStats": {
                "Uptime": int(time.monotonic() - inbox.started),
                "Memory": memory,
                "MessagesDeleted": inbox.deleted + inbox.pruned(),
                "SMTPAccepted": counts.accepted,
                "SMTPAcceptedSize": counts.accepted_octets,
                "SMTPRejected": counts.rejected,
                "SMTPIgnored": 0,  # mailgate ignores no message (Mailpit: duplicate ids)
            },
        }
    )


async def webui(inbox: Inbox, request: Request) -> Response:
    return JSONResponse(
        {
            "Label": inbox.settings.label,
            "MessageRelay": {
                "Enabled": inbox.settings.release_allowed,
                "SMTPServer": "",
                "ReturnPath": "",
                "AllowedRecipients": "",
                "BlockedRecipients": "",
                "OverrideFrom": "",
                "PreserveMessageIDs": False,
            },
            "SpamAssassin": False,
            "ChaosEnabled": inbox.chaos is not None,
            "DuplicatesIgnored": False,
            "HideDeleteAllButton": False,
        }
    )


UNSUPPORTED: dict[str, tuple[str, list[str]]] = {
    "/api/v1/message/{id}/html-check": ("HTML compatibility checks", ["GET"]),
    "/api/v1/message/{id}/sa-check": ("SpamAssassin checks", ["GET"]),
}


def _unsupported(feature: str) -> Handler:
    async def endpoint(request: Request) -> Response:
        return json_error(501, f"mailgate does not support {feature}")

    return endpoint


def api_routes(inbox: Inbox) -> list[BaseRoute]:
    """The Mailpit-compatible routes."""

    def route(path: str, work: Callable[[Inbox, Request], Awaitable[Response]], method: str) -> Any:
        return Route(path, _handler(inbox, work), methods=[method])

    routes: list[BaseRoute] = [
        route("/api/v1/messages", list_messages, "GET"),
        route("/api/v1/messages", set_read, "PUT"),
        route("/api/v1/messages", delete_messages, "DELETE"),
        route("/api/v1/search", search, "GET"),
        route("/api/v1/search", delete_search, "DELETE"),
        route("/api/v1/message/{id}", get_message, "GET"),
        route("/api/v1/message/{id}/headers", get_headers, "GET"),
        route("/api/v1/message/{id}/raw", get_raw, "GET"),
        route("/api/v1/message/{id}/part/{part}", get_part, "GET"),
        route("/api/v1/message/{id}/part/{part}/thumb", thumbnail, "GET"),
        route("/api/v1/message/{id}/link-check", link_check_endpoint(), "GET"),
        route("/api/v1/tags", get_tags, "GET"),
        route("/api/v1/tags", set_tags, "PUT"),
        route("/api/v1/tags/{tag:path}", rename_tag, "PUT"),
        route("/api/v1/tags/{tag:path}", delete_tag, "DELETE"),
        route("/api/v1/info", info, "GET"),
        route("/api/v1/webui", webui, "GET"),
        route("/api/v1/chaos", get_chaos, "GET"),
        route("/api/v1/chaos", set_chaos, "PUT"),
        *(route(path, work, method) for path, work, method in queue_endpoints()),
        route("/api/v1/send", send_message, "POST"),
    ]
    routes += [
        Route(path, _unsupported(feature), methods=methods)
        for path, (feature, methods) in UNSUPPORTED.items()
    ]
    return routes
