"""What the engine keeps of the client's input once it has read it.

A client that sends part of a message and stops costs the server what the
engine still holds: only the line not yet complete, not the last packet it
came in.  Traced with ``tracemalloc``: the engine's own allocations count,
the input handed to it was made before tracing began.
"""

from __future__ import annotations

import tracemalloc

from mailgate.protocol import (
    NEED_DATA,
    BdatChunk,
    ConnectionSettings,
    DataChunk,
    DataStart,
    Reply,
    ServerConnection,
)

KIB = 1024
PACKET = (b"x" * 76 + b"\r\n") * (1024 * KIB // 78) + b"a line still arriv"
"""A packet of a mebibyte of whole lines, and the start of one more."""


def in_transaction(start: bytes) -> ServerConnection:
    """A connection whose client said EHLO, MAIL, RCPT and ``start`` (DATA or a BDAT line)."""
    conn = ServerConnection(ConnectionSettings(hostname="mx.test"))
    conn.send(Reply(220, None, "mx.test ready"))
    conn.receive_data(b"EHLO c.test\r\nMAIL FROM:<a@c.test>\r\nRCPT TO:<b@mx.test>\r\n" + start)
    for _ in range(3):
        assert conn.next_event() is not NEED_DATA
        conn.send(Reply(250, None, "OK"))
    return conn


def held_after(conn: ServerConnection, packet: bytes) -> int:
    """Octets the engine holds once it has read ``packet`` and wants more."""
    tracemalloc.start()
    try:
        conn.receive_data(packet)
        while (event := conn.next_event()) is not NEED_DATA:
            assert isinstance(event, DataChunk)
            del event
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return held


def test_part_way_through_data_only_the_unfinished_line_is_held() -> None:
    conn = in_transaction(b"DATA\r\n")
    assert conn.next_event() == DataStart()
    conn.send(Reply(354, None, "Go ahead"))
    assert conn.next_event() is NEED_DATA
    held = held_after(conn, PACKET)
    assert held < 16 * KIB, f"{held} octets held after reading {len(PACKET)}"


def test_part_way_through_a_bdat_chunk_nothing_read_is_held() -> None:
    conn = in_transaction(f"BDAT {2 * len(PACKET)} LAST\r\n".encode())
    held = held_after(conn, PACKET)
    assert held < 16 * KIB, f"{held} octets held after reading {len(PACKET)}"
    conn.receive_data(PACKET)
    assert isinstance(conn.next_event(), DataChunk)
    assert isinstance(conn.next_event(), BdatChunk)
