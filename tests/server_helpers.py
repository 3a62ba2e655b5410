"""Helpers shared by the live-server tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
from pathlib import Path

import pytest

WORKER = "mailgate.runtime worker"
"""In the command line of each SMTP worker process: ``python -m mailgate.runtime worker N``."""
COMMIT_SERVICE = "mailgate.runtime commit-service"
"""In the command line of the commit service: ``python -m mailgate.runtime commit-service``."""

HAND_TYPED = (
    b"helo localhost.localdomain\r\n"
    b"MAIL From:myaddress@mydomain.com\r\n"
    b"RCPT To:fred@somedomain.com\r\n"
    b"RCPT To:freds_boss@somedomain.com\r\n"
    b"DATA\r\n"
)
HAND_TYPED_BODY = (
    b"Subject: I need the sales figures\r\n"
    b"CC: freds_boss@somedomain.com\r\n"
    b"\r\n"
    b"Hello Fred, can you call me?\r\n"
)


def read_reply(sock: socket.socket) -> bytes:
    """One whole reply (every line of it), or what came before the connection's end."""
    data = b""
    while not data.endswith(b"\r\n") or data.splitlines()[-1][3:4] == b"-":
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is required under CI but is not installed")
        pytest.skip(f"{name} is not installed")
    return path


def body_of(raw: bytes) -> bytes:
    """The message as the client sent it: everything after Return-Path and our trace header."""
    assert raw.startswith(b"Return-Path: <")
    start = raw.index(b"\r\n") + 2
    assert raw.startswith(b"Received: from ", start)
    end = raw.index(b"\r\n", start)
    while raw[end + 2 : end + 3] in (b" ", b"\t"):
        end = raw.index(b"\r\n", end + 2)
    return raw[end + 2 :]


def children(pid: int, marker: str = "") -> list[int]:
    """The children of process ``pid`` (started by any of its threads) whose command line
    holds ``marker``: ``WORKER`` for SMTP workers, ``COMMIT_SERVICE`` for the commit service."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that ended meanwhile
            found += [int(child) for child in (task / "children").read_text().split()]
    return [child for child in found if marker in cmdline(child)]


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except (FileNotFoundError, ProcessLookupError):  # it ended meanwhile
        return ""
