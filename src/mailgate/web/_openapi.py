"""The OpenAPI 3.1 document of everything the web app serves, at ``/api/v1/openapi.json``."""

from __future__ import annotations

from functools import cache
from typing import Any

from mailgate import __version__
from mailgate.web._events import EVENTS_VERSION

__all__ = ["openapi_document"]

JSON = dict[str, Any]


def _ref(name: str) -> JSON:
    return {"$ref": f"#/components/schemas/{name}"}


def _array(items: JSON) -> JSON:
    return {"type": "array", "items": items}


def _object(**properties: JSON) -> JSON:
    return {"type": "object", "properties": properties}


STRING: JSON = {"type": "string"}
INTEGER: JSON = {"type": "integer"}
BOOLEAN: JSON = {"type": "boolean"}
TIME: JSON = {"type": "string", "format": "date-time"}
CHECKS: JSON = {"type": "object", "additionalProperties": STRING}
"""``/readyz``'s checks: each one's name, and ``ok`` or its one-line error."""
TEXT_OK: JSON = {"description": "ok", "content": {"text/plain": {"schema": STRING}}}
TEXT_ERROR: JSON = {
    "description": "the error, as text",
    "content": {"text/plain": {"schema": STRING}},
}
JSON_ERROR: JSON = {
    "description": "the error",
    "content": {"application/json": {"schema": _ref("Error")}},
}


def _json(schema: JSON, description: str = "OK") -> JSON:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _param(name: str, where: str, description: str, schema: JSON = STRING, **extra: Any) -> JSON:
    return {"name": name, "in": where, "description": description, "schema": schema, **extra}


ID = _param("ID", "path", 'a message id, or "latest"', required=True)
QUEUED_ID = _param("ID", "path", "a message id", required=True)
START = _param("start", "query", "pagination offset", INTEGER)
LIMIT = _param("limit", "query", "page size (default 50)", INTEGER)
QUERY = _param("query", "query", "a search in Mailpit's language", required=True)
TZ = _param("tz", "query", "time zone of dates in before: and after: (e.g. Europe/Paris)")


def _op(
    summary: str, responses: JSON, *, parameters: list[JSON] | None = None, **extra: Any
) -> JSON:
    return {"summary": summary, "parameters": parameters or [], "responses": responses, **extra}


def _body(**properties: JSON) -> JSON:
    return {"content": {"application/json": {"schema": _object(**properties)}}}


def _unsupported(summary: str) -> JSON:
    return _op(f"{summary} (not supported: 501)", {"501": JSON_ERROR}, parameters=[])


