"""The Mailpit API's details a client notices: Bcc, Read, From, counters, odd input.

As in test_web_api.py: a real SQLite store, mail put in by the accept path.
"""

from __future__ import annotations

import dataclasses
import smtplib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from mailgate.config import Domain
from mailgate.delivery import Acceptor, DeliverySettings
from mailgate.model import Envelope, MessageId
from mailgate.ports import MessageStore, SMTPReplyError
from mailgate.stores import open_store
from mailgate.web import WebSettings, create_app
from test_web_api import rich_message, with_inline_image
from web_helpers import LiveInbox, email


@dataclass
class Inbox:
    store: MessageStore
    client: httpx.AsyncClient
    sink: Acceptor

    async def send(
        self,
        content: bytes,
        rcpt_to: tuple[str, ...] = ("bob@example.org",),
        rcpt_params: tuple[dict[str, str | None], ...] = (),
    ) -> MessageId:
        spool = self.sink.begin(
            Envelope(
                mail_from="alice@example.com",
                rcpt_to=rcpt_to,
                received_at=datetime.now(UTC),
                rcpt_params=rcpt_params,
            )
        )
        spool.write(content)
        return await self.sink.commit(spool)


@pytest_asyncio.fixture
async def inbox(tmp_path: Path) -> AsyncIterator[Inbox]:
    """The web app over a store, given the sink its mail comes through, as a node gives it."""
    store = await open_store(f"sqlite://{tmp_path}/mail.db")
    sink = Acceptor(store, DeliverySettings(hostname="mx.test", spool_dir=tmp_path / "spool"))
    app = create_app(store, sink=sink, settings=WebSettings(database="mail.db"))
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://inbox.test") as client:
            yield Inbox(store, client, sink)
    finally:
        sink.close()
        await store.aclose()


async def search(inbox: Inbox, query: str) -> list[str]:
    response = await inbox.client.get("/api/v1/search", params={"query": query})
    assert response.status_code == 200, response.text
    return [m["Subject"] for m in response.json()["messages"]]


# -- Bcc -------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_envelope_only_recipients_are_bcc_in_messages_listings_and_search(
    inbox: Inbox,
) -> None:
    content = email("Invoice", to="Bob <bob@example.org>")
    message_id = await inbox.send(
        content, rcpt_to=("bob@example.org", "Books@Example.net", "bob@example.org")
    )
    await inbox.send(email("Plain"))
    blind = [{"Name": "", "Address": "Books@Example.net"}]
    message = (await inbox.client.get(f"/api/v1/message/{message_id}")).json()
    assert message["Bcc"] == blind
    assert message["To"] == [{"Name": "Bob", "Address": "bob@example.org"}]
    listed = (await inbox.client.get("/api/v1/messages")).json()["messages"]
    assert [m["Bcc"] for m in listed] == [[], blind]
    assert await search(inbox, "bcc:books@example") == ["Invoice"]
    assert await search(inbox, "bcc:bob") == []
    assert await search(inbox, "addressed:books") == ["Invoice"]
    # The stored message is what the client sent: no Bcc header is written into it.
    raw = (await inbox.client.get(f"/api/v1/message/{message_id}/raw")).content
    assert raw.endswith(content)
    assert b"\r\nBcc:" not in raw


@pytest.mark.asyncio
async def test_an_alias_is_bcc_as_the_client_named_it(inbox: Inbox) -> None:
    # The session gives each member of an alias the alias's address as ORCPT.
    alias = {"ORCPT": "rfc822;staff@example.org"}
    message_id = await inbox.send(
        email("Rota", to="bob@example.org"),
        rcpt_to=("bob@example.org", "ann@example.org", "carl@example.org"),
        rcpt_params=({}, alias, alias),
    )
    message = (await inbox.client.get(f"/api/v1/message/{message_id}")).json()
    assert message["Bcc"] == [{"Name": "", "Address": "staff@example.org"}]


def test_smtplib_with_an_extra_envelope_recipient_shows_it_as_bcc(tmp_path: Path) -> None:
    message = EmailMessage()
    message["From"] = "App <app@example.com>"
    message["To"] = "user@example.org"
    message["Subject"] = "Receipt"
    message.set_content("Thanks.")
    with LiveInbox(tmp_path) as live:
        with smtplib.SMTP("127.0.0.1", live.smtp_port, timeout=30) as smtp:
            smtp.send_message(message, to_addrs=["user@example.org", "archive@example.org"])
        response = httpx.get(f"{live.url}/api/v1/message/latest", timeout=30)
        assert response.json()["Bcc"] == [{"Name": "", "Address": "archive@example.org"}]
        found = httpx.get(f"{live.url}/api/v1/search", params={"query": "bcc:archive"})
        assert found.json()["messages_count"] == 1


def test_an_alias_over_smtp_shows_as_the_alias_not_its_members(tmp_path: Path) -> None:
    live = LiveInbox(tmp_path)
    domain = Domain("example.org", mailboxes=("ann", "bob"), aliases={"team": ("ann", "bob")})
    live.settings = dataclasses.replace(live.settings, domains=(domain,))
    hidden, shown = EmailMessage(), EmailMessage()
    for message, to in ((hidden, "bob@example.org"), (shown, "team@example.org")):
        message["From"] = "app@example.com"
        message["To"] = to
        message["Subject"] = "alias in Bcc" if message is hidden else "alias in To"
        message.set_content("Hi.")
    with live, smtplib.SMTP("127.0.0.1", live.smtp_port, timeout=30) as smtp:
        smtp.send_message(hidden, to_addrs=["bob@example.org", "team@example.org"])
        smtp.send_message(shown, to_addrs=["team@example.org"])
        listed = httpx.get(f"{live.url}/api/v1/messages", timeout=30).json()["messages"]
        bcc = {m["Subject"]: m["Bcc"] for m in listed}
        team = [{"Name": "", "Address": "team@example.org"}]
        assert bcc == {"alias in Bcc": team, "alias in To": []}
        stored = live.call(live.store.list())
        envelopes = [live.call(live.store.get(m.id)) for m in stored.messages]
        assert all(e is not None and "ann@example.org" in e.envelope.rcpt_to for e in envelopes)


