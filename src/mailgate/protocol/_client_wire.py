"""The client engine's wire formats: replies in, message content out.

Strategy.  ``ReplyReader`` reads one reply at a time from the connection's
buffer, line by line, keeping the lines of a multi-line reply until its last
line arrives, so a reply split across packets is read the same as a whole
one.  ``ContentEncoder`` turns message content, given in chunks of any
size, into what goes on the wire after DATA (or in BDAT chunks).

Invariants.
- A reply line ends at LF, a CR before it dropped (servers that end lines
  with a bare LF are tolerated); it is ``code`` alone, ``code SP text`` or
  ``code "-" text`` (RFC 5321 4.2), and every line of one reply has the same
  code (4.2.1).  Anything else, an over-long line, or too many lines raises
  ``RemoteProtocolError``: the peer's replies can no longer be matched to
  our commands.  How the input is split never changes what is read.
- Content leaves with CRLF line endings only: a bare CR or LF becomes CRLF
  (RFC 5321 2.3.8: a client MUST NOT send them otherwise), also when the CR
  and LF of one CRLF arrive in different chunks.  Over DATA, a line starting
  with a dot gets another (4.5.2), wherever chunks begin or end; content
  not ending with CRLF gets one, and ``.CRLF`` ends it (4.1.1.4).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from mailgate.protocol._errors import RemoteProtocolError
from mailgate.protocol._replies import _FORBIDDEN_TEXT, Reply

__all__ = [
    "MAX_REPLY_LINES",
    "MAX_REPLY_LINE_OCTETS",
    "ContentEncoder",
    "ReplyReader",
    "parse_extensions",
]

# RFC 5321 4.5.3.1.5 sets 512 octets, CRLF included; real servers overrun it
# with long EHLO lists and policy texts, so four times that is read.
MAX_REPLY_LINE_OCTETS = 2048
# No RFC bounds the lines of a reply; an EHLO reply has about 20.  The cap
# keeps a peer that never ends its reply from growing our memory.
MAX_REPLY_LINES = 200

_LINE_ENDING = re.compile(rb"\r\n|\r|\n")
_ENHANCED_PREFIX = re.compile(r"([245])\.\d{1,3}\.\d{1,3}(?= |\Z)")
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")


class ReplyReader:
    """Reads replies from a buffer; keeps the lines of one still arriving."""

    def __init__(self) -> None:
        self._code = 0
        self._texts: list[str] = []

    def read(self, buf: bytearray, pos: int, *, enhanced: bool) -> tuple[int, Reply | None]:
        """Read from ``buf[pos:]`` up to the end of one reply.

        Returns the new offset and the reply, or ``None`` when it is not
        complete yet.  With ``enhanced`` (ENHANCEDSTATUSCODES offered, RFC
        2034), an enhanced code starting the first line is taken out of the
        text of every line that repeats it.

        Raises ``RemoteProtocolError`` for a malformed reply.
        """
        while True:
            end = buf.find(b"\n", pos, pos + MAX_REPLY_LINE_OCTETS)
            if end < 0:
                if len(buf) - pos >= MAX_REPLY_LINE_OCTETS:
                    raise RemoteProtocolError("reply line too long")
                return pos, None
            line = bytes(buf[pos:end]).removesuffix(b"\r")
            pos = end + 1
            code, last, text = _split_line(line)
            if self._texts and code != self._code:
                raise RemoteProtocolError("the lines of a reply differ in their code")
            self._code = code
            self._texts.append(text)
            if len(self._texts) > MAX_REPLY_LINES:
                raise RemoteProtocolError("reply has too many lines")
            if last:
                texts, self._texts = self._texts, []
                return pos, _reply(code, texts, enhanced=enhanced)


def _split_line(line: bytes) -> tuple[int, bool, str]:
    digits = line[:3]
    if len(digits) < 3 or not digits.isdigit() or digits[:1] not in b"2345":
        raise RemoteProtocolError(f"malformed reply line {line[:40]!r}")
    separator = line[3:4]
    if separator not in (b"", b" ", b"-"):
        raise RemoteProtocolError(f"malformed reply line {line[:40]!r}")
    text = line[4:].decode("utf-8", errors="replace")
    return int(digits), separator != b"-", _FORBIDDEN_TEXT.sub("\ufffd", text)


def _reply(code: int, texts: list[str], *, enhanced: bool) -> Reply:
    status = None
    if enhanced:
        found = _ENHANCED_PREFIX.match(texts[0])
        if found is not None and found.group(1) == str(code)[0]:
            status = found.group()
            texts = [
                text[len(status) :].removeprefix(" ") if text.startswith(status) else text
                for text in texts
            ]
    return Reply(code, status, "\n".join(texts))


def parse_extensions(reply: Reply) -> Mapping[str, tuple[str, ...]]:
    """The EHLO keywords of a positive EHLO reply, each with its parameters.

    The first line (the server's name) is not a keyword (RFC 5321 4.1.1.1);
    a line that is not ``keyword *(SP param)`` is skipped.
    """
    found: dict[str, tuple[str, ...]] = {}
    for line in reply.text.split("\n")[1:]:
        words = line.split()
        if words and _KEYWORD.match(words[0]):
            found[words[0].upper()] = tuple(words[1:])
    return found


class ContentEncoder:
    """Encodes message content for DATA (``stuff=True``) or for BDAT."""

    def __init__(self, *, stuff: bool) -> None:
        self._stuff = stuff
        self._pending_cr = False
        self._line_start = True

    def encode(self, chunk: bytes) -> bytes:
        """The wire form of the next chunk of content (possibly empty)."""
        data = b"\r" + chunk if self._pending_cr else chunk
        # A CR at the end may be the first half of a CRLF: wait for the next chunk.
        self._pending_cr = data.endswith(b"\r")
        if self._pending_cr:
            data = data[:-1]
        if not data:
            return b""
        out = _LINE_ENDING.sub(b"\r\n", data)
        if self._stuff:
            out = out.replace(b"\r\n.", b"\r\n..")
            if self._line_start and out.startswith(b"."):
                out = b"." + out
        self._line_start = out.endswith(b"\r\n")
        return out

    def finish(self) -> bytes:
        """What ends the content: a CRLF if it lacks one, and over DATA the dot line."""
        out = b"\r\n" if self._pending_cr or not self._line_start else b""
        self._pending_cr = False
        self._line_start = True
        return out + b".\r\n" if self._stuff else out