SCHEMAS: JSON = {
    "Error": _object(Error=STRING),
    "Address": _object(Name=STRING, Address=STRING),
    "Attachment": _object(
        PartID=STRING,
        FileName=STRING,
        ContentType=STRING,
        ContentID=STRING,
        Size=INTEGER,
        Checksums=_object(MD5=STRING, SHA1=STRING, SHA256=STRING),
    ),
    "MessageSummary": _object(
        ID=STRING,
        MessageID=STRING,
        Read=BOOLEAN,
        From=_ref("Address"),
        To=_array(_ref("Address")),
        Cc=_array(_ref("Address")),
        Bcc=_array(_ref("Address")),
        ReplyTo=_array(_ref("Address")),
        Subject=STRING,
        Created=TIME,
        Username=STRING,
        Tags=_array(STRING),
        Size=INTEGER,
        Attachments=INTEGER,
        Snippet=STRING,
    ),
    "MessagesSummary": _object(
        total=INTEGER,
        unread=INTEGER,
        count=INTEGER,
        messages_count=INTEGER,
        messages_unread=INTEGER,
        start=INTEGER,
        tags=_array(STRING),
        messages=_array(_ref("MessageSummary")),
    ),
    "Message": _object(
        ID=STRING,
        MessageID=STRING,
        Read=BOOLEAN,
        From=_ref("Address"),
        To=_array(_ref("Address")),
        Cc=_array(_ref("Address")),
        Bcc=_array(_ref("Address")),
        ReplyTo=_array(_ref("Address")),
        ReturnPath=STRING,
        Subject=STRING,
        Date=TIME,
        Created=TIME,
        Username=STRING,
        Tags=_array(STRING),
        Size=INTEGER,
        Text=STRING,
        HTML=STRING,
        Inline=_array(_ref("Attachment")),
        Attachments=_array(_ref("Attachment")),
        ListUnsubscribe=_object(
            Header=STRING, HeaderPost=STRING, Links=_array(STRING), Errors=STRING
        ),
    ),
    "Event": {
        **_object(
            v={"type": "integer", "const": EVENTS_VERSION},
            type={
                "type": "string",
                "enum": ["ready", "stored", "read", "unread", "deleted", "queue", "overflow"],
            },
            ids=_array(STRING),
            messages=_array(_ref("MessageSummary")),
        ),
        "description": (
            "The data of one server-sent event; ids [] means every message."
            " queue: the outbound queue rows of these messages changed."
        ),
    },
    "QueuedRecipient": _object(
        MessageID=STRING,
        Recipient=STRING,
        Sender=STRING,
        State={
            "type": "string",
            "enum": ["queued", "deferred", "held", "delivered", "bounced"],
        },
        Attempts=INTEGER,
        QueuedAt=TIME,
        NextAttempt={**TIME, "type": ["string", "null"]},
        LastAttempt={**TIME, "type": ["string", "null"]},
        LastReply=STRING,
        Relay=STRING,
    ),
    "Queue": _object(Total=INTEGER, Recipients=_array(_ref("QueuedRecipient"))),
    "LinkCheck": {
        **_object(
            Errors=INTEGER,
            Links=_array(_object(URL=STRING, StatusCode=INTEGER, Status=STRING)),
        ),
        "description": (
            "Errors: links that failed or answered 4xx/5xx. StatusCode 0: no answer, Status"
            " says why; 451: an address the link check may not ask."
        ),
    },
    "ChaosTrigger": {
        **_object(ErrorCode=INTEGER, Probability=INTEGER),
        "description": "Reply with ErrorCode (400-599) Probability times in 100 (0-100).",
    },
    "ChaosTriggers": {
        **_object(
            Sender=_ref("ChaosTrigger"),
            Recipient=_ref("ChaosTrigger"),
            Authentication=_ref("ChaosTrigger"),
        ),
        "description": (
            "MAIL FROM, each RCPT TO and AUTH. A trigger left out of a PUT is reset: code"
            " 451 (Authentication 535), probability 0."
        ),
    },
    "QueueChange": {
        **_object(Recipients=INTEGER),
        "description": "How many recipients the action changed.",
    },
}


def _queue_paths() -> JSON:
    queue = _json(_ref("Queue"))
    change = _json(_ref("QueueChange"))
    none = {"description": "no recipient to act on", "content": {"text/plain": {"schema": STRING}}}
    paths: JSON = {
        "/api/v1/queue": {
            "get": _op(
                "The outbound queue: each recipient waiting, oldest message first",
                {"200": queue, "501": JSON_ERROR},
                parameters=[_param("all", "query", "true to list delivered and bounced too")],
            )
        },
        "/api/v1/queue/retry": {
            "post": _op(
                "Make every waiting recipient due now",
                {"200": change, "404": none, "501": JSON_ERROR},
            )
        },
        "/api/v1/queue/{ID}": {
            "get": _op(
                "Every recipient of one message, done ones too",
                {"200": queue, "404": none, "501": JSON_ERROR},
                parameters=[QUEUED_ID],
            ),
            "delete": _op(
                "Drop a message's recipients from the queue, telling nobody",
                {"200": change, "404": none, "501": JSON_ERROR},
                parameters=[QUEUED_ID],
            ),
        },
    }
    for action, summary in (
        ("retry", "Make a message's waiting recipients due now"),
        ("hold", "Hold a message's waiting recipients: no attempt until released"),
        ("release", "Release a message's held recipients, due now"),
        ("bounce", "Bounce a message's waiting recipients at the next run"),
    ):
        paths[f"/api/v1/queue/{{ID}}/{action}"] = {
            "post": _op(
                summary, {"200": change, "404": none, "501": JSON_ERROR}, parameters=[QUEUED_ID]
            )
        }
    return paths


