"""The web inbox and its JSON API (Mailpit's v1, plus live events and waiting).

``create_app(store, settings=WebSettings(...))`` builds the ASGI app;
``HTTPService(app, listen)`` serves it in the running event loop::

    service = HTTPService(create_app(store, settings=WebSettings()), settings.http)
    await service.start()
    ...
    await service.aclose()

The message parsing, search and wait the inbox uses are exported too, for
``mailgate.testing``: ``parse_message``, ``search_page``, and
``wait_for_match`` over an ``EventHub``; and ``summary_json``, the API's summary of a
message, for the webhook (``mailgate.runtime``), which posts the same.
"""

from __future__ import annotations

from mailgate.web._app import BasicAuth, create_app, inbox_of
from mailgate.web._context import WebSettings
from mailgate.web._events import EVENTS_VERSION, EventHub
from mailgate.web._json import summary_json
from mailgate.web._mime import Header, ParsedMessage, Part, parse_message
from mailgate.web._openapi import openapi_document
from mailgate.web._queue import delivery_json, queue_action
from mailgate.web._search import EventsEndedError, search_page, wait_for_match
from mailgate.web._service import HTTPService

__all__ = [
    "EVENTS_VERSION",
    "BasicAuth",
    "EventHub",
    "EventsEndedError",
    "HTTPService",
    "Header",
    "ParsedMessage",
    "Part",
    "WebSettings",
    "create_app",
    "delivery_json",
    "inbox_of",
    "openapi_document",
    "parse_message",
    "queue_action",
    "search_page",
    "summary_json",
    "wait_for_match",
]
