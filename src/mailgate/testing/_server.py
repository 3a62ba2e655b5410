"""A real mailgate in a background thread, for tests of code that sends mail.

``MailgateServer`` runs exactly what ``mailgate serve`` runs (``runtime.Mailgate``:
the SMTP server, the accept path, the SQLite store, and the commit service, a
child process that stores all new mail) on its own event loop in a thread,
bound to a free port, so synchronous test code can send with ``smtplib`` and
read back what arrived.

``wait_for(query)`` waits as the web inbox's ``GET /api/v1/wait`` does, with
the same code (``web.wait_for_match``): it listens to the store's events, so
it returns as soon as a matching message is stored, and polls nothing.  Its
answer is a parsed ``Message`` (``_message``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import ssl
import tempfile
import threading
from collections.abc import Coroutine, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from mailgate.config import Domain, Limits, Listen, Settings
from mailgate.model import Address, MessageId, MessagePage, MessageSummary, StoredMessage
from mailgate.ports import Authenticator, MessageStore
from mailgate.query import Query, parse_query
from mailgate.runtime import Mailgate
from mailgate.server import SMTPServer
from mailgate.testing._message import Message, message_from
from mailgate.web import EventHub, search_page, wait_for_match

__all__ = ["MailgateServer", "WaitTimeoutError"]

_T = TypeVar("_T")

LISTED = 1000
"""Messages ``wait_for_messages`` returns at least."""
SHOWN_ON_TIMEOUT = 20
"""Messages a ``WaitTimeoutError`` lists, newest first."""
CALL_MARGIN_SECONDS = 30.0
"""How much longer than its own time-out the caller waits for a call to the server's loop."""


def _people(addresses: Sequence[Address]) -> str:
    return ", ".join(f"{a.name} <{a.address}>" if a.name else a.address for a in addresses)


