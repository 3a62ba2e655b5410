"""The outbound queue over HTTP: list, act, and Mailpit's release, never an open relay."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import httpx
import pytest

from mailgate.model import MessageId
from mailgate.ports import MessageStore
from mailgate.stores import open_store
from mailgate.web import WebSettings, create_app
from web_helpers import deliver, email

Opened = tuple[MessageStore, httpx.AsyncClient, Path]


def api(tmp_path: Path) -> Callable[..., AbstractAsyncContextManager[Opened]]:
    @asynccontextmanager
    async def opened(**settings: object) -> AsyncIterator[Opened]:
        store = await open_store(f"sqlite://{tmp_path}/mail.db")
        app = create_app(store, settings=WebSettings(**settings))  # type: ignore[arg-type]
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://inbox.test") as c:
                yield store, c, tmp_path / "spool"
        finally:
            await store.aclose()

    return opened


async def relayed(store: MessageStore, spool: Path, *recipients: str) -> MessageId:
    return await deliver(
        store, email("Onward"), spool_dir=spool, rcpt_to=recipients, outbound=recipients
    )


@pytest.mark.asyncio
async def test_list_show_and_act_on_the_queue(tmp_path: Path) -> None:
    async with api(tmp_path)() as (store, client, spool):
        first = await relayed(store, spool, "a@far.test", "b@far.test")
        second = await relayed(store, spool, "c@else.test")
        listing = (await client.get("/api/v1/queue")).json()
        assert listing["Total"] == 3
        assert {(r["MessageID"], r["Recipient"], r["State"]) for r in listing["Recipients"]} == {
            (first, "a@far.test", "queued"),
            (first, "b@far.test", "queued"),
            (second, "c@else.test", "queued"),
        }
        assert (await client.post(f"/api/v1/queue/{first}/hold")).json() == {"Recipients": 2}
        states = (await client.get(f"/api/v1/queue/{first}")).json()["Recipients"]
        assert {r["State"] for r in states} == {"held"}
        assert (await client.post(f"/api/v1/queue/{first}/hold")).status_code == 404
        assert (await client.post(f"/api/v1/queue/{first}/release")).json() == {"Recipients": 2}
        assert (await client.post("/api/v1/queue/retry")).json() == {"Recipients": 3}
        assert (await client.post(f"/api/v1/queue/{second}/bounce")).json() == {"Recipients": 1}
        assert (await client.delete(f"/api/v1/queue/{first}")).json() == {"Recipients": 2}
        rest = (await client.get("/api/v1/queue")).json()["Recipients"]
        assert [(r["Recipient"], r["State"]) for r in rest] == [("c@else.test", "queued")]
        assert (await client.get("/api/v1/queue/01NOSUCH000000000000000000")).status_code == 404


@pytest.mark.asyncio
async def test_release_queues_a_stored_message_only_when_the_api_is_protected(
    tmp_path: Path,
) -> None:
    async with api(tmp_path)() as (store, client, spool):
        message = await deliver(store, email("Caught"), spool_dir=spool)
        refused = await client.post(
            f"/api/v1/message/{message}/release", json={"To": ["x@far.test"]}
        )
        assert refused.status_code == 403
        assert "--http-auth" in refused.json()["Error"]
        assert (await client.get("/api/v1/queue")).json()["Total"] == 0
        assert (await client.get("/api/v1/webui")).json()["MessageRelay"]["Enabled"] is False
    async with api(tmp_path)(release_allowed=True) as (store, client, _):
        assert (await client.get("/api/v1/webui")).json()["MessageRelay"]["Enabled"] is True
        released = await client.post(
            "/api/v1/message/latest/release", json={"To": ["x@far.test", "y@far.test"]}
        )
        assert (released.status_code, released.text) == (200, "ok")
        rows = (await client.get("/api/v1/queue")).json()["Recipients"]
        assert [(r["MessageID"], r["Recipient"]) for r in rows] == [
            (message, "x@far.test"),
            (message, "y@far.test"),
        ]
        for body in ({"To": []}, {"To": ["not an address"]}, {"To": "a@b\r\nX: y"}):
            bad = await client.post(f"/api/v1/message/{message}/release", json=body)
            assert bad.status_code == 400, body
        missing = await client.post(
            "/api/v1/message/01NOSUCH000000000000000000/release", json={"To": ["x@far.test"]}
        )
        assert missing.status_code == 404
