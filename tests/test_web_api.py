"""The Mailpit-compatible JSON API over a real SQLite store, mail put in by the accept path."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from mailgate.config import Listen
from mailgate.model import MessageId, StoreEventKind
from mailgate.ports import MessageStore, SearchableStore, StoreError, TaggableStore
from mailgate.query import Query, parse_query
from mailgate.stores import open_store
from mailgate.web import (
    EVENTS_VERSION,
    EventHub,
    EventsEndedError,
    HTTPService,
    WebSettings,
    create_app,
    wait_for_match,
)
from mailgate.web import _search as web_search
from web_helpers import deliver, email

PDF = b"%PDF-1.4 not really a pdf\x00\xff"
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYPgPAAEDAQAIicLsAAAAAElFTkSuQmCC"
)


@dataclass
class Inbox:
    store: MessageStore
    client: httpx.AsyncClient
    spool: Path

    async def send(self, content: bytes, **envelope: object) -> MessageId:
        return await deliver(self.store, content, spool_dir=self.spool, **envelope)  # type: ignore[arg-type]


@pytest_asyncio.fixture
async def inbox(tmp_path: Path) -> AsyncIterator[Inbox]:
    store = await open_store(f"sqlite://{tmp_path}/mail.db")
    app = create_app(store, settings=WebSettings(label="test", database="mail.db"))
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://inbox.test") as client:
            yield Inbox(store, client, tmp_path / "spool")
    finally:
        await store.aclose()


def rich_message() -> bytes:
    return email(
        "Quarterly report",
        sender="Alice Example <alice@example.com>",
        to="Bob <bob@example.org>, carol@example.net",
        text="Numbers are up.",
        html='<p>Numbers are <b>up</b>. <img src="cid:logo@x"></p>',
        attachments=(("report.pdf", "application/pdf", PDF),),
        headers={"Cc": "Dave <dave@example.com>", "Reply-To": "team@example.com"},
    )


def with_inline_image(content: bytes) -> bytes:
    """The message with a related inline PNG whose Content-ID is logo@x."""
    message = message_from_bytes(content, policy=policy.default)
    assert isinstance(message, EmailMessage)
    html_part = message.get_body(("html",))
    assert isinstance(html_part, EmailMessage)
    html_part.add_related(PNG, maintype="image", subtype="png", cid="<logo@x>")
    return message.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


# -- listing -------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_list_messages_newest_first_with_paging(inbox: Inbox) -> None:
    ids = [await inbox.send(email(f"message {n}")) for n in range(5)]
    response = await inbox.client.get("/api/v1/messages", params={"start": 1, "limit": 2})
    assert response.status_code == 200
    body = response.json()
    assert body["total"] == 5
    assert body["unread"] == 5
    assert body["messages_count"] == 5
    assert body["count"] == 2
    assert body["start"] == 1
    assert [m["ID"] for m in body["messages"]] == [ids[3], ids[2]]
    first = body["messages"][0]
    assert first["Subject"] == "message 3"
    assert first["From"] == {"Name": "Alice Example", "Address": "alice@example.com"}
    assert first["To"] == [{"Name": "Bob", "Address": "bob@example.org"}]
    assert first["Read"] is False
    assert first["Created"].endswith("Z")
    assert set(first) >= {
        "ID", "MessageID", "Read", "From", "To", "Cc", "Bcc", "ReplyTo", "Subject",
        "Created", "Username", "Tags", "Size", "Attachments", "Snippet",
    }  # fmt: skip


@pytest.mark.asyncio
async def test_bad_paging_is_a_400(inbox: Inbox) -> None:
    response = await inbox.client.get("/api/v1/messages", params={"limit": "many"})
    assert response.status_code == 400
    assert "limit" in response.text


# -- one message ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_get_message_has_everything_and_marks_it_read(inbox: Inbox) -> None:
    message_id = await inbox.send(with_inline_image(rich_message()), auth_user="app")
    response = await inbox.client.get(f"/api/v1/message/{message_id}")
    assert response.status_code == 200
    message = response.json()
    assert message["ID"] == message_id
    assert message["Subject"] == "Quarterly report"
    assert message["MessageID"] == "Quarterly.report@test.example"
    assert message["From"] == {"Name": "Alice Example", "Address": "alice@example.com"}
    assert message["To"] == [
        {"Name": "Bob", "Address": "bob@example.org"},
        {"Name": "", "Address": "carol@example.net"},
    ]
    assert message["Cc"] == [{"Name": "Dave", "Address": "dave@example.com"}]
    assert message["ReplyTo"] == [{"Name": "", "Address": "team@example.com"}]
    assert message["ReturnPath"] == "alice@example.com"
    assert message["Username"] == "app"
    assert message["Date"] == "2024-01-01T10:00:00.000Z"
    assert message["Text"].strip() == "Numbers are up."
    assert "<b>up</b>" in message["HTML"]
    (attachment,) = message["Attachments"]
    assert attachment["FileName"] == "report.pdf"
    assert attachment["ContentType"] == "application/pdf"
    assert attachment["Size"] == len(PDF)
    assert attachment["Checksums"]["SHA256"] == hashlib.sha256(PDF).hexdigest()
    (inline,) = message["Inline"]
    assert inline["ContentID"] == "logo@x"
    assert inline["ContentType"] == "image/png"

    listed = (await inbox.client.get("/api/v1/messages")).json()
    assert listed["messages"][0]["Read"] is True
    assert listed["unread"] == 0


@pytest.mark.asyncio
async def test_latest_and_missing(inbox: Inbox) -> None:
    assert (await inbox.client.get("/api/v1/message/latest")).status_code == 404
    await inbox.send(email("old"))
    await inbox.send(email("new"))
    assert (await inbox.client.get("/api/v1/message/latest")).json()["Subject"] == "new"
    missing = await inbox.client.get("/api/v1/message/01HXXXXXXXXXXXXXXXXXXXXXXX")
    assert missing.status_code == 404
    assert (await inbox.client.get("/api/v1/message/nope/raw")).status_code == 404


@pytest.mark.asyncio
async def test_headers_raw_and_parts(inbox: Inbox) -> None:
    content = rich_message()
    message_id = await inbox.send(content)
    headers = (await inbox.client.get(f"/api/v1/message/{message_id}/headers")).json()
    assert list(headers) == sorted(headers)
    assert headers["Subject"] == ["Quarterly report"]
    assert headers["Message-Id"] == ["<Quarterly.report@test.example>"]
    assert headers["Received"][0].startswith("from ")

    raw = await inbox.client.get(f"/api/v1/message/{message_id}/raw")
    assert raw.status_code == 200
    assert raw.headers["content-type"].startswith("text/plain")
    assert raw.content.endswith(content)
    assert raw.content.startswith(b"Return-Path: <")
    assert headers["Return-Path"] == [raw.content.split(b"\r\n")[0][13:].decode()]
    download = await inbox.client.get(f"/api/v1/message/{message_id}/raw", params={"dl": "1"})
    assert download.headers["content-disposition"].startswith("attachment;")

    message = (await inbox.client.get(f"/api/v1/message/{message_id}")).json()
    part_id = message["Attachments"][0]["PartID"]
    part = await inbox.client.get(f"/api/v1/message/{message_id}/part/{part_id}")
    assert part.status_code == 200
    assert part.content == PDF
    assert part.headers["content-type"] == "application/pdf"
    assert part.headers["content-disposition"].startswith('attachment; filename="report.pdf"')
    assert "sandbox" in part.headers["content-security-policy"]
    assert part.headers["x-content-type-options"] == "nosniff"
    missing = await inbox.client.get(f"/api/v1/message/{message_id}/part/9.9")
    assert missing.status_code == 404


@pytest.mark.asyncio
async def test_views(inbox: Inbox) -> None:
    message_id = await inbox.send(with_inline_image(rich_message()))
    html = await inbox.client.get(f"/view/{message_id}.html")
    assert html.status_code == 200
    assert "<b>up</b>" in html.text
    assert "cid:logo@x" not in html.text
    assert "data:image/png;base64," in html.text
    csp = html.headers["content-security-policy"]
    assert "default-src 'none'" in csp
    assert "script-src" not in csp
    assert "http:" not in csp
    remote = await inbox.client.get(f"/view/{message_id}.html", params={"remote": "1"})
    assert "img-src data: cid: http: https:" in remote.headers["content-security-policy"]
    text = await inbox.client.get(f"/view/{message_id}.txt")
    assert text.text.strip() == "Numbers are up."
    plain_id = await inbox.send(email("plain only"))
    assert (await inbox.client.get(f"/view/{plain_id}.html")).status_code == 404


# -- changing ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_set_read_by_ids_search_and_all(inbox: Inbox) -> None:
    a = await inbox.send(email("alpha"))
    await inbox.send(email("beta"))
    await inbox.send(email("gamma"))
    response = await inbox.client.put("/api/v1/messages", json={"IDs": [a], "Read": True})
    assert response.status_code == 200
    assert response.text == "ok"
    assert (await inbox.client.get("/api/v1/messages")).json()["unread"] == 2
    await inbox.client.put("/api/v1/messages", json={"Search": "subject:beta", "Read": True})
    assert (await inbox.client.get("/api/v1/messages")).json()["unread"] == 1
    await inbox.client.put("/api/v1/messages", json={"Read": True})
    assert (await inbox.client.get("/api/v1/messages")).json()["unread"] == 0
    await inbox.client.put("/api/v1/messages", json={"ids": [a], "read": False})  # any case
    assert (await inbox.client.get("/api/v1/messages")).json()["unread"] == 1
    bad = await inbox.client.put("/api/v1/messages", content=b"{nope", headers={})
    assert bad.status_code == 400


@pytest.mark.asyncio
async def test_delete_by_ids_and_all(inbox: Inbox) -> None:
    a = await inbox.send(email("alpha"))
    b = await inbox.send(email("beta"))
    await inbox.send(email("gamma"))
    response = await inbox.client.request("DELETE", "/api/v1/messages", json={"IDs": [a]})
    assert response.text == "ok"
    remaining = (await inbox.client.get("/api/v1/messages")).json()
    assert remaining["total"] == 2
    # A form body, as some clients send it.
    await inbox.client.request("DELETE", "/api/v1/messages", data={"ids": [b]})
    assert (await inbox.client.get("/api/v1/messages")).json()["total"] == 1
    await inbox.client.request("DELETE", "/api/v1/messages")
    assert (await inbox.client.get("/api/v1/messages")).json()["total"] == 0


@pytest.mark.asyncio
async def test_search_and_delete_by_search(inbox: Inbox) -> None:
    await inbox.send(rich_message())
    await inbox.send(email("Lunch plans", sender="bob@example.org", text="Pizza?"))
    await inbox.send(email("Re: Quarterly report", sender="carol@example.net"))
    found = (await inbox.client.get("/api/v1/search", params={"query": "quarterly"})).json()
    assert found["messages_count"] == 2
    assert found["total"] == 3
    assert found["count"] == 2
    found = (
        await inbox.client.get("/api/v1/search", params={"query": "quarterly -from:carol"})
    ).json()
    assert [m["Subject"] for m in found["messages"]] == ["Quarterly report"]
    found = (await inbox.client.get("/api/v1/search", params={"query": "has:attachment"})).json()
    assert [m["Subject"] for m in found["messages"]] == ["Quarterly report"]
    found = (await inbox.client.get("/api/v1/search", params={"query": "pizza"})).json()
    assert [m["Subject"] for m in found["messages"]] == ["Lunch plans"]
    dated = await inbox.client.get(
        "/api/v1/search", params={"query": "before:2000-01-01", "tz": "Pacific/Auckland"}
    )
    assert dated.json()["messages_count"] == 0

    assert (await inbox.client.get("/api/v1/search")).status_code == 400
    assert (
        await inbox.client.get("/api/v1/search", params={"query": "is:starry"})
    ).status_code == 400
    bad_zone = await inbox.client.get("/api/v1/search", params={"query": "x", "tz": "Mars/Base"})
    assert bad_zone.status_code == 400

    response = await inbox.client.request(
        "DELETE", "/api/v1/search", params={"query": "subject:quarterly"}
    )
    assert response.text == "ok"
    left = (await inbox.client.get("/api/v1/messages")).json()
    assert [m["Subject"] for m in left["messages"]] == ["Lunch plans"]


@pytest.mark.asyncio
async def test_tags(inbox: Inbox) -> None:
    a = await inbox.send(email("alpha"))
    b = await inbox.send(email("beta"))
    response = await inbox.client.put("/api/v1/tags", json={"IDs": [a, b], "Tags": ["Urgent", "x"]})
    assert response.text == "ok"
    assert (await inbox.client.get("/api/v1/tags")).json() == ["Urgent", "x"]
    listed = (await inbox.client.get("/api/v1/messages")).json()
    assert listed["tags"] == ["Urgent", "x"]
    assert listed["messages"][0]["Tags"] == ["Urgent", "x"]
    found = (await inbox.client.get("/api/v1/search", params={"query": "tag:urgent"})).json()
    assert found["messages_count"] == 2
    await inbox.client.put("/api/v1/tags/Urgent", json={"Name": "Later"})
    assert (await inbox.client.get("/api/v1/tags")).json() == ["Later", "x"]
    await inbox.client.request("DELETE", "/api/v1/tags/x")
    assert (await inbox.client.get("/api/v1/tags")).json() == ["Later"]
    info = (await inbox.client.get("/api/v1/info")).json()
    assert info["Tags"] == {"Later": 2}
    assert (await inbox.client.put("/api/v1/tags", json={"Tags": ["a"]})).status_code == 400


class CoreOnly:
    """A store with the core of ``ports.MessageStore`` and nothing more: no search, no tags."""

    def __init__(self, store: MessageStore) -> None:
        self.store = store.store
        self.list = store.list
        self.get = store.get
        self.raw = store.raw
        self.delete = store.delete
        self.mark_read = store.mark_read
        self.subscribe = store.subscribe
        self.aclose = store.aclose


@pytest.mark.asyncio
async def test_a_store_with_only_the_core_is_searched_by_scanning_and_keeps_no_tags(
    inbox: Inbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(web_search, "SCAN_PAGE", 2)  # so the scan reads several pages
    core = CoreOnly(inbox.store)
    assert not isinstance(core, SearchableStore)
    assert not isinstance(core, TaggableStore)
    assert isinstance(inbox.store, SearchableStore)
    assert isinstance(inbox.store, TaggableStore)
    for subject in ("alpha one", "beta", "alpha two", "gamma", "alpha three"):
        await inbox.send(email(subject))
    app = create_app(core, settings=WebSettings(label="core", database="mail.db"))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://inbox.test") as client:
        found = (
            await client.get("/api/v1/search", params={"query": "alpha", "start": 1, "limit": 1})
        ).json()
        assert [m["Subject"] for m in found["messages"]] == ["alpha two"]
        assert (found["messages_count"], found["total"]) == (3, 5)
        await client.put("/api/v1/messages", json={"Search": "alpha", "Read": True})
        assert (await client.get("/api/v1/messages")).json()["unread"] == 2
        await client.request("DELETE", "/api/v1/search", params={"query": "-alpha"})
        left = (await client.get("/api/v1/messages")).json()
        assert [m["Subject"] for m in left["messages"]] == ["alpha three", "alpha two", "alpha one"]
        assert (await client.get("/api/v1/tags")).json() == []
        refused = await client.put("/api/v1/tags", json={"IDs": ["x"], "Tags": ["a"]})
        assert refused.status_code == 501


# -- application ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_info_webui_health_and_openapi(inbox: Inbox) -> None:
    await inbox.send(email("one"))
    info = (await inbox.client.get("/api/v1/info")).json()
    assert info["Messages"] == 1
    assert info["Unread"] == 1
    assert info["Database"] == "mail.db"
    assert "Uptime" in info["RuntimeStats"]
    webui = (await inbox.client.get("/api/v1/webui")).json()
    assert webui["Label"] == "test"
    assert webui["MessageRelay"]["Enabled"] is False
    assert (await inbox.client.get("/livez")).json() == {"status": "ok"}
    ready = await inbox.client.get("/readyz")
    assert (ready.status_code, ready.json()) == (
        200,
        {"status": "ready", "checks": {"store": "ok", "commits": "ok"}},
    )
    document = (await inbox.client.get("/api/v1/openapi.json")).json()
    assert document["openapi"].startswith("3.")
    for path in ("/api/v1/messages", "/api/v1/events", "/api/v1/wait", "/livez", "/view/{ID}.html"):
        assert path in document["paths"]
    for path in ("/api/v1/queue", "/api/v1/queue/{ID}", "/api/v1/queue/{ID}/hold"):
        assert path in document["paths"]
    assert "403" in document["paths"]["/api/v1/message/{ID}/release"]["post"]["responses"]


@pytest.mark.asyncio
async def test_readyz_says_commits_fail_until_one_succeeds_again(
    inbox: Inbox, tmp_path: Path
) -> None:
    await inbox.send(email("before"))
    # The table small bodies go to refuses rows, as a faulty disk under it would.
    fault = sqlite3.connect(tmp_path / "mail.db", isolation_level=None)
    try:
        fault.execute(
            "CREATE TRIGGER fault BEFORE INSERT ON bodies"
            " BEGIN SELECT RAISE(ABORT, 'the bodies table cannot be written'); END"
        )
        with pytest.raises(StoreError, match="the bodies table cannot be written"):
            await inbox.send(email("refused"))
        ready = await inbox.client.get("/readyz")
        assert ready.status_code == 503
        body = ready.json()
        assert (body["status"], body["failed"], body["checks"]["store"]) == (
            "not ready",
            "commits",
            "ok",
        )
        assert body["error"] == body["checks"]["commits"]
        assert re.fullmatch(
            r"a commit failed \d+ s ago and none has succeeded since:"
            r" could not write to the message store: the bodies table cannot be written",
            body["error"],
        ), body
        fault.execute("DROP TRIGGER fault")
    finally:
        fault.close()
    # Repaired: the next commit goes through, and the node is ready again by itself.
    await inbox.send(email("after"))
    assert (await inbox.client.get("/readyz")).status_code == 200
    page = (await inbox.client.get("/api/v1/messages")).json()
    assert [m["Subject"] for m in page["messages"]] == ["after", "before"]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/message/latest/html-check"),
        ("GET", "/api/v1/message/latest/sa-check"),
    ],
)
async def test_what_mailgate_lacks_is_a_clear_501(inbox: Inbox, method: str, path: str) -> None:
    response = await inbox.client.request(method, path)
    assert response.status_code == 501
    assert "does not support" in response.json()["Error"]


@pytest.mark.asyncio
async def test_the_inbox_page_and_its_files(inbox: Inbox) -> None:
    page = await inbox.client.get("/")
    assert page.status_code == 200
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    # Paths are relative to the page's <base>, "/" here (--webroot moves it).
    assert '<base href="/">' in page.text
    assert '<script src="static/app.js"' in page.text
    for name in ("app.js", "queue.js", "message.js", "theme.js", "app.css"):
        assert (await inbox.client.get(f"/static/{name}")).status_code == 200


@pytest.mark.asyncio
async def test_a_message_address_is_the_page_beside_its_html_and_text(inbox: Inbox) -> None:
    message_id = await inbox.send(email("Addressed", html="<p>HTML part</p>"))
    index = await inbox.client.get("/")
    for path in (f"/view/{message_id}", "/view/latest", "/view/no-such-message"):
        page = await inbox.client.get(path, params={"q": "from:alice", "page": "2"})
        assert page.status_code == 200, path
        assert page.text == index.text
        assert page.headers["content-security-policy"] == index.headers["content-security-policy"]
    html = await inbox.client.get(f"/view/{message_id}.html")
    assert html.text.strip() == "<p>HTML part</p>"
    assert "sandbox" in html.headers["content-security-policy"]
    text = await inbox.client.get(f"/view/{message_id}.txt")
    assert text.text.strip() == "Hello Bob"
    assert text.headers["content-type"].startswith("text/plain")
    assert (await inbox.client.get(f"/view/{message_id}/more")).status_code == 404


@pytest.mark.asyncio
async def test_basic_auth(tmp_path: Path) -> None:
    store = await open_store(f"sqlite://{tmp_path}/mail.db")
    app = create_app(store, settings=WebSettings(http_auth=("admin", "s3cret")))
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://inbox.test") as client:
            denied = await client.get("/api/v1/messages")
            assert denied.status_code == 401
            assert denied.headers["www-authenticate"].startswith("Basic ")
            wrong = await client.get("/api/v1/messages", auth=("admin", "guess"))
            assert wrong.status_code == 401
            garbage = await client.get("/", headers={"Authorization": "Basic !!!"})
            assert garbage.status_code == 401
            allowed = await client.get("/api/v1/messages", auth=("admin", "s3cret"))
            assert allowed.status_code == 200
            assert (await client.get("/livez")).status_code == 200
    finally:
        await store.aclose()


# -- live: events and wait, over a real HTTP server ------------------------------------------


@pytest_asyncio.fixture
async def live(tmp_path: Path) -> AsyncIterator[tuple[MessageStore, str, Path]]:
    store = await open_store(f"sqlite://{tmp_path}/mail.db")
    service = HTTPService(create_app(store), Listen("127.0.0.1", 0))
    await service.start()
    host, port = service.addresses[0]
    try:
        yield store, f"http://{host}:{port}", tmp_path / "spool"
    finally:
        await service.aclose()
        await store.aclose()


async def next_event(lines: AsyncIterator[str]) -> tuple[str, dict[str, object]]:
    name = ""
    async for line in lines:
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            return name, json.loads(line.removeprefix("data: "))
    raise AssertionError("the stream ended")


@pytest.mark.asyncio
async def test_events_report_stored_read_and_deleted(
    live: tuple[MessageStore, str, Path],
) -> None:
    store, url, spool = live
    async with (
        httpx.AsyncClient(base_url=url) as client,
        client.stream("GET", "/api/v1/events") as stream,
    ):
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.aiter_lines()
        assert await next_event(lines) == (
            "ready",
            {"v": EVENTS_VERSION, "type": "ready", "ids": []},
        )
        message_id = await deliver(store, email("live one"), spool_dir=spool)
        name, data = await asyncio.wait_for(next_event(lines), 10)
        assert name == "stored"
        assert data["v"] == EVENTS_VERSION
        assert data["ids"] == [message_id]
        messages = data["messages"]
        assert isinstance(messages, list)
        assert messages[0]["Subject"] == "live one"
        await client.put("/api/v1/messages", json={"IDs": [message_id], "Read": True})
        assert await asyncio.wait_for(next_event(lines), 10) == (
            "read",
            {"v": EVENTS_VERSION, "type": "read", "ids": [message_id]},
        )
        await client.request("DELETE", "/api/v1/messages")
        name, data = await asyncio.wait_for(next_event(lines), 10)
        assert (name, data["ids"]) == ("deleted", [])


@pytest.mark.asyncio
async def test_wait_returns_a_message_as_it_arrives(live: tuple[MessageStore, str, Path]) -> None:
    store, url, spool = live
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        await deliver(store, email("unrelated"), spool_dir=spool)
        waiting = asyncio.create_task(
            client.get("/api/v1/wait", params={"query": "subject:token", "timeout": "20"})
        )
        await asyncio.sleep(0.2)  # let the wait begin; the result does not depend on it
        assert not waiting.done()
        await deliver(store, email("Your token is 123456"), spool_dir=spool)
        response = await asyncio.wait_for(waiting, 20)
        assert response.status_code == 200
        assert response.json()["Subject"] == "Your token is 123456"
        assert "123456" in response.json()["Subject"]

        # Already there: answered at once.  Not marked read.
        again = await client.get("/api/v1/wait", params={"query": "token"})
        assert again.json()["Subject"] == "Your token is 123456"
        listed = (await client.get("/api/v1/messages")).json()
        assert listed["unread"] == 2

        # since= skips what arrived before.
        late = await client.get(
            "/api/v1/wait",
            params={"query": "token", "timeout": "0.2", "since": "2999-01-01T00:00:00Z"},
        )
        assert late.status_code == 408
        assert "no matching message" in late.json()["Error"]
        bad = await client.get("/api/v1/wait", params={"timeout": "soon"})
        assert bad.status_code == 400


class SearchSpy:
    """A real store that says when it is searched."""

    def __init__(self, store: MessageStore) -> None:
        self._store = store
        self.searched = asyncio.Event()
        self.searches = 0

    async def search(self, query: Query, *, offset: int = 0, limit: int = 50) -> object:
        """Search; ``searched`` is set once the search has read the store, not before."""
        assert isinstance(self._store, SearchableStore)
        self.searches += 1
        found = await self._store.search(query, offset=offset, limit=limit)
        self.searched.set()
        return found

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)


@pytest.mark.asyncio
async def test_a_wait_searches_again_when_read_flags_change(tmp_path: Path) -> None:
    store = await open_store(f"sqlite://{tmp_path}/mail.db")
    hub = EventHub(store)
    try:
        # The hub has passed on the message's stored event before the wait listens: were
        # that event to come later, the summary it carries might already say read, and
        # match with no search at all.
        with hub.listen() as early:
            message_id = await deliver(store, email("Code 1234"), spool_dir=tmp_path / "spool")
            stored = await asyncio.wait_for(anext(aiter(early)), 10)
            assert (stored.kind, stored.message_ids) == (StoreEventKind.STORED, (message_id,))
        spy = SearchSpy(store)
        query = parse_query("is:read code")
        waiting = asyncio.create_task(wait_for_match(spy, hub, query, 30))  # type: ignore[arg-type]
        # It listens, then searches; the flag changes only once that search found nothing.
        await asyncio.wait_for(spy.searched.wait(), 10)
        await store.mark_read([message_id], True)
        found = await asyncio.wait_for(waiting, 10)
        assert found is not None
        assert (found.id, found.read) == (message_id, True)
        assert spy.searches == 2  # at the start, and when the flag changed

        assert await wait_for_match(store, hub, parse_query("subject:none"), 0.05) is None
        ending = asyncio.create_task(wait_for_match(store, hub, parse_query("nothing"), 30))
        await hub.aclose()
        with pytest.raises(EventsEndedError, match="shutting down"):
            await asyncio.wait_for(ending, 10)
    finally:
        await hub.aclose()
        await store.aclose()


@pytest.mark.asyncio
async def test_closing_the_service_ends_live_streams(tmp_path: Path) -> None:
    store = await open_store(f"sqlite://{tmp_path}/mail.db")
    service = HTTPService(create_app(store), Listen("127.0.0.1", 0))
    await service.start()
    host, port = service.addresses[0]
    try:
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=30) as client:
            waiting = asyncio.create_task(client.get("/api/v1/wait", params={"timeout": "60"}))
            async with client.stream("GET", "/api/v1/events") as stream:
                lines = stream.aiter_lines()
                await next_event(lines)
                await asyncio.sleep(0.1)
                await asyncio.wait_for(service.aclose(), 10)
                rest = [line async for line in lines]
                assert not any(line.startswith("event: ") for line in rest)
            response = await asyncio.wait_for(waiting, 10)
            assert response.status_code == 503
    finally:
        await store.aclose()
