"""Helpers shared by the live-server tests."""

from __future__ import annotations

import os
import shutil

import pytest

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


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is required under CI but is not installed")
        pytest.skip(f"{name} is not installed")
    return path


def body_of(raw: bytes) -> bytes:
    """The message as the client sent it: everything after our trace header."""
    assert raw.startswith(b"Received: from ")
    end = raw.index(b"\r\n", 0)
    while raw[end + 2 : end + 3] in (b" ", b"\t"):
        end = raw.index(b"\r\n", end + 2)
    return raw[end + 2 :]
