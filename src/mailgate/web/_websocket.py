"""Mailpit's live events: the websocket ``/api/events``, for clients written for Mailpit.

mailgate's own stream is ``GET /api/v1/events`` (server-sent events,
``web._live``); this is the same hub's events in Mailpit's shape, so tools
built on Mailpit's websocket work unchanged.  Each frame is a JSON object
``{"Type": ..., "Data": ...}``:

- ``new``: a message was stored; ``Data`` is its summary, as in a listing;
- ``update``: ``{"ID": ..., "Read": true|false}``, a message read or unread;
- ``delete``: ``{"ID": ...}``, a message deleted;
- ``truncate``: every message was deleted (``Data`` is null);
- ``prune``: more changed than is worth saying one by one (every message
  read or unread, many deleted, or this client fell behind): list again;
- ``stats``: ``{"Total", "Unread", "Version"}``, sent after changes, at most
  every ``STATS_SECONDS``.

The client sends nothing that matters; what it sends is read and dropped,
so a closed connection is noticed.  A websocket is not held to the
same-origin rules a browser applies to other requests, so a page from
another site could open one to the inbox (cross-site websocket hijacking)
and read the mail as it arrives: a handshake whose ``Origin`` is neither
this inbox's own nor one allowed with ``--api-cors`` is refused (``403``)
before it is accepted, as Mailpit does.  Tools that are not browsers send
no ``Origin`` and are let in.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from urllib.parse import SplitResult, urlsplit

from starlette.websockets import WebSocket, WebSocketDisconnect

from mailgate import __version__
from mailgate.model import StoreEventKind
from mailgate.ports import StoreError
from mailgate.web._context import Inbox
from mailgate.web._events import InboxEvent
from mailgate.web._json import summary_json

__all__ = ["mailpit_events", "same_origin"]

STATS_SECONDS = 0.25
MAX_ONE_BY_ONE = 200
"""Deleted messages named one by one; more are a ``prune`` (as Mailpit does)."""

Frame = dict[str, object]
_DEFAULT_PORTS = {"http": 80, "https": 443}


def same_origin(origin: str, host: str, secure: bool) -> bool:
    """Whether ``origin`` (an ``Origin`` header) names the site at ``host`` (a ``Host``)."""
    own = urlsplit(f"{'https' if secure else 'http'}://{host}")
    theirs = urlsplit(origin)
    try:
        return _site(theirs) == _site(own)
    except ValueError:  # a port that is no port
        return False


def _site(url: SplitResult) -> tuple[str, str | None, int | None]:
    return url.scheme, url.hostname, url.port or _DEFAULT_PORTS.get(url.scheme)


def frames(event: InboxEvent) -> list[Frame]:
    """What one hub event says in Mailpit's frames (``stats`` aside)."""
    kind = event.kind
    ids = event.message_ids
    if kind is StoreEventKind.STORED:
        return [{"Type": "new", "Data": summary_json(s)} for s in event.messages]
    if kind in (StoreEventKind.READ, StoreEventKind.UNREAD) and ids:
        read = kind is StoreEventKind.READ
        return [{"Type": "update", "Data": {"ID": i, "Read": read}} for i in ids]
    if kind is StoreEventKind.DELETED and not ids:
        return [{"Type": "truncate", "Data": None}]
    if kind is StoreEventKind.DELETED and len(ids) <= MAX_ONE_BY_ONE:
        return [{"Type": "delete", "Data": {"ID": i}} for i in ids]
    if kind is StoreEventKind.QUEUE:
        return []  # the outbound queue is not part of Mailpit's inbox
    return [{"Type": "prune", "Data": None}]


async def mailpit_events(
    inbox: Inbox, websocket: WebSocket, allowed_origin: Callable[[str], bool]
) -> None:
    """Serve one websocket client until it leaves or the inbox closes."""
    origin = websocket.headers.get("origin")
    host = websocket.headers.get("host", "")
    if origin is not None and not (
        same_origin(origin, host, websocket.url.scheme == "wss") or allowed_origin(origin)
    ):
        await websocket.close(code=1008)  # before accepting: the handshake gets 403
        return
    await websocket.accept()
    with inbox.hub.listen() as listener:
        reader = asyncio.create_task(_drain(websocket))
        stats: asyncio.Task[None] | None = None
        events = aiter(listener)
        try:
            while True:
                following = asyncio.ensure_future(anext(events))
                await asyncio.wait({following, reader}, return_when=asyncio.FIRST_COMPLETED)
                if not following.done():  # the client left
                    following.cancel()
                    break
                try:
                    event = following.result()
                except StopAsyncIteration:  # the inbox is closing
                    break
                for frame in frames(event):
                    await websocket.send_text(json.dumps(frame, separators=(",", ":")))
                if stats is None or stats.done():
                    stats = asyncio.create_task(_send_stats(inbox, websocket))
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass  # the client went away mid-send
        finally:
            running = [task for task in (reader, stats) if task is not None]
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):  # gone already
        await websocket.close()


async def _drain(websocket: WebSocket) -> None:
    """Read and drop what the client sends, until it closes."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass


async def _send_stats(inbox: Inbox, websocket: WebSocket) -> None:
    await asyncio.sleep(STATS_SECONDS)  # changes arriving together: one stats frame
    try:
        totals = await inbox.store.list(limit=0)
    except StoreError:
        return
    data = {"Total": totals.total, "Unread": totals.unread, "Version": __version__}
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        await websocket.send_text(json.dumps({"Type": "stats", "Data": data}))
