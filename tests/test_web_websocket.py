"""Mailpit's websocket ``/api/events`` and CORS for the API, as a user runs ``mailgate serve``.

The websocket client is websocket-client, a library nobody here wrote; the
frames are Mailpit's (``{"Type": ..., "Data": ...}``).  A page from another
site may neither open the websocket (cross-site websocket hijacking) nor
read the API, unless ``--api-cors`` names its origin.
"""

from __future__ import annotations

import base64
import json
import smtplib
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
import websocket

from process_helpers import TIMEOUT, Launcher, Serving


def send(port: int, subject: str) -> None:
    message = EmailMessage()
    message["From"] = "app@example.org"
    message["To"] = "user@example.org"
    message["Subject"] = subject
    message.set_content("Hello.\n")
    with smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT) as client:
        client.send_message(message)


def ws_url(served: Serving) -> str:
    return served.http_url.replace("http://", "ws://") + "api/events"


def frames_until(ws: websocket.WebSocket, kind: str) -> list[dict[str, Any]]:
    """Frames received up to and including the first of type ``kind``."""
    seen: list[dict[str, Any]] = []
    while not seen or seen[-1]["Type"] != kind:
        seen.append(json.loads(ws.recv()))
    return seen


@pytest.fixture
def served(launcher: Launcher, tmp_path: Path) -> Iterator[Serving]:
    serving = launcher.serve(
        "--smtp", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data", str(tmp_path / "data"),
        "--api-cors", "https://app.example:8443",
    )  # fmt: skip
    yield serving
    serving.stop_cleanly()


def test_the_websocket_tells_of_new_read_and_deleted_mail(served: Serving) -> None:
    ws = websocket.create_connection(ws_url(served), timeout=TIMEOUT)
    try:
        send(served.port, "first")
        seen = frames_until(ws, "stats")
        [new] = [frame for frame in seen if frame["Type"] == "new"]
        assert new["Data"]["Subject"] == "first"
        assert new["Data"]["From"] == {"Name": "", "Address": "app@example.org"}
        assert seen[-1]["Data"] == {"Total": 1, "Unread": 1, "Version": seen[-1]["Data"]["Version"]}
        message_id = new["Data"]["ID"]
        api = f"{served.http_url}api/v1"
        read = {"IDs": [message_id], "Read": True}
        assert httpx.put(f"{api}/messages", json=read, timeout=TIMEOUT).status_code == 200
        update = frames_until(ws, "update")[-1]
        assert update["Data"] == {"ID": message_id, "Read": True}
        assert frames_until(ws, "stats")[-1]["Data"]["Unread"] == 0
        gone = {"IDs": [message_id]}
        assert httpx.request("DELETE", f"{api}/messages", json=gone, timeout=TIMEOUT).status_code
        assert frames_until(ws, "delete")[-1]["Data"] == {"ID": message_id}
        send(served.port, "second")
        assert httpx.delete(f"{api}/messages", timeout=TIMEOUT).status_code == 200
        assert frames_until(ws, "truncate")[-1]["Data"] is None
    finally:
        ws.close()


def handshake_status(served: Serving, **options: Any) -> int:
    try:
        ws = websocket.create_connection(ws_url(served), timeout=TIMEOUT, **options)
    except websocket.WebSocketBadStatusException as refused:
        return int(refused.status_code)
    ws.close()
    return 101


def test_only_the_inbox_and_allowed_origins_open_the_websocket(served: Serving) -> None:
    own = served.http_url.rstrip("/")
    assert handshake_status(served, origin=own) == 101
    assert handshake_status(served, origin="https://app.example:8443") == 101
    assert handshake_status(served, origin="https://attacker.example") == 403
    assert handshake_status(served, origin="http://127.0.0.1:1") == 403
    # A name that rebinds to this address is refused before the origin is looked at.
    assert (
        handshake_status(served, host="attacker.example", origin="http://attacker.example") == 400
    )


def test_cors_lets_only_the_named_origin_read_the_api(served: Serving) -> None:
    api = f"{served.http_url}api/v1/messages"
    allowed = {"Origin": "https://app.example:8443"}
    answer = httpx.get(api, headers=allowed, timeout=TIMEOUT)
    assert answer.headers["access-control-allow-origin"] == "https://app.example:8443"
    assert answer.headers["access-control-allow-credentials"] == "true"
    preflight = httpx.options(
        api,
        headers={**allowed, "Access-Control-Request-Method": "DELETE"},
        timeout=TIMEOUT,
    )
    assert preflight.status_code == 200
    assert "DELETE" in preflight.headers["access-control-allow-methods"]
    other = httpx.get(api, headers={"Origin": "https://attacker.example"}, timeout=TIMEOUT)
    assert "access-control-allow-origin" not in other.headers
    # The page itself is not part of the API: no CORS there.
    page = httpx.get(served.http_url, headers=allowed, timeout=TIMEOUT)
    assert "access-control-allow-origin" not in page.headers


def test_without_api_cors_no_origin_reads_the_api(launcher: Launcher, tmp_path: Path) -> None:
    served = launcher.serve("--smtp", "127.0.0.1:0", "--http", "127.0.0.1:0")
    answer = httpx.get(
        f"{served.http_url}api/v1/messages",
        headers={"Origin": "https://app.example:8443"},
        timeout=TIMEOUT,
    )
    assert answer.status_code == 200
    assert "access-control-allow-origin" not in answer.headers
    assert handshake_status(served, origin="https://app.example:8443") == 403
    served.stop_cleanly()


def test_behind_basic_auth_the_websocket_needs_the_password(
    launcher: Launcher, tmp_path: Path
) -> None:
    served = launcher.serve(
        "--smtp", "127.0.0.1:0", "--http", "127.0.0.1:0",
        env={"MAILGATE_HTTP_AUTH": "admin:s3cret"},
    )  # fmt: skip
    assert handshake_status(served) == 403
    wrong = base64.b64encode(b"admin:guess").decode()
    assert handshake_status(served, header=[f"Authorization: Basic {wrong}"]) == 403
    right = base64.b64encode(b"admin:s3cret").decode()
    ws = websocket.create_connection(
        ws_url(served), timeout=TIMEOUT, header=[f"Authorization: Basic {right}"]
    )
    try:
        send(served.port, "behind a password")
        assert frames_until(ws, "new")[-1]["Data"]["Subject"] == "behind a password"
    finally:
        ws.close()
    served.stop_cleanly()
