"""The outbound queue over HTTP: what ``mailgate queue`` does, and Mailpit's release.

``GET /api/v1/queue`` lists the recipients waiting (``?all=true``: delivered
and bounced ones too), ``GET /api/v1/queue/{id}`` one message's; ``POST
/api/v1/queue/{id}/retry|hold|release|bounce`` and ``DELETE
/api/v1/queue/{id}`` act on one message (``POST /api/v1/queue/retry``: on
all).  ``POST /api/v1/message/{id}/release`` (Mailpit's shape, ``{"To":
[...]}``) queues a stored message for delivery to other recipients.

Sending mail onward from the API must not make an open relay of the inbox:
a release is allowed only when the API asks for a password
(``--http-auth``), or in catch-all development mode on a loopback address
(``WebSettings.release_allowed``, decided by whoever builds the app).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from mailgate.model import MessageId, QueuedDelivery
from mailgate.ports import QueueStore
from mailgate.web._context import BadRequest, Inbox, body_fields, json_error, string_list

__all__ = ["delivery_json", "queue_action", "queue_endpoints"]

MAX_RELEASE_RECIPIENTS = 100
_ADDRESS = re.compile(r"[^\s<>()@,;:\\\"\x00-\x1f\x7f]{1,64}@[A-Za-z0-9.\-\[\]:]{1,255}\Z")

Work = Callable[[Inbox, Request], Awaitable[Response]]


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat()


def delivery_json(row: QueuedDelivery) -> dict[str, object]:
    """One recipient's queue row as JSON, for the API and ``mailgate queue list --json``."""
    return {
        "MessageID": row.message_id,
        "Recipient": row.recipient,
        "Sender": row.sender,
        "State": row.state.value,
        "Attempts": row.attempts,
        "QueuedAt": _iso(row.queued_at),
        "NextAttempt": _iso(row.next_attempt),
        "LastAttempt": _iso(row.last_attempt),
        "LastReply": row.last_reply,
        "Relay": row.relay,
    }


def _queue(inbox: Inbox) -> QueueStore | None:
    store = inbox.store
    return store if isinstance(store, QueueStore) else None


NO_QUEUE = "this message store keeps no outbound queue"


async def list_queue(inbox: Inbox, request: Request) -> Response:
    """``GET /api/v1/queue``."""
    queue = _queue(inbox)
    if queue is None:
        return json_error(501, NO_QUEUE)
    every = request.query_params.get("all", "").lower() in ("1", "true", "yes")
    rows = await queue.queued(pending_only=not every)
    return JSONResponse({"Total": len(rows), "Recipients": [delivery_json(r) for r in rows]})


async def message_queue(inbox: Inbox, request: Request) -> Response:
    """``GET /api/v1/queue/{id}``: every recipient of one message, done ones too."""
    queue = _queue(inbox)
    if queue is None:
        return json_error(501, NO_QUEUE)
    rows = await queue.queued(MessageId(request.path_params["id"]), pending_only=False)
    if not rows:
        return PlainTextResponse("message not queued", status_code=404)
    return JSONResponse({"Total": len(rows), "Recipients": [delivery_json(r) for r in rows]})


async def queue_action(
    queue: QueueStore, action: str, message_id: MessageId | None, now: datetime
) -> int:
    """Apply an operator's ``action`` (``retry``, ``hold``, ``release``, ``bounce``,
    ``delete``) to a message's recipients, or with ``retry`` and no id to every message's;
    how many recipients it changed.  For the API and ``mailgate queue`` alike."""
    if action == "retry":
        return await queue.retry(message_id, now)
    assert message_id is not None, "only retry acts on every message"
    match action:
        case "hold":
            return await queue.hold(message_id)
        case "release":
            return await queue.release(message_id, now)
        case "bounce":
            return await queue.request_bounce(message_id, now)
        case "delete":
            return await queue.dequeue(message_id)
    raise ValueError(f"no queue action {action!r}")


def _action(name: str) -> Work:
    async def act(inbox: Inbox, request: Request) -> Response:
        queue = _queue(inbox)
        if queue is None:
            return json_error(501, NO_QUEUE)
        raw_id = request.path_params.get("id")
        target = MessageId(raw_id) if raw_id else None
        count = await queue_action(queue, name, target, datetime.now(UTC))
        if not count:
            return PlainTextResponse(f"no recipient to {name}", status_code=404)
        return JSONResponse({"Recipients": count})

    return act


def _recipients(values: list[str]) -> list[str]:
    if not values:
        raise BadRequest("To must name one recipient or more")
    if len(values) > MAX_RELEASE_RECIPIENTS:
        raise BadRequest(f"To names more than {MAX_RELEASE_RECIPIENTS} recipients")
    for value in values:
        if not _ADDRESS.match(value.strip()):
            raise BadRequest(f"{value!r} is not an email address")
    return list(dict.fromkeys(value.strip() for value in values))


async def release_message(inbox: Inbox, request: Request) -> Response:
    """``POST /api/v1/message/{id}/release`` with ``{"To": [...]}`` (Mailpit's shape)."""
    queue = _queue(inbox)
    if queue is None:
        return json_error(501, NO_QUEUE)
    if not inbox.settings.release_allowed:
        return json_error(
            403,
            "releasing mail over HTTP needs --http-auth (or catch-all mode on a loopback address)",
        )
    recipients = _recipients(string_list(await body_fields(request), "to"))
    message_id = await inbox.resolve(request.path_params["id"])
    if message_id is None or await inbox.store.get(message_id) is None:
        return PlainTextResponse("message not found", status_code=404)
    await queue.enqueue(message_id, recipients, datetime.now(UTC))
    return PlainTextResponse("ok")


def queue_endpoints() -> list[tuple[str, Work, str]]:
    """(path, work, method) of every queue endpoint."""
    endpoints: list[tuple[str, Work, str]] = [
        ("/api/v1/queue", list_queue, "GET"),
        ("/api/v1/queue/retry", _action("retry"), "POST"),
        ("/api/v1/queue/{id}", message_queue, "GET"),
        ("/api/v1/queue/{id}", _action("delete"), "DELETE"),
        ("/api/v1/message/{id}/release", release_message, "POST"),
    ]
    endpoints += [
        (f"/api/v1/queue/{{id}}/{name}", _action(name), "POST")
        for name in ("retry", "hold", "release", "bounce")
    ]
    return endpoints
