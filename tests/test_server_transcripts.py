"""The golden transcripts, played against a live server over a real socket.

The same files the engine tests play (``tests/transcripts/*.smtp``) must
hold for the whole server: engine, session, policy and store together.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailgate.testing import MailgateServer
from protocol_helpers import load_transcript, reply_line_matches, transcript_flights

TRANSCRIPTS = sorted((Path(__file__).parent / "transcripts").glob("*.smtp"))


@pytest.fixture(scope="module")
def server() -> Iterator[MailgateServer]:
    with MailgateServer(hostname="mx.test") as running:
        yield running


def read_line(sock: socket.socket, buffer: bytearray) -> bytes:
    while b"\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"server closed; had {bytes(buffer)!r}")
        buffer += chunk
    end = buffer.index(b"\r\n")
    line = bytes(buffer[:end])
    del buffer[: end + 2]
    return line


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=[p.stem for p in TRANSCRIPTS])
def test_transcript_against_the_live_server(server: MailgateServer, path: Path) -> None:
    flights = transcript_flights(load_transcript(path))
    buffer = bytearray()
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        for sent, expected in flights:
            if sent:
                sock.sendall(sent)
            for kind, pattern in expected:
                line = read_line(sock, buffer)
                assert reply_line_matches(kind, pattern, line), (
                    f"{path.name}: after {sent[-60:]!r} expected {pattern!r}, got {line!r}"
                )