class WaitTimeoutError(TimeoutError):
    """No message matched a ``wait_for`` in time.

    A ``TimeoutError`` only: ``MailgateError`` is compiled in the built wheel, and a class
    cannot have both it and a built-in exception with a layout of its own as bases.

    ``seen`` holds the messages stored when it gave up (at most
    ``SHOWN_ON_TIMEOUT``, newest first) and ``total`` how many there were;
    the error's text lists each one's subject, sender and recipients.
    """

    __module__ = "mailgate.testing"  # where it is imported from, and shown in a failure

    def __init__(self, query: str, timeout: float, seen: Sequence[MessageSummary], total: int):
        self.query, self.timeout, self.seen, self.total = query, timeout, tuple(seen), total
        text = f"no message matching {query!r} arrived within {timeout:g} seconds"
        if not seen:
            text += "; the store holds no message"
        else:
            plural = "message" if total == 1 else "messages"
            shown = "" if total <= len(seen) else f" (the newest {len(seen)} shown)"
            text += f"; the store holds {total} {plural}{shown}:"
            for summary in seen:
                sender = _people((summary.sender,) if summary.sender else ())
                text += (
                    f"\n  Subject: {summary.subject!r}  From: {sender}  To: {_people(summary.to)}"
                )
                for label, addresses in (("Cc", summary.cc), ("Bcc", summary.bcc)):
                    text += f"  {label}: {_people(addresses)}" if addresses else ""
        super().__init__(text)


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
        self._hub: EventHub | None = None
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
        self._hub = EventHub(app.store)
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
            await self._hub.aclose()  # ends waits in hand, as the web app's does
            await app.aclose()

    # ------------------------------------------------------------- reading

    def _call(self, coro: Coroutine[Any, Any, _T], timeout: float = 30.0) -> _T:
        assert self._loop is not None, "the server is not running"
        future: concurrent.futures.Future[_T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except BaseException:
            future.cancel()  # the caller gave up (a time-out, ^C): so does the loop
            raise

    def port_of(self, listener: str) -> int:
        """The port a listener (``smtp``, ``submission``, ``smtps``) is bound to."""
        assert self.server is not None, "the server is not running"
        return self.server.addresses_of(listener)[0][1]

    @property
    def store(self) -> MessageStore:
        """The running store (use it from the server's loop only)."""
        assert self._store is not None, "the server is not running"
        return self._store

    def messages(self, limit: int = 1000, *, query: str | None = None) -> list[MessageSummary]:
        """Stored messages, newest first; with ``query``, those it matches.

        ``query`` is the web inbox's search language (``mailgate.query``):
        ``to:bob@example.org subject:"Welcome"``, ``has:attachment``,
        ``is:unread``, ``tag:signup``.  Raises ``QueryError`` for a query that
        cannot be read.
        """
        parsed = parse_query(query or "")
        page = self._call(search_page(self.store, parsed, limit=limit))
        return list(page.messages)

    def get(self, message_id: MessageId | str) -> StoredMessage | None:
        """One stored message's summary and envelope."""
        return self._call(self.store.get(MessageId(message_id)))

    def raw(self, message_id: MessageId | str) -> bytes | None:
        """The exact stored bytes of a message."""
        return self._call(self.store.raw(MessageId(message_id)))

    def message(self, message_id: MessageId | str) -> Message:
        """One stored message, parsed.  Raises ``KeyError`` when there is no such message."""
        loaded = self._call(self._load(MessageId(message_id)))
        if loaded is None:
            raise KeyError(message_id)
        return message_from(*loaded)

    def wait_for(self, query: str = "", timeout: float = 5.0) -> Message:
        """The newest stored message ``query`` matches, else the first to arrive that does.

        ``query`` is the search language of ``messages`` (empty: any
        message).  The wait is on the store's events, not a polling loop: it
        returns as soon as the message is stored.  Nothing is marked read.
        Raises ``QueryError`` for a query that cannot be read and
        ``WaitTimeoutError`` when no message matches within ``timeout``
        seconds: its text lists the messages that were stored.
        """
        __tracebackhide__ = True  # pytest shows the failure at the caller's line
        parsed = parse_query(query)
        found = self._call(self._wait(parsed, timeout), timeout + CALL_MARGIN_SECONDS)
        if isinstance(found, MessagePage):
            raise WaitTimeoutError(query, timeout, found.messages, found.total)
        return message_from(*found)

    async def _load(self, message_id: MessageId) -> tuple[StoredMessage, bytes] | None:
        stored = await self.store.get(message_id)
        raw = None if stored is None else await self.store.raw(message_id)
        return None if stored is None or raw is None else (stored, raw)

    async def _wait(
        self, query: Query, timeout: float
    ) -> tuple[StoredMessage, bytes] | MessagePage:
        """The matching message loaded, or the newest messages when none matched in time."""
        assert self._hub is not None, "the server is not running"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            left = max(0.0, deadline - loop.time())
            found = await wait_for_match(self.store, self._hub, query, left)
            if found is None:
                return await self.store.list(limit=SHOWN_ON_TIMEOUT)
            loaded = await self._load(found.id)
            if loaded is not None:  # else deleted meanwhile: wait on
                return loaded

    def wait_for_messages(self, count: int, timeout: float = 10.0) -> list[MessageSummary]:
        """Wait until at least ``count`` messages are stored; return them all.

        Raises ``TimeoutError`` if they do not arrive in time.  (Mail that
        got a 250 is already stored; this is for mail sent in the background.)
        Like ``wait_for``, it waits on the store's events.
        """
        page = self._call(self._wait_count(count, timeout), timeout + CALL_MARGIN_SECONDS)
        if page.total < count:
            raise TimeoutError(f"{page.total} of {count} messages arrived")
        return list(page.messages)

    async def _wait_count(self, count: int, timeout: float) -> MessagePage:
        assert self._hub is not None, "the server is not running"
        limit = max(count, LISTED)
        with self._hub.listen() as listener:  # before counting: nothing stored between is missed
            page = await self.store.list(limit=limit)
            if page.total >= count:
                return page
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    async for _ in listener:  # any change: count again
                        page = await self.store.list(limit=limit)
                        if page.total >= count:
                            break
            return page