# -- Read and From ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_read_is_the_stored_state_in_a_message_and_in_wait(inbox: Inbox) -> None:
    message_id = await inbox.send(email("Code 1234"))
    waited = await inbox.client.get("/api/v1/wait", params={"query": "code", "timeout": "1"})
    assert waited.json()["Read"] is False  # waiting marks nothing read
    opened = (await inbox.client.get(f"/api/v1/message/{message_id}")).json()
    assert opened["Read"] is True  # opening it did
    assert (await inbox.client.get(f"/api/v1/message/{message_id}")).json()["Read"] is True
    waited = await inbox.client.get("/api/v1/wait", params={"query": "code", "timeout": "1"})
    assert waited.json()["Read"] is True
    await inbox.client.put("/api/v1/messages", json={"IDs": [message_id], "Read": False})
    waited = await inbox.client.get("/api/v1/wait", params={"query": "code", "timeout": "1"})
    assert waited.json()["Read"] is False


@pytest.mark.asyncio
async def test_a_message_without_from_has_an_empty_sender(inbox: Inbox) -> None:
    message_id = await inbox.send(b"To: bob@example.org\r\nSubject: anonymous\r\n\r\nHi.\r\n")
    empty = {"Name": "", "Address": ""}
    assert (await inbox.client.get(f"/api/v1/message/{message_id}")).json()["From"] == empty
    listed = (await inbox.client.get("/api/v1/messages")).json()["messages"]
    assert listed[0]["From"] == empty


# -- /api/v1/info ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_info_reports_the_store_and_what_smtp_brought(inbox: Inbox, tmp_path: Path) -> None:
    before = (await inbox.client.get("/api/v1/info")).json()
    assert before["RuntimeStats"]["SMTPAccepted"] == 0
    sizes = []
    for n in range(3):
        message_id = await inbox.send(email(f"counted {n}"))
        stored = await inbox.store.get(message_id)
        assert stored is not None
        sizes.append(stored.summary.size)
    looping = b"Received: from x by y; Sun, 6 Dec 2026 00:00:00 +0000\r\n" * 100
    with pytest.raises(SMTPReplyError, match="hops"):
        await inbox.send(looping + email("loop"))
    await inbox.client.get("/api/v1/message/latest")
    await inbox.client.request("DELETE", "/api/v1/search", params={"query": "subject:0"})

    info = (await inbox.client.get("/api/v1/info")).json()
    assert (info["Messages"], info["Unread"]) == (2, 1)
    files = [tmp_path / "mail.db", tmp_path / "mail.db-wal"]
    assert info["DatabaseSize"] >= (tmp_path / "mail.db").stat().st_size > 0
    assert info["DatabaseSize"] <= sum(f.stat().st_size for f in files if f.exists())
    stats = info["RuntimeStats"]
    assert stats["SMTPAccepted"] == 3
    assert stats["SMTPAcceptedSize"] == sum(sizes)
    assert stats["SMTPRejected"] == 1
    assert stats["MessagesDeleted"] == 1


# -- search and downloads --------------------------------------------------------------------


@pytest.mark.asyncio
async def test_has_inline_finds_messages_with_inline_parts(inbox: Inbox) -> None:
    await inbox.send(with_inline_image(rich_message()))
    await inbox.send(rich_message())  # an attachment, nothing inline
    await inbox.send(email("plain"))
    assert await search(inbox, "has:inline") == ["Quarterly report"]
    listed = (await inbox.client.get("/api/v1/messages")).json()["messages"]
    with_image = listed[2]["ID"]
    assert await search(inbox, "-has:inline") == ["plain", "Quarterly report"]
    message = (await inbox.client.get(f"/api/v1/message/{with_image}")).json()
    assert len(message["Inline"]) == 1


@pytest.mark.asyncio
@pytest.mark.parametrize("size", ["99999999999999999999", "9" * 400, "10000000000G"])
async def test_a_size_too_large_for_any_store_is_a_400(inbox: Inbox, size: str) -> None:
    response = await inbox.client.get("/api/v1/search", params={"query": f"larger:{size}"})
    assert response.status_code == 400
    assert "too large" in response.text
    await inbox.send(email("x"))
    assert await search(inbox, "smaller:9223372036854775807") == ["x"]


@pytest.mark.asyncio
async def test_an_attachment_name_with_control_characters_downloads_without_them(
    inbox: Inbox,
) -> None:
    content = (
        b"From: a@example.com\r\nSubject: odd name\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n"
        b"--b\r\nContent-Type: application/pdf\r\n"
        b"Content-Disposition: attachment; filename*=utf-8''bad%0D%0Aname%07%C3%A9.pdf\r\n\r\n"
        b"%PDF\r\n--b--\r\n"
    )
    message_id = await inbox.send(content)
    message = (await inbox.client.get(f"/api/v1/message/{message_id}")).json()
    (attachment,) = message["Attachments"]
    part = await inbox.client.get(f"/api/v1/message/{message_id}/part/{attachment['PartID']}")
    assert part.status_code == 200
    assert part.content == b"%PDF"
    assert part.headers["content-disposition"] == (
        "attachment; filename=\"badname?.pdf\"; filename*=UTF-8''badname%C3%A9.pdf"
    )
