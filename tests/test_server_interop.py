"""The live server against clients nobody here wrote: smtplib, aiosmtplib, swaks.

Every test runs a real mailgate (real sockets, the real SQLite store on
disk) and reads back what was stored.
"""

from __future__ import annotations

import asyncio
import smtplib
import subprocess
from collections.abc import Iterator
from email.message import EmailMessage

import aiosmtplib
import httpx
import pytest

from mailgate.config import Limits
from mailgate.testing import MailgateServer
from server_helpers import body_of, require_tool


@pytest.fixture
def server() -> Iterator[MailgateServer]:
    with MailgateServer() as running:
        yield running


class TestSmtplib:
    def test_send_to_several_recipients(self, server: MailgateServer) -> None:
        message = EmailMessage()
        message["From"] = "Alice <alice@example.org>"
        message["To"] = "bob@example.net, carol@example.com"
        message["Subject"] = "Quarterly figures"
        message.set_content("Numbers attached.\n.leading dot line\n")
        with smtplib.SMTP(server.host, server.port) as client:
            refused = client.send_message(message)
        assert refused == {}
        [stored] = server.messages()
        assert stored.subject == "Quarterly figures"
        full = server.get(stored.id)
        assert full is not None
        assert full.envelope.mail_from == "alice@example.org"
        assert full.envelope.rcpt_to == ("bob@example.net", "carol@example.com")
        raw = server.raw(stored.id)
        assert raw is not None
        assert b".leading dot line\r\n" in raw
        assert b"\r\n..leading" not in raw

    def test_many_messages_in_one_connection(self, server: MailgateServer) -> None:
        with smtplib.SMTP(server.host, server.port) as client:
            for n in range(5):
                client.sendmail(
                    "a@example.org", [f"r{n}@example.net"], f"Subject: n{n}\r\n\r\nx\r\n"
                )
        subjects = sorted(m.subject for m in server.messages())
        assert subjects == [f"n{n}" for n in range(5)]

    def test_exact_bytes_are_kept(self, server: MailgateServer) -> None:
        body = b"Subject: bytes\r\nX-Eight: \xc3\xa9t\xc3\xa9\r\n\r\n\xff\xfe binary-ish 8bit\r\n"
        with smtplib.SMTP(server.host, server.port) as client:
            client.ehlo()
            client.sendmail(
                "a@example.org", ["b@example.net"], body, mail_options=["BODY=8BITMIME"]
            )
        [stored] = server.messages()
        raw = server.raw(stored.id)
        assert raw is not None
        assert body_of(raw) == body

    def test_smtputf8_addresses(self, server: MailgateServer) -> None:
        with smtplib.SMTP(server.host, server.port) as client:
            client.ehlo()
            assert client.has_extn("smtputf8")
            client.sendmail(
                "jöran@exämple.org",
                ["用户@例子.广告"],
                b"Subject: utf8\r\n\r\nhej\r\n",
                mail_options=["SMTPUTF8", "BODY=8BITMIME"],
            )
        [stored] = server.messages()
        full = server.get(stored.id)
        assert full is not None
        assert full.envelope.mail_from == "jöran@exämple.org"
        assert full.envelope.rcpt_to == ("用户@例子.广告",)

    def test_non_ascii_address_without_smtputf8_is_refused(self, server: MailgateServer) -> None:
        with smtplib.SMTP(server.host, server.port) as client:
            client.ehlo()
            client.command_encoding = "utf-8"
            code, text = client.docmd("MAIL FROM:<jöran@example.org>")
        assert code == 550
        assert text.startswith(b"5.6.7")
        assert server.messages() == []

    def test_vrfy_is_noncommittal_and_expn_off(self, server: MailgateServer) -> None:
        with smtplib.SMTP(server.host, server.port) as client:
            assert client.verify("root")[0] == 252
            assert client.verify("nobody-at-all")[0] == 252
            assert client.expn("staff")[0] == 502

    def test_declared_size_over_the_limit(self) -> None:

        with MailgateServer(limits=Limits(max_message_size=1000)) as server:
            with smtplib.SMTP(server.host, server.port) as client:
                client.ehlo()
                assert client.esmtp_features["size"] == "1000"
                code, _ = client.mail("a@example.org", options=["SIZE=5000"])
                assert code == 552
                client.rset()
                # Without SIZE the real size is counted as the data streams.
                assert client.mail("a@example.org")[0] == 250
                assert client.rcpt("b@example.net")[0] == 250
                code, _ = client.data(b"x" * 900 + b"\r\n" * 200)
                assert code == 552
                # The session goes on after a refused message.
                client.sendmail("a@example.org", ["b@example.net"], b"Subject: small\r\n\r\nok\r\n")
            assert [m.subject for m in server.messages()] == ["small"]


class TestAiosmtplib:
    def test_pipelined_sends(self, server: MailgateServer) -> None:
        async def send_all() -> None:
            client = aiosmtplib.SMTP(hostname=server.host, port=server.port)
            await client.connect()
            assert client.supports_extension("pipelining")
            for n in range(3):
                message = EmailMessage()
                message["From"] = "app@example.org"
                message["To"] = "u1@example.net, u2@example.net"
                message["Subject"] = f"async {n}"
                message.set_content("hello")
                errors, _ = await client.send_message(message)
                assert errors == {}
            await client.quit()

        asyncio.run(send_all())
        stored = server.messages()
        assert sorted(m.subject for m in stored) == ["async 0", "async 1", "async 2"]
        full = server.get(stored[0].id)
        assert full is not None
        assert full.envelope.rcpt_to == ("u1@example.net", "u2@example.net")


class TestSwaks:
    def test_pipelined_message_to_several_recipients(self, server: MailgateServer) -> None:
        swaks = require_tool("swaks")
        result = subprocess.run(
            [
                swaks,
                "--server",
                f"{server.host}:{server.port}",
                "--from",
                "sender@example.org",
                "--to",
                "one@example.net,two@example.net,three@example.com",
                "--pipeline",
                "--header",
                "Subject: from swaks",
                "--body",
                "8-bit body: \u00e9t\u00e9",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "queued as" in result.stdout
        [stored] = server.messages()
        assert stored.subject == "from swaks"
        full = server.get(stored.id)
        assert full is not None
        assert len(full.envelope.rcpt_to) == 3


def test_the_test_server_can_serve_the_api_too() -> None:
    with MailgateServer(http=True) as server:
        with smtplib.SMTP(server.host, server.port) as client:
            client.sendmail("a@example.org", ["b@example.net"], b"Subject: via api\r\n\r\nx\r\n")
        listing = httpx.get(f"{server.http_url}/api/v1/messages").json()
        assert [m["Subject"] for m in listing["messages"]] == ["via api"]
