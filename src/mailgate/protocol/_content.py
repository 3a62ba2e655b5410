"""Message content framing: DATA (RFC 5321 4.1.1.4, 4.5.2) and BDAT (RFC 3030).

Strategy.  ``ContentReader`` reads the connection's input buffer from an
offset and returns the new offset with what it found: content to deliver,
or a ``Frame`` signal (need more input, went round, content complete).  It
keeps the tally the limits need (octets so far, the first failure) but
knows nothing of states or replies to commands.

Invariants.
- DATA is consumed a whole CRLF-terminated line at a time, so the offset is
  always at a line start, the one place ``.<CRLF>`` ends DATA.  Only
  ``<CRLF>.<CRLF>`` ends it (RFC 5321 2.3.8, 4.1.1.4): a bare CR or LF never
  starts a line, so every SMTP-smuggling variant is plain content.
- The checks (line length, bare CR or LF, message size) run while content
  streams, line by line in content order, so the first failure and the
  content delivered before it are the same however the input is split.
  After a failure nothing more is delivered; the refusal waits for the
  terminator (RFC 1870 6.3) or the chunk's last octet (RFC 3030 2).
- A line longer than the limit is dropped as it arrives, so no line and no
  message ever sits whole in memory.
- BDAT octets are counted, never inspected: no dot-stuffing, no line rules.
"""

from __future__ import annotations

import enum

from mailgate.protocol._replies import Reply
from mailgate.protocol._settings import ConnectionSettings

__all__ = ["Abort", "ContentReader", "Frame"]

_CRLF = b"\r\n"


class Abort(enum.Enum):
    """Why the engine refused a message, with the reply it sends."""

    SIZE = Reply(552, "5.3.4", "Message size exceeds the fixed maximum")
    LINE = Reply(554, "5.6.0", "Message has a line longer than the limit (RFC 5321 4.5.3.1.6)")
    BARE = Reply(554, "5.6.0", "Message has a bare CR or LF; lines must end with CRLF")

    @property
    def reply(self) -> Reply:
        reply: Reply = self.value
        return reply


class Frame(enum.Enum):
    """What a read found, when it is not content to deliver."""

    NEED = enum.auto()
    """Nothing more can be read until more input arrives."""
    MORE = enum.auto()
    """Input was consumed but there is nothing to deliver; read again."""
    END = enum.auto()
    """DATA's terminator has been read."""


def _unstuff(line: bytes) -> bytes:
    # RFC 5321 4.5.2: the first character of a line is deleted if it is a dot.
    return line[1:] if line.startswith(b".") else line


def _normalise(line: bytes) -> bytes:
    return line.replace(b"\r", b"\n").replace(b"\n", _CRLF)


class ContentReader:
    """The content of one transaction, read from the connection's buffer."""

    def __init__(self, settings: ConnectionSettings) -> None:
        self._settings = settings
        self._max_line = settings.max_text_line - len(_CRLF)
        self.size = 0
        """Octets delivered so far in this transaction."""
        self.error: Abort | None = None
        """The first failure; nothing is delivered after it."""
        self._discarding = False
        self._terminated = False
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

    def _fail(self, abort: Abort) -> None:
        if self.error is None:
            self.error = abort

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
        if buf.startswith(b".\r\n", pos):
            return pos + 3, Frame.END
        end = buf.find(b"\r\n.\r\n", pos)
        if end >= 0:
            self._terminated = True
            return end + 5, self._check(bytes(buf[pos : end + 2]))
        end = buf.rfind(_CRLF, pos)
        if end >= 0:
            return end + 2, self._check(bytes(buf[pos : end + 2]))
        # A partial line: drop it once it is surely too long.  Its final
        # length is at least what is here, less a stuffed dot (not counted,
        # 4.5.3.1.6) and a CR that may be the start of its CRLF.
        rest = len(buf) - pos - buf.startswith(b".", pos) - buf.endswith(b"\r", pos)
        if rest > self._max_line:
            self._fail(Abort.LINE)
            self._discarding = True
            return pos, Frame.MORE
        return pos, Frame.NEED

    def _check(self, content: bytes) -> bytes | Frame:
        """Check and unstuff whole CRLF-terminated lines of DATA content."""
        if self.error is not None:
            return Frame.MORE
        lines = content.count(_CRLF)
        bare = content.count(b"\r") != lines or content.count(b"\n") != lines
        # RFC 5321 4.5.2: a leading dot on any line is removed.
        unstuffed = _unstuff(content).replace(b"\r\n.", _CRLF)
        limit = self._settings.max_message_size
        if (
            not bare
            and (
                len(unstuffed) <= self._max_line
                or max(map(len, unstuffed.split(_CRLF))) <= self._max_line
            )
            and not (limit and self.size + len(unstuffed) > limit)
        ):
            self.size += len(unstuffed)
            return unstuffed
        return self._check_lines(content)

    def _check_lines(self, content: bytes) -> bytes | Frame:
        # The slow path, for content with a fault or a bare line ending:
        # line by line, so the first fault in content order wins.
        limit = self._settings.max_message_size
        normalise = self._settings.bare_line_endings == "normalise"
        good: list[bytes] = []
        size = self.size
        for wire in content.split(_CRLF)[:-1]:
            line = _unstuff(wire)
            if len(line) > self._max_line:
                self._fail(Abort.LINE)
                break
            if b"\r" in line or b"\n" in line:
                if not normalise:
                    self._fail(Abort.BARE)
                    break
                line = _normalise(line)
            if limit and size + len(line) + 2 > limit:
                self._fail(Abort.SIZE)
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
            self._fail(Abort.SIZE)
        else:
            take_ok = take
        self.size += take_ok
        data = bytes(buf[pos : pos + take_ok])
        return pos + take, data if data else Frame.MORE
