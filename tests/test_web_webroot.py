"""``--webroot``: the inbox, its API and its websocket below a path, as behind a proxy that
passes the path on (Mailpit's ``--webroot``); ``mailgate serve`` as a user runs it."""

from __future__ import annotations

import json
import smtplib
from email.message import EmailMessage

import httpx
import pytest
import websocket

from mailgate.config import ConfigError, load_settings
from process_helpers import TIMEOUT, Launcher


def test_everything_is_served_below_the_webroot(launcher: Launcher) -> None:
    served = launcher.serve("--smtp", "127.0.0.1:0", "--http", "127.0.0.1:0", "--webroot", "mail")
    base = served.http_url.rstrip("/")
    message = EmailMessage()
    message["From"] = "app@example.org"
    message["To"] = "user@example.org"
    message["Subject"] = "below the root"
    message.set_content("Hello.\n")
    ws = websocket.create_connection(base.replace("http", "ws") + "/mail/api/events", timeout=30)
    try:
        with smtplib.SMTP("127.0.0.1", served.port, timeout=TIMEOUT) as client:
            client.send_message(message)
        assert json.loads(ws.recv())["Data"]["Subject"] == "below the root"
    finally:
        ws.close()
    page = httpx.get(f"{base}/mail/", timeout=TIMEOUT)
    assert page.status_code == 200
    assert '<base href="/mail/">' in page.text
    listed = httpx.get(f"{base}/mail/api/v1/messages", timeout=TIMEOUT).json()
    [summary] = listed["messages"]
    message_id = summary["ID"]
    assert httpx.get(f"{base}/mail/view/{message_id}", timeout=TIMEOUT).status_code == 200
    html = httpx.get(f"{base}/mail/view/{message_id}.txt", timeout=TIMEOUT)
    assert html.text.strip() == "Hello."
    assert httpx.get(f"{base}/mail/static/app.js", timeout=TIMEOUT).status_code == 200
    assert httpx.get(f"{base}/mail/readyz", timeout=TIMEOUT).status_code == 200
    redirect = httpx.get(f"{base}/mail?q=x", timeout=TIMEOUT)
    assert (redirect.status_code, redirect.headers["location"]) == (308, "/mail/?q=x")
    for outside in ("/", "/api/v1/messages", "/mailbox/", "/static/app.js"):
        answer = httpx.get(base + outside, timeout=TIMEOUT)
        assert (answer.status_code, answer.text) == (404, "not found: this inbox is at /mail/\n")
    served.stop_cleanly()


@pytest.mark.parametrize(
    ("given", "root"), [("/", "/"), ("mail", "/mail/"), ("/a/b", "/a/b/"), ("/x.y~z/", "/x.y~z/")]
)
def test_a_webroot_gets_a_slash_at_each_end(given: str, root: str) -> None:
    settings = load_settings(argv_values={"webroot": given}, environ={}, config_file=None)
    assert settings.webroot == root


@pytest.mark.parametrize("given", ["/a b/", "/../x", "/a?b", "//x//y/"])
def test_a_webroot_that_is_no_path_is_one_line_naming_the_flag(given: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(argv_values={"webroot": given}, environ={}, config_file=None)
    assert str(caught.value).startswith(f"--webroot: {given!r} is not a path")
