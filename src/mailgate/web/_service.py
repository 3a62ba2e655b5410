"""Serving the web app with uvicorn, inside the caller's event loop.

``HTTPService`` binds its sockets itself (so port 0 works and ``addresses``
is known as soon as ``start`` returns), runs uvicorn's ``Server`` as a task
of the running loop without installing signal handlers (the command line
owns the signals), and shuts it down gracefully: live streams are ended
first, requests in flight get ``SHUTDOWN_GRACE_SECONDS`` to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import uvicorn
from starlette.applications import Starlette

from mailgate.config import Listen
from mailgate.web._app import inbox_of

__all__ = ["HTTPService"]

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_SECONDS = 5
LISTEN_BACKLOG = 128
STARTUP_POLL_SECONDS = 0.005


class _Server(uvicorn.Server):
    """uvicorn's server, minus its signal handling."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(listen: Listen) -> list[socket.socket]:
    """Listening sockets for every address ``listen.host`` names (all for ``""``).

    Raises ``OSError`` when an address cannot be bound.
    """
    infos = socket.getaddrinfo(
        listen.host or None,
        listen.port,
        type=socket.SOCK_STREAM,
        flags=socket.AI_PASSIVE,
    )
    sockets: list[socket.socket] = []
    seen: set[tuple[int, object]] = set()
    port = listen.port
    try:
        for family, kind, proto, _, address in infos:
            if (family, address[0]) in seen:
                continue
            seen.add((family, address[0]))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            # With port 0, every address gets the port the first one was given.
            sock.bind((address[0], port, *address[2:]))
            port = sock.getsockname()[1]
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class HTTPService:
    """The web app served on ``listen``: ``await start()``, then ``await aclose()``."""

    def __init__(self, app: Starlette, listen: Listen) -> None:
        self._app = app
        self._listen = listen
        self._sockets: list[socket.socket] = []
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """``(host, port)`` of each listening socket, once started."""
        return [sock.getsockname()[:2] for sock in self._sockets]

    async def start(self) -> None:
        """Bind and start serving; return once the server accepts connections.

        Raises ``OSError`` when the address cannot be bound, and whatever
        stopped uvicorn from starting.
        """
        self._sockets = _bind(self._listen)
        config = uvicorn.Config(
            self._app,
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
            ws="wsproto",  # the websocket /api/events; a dependency, so always there
        )
        server = _Server(config)
        self._server = server
        self._task = asyncio.create_task(server.serve(sockets=self._sockets))
        while not server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise OSError(f"the HTTP server on {self._listen} did not start")
            await asyncio.sleep(STARTUP_POLL_SECONDS)
        log.info("HTTP inbox and API on %s", ", ".join(f"{h}:{p}" for h, p in self.addresses))

    async def aclose(self) -> None:
        """End live streams, finish requests in flight (bounded), and stop."""
        await inbox_of(self._app).close()
        server, task = self._server, self._task
        if server is None or task is None:
            return
        server.should_exit = True
        try:
            await task
        finally:
            self._server = self._task = None
            for sock in self._sockets:
                sock.close()

    async def __aenter__(self) -> HTTPService:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
