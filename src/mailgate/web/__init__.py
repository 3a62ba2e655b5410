"""The web inbox and its JSON API (Mailpit's v1, plus live events and waiting).

``create_app(store, settings=WebSettings(...))`` builds the ASGI app;
``HTTPService(app, listen)`` serves it in the running event loop::

    service = HTTPService(create_app(store, settings=WebSettings()), settings.http)
    await service.start()
    ...
    await service.aclose()
"""

from __future__ import annotations

from mailgate.web._app import BasicAuth, create_app, inbox_of
from mailgate.web._context import WebSettings
from mailgate.web._events import EVENTS_VERSION
from mailgate.web._openapi import openapi_document
from mailgate.web._queue import delivery_json, queue_action
from mailgate.web._service import HTTPService

__all__ = [
    "EVENTS_VERSION",
    "BasicAuth",
    "HTTPService",
    "WebSettings",
    "create_app",
    "delivery_json",
    "inbox_of",
    "openapi_document",
    "queue_action",
]
