"""``Return-Path:``: the one the server writes, and the ones a client sent.

RFC 5321 4.4: the server that makes final delivery inserts
``Return-Path: <reverse-path>`` at the beginning of the message (``<>`` for
the null sender).  Mail a client sends should carry none; a ``Return-Path``
field it does carry would stand where readers look for ours, so it is
removed from the header section as the content streams in, as Postfix's
cleanup does.

The filter passes content on untouched in the common case, decided per
chunk with one search: it goes line by line only while a header section
holds a ``Return-Path`` field.  It keeps back at most one incomplete line
between chunks.

As it reads the header section anyway, it counts the ``Received`` fields
there too (``received``), so that the accept path can refuse a message that
is going round in a loop (RFC 5321 6.3) without reading its header again.
Only whole lines are counted, each once, and nothing after the blank line
that ends the header section.
"""

from __future__ import annotations

import re

__all__ = ["ReturnPathFilter", "return_path_header"]

MAX_HELD_OCTETS = 64 * 1024
"""A header line longer than this is passed on unfiltered (the line limit is far below it)."""

_RETURN_PATH_FIELD = re.compile(rb"return-path[ \t]*:", re.IGNORECASE)
_ANY_RETURN_PATH = re.compile(rb"(?:^|\n)return-path[ \t]*:", re.IGNORECASE)
_RECEIVED_FIELD = re.compile(rb"received[ \t]*:", re.IGNORECASE)
_ANY_RECEIVED = re.compile(rb"(?:^|\n)received[ \t]*:", re.IGNORECASE)


def _header_end(data: bytes) -> int:
    """Where the blank line that ends the header section begins, or ``len(data)``."""
    if data[:1] == b"\n" or data[:2] == b"\r\n":
        return 0
    crlf = data.find(b"\n\r\n")
    limit = len(data) if crlf < 0 else crlf
    lf = data.find(b"\n\n", 0, limit)  # a bare LF can come only with BDAT
    if lf >= 0:
        return lf + 1
    return len(data) if crlf < 0 else crlf + 1


def return_path_header(reverse_path: str) -> bytes:
    """The ``Return-Path:`` line for ``reverse_path`` (``""``: the null sender), CRLF-ended.

    The engine admits no control character or space in a path, so it is written as it came.
    """
    return b"Return-Path: <" + reverse_path.encode("utf-8") + b">\r\n"


class ReturnPathFilter:
    """Removes ``Return-Path`` fields (with their folded lines) from a message's header.

    ``received`` counts the ``Received`` fields of the header read so far.
    """

    __slots__ = ("_dropping", "_held", "_in_header", "received")

    def __init__(self) -> None:
        self._in_header = True
        self._dropping = False
        self._held = b""
        self.received = 0

    @property
    def done(self) -> bool:
        """Whether the header section is over: the rest passes untouched."""
        return not self._in_header

    def feed(self, data: bytes) -> bytes:
        """The part of ``data`` (after what was held back) that goes into the message."""
        if not self._in_header:
            return data
        if self._held:
            data = self._held + data
            self._held = b""
        end = _header_end(data)
        # Each field's name is looked for in the header lowered before its pattern runs:
        # quick, where a pattern anchored at every line start tries every octet, and most
        # headers have neither field.
        lowered = data[:end].lower()
        if not self._dropping and (
            b"return-path" not in lowered or _ANY_RETURN_PATH.search(data, 0, end) is None
        ):
            if end < len(data):
                self._count_received(data, end, lowered)
                self._in_header = False
                return data
            whole = data.rfind(b"\n") + 1
            self._count_received(data, whole, lowered)
            return data[: self._hold_from(data, whole)]
        kept: list[bytes] = []
        start = 0
        while (end := data.find(b"\n", start) + 1) > 0:
            line = data[start:end]
            if line in (b"\r\n", b"\n"):
                self._in_header = False
                kept.append(data[start:])
                return b"".join(kept)
            if line[:1] not in (b" ", b"\t"):  # a field begins; else a folded line goes on
                self._dropping = _RETURN_PATH_FIELD.match(line) is not None
                self.received += _RECEIVED_FIELD.match(line) is not None
            if not self._dropping:
                kept.append(line)
            start = end
        kept.append(data[start : self._hold_from(data, start)])
        return b"".join(kept)

    def flush(self) -> bytes:
        """What is still held back, at the end of the content."""
        held, self._held = self._held, b""
        if held[:1] in (b" ", b"\t"):
            return b"" if self._dropping else held
        self.received += _RECEIVED_FIELD.match(held) is not None
        return b"" if _RETURN_PATH_FIELD.match(held) else held

    def _count_received(self, data: bytes, end: int, lowered: bytes) -> None:
        """Count the ``Received`` fields that begin in ``data[:end]``, whole lines only;
        ``lowered`` is at least that much of ``data`` in lower case."""
        if b"received" in lowered:
            self.received += len(_ANY_RECEIVED.findall(data, 0, end))

    def _hold_from(self, data: bytes, start: int) -> int:
        """Hold back the unfinished line from ``start`` on; return where the rest ends."""
        if len(data) - start > MAX_HELD_OCTETS:
            self._in_header = False  # no header line is this long: give up filtering
            return len(data)
        self._held = data[start:]
        return start
