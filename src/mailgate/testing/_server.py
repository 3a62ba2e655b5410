"""A real mailgate in a background thread, for tests of code that sends mail.

``MailgateServer`` runs exactly what ``mailgate serve`` runs (``runtime.Mailgate``:
the SMTP server, the accept path, the SQLite store, and the commit service, a
child process that stores all new mail) on its own event loop in a thread,
bound to a free port, so synchronous test code can send with ``smtplib`` and
read back what arrived.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import ssl
import tempfile
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from mailgate.config import Domain, Limits, Listen, Settings
from mailgate.model import MessageId, MessageSummary, StoredMessage
from mailgate.ports import Authenticator, MessageStore
from mailgate.runtime import Mailgate
from mailgate.server import SMTPServer

__all__ = ["MailgateServer"]

_T = TypeVar("_T")


class MailgateServer:
    """A running mailgate for tests: ``with MailgateServer() as server: ...``.

    Keyword arguments: ``data_dir`` (a fresh temporary directory by
    default), ``domains`` (local domain names; none means catch-all),
    ``hostname``, ``limits`` (a ``config.Limits``) and ``settings`` (a whole
    ``config.Settings``; its ``smtp`` address is still replaced by a free
    port on 127.0.0.1 unless ``port`` is given).
    """

    def __init__(
        self,
        *,
        data_dir: Path | None = None,
        domains: tuple[str, ...] = (),
        hostname: str = "mailgate.test",
        limits: Limits | None = None,
        settings: Settings | None = None,
        port: int = 0,
        tls_context: ssl.SSLContext | None = None,
        authenticator: Authenticator | None = None,
        http: bool = False,
    ) -> None:
        self._tls_context = tls_context
        self._authenticator = authenticator
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="mailgate-test-")
            data_dir = Path(self._tmp.name)
        base = settings or Settings()
        self.settings = dataclasses.replace(
            base,
            smtp=Listen("127.0.0.1", port),
            http=Listen("127.0.0.1", 0) if http else None,
            data_dir=data_dir,
            hostname=base.hostname or hostname,
            domains=base.domains or tuple(Domain(d) for d in domains),
            limits=limits or base.limits,
        )
        self.host = "127.0.0.1"
        self.port = 0
        self.http_url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._store: MessageStore | None = None
        self.server: SMTPServer | None = None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> Self:
        """Start the server and wait until it listens.

        Raises whatever start-up raised (``OSError``, ``MailgateError``).
        """
        self._thread = threading.Thread(target=self._run, name="mailgate-test", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise self._failure
        return self

    def stop(self) -> None:
        """Shut the server down gracefully and wait for it."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as error:  # pragma: no cover - reported to start()
            self._failure = error
        finally:
            self._ready.set()
            loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        app = Mailgate(
            self.settings, tls_context=self._tls_context, authenticator=self._authenticator
        )
        await app.start()
        try:
            self._store = app.store
            self.server = app.server
            self.host, self.port = app.server.addresses_of("smtp")[0]
            if app.http is not None:
                host, port = app.http.addresses[0]
                self.http_url = f"http://{host}:{port}"
            self._ready.set()
            await self._stop.wait()
        finally:
            await app.aclose()

    # ------------------------------------------------------------- reading

    def _call(self, coro: Coroutine[Any, Any, _T], timeout: float = 30.0) -> _T:
        assert self._loop is not None, "the server is not running"
        future: concurrent.futures.Future[_T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout)

    def port_of(self, listener: str) -> int:
        """The port a listener (``smtp``, ``submission``, ``smtps``) is bound to."""
        assert self.server is not None, "the server is not running"
        return self.server.addresses_of(listener)[0][1]

    @property
    def store(self) -> MessageStore:
        """The running store (use it from the server's loop only)."""
        assert self._store is not None, "the server is not running"
        return self._store

    def messages(self, limit: int = 1000) -> list[MessageSummary]:
        """Stored messages, newest first."""
        page = self._call(self.store.list(limit=limit))
        return list(page.messages)

    def get(self, message_id: MessageId | str) -> StoredMessage | None:
        """One stored message's summary and envelope."""
        return self._call(self.store.get(MessageId(message_id)))

    def raw(self, message_id: MessageId | str) -> bytes | None:
        """The exact stored bytes of a message."""
        return self._call(self.store.raw(MessageId(message_id)))

    def wait_for_messages(self, count: int, timeout: float = 10.0) -> list[MessageSummary]:
        """Wait until at least ``count`` messages are stored; return them all.

        Raises ``TimeoutError`` if they do not arrive in time.  (Mail that
        got a 250 is already stored; this is for mail sent in the background.)
        """
        deadline = time.monotonic() + timeout
        while True:
            found = self.messages()
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(found)} of {count} messages arrived")
            time.sleep(0.02)
