"""Message content framing: DATA (RFC 5321 4.1.1.4, 4.5.2) and BDAT (RFC 3030).

Strategy.  ``ContentReader`` reads the connection's input buffer from an
offset and returns the new offset with what it found: content to deliver,
or a ``Frame`` signal (need more input, went round, content complete).  It
keeps the tally the limits need (octets so far, the first failure) but
knows nothing of states or replies to commands.

Invariants.
- Only ``<CRLF>.<CRLF>`` ends DATA (RFC 5321 2.3.8, 4.1.1.4).  The offset is
  always at the start of a line: of a CRLF-terminated line, where ``.<CRLF>``
  ends DATA, or just after a bare CR or LF, where it never does.  So every
  SMTP-smuggling variant (``\\n.\\n``, ``\\r.\\r``, ``\\n.\\r\\n``, ``\\r\\n.\\n``)
  is content.
- Bare line endings (``bare_line_endings``).  ``"normalise"`` (the default,
  as Postfix 3.9 does) reads a bare LF, and a bare CR too, as CRLF in every
  respect but ending DATA: the line is stored with CRLF, it counts against
  the line limit on its own, and a dot starting the next line is a stuffed
  one (4.5.2), as from a client that ends every line with LF and stuffs
  after it (Python's ``smtplib`` sending ``as_bytes()``).  A bare CR becomes
  CRLF too, so what is stored never holds a lone CR or LF to confuse a
  server it is relayed to.  ``"reject"`` refuses the message instead.
- A lone dot on a line that does not end DATA is kept: a leading dot is
  removed only when other characters follow it (4.5.2).
- The checks (line length, bare CR or LF, message size) run while content
  streams, line by line in content order, so the first failure and the
  content delivered before it are the same however the input is split.
  After a failure nothing more is delivered; the refusal waits for the
  terminator (RFC 1870 6.3) or the chunk's last octet (RFC 3030 2).  A line
  is too long when it passes the limit before any line ending: a run of
  short lines ended by bare LFs is a bare line ending problem, not a long
  line.
- A line longer than the limit is dropped as it arrives, and lines ended by
  bare line endings are taken as they arrive, so no line and no message
  ever sits whole in memory.
- BDAT octets are counted, never inspected: no dot-stuffing, no line rules.

Replies.  A long line gets ``554 5.6.0`` naming the limit: 4.5.3.1.10's
``500 Line too long`` is no reply to the end of DATA (4.3.2), and 552
would say the message is too big.  A bare line ending gets ``554 5.6.0``
too, and a message over SIZE ``552 5.3.4`` (RFC 1870 6.3).
"""

from __future__ import annotations

import enum
import re

from mailgate.protocol._replies import Reply
from mailgate.protocol._settings import ConnectionSettings

__all__ = ["ContentReader", "Frame"]

_CRLF = b"\r\n"
_LINE_ENDING = re.compile(rb"\r\n|\r|\n")
_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds the fixed maximum")
_BARE = Reply(554, "5.6.0", "Message has a bare CR or LF; lines must end with CRLF")


class Frame(enum.Enum):
    """What a read found, when it is not content to deliver."""

    NEED = enum.auto()
    """Nothing more can be read until more input arrives."""
    MORE = enum.auto()
    """Input was consumed but there is nothing to deliver; read again."""
    END = enum.auto()
    """DATA's terminator has been read."""


def _unstuff(content: bytes) -> bytes:
    # RFC 5321 4.5.2: a leading dot is deleted when other characters follow.
    # ``content`` is whole lines ending in CRLF, so a lone dot is ".\r\n".
    if content.startswith(b".") and not content.startswith(b".\r\n"):
        return content[1:]
    return content