def _paths() -> JSON:
    listing = _json(_ref("MessagesSummary"))
    message = _json(_ref("Message"))
    not_found = {"description": "no such message", "content": {"text/plain": {"schema": STRING}}}
    return {
        "/api/v1/messages": {
            "get": _op("List messages, newest first", {"200": listing}, parameters=[START, LIMIT]),
            "put": _op(
                "Set the read flag of messages (IDs, a Search, or all)",
                {"200": TEXT_OK, "400": TEXT_ERROR},
                parameters=[TZ],
                requestBody=_body(IDs=_array(STRING), Read=BOOLEAN, Search=STRING),
            ),
            "delete": _op(
                "Delete messages (IDs, or all when none are given)",
                {"200": TEXT_OK, "400": TEXT_ERROR},
                requestBody=_body(IDs=_array(STRING)),
            ),
        },
        "/api/v1/search": {
            "get": _op(
                "Search messages",
                {"200": listing, "400": TEXT_ERROR},
                parameters=[QUERY, START, LIMIT, TZ],
            ),
            "delete": _op(
                "Delete the messages a search matches",
                {"200": TEXT_OK, "400": TEXT_ERROR},
                parameters=[QUERY, TZ],
            ),
        },
        "/api/v1/message/{ID}": {
            "get": _op(
                "A message, marking it read", {"200": message, "404": not_found}, parameters=[ID]
            )
        },
        "/api/v1/message/{ID}/headers": {
            "get": _op(
                "A message's headers by canonical name",
                {"200": _json({"type": "object", "additionalProperties": _array(STRING)})},
                parameters=[ID],
            )
        },
        "/api/v1/message/{ID}/raw": {
            "get": _op(
                "The message's source, as stored",
                {"200": {"description": "the source", "content": {"text/plain": {}}}},
                parameters=[ID, _param("dl", "query", "1 to download it as a file")],
            )
        },
        "/api/v1/message/{ID}/part/{PartID}": {
            "get": _op(
                "An attachment or inline part, with its content type",
                {"200": {"description": "the part's content"}, "404": not_found},
                parameters=[ID, _param("PartID", "path", "the part's id", required=True)],
            )
        },
        "/api/v1/message/{ID}/part/{PartID}/thumb": {
            "get": _op(
                "A 180x120 JPEG thumbnail of an image part (blank for a part that is not an"
                " image); 422: an image it cannot read, or over 20 megapixels",
                {
                    "200": {"description": "the thumbnail", "content": {"image/jpeg": {}}},
                    "404": not_found,
                    "422": TEXT_ERROR,
                    "501": JSON_ERROR,
                    "503": TEXT_ERROR,
                },
                parameters=[ID, _param("PartID", "path", "the part's id", required=True)],
            )
        },
        "/api/v1/message/{ID}/link-check": {
            "get": _op(
                "Ask every link of the message with HEAD (loopback and private addresses only"
                " with --allow-internal-http-requests)",
                {"200": _json(_ref("LinkCheck")), "404": not_found, "503": TEXT_ERROR},
                parameters=[ID, _param("follow", "query", "true to follow redirects")],
            )
        },
        "/api/v1/tags": {
            "get": _op("Every tag in use", {"200": _json(_array(STRING))}),
            "put": _op(
                "Replace the tags of messages",
                {"200": TEXT_OK, "400": TEXT_ERROR, "501": JSON_ERROR},
                requestBody=_body(IDs=_array(STRING), Tags=_array(STRING)),
            ),
        },
        "/api/v1/tags/{Tag}": {
            "put": _op(
                "Rename a tag",
                {"200": TEXT_OK, "400": TEXT_ERROR, "501": JSON_ERROR},
                parameters=[_param("Tag", "path", "the tag", required=True)],
                requestBody=_body(Name=STRING),
            ),
            "delete": _op(
                "Remove a tag from every message",
                {"200": TEXT_OK, "501": JSON_ERROR},
                parameters=[_param("Tag", "path", "the tag", required=True)],
            ),
        },
        "/api/v1/info": {"get": _op("Totals and runtime information", {"200": _json(_object())})},
        "/api/v1/webui": {"get": _op("Settings of the web inbox", {"200": _json(_object())})},
        "/api/v1/events": {
            "get": _op(
                f"Live changes as server-sent events (payload version {EVENTS_VERSION})",
                {
                    "200": {
                        "description": "event: <type>, data: an Event",
                        "content": {"text/event-stream": {"schema": _ref("Event")}},
                    }
                },
            )
        },
        "/api/v1/wait": {
            "get": _op(
                "The newest message matching a search, as soon as one exists (not marked read)",
                {
                    "200": message,
                    "400": JSON_ERROR,
                    "408": JSON_ERROR,
                    "503": JSON_ERROR,
                },
                parameters=[
                    _param("query", "query", "a search; empty matches any message"),
                    _param("timeout", "query", "seconds to wait (default 30, max 300)"),
                    _param("since", "query", "RFC 3339: ignore messages received before"),
                    TZ,
                ],
            )
        },
        "/api/v1/openapi.json": {"get": _op("This document", {"200": _json(_object())})},
        "/view/{ID}.html": {
            "get": _op(
                "The HTML body, inline images embedded, under a CSP that loads nothing",
                {"200": {"description": "HTML"}, "404": not_found},
                parameters=[ID, _param("remote", "query", "1 to allow remote images")],
            )
        },
        "/view/{ID}.txt": {
            "get": _op("The text body", {"200": {"description": "text"}}, parameters=[ID])
        },
        "/livez": {"get": _op("The process is up", {"200": _json(_object(status=STRING))})},
        "/readyz": {
            "get": _op(
                "The node can take mail: the store answers, commits go through, the disk has room"
                " (503 names the failing check and its error)",
                {
                    "200": _json(_object(status=STRING, checks=CHECKS)),
                    "503": _json(
                        _object(status=STRING, failed=STRING, error=STRING, checks=CHECKS)
                    ),
                },
            )
        },
        "/api/v1/message/{ID}/release": {
            "post": _op(
                "Queue a stored message for delivery to other recipients"
                " (403 unless the API asks for a password, or serves catch-all on loopback)",
                {
                    "200": TEXT_OK,
                    "400": TEXT_ERROR,
                    "403": JSON_ERROR,
                    "404": not_found,
                    "501": JSON_ERROR,
                },
                parameters=[ID],
                requestBody=_body(To=_array(STRING)),
            )
        },
        "/api/v1/send": {
            "post": _op(
                "Send a message built from JSON, accepted as SMTP mail is"
                " (403 for other domains unless releasing is allowed)",
                {
                    "200": _json(_object(ID=STRING)),
                    "400": TEXT_ERROR,
                    "403": JSON_ERROR,
                    "501": JSON_ERROR,
                    "507": JSON_ERROR,
                },
                requestBody=_body(
                    From=_object(Email=STRING, Name=STRING),
                    To=_array(_object(Email=STRING, Name=STRING)),
                    Cc=_array(_object(Email=STRING, Name=STRING)),
                    Bcc=_array(STRING),
                    ReplyTo=_array(_object(Email=STRING, Name=STRING)),
                    Subject=STRING,
                    Text=STRING,
                    HTML=STRING,
                    Attachments=_array(
                        _object(
                            Content=STRING, Filename=STRING, ContentType=STRING, ContentID=STRING
                        )
                    ),
                    Headers={"type": "object", "additionalProperties": STRING},
                    Tags=_array(STRING),
                ),
            )
        },
        **_queue_paths(),
        "/api/v1/chaos": {
            "get": _op(
                "The chaos triggers in force (400 unless started with --enable-chaos)",
                {"200": _json(_ref("ChaosTriggers")), "400": TEXT_ERROR},
            ),
            "put": _op(
                "Set the chaos triggers; the answer comes once every SMTP process has them",
                {"200": _json(_ref("ChaosTriggers")), "400": TEXT_ERROR},
                requestBody={"content": {"application/json": {"schema": _ref("ChaosTriggers")}}},
            ),
        },
        "/api/v1/message/{ID}/html-check": {"get": _unsupported("HTML check")},
        "/api/v1/message/{ID}/sa-check": {"get": _unsupported("SpamAssassin check")},
    }


@cache
def openapi_document() -> JSON:
    """The document (built once; treat it as read-only)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "mailgate",
            "version": __version__,
            "description": (
                "Mailpit's v1 API (same paths and JSON fields), plus live events,"
                " waiting for a message, and health checks."
            ),
        },
        "paths": _paths(),
        "components": {"schemas": SCHEMAS},
    }
