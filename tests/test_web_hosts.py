"""DNS rebinding: the inbox answers only to IP addresses, localhost, its own name and the names
it is told, as a user runs it (issue: a page whose name rebinds to 127.0.0.1 read the mail)."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

from process_helpers import TIMEOUT, Launcher

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="real processes")


def status(url: str, host: str) -> int:
    return httpx.get(url, headers={"Host": host}, timeout=TIMEOUT).status_code


def test_only_allowed_host_names_reach_the_inbox(launcher: Launcher, tmp_path: Path) -> None:
    served = launcher.serve(
        "--smtp", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data", str(tmp_path / "data"),
        "--hostname", "mail.example.test", "--http-allowed-host", "inbox.example.test",
    )  # fmt: skip
    api = f"{served.http_url}api/v1/messages"
    port = served.http_url.rstrip("/").rpartition(":")[2]
    for allowed in (
        f"127.0.0.1:{port}", "127.0.0.1", f"localhost:{port}", f"[::1]:{port}",
        f"mail.example.test:{port}", f"INBOX.example.test:{port}",
    ):  # fmt: skip
        assert status(api, allowed) == 200, allowed
    for refused in (f"attacker.test:{port}", "attacker.test", f"127.0.0.1.nip.io:{port}", ""):
        assert status(api, refused) == 400, refused
    page = httpx.get(served.http_url, headers={"Host": "attacker.test"}, timeout=TIMEOUT)
    assert (page.status_code, "--http-allowed-host" in page.text) == (400, True)
    served.stop_cleanly()