class ContentReader:
    """The content of one transaction, read from the connection's buffer."""

    def __init__(self, settings: ConnectionSettings) -> None:
        self._settings = settings
        self._normalise = settings.bare_line_endings == "normalise"
        self._max_line = settings.max_text_line - len(_CRLF)
        self._too_long = Reply(
            554,
            "5.6.0",
            f"Message has a line over {settings.max_text_line} octets (RFC 5321 4.5.3.1.6)",
        )
        self.size = 0
        """Octets delivered so far in this transaction."""
        self.error: Reply | None = None
        """The refusal of the first failure; nothing is delivered after it."""
        self._discarding = False
        self._terminated = False
        self._after_bare = False
        self.bdat_size = 0
        self.bdat_last = False
        self.bdat_remaining = 0
        self.bdat_refusal: Reply | None = None
        """Set when the chunk being read is to be thrown away and refused."""

    def begin(self) -> None:
        """Start the content of a new transaction."""
        self.size = 0
        self.error = None
        self._discarding = False
        self._terminated = False
        self._after_bare = False

    def _fail(self, refusal: Reply) -> None:
        if self.error is None:
            self.error = refusal

    # ------------------------------------------------------------------- DATA

    def read_data(self, buf: bytearray, pos: int) -> tuple[int, bytes | Frame]:
        """Read DATA content from ``buf[pos:]``; ``pos`` is at a line start."""
        if self._terminated:
            self._terminated = False
            return pos, Frame.END
        if self._discarding:
            end = buf.find(_CRLF, pos)
            if end < 0:
                # Keep a trailing CR: its LF may be in the next packet.
                return len(buf) - buf.endswith(b"\r", pos), Frame.NEED
            pos = end + 2
            self._discarding = False
            self._after_bare = False
        if not self._after_bare and buf.startswith(b".\r\n", pos):
            return pos + 3, Frame.END
        end = buf.find(b"\r\n.\r\n", pos)
        if end >= 0:
            self._terminated = True
            self._after_bare = False
            return end + 5, self._take(bytes(buf[pos : end + 2]))
        end = buf.rfind(_CRLF, pos)
        if end >= 0:
            self._after_bare = False
            return end + 2, self._take(bytes(buf[pos : end + 2]))
        # No CRLF yet.  Lines ended by a bare LF, or by a CR something other
        # than LF follows, are whole already: take them now.
        end = max(buf.rfind(b"\n", pos), buf.rfind(b"\r", pos, len(buf) - 1))
        if end >= 0:
            self._after_bare = True
            return end + 1, self._take(bytes(buf[pos : end + 1]))
        # A partial line: drop it once it is surely too long.  Its final
        # length is at least what is here, less a stuffed dot (not counted,
        # 4.5.3.1.6) and a CR that may be the start of its CRLF.
        rest = len(buf) - pos - buf.startswith(b".", pos) - buf.endswith(b"\r", pos)
        if rest > self._max_line:
            self._fail(self._too_long)
            self._discarding = True
            return pos, Frame.MORE
        return pos, Frame.NEED

    def _take(self, content: bytes) -> bytes | Frame:
        """Check and unstuff whole lines of DATA content."""
        if self.error is not None:
            return Frame.MORE
        lines = content.count(_CRLF)
        if content.count(b"\r") == lines == content.count(b"\n"):
            # The fast path: CRLF lines only, checked a buffer at a time.
            unstuffed = _unstuff(content).replace(b"\r\n.", _CRLF)
            limit = self._settings.max_message_size
            if (
                len(unstuffed) <= self._max_line
                or max(map(len, unstuffed.split(_CRLF))) <= self._max_line
            ) and not (limit and self.size + len(unstuffed) > limit):
                self.size += len(unstuffed)
                return unstuffed
        return self._take_lines(content)

    def _take_lines(self, content: bytes) -> bytes | Frame:
        # The slow path, for content with a fault or a bare line ending:
        # line by line, so the first fault in content order wins.
        limit = self._settings.max_message_size
        good: list[bytes] = []
        size = self.size
        start = 0
        for ending in _LINE_ENDING.finditer(content):
            line = content[start : ending.start()]
            start = ending.end()
            if len(line) > 1 and line.startswith(b"."):
                line = line[1:]
            if len(line) > self._max_line:
                self._fail(self._too_long)
                break
            if ending.group() != _CRLF and not self._normalise:
                self._fail(_BARE)
                break
            if limit and size + len(line) + 2 > limit:
                self._fail(_TOO_BIG)
                break
            size += len(line) + 2
            good.append(line + _CRLF)
        self.size = size
        return b"".join(good) if good else Frame.MORE

    # ------------------------------------------------------------------- BDAT

    def begin_chunk(self, size: int, last: bool, refusal: Reply | None) -> None:
        """Expect ``size`` octets of a BDAT chunk; with ``refusal``, drop them."""
        self.bdat_size = size
        self.bdat_last = last
        self.bdat_remaining = size
        self.bdat_refusal = refusal

    def read_chunk(self, buf: bytearray, pos: int) -> tuple[int, bytes | Frame]:
        """Read BDAT octets from ``buf[pos:]`` while ``bdat_remaining``.

        Returns octets to deliver, ``Frame.MORE`` for octets thrown away, or
        ``Frame.NEED``.
        """
        take = min(len(buf) - pos, self.bdat_remaining)
        if not take:
            return pos, Frame.NEED
        self.bdat_remaining -= take
        if self.bdat_refusal is not None or self.error is not None:
            return pos + take, Frame.MORE
        limit = self._settings.max_message_size
        if limit and self.size + take > limit:
            take_ok = limit - self.size
            self._fail(_TOO_BIG)
        else:
            take_ok = take
        self.size += take_ok
        data = bytes(buf[pos : pos + take_ok])
        return pos + take, data if data else Frame.MORE
