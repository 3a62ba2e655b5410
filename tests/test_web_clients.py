"""Mailpit clients written outside this project, unchanged, against a live mailgate.

The Python one is PyPI's ``mailpit-api-client``; the Node one is npm's
``mailpit-api`` (installed with ``npm install --prefix tests/interop``).
Mail goes in over SMTP with ``smtplib``.
"""

from __future__ import annotations

import json
import os
import smtplib
import subprocess
from email.message import EmailMessage
from pathlib import Path

import pytest

from server_helpers import require_tool
from web_helpers import LiveInbox, require_module

INTEROP = Path(__file__).with_name("interop")

pytestmark = pytest.mark.interop


def send_two(port: int) -> None:
    welcome = EmailMessage()
    welcome["From"] = "App <app@example.com>"
    welcome["To"] = "new.user@example.org"
    welcome["Subject"] = "Welcome aboard"
    welcome["Message-ID"] = "<welcome-1@example.com>"
    welcome.set_content("Glad to have you.")
    reset = EmailMessage()
    reset["From"] = "App <app@example.com>"
    reset["To"] = "Some User <user@example.org>"
    reset["Cc"] = "audit@example.org"
    reset["Subject"] = "Password reset"
    reset["Message-ID"] = "<reset-1@example.com>"
    reset["Date"] = "Tue, 02 Jan 2024 09:30:00 +0100"
    reset.set_content("Your code is 424242.")
    reset.add_alternative(
        '<p>Your code is <b>424242</b>. <a href="http://127.0.0.1:9/reset">Reset</a></p>',
        subtype="html",
    )
    reset.add_attachment(b"a,b\n1,2\n", maintype="text", subtype="csv", filename="codes.csv")
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.send_message(welcome)
        smtp.send_message(reset)


def test_the_python_mailpit_api_client(tmp_path: Path) -> None:
    api_module = require_module("mailpit.client.api")

    with LiveInbox(tmp_path) as inbox:
        send_two(inbox.smtp_port)
        api = api_module.API(inbox.url, timeout=30)

        listing = api.get_messages()
        assert listing.total == 2
        assert listing.unread == 2
        assert listing.count == 2
        assert [m.subject for m in listing.messages] == ["Password reset", "Welcome aboard"]
        summary = listing.messages[0]
        assert summary.from_ is not None
        assert summary.from_.address == "app@example.com"
        assert summary.attachments == 1

        message = api.get_message(summary.id)
        assert message.subject == "Password reset"
        assert message.message_id == "reset-1@example.com"
        assert message.text is not None
        assert "424242" in message.text
        assert message.html is not None
        assert "<b>424242</b>" in message.html
        assert [c.address for c in message.to] == ["user@example.org"]
        assert message.cc is not None
        assert [c.address for c in message.cc] == ["audit@example.org"]
        assert message.date.isoformat() == "2024-01-02T09:30:00+01:00"
        (attachment,) = message.attachments
        assert attachment.file_name == "codes.csv"
        assert api.get_message_attachment(summary.id, attachment.part_id) == "a,b\n1,2\n"
        assert api.get_messages().unread == 1  # reading it marked it read

        api.put_messages([summary.id], "Read", False)
        assert api.get_messages().unread == 2

        api.delete_messages([summary.id])
        left = api.get_messages()
        assert [m.subject for m in left.messages] == ["Welcome aboard"]
        api.delete_messages([])
        assert api.get_messages().total == 0


def test_the_node_mailpit_api_client(tmp_path: Path) -> None:
    node = require_tool("node")
    if not (INTEROP / "node_modules" / "mailpit-api").is_dir():
        message = "npm's mailpit-api is not installed: npm install --prefix tests/interop"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    with LiveInbox(tmp_path) as inbox:
        send_two(inbox.smtp_port)
        result = subprocess.run(
            [node, str(INTEROP / "mailpit_api_client.cjs"), inbox.url],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == {"ok": True}
