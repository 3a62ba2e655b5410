"""A full disk is the server's condition, never the client's error.

``MAIL`` gets ``452 4.3.1`` (RFC 3463 X.3.1) while free space is under the
floor (Postfix asks the same before it accepts a sender), and a message
whose content cannot be written is answered ``452 4.3.1`` after its end of
data (RFC 5321 4.1.1.4), with the session in step.  Neither spends the
client's error budget.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailgate.config import Limits, Settings
from mailgate.testing import MailgateServer
from test_server_sessions import Client

NO_DISK_IS_THIS_BIG = 1 << 60


def mail_reply(client: Client, command: bytes) -> bytes:
    client.send(command)
    return client.reply()


def test_mail_gets_452_when_free_space_is_under_the_floor() -> None:
    settings = Settings(limits=Limits(min_free_space=NO_DISK_IS_THIS_BIG, error_budget=3))
    with MailgateServer(settings=settings) as server, contextlib.ExitStack() as closing:
        client = Client(server)
        closing.callback(client.close)
        client.send(b"EHLO client.example\r\n")
        client.reply()
        # More refusals than the error budget: the session goes on.
        for _ in range(5):
            reply = mail_reply(client, b"MAIL FROM:<a@example.org>\r\n")
            assert reply == b"452 4.3.1 Insufficient system storage\r\n"
        assert mail_reply(client, b"NOOP\r\n").startswith(b"250 ")


def test_a_declared_size_counts_against_the_free_space(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    settings = Settings(limits=Limits(max_message_size=0, min_free_space=1))
    with (
        MailgateServer(settings=settings, data_dir=tmp_path) as server,
        contextlib.ExitStack() as closing,
    ):
        client = Client(server)
        closing.callback(client.close)
        client.send(b"EHLO client.example\r\n")
        client.reply()
        too_big = b"MAIL FROM:<a@example.org> SIZE=%d\r\n" % (free * 2)
        assert mail_reply(client, too_big).startswith(b"452 4.3.1 ")
        assert mail_reply(client, b"MAIL FROM:<a@example.org> SIZE=1000\r\n").startswith(b"250 ")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB file system of its own (tmpfs), so a message can fill it."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot mount a tmpfs under CI: {result.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            subprocess.run(["umount", "-l", str(mount_point)], check=True)


def test_a_message_that_fills_the_disk_gets_452_after_its_end(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(limits=Limits(max_message_size=0, min_free_space=1))
    line = b"x" * 998 + b"\r\n"
    with (
        MailgateServer(settings=settings, data_dir=small_disk) as server,
        contextlib.ExitStack() as closing,
    ):
        client = Client(server)
        closing.callback(client.close)
        client.send(b"EHLO client.example\r\n")
        client.reply()
        client.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
        assert client.codes(3) == [250, 250, 354]
        # 6 MiB into a 4 MiB file system: the spool file cannot hold it.
        client.send(b"Subject: too big\r\n\r\n" + line * 6 * 1024 + b".\r\n")
        assert client.reply() == b"452 4.3.1 Insufficient system storage\r\n"
        # The session is in step, the space is given back, and the next message fits.
        client.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
        assert client.codes(3) == [250, 250, 354]
        client.send(b"Subject: small\r\n\r\nfits\r\n.\r\n")
        assert client.reply().startswith(b"250 2.0.0 ")
        [stored] = server.messages()
        assert stored.subject == "small"
    assert not list((small_disk / "spool").glob("*.spool"))
    # A resource shortage is logged in one line, never with a traceback.
    assert not [record for record in caplog.records if record.exc_info], caplog.text
    assert "No space left on device" in caplog.text
