"""Helpers for the web tests: messages through the real accept path, a live inbox."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import importlib
import os
import re
import threading
from collections.abc import Coroutine
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Self, TypeVar

import pytest

from mailgate.config import Listen, Outbound, Settings
from mailgate.delivery import Acceptor, DeliverySettings
from mailgate.model import Envelope, MessageId
from mailgate.ports import MessageStore
from mailgate.runtime import Mailgate
from mailgate.web import HTTPService, WebSettings, create_app

T = TypeVar("T")


def require_module(name: str) -> Any:
    """Import ``name``; skip without it, fail without it under CI."""
    if os.environ.get("CI") == "true":
        return importlib.import_module(name)
    return pytest.importorskip(name, reason=f"the Python package {name} is not installed")


def email(
    subject: str = "Hello",
    *,
    sender: str = "Alice Example <alice@example.com>",
    to: str = "Bob <bob@example.org>",
    text: str | None = "Hello Bob",
    html: str | None = None,
    attachments: tuple[tuple[str, str, bytes], ...] = (),
    headers: dict[str, str] | None = None,
) -> bytes:
    """A message as a mail client would send it."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = f"<{re.sub(r'[^A-Za-z0-9]+', '.', subject)}@test.example>"
    message["Date"] = "Mon, 01 Jan 2024 10:00:00 +0000"
    for name, value in (headers or {}).items():
        message[name] = value
    if text is not None:
        message.set_content(text)
    if html is not None:
        if text is None:
            message.set_content(html, subtype="html")
        else:
            message.add_alternative(html, subtype="html")
    for filename, content_type, data in attachments:
        maintype, _, subtype = content_type.partition("/")
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return message.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


async def deliver(
    store: MessageStore,
    content: bytes,
    *,
    spool_dir: Path,
    mail_from: str = "alice@example.com",
    rcpt_to: tuple[str, ...] = ("bob@example.org",),
    auth_user: str | None = None,
    outbound: tuple[str, ...] = (),
) -> MessageId:
    """Put a message in the store through the real accept path (``outbound``: queued too)."""
    acceptor = Acceptor(store, DeliverySettings(hostname="mx.test", spool_dir=spool_dir))
    spool = acceptor.begin(
        Envelope(
            mail_from=mail_from,
            rcpt_to=rcpt_to,
            received_at=datetime.now(UTC),
            helo_name="client.test",
            client_address="127.0.0.1",
            auth_user=auth_user,
            outbound=outbound,
        )
    )
    spool.write(content)
    return await acceptor.commit(spool)


class LiveInbox:
    """SMTP and HTTP of a real mailgate on free ports, on an event loop in a thread.

    ``outbound`` says where its queue runner sends mail for other domains.
    """

    def __init__(
        self, data_dir: Path, web: WebSettings | None = None, *, outbound: Outbound | None = None
    ) -> None:
        self.settings = dataclasses.replace(
            Settings(),
            smtp=Listen("127.0.0.1", 0),
            http=None,
            data_dir=data_dir,
            outbound=outbound or Outbound(),
        )
        self.web = web or WebSettings()
        self.smtp_port = 0
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._app: Mailgate | None = None
        self._http: HTTPService | None = None

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout)

    @property
    def store(self) -> MessageStore:
        assert self._app is not None
        return self._app.store

    async def _start(self) -> None:
        self._app = Mailgate(self.settings)
        await self._app.start()
        self.smtp_port = self._app.server.addresses_of("smtp")[0][1]
        self._http = HTTPService(
            create_app(self._app.store, settings=self.web), Listen("127.0.0.1", 0)
        )
        await self._http.start()
        host, port = self._http.addresses[0]
        self.url = f"http://{host}:{port}"

    async def _stop(self) -> None:
        try:
            if self._http is not None:
                await self._http.aclose()
        finally:
            if self._app is not None:
                await self._app.aclose()

    def __enter__(self) -> Self:
        self._thread.start()
        try:
            self.call(self._start())
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.call(self._stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()
