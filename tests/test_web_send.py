"""Mailpit's POST /api/v1/send: JSON in, a message accepted as SMTP mail is, never a relay
for anyone who can reach the API."""

from __future__ import annotations

import base64
import email
import email.policy
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from mailgate.delivery import Acceptor, DeliverySettings
from mailgate.model import Address
from mailgate.stores import SQLiteStore
from mailgate.web import WebSettings, create_app

Opened = tuple[SQLiteStore, httpx.AsyncClient]


def api(tmp_path: Path) -> Callable[..., AbstractAsyncContextManager[Opened]]:
    @asynccontextmanager
    async def opened(**settings: Any) -> AsyncIterator[Opened]:
        store = SQLiteStore(tmp_path / "mail.db")
        sink = Acceptor(store, DeliverySettings(hostname="mx.here.test", spool_dir=tmp_path))
        app = create_app(
            store,
            settings=WebSettings(hostname="mx.here.test", **settings),
            sink=sink,
            is_local=lambda address: address.endswith("@here.test"),
        )
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://inbox.test") as c:
                yield store, c
        finally:
            sink.close()
            await store.aclose()

    return opened


PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nnot really").decode()


@pytest.mark.asyncio
async def test_a_message_from_json_is_stored_as_smtp_mail_is(tmp_path: Path) -> None:
    async with api(tmp_path)() as (store, client):
        sent = await client.post(
            "/api/v1/send",
            json={
                "From": {"Email": "app@here.test", "Name": "The App"},
                "To": [{"Email": "bob@here.test", "Name": "Bob"}],
                "Cc": [{"Email": "carol@here.test"}],
                "Bcc": ["dan@here.test"],
                "ReplyTo": [{"Email": "help@here.test"}],
                "Subject": "Welcome, Bob",
                "Text": "Hello Bob.",
                "HTML": "<p>Hello <b>Bob</b>.</p>",
                "Attachments": [
                    {"Content": PNG, "Filename": "logo.png", "ContentType": "image/png"}
                ],
                "Headers": {"X-Campaign": "welcome"},
                "Tags": ["onboarding"],
            },
        )
        assert sent.status_code == 200, sent.text
        message_id = sent.json()["ID"]
        stored = await store.get(message_id)
        raw = await store.raw(message_id)
        assert stored is not None
        assert raw is not None
        assert stored.envelope.mail_from == "app@here.test"
        assert stored.envelope.rcpt_to == ("bob@here.test", "carol@here.test", "dan@here.test")
        assert stored.envelope.protocol == "HTTP"
        assert stored.envelope.outbound == ()
        assert stored.summary.tags == ("onboarding",)
        assert stored.summary.bcc == (Address("", "dan@here.test"),)  # from the envelope
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert message["Subject"] == "Welcome, Bob"
        assert message["From"] == "The App <app@here.test>"
        assert message["Bcc"] is None
        assert message["Reply-To"] == "help@here.test"
        assert message["X-Campaign"] == "welcome"
        assert message["Received"].startswith("from mx.here.test")
        html = message.get_body(preferencelist=("html",))  # type: ignore[attr-defined]
        assert html is not None
        assert "<b>Bob</b>" in html.get_content()
        (attachment,) = message.iter_attachments()  # type: ignore[attr-defined]
        assert attachment.get_filename() == "logo.png"


@pytest.mark.asyncio
async def test_remote_recipients_need_a_protected_api_then_are_queued(tmp_path: Path) -> None:
    body = {"From": {"Email": "app@here.test"}, "To": [{"Email": "x@far.test"}], "Text": "Hi"}
    async with api(tmp_path)() as (store, client):
        refused = await client.post("/api/v1/send", json=body)
        assert refused.status_code == 403
        assert (await store.list()).total == 0
    async with api(tmp_path)(release_allowed=True) as (store, client):
        sent = await client.post("/api/v1/send", json=body)
        assert sent.status_code == 200, sent.text
        rows = await store.queued(sent.json()["ID"])
        assert [r.recipient for r in rows] == ["x@far.test"]


BASE = {"From": {"Email": "a@here.test"}, "To": [{"Email": "b@here.test"}]}


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "body",
    [
        {},
        {"From": {"Email": "app@here.test"}},
        {"From": {"Email": "not an address"}, "To": [{"Email": "b@here.test"}]},
        {**BASE, "Subject": "a\r\nX: y"},
        {**BASE, "Headers": {"To": "x"}},
        {**BASE, "Headers": {"X-A": "1\n2"}},
        {**BASE, "Tags": "x"},
        {**BASE, "Attachments": [{"Content": "!!", "Filename": "a.bin"}]},
    ],
)
async def test_bad_json_is_a_400_and_stores_nothing(tmp_path: Path, body: dict[str, Any]) -> None:
    async with api(tmp_path)() as (store, client):
        response = await client.post("/api/v1/send", json=body)
        assert response.status_code == 400, response.text
        assert (await store.list()).total == 0
