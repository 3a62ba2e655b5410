"""Line framing for commands and SASL responses (RFC 5321 2.3.8, 4.5.3.1.4).

Strategy.  ``LineReader`` reads one line ending in LF from the connection's
buffer and hands back the new offset with the line, a ``Reply`` refusing
it, or ``Frame.NEED``.  ``split_command`` then checks and splits a command
line.  A refused line is never executed, not even in part.

Invariants.
- Only CRLF ends a line.  A line ending in a bare LF is refused whole, as
  is one holding a bare CR or a NUL; neither ever splits a line in two.
- A line longer than the limit is dropped as it arrives and refused once
  its LF comes, so what follows it is read in step.  The refusal depends on
  the line's length only, never on how the input was split.
"""

from __future__ import annotations

from mailgate.protocol._content import Frame
from mailgate.protocol._limits import (
    MAX_AUTH_PARAM_EXTRA_OCTETS,
    MAX_MAIL_LINE_EXTRA_OCTETS,
    MAX_SASL_LINE_OCTETS,
)
from mailgate.protocol._replies import Reply
from mailgate.protocol._settings import ConnectionSettings

__all__ = ["LINE_TOO_LONG", "SASL_LINE_TOO_LONG", "LineReader", "split_command"]

LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long")
# RFC 4954 4: an over-long response line fails the exchange with 500 5.5.6.
SASL_LINE_TOO_LONG = Reply(500, "5.5.6", "Authentication exchange line is too long")
_BARE_LF = Reply(500, "5.5.2", "Bare LF received; end lines with CRLF (RFC 5321 2.3.8)")
_BAD_CHARACTER = Reply(500, "5.5.2", "Invalid character in command")
_NOT_UTF8 = Reply(500, "5.5.2", "Command is not valid UTF-8")


def mail_line_limit(settings: ConnectionSettings, *, auth: bool) -> int:
    """The longest MAIL line, CRLF excluded: SIZE (and AUTH=) lengthen it."""
    limit = settings.max_command_line - 2 + MAX_MAIL_LINE_EXTRA_OCTETS
    return limit + MAX_AUTH_PARAM_EXTRA_OCTETS if auth else limit


def command_line_cap(settings: ConnectionSettings) -> int:
    """The longest command line worth reading to its end, LF excluded."""
    auth = bool(settings.auth_mechanisms)
    cap = mail_line_limit(settings, auth=auth)
    if auth:
        cap = max(cap, MAX_SASL_LINE_OCTETS - 2)
    return cap + 1  # the CR of the CRLF


def split_command(raw: bytes, settings: ConnectionSettings) -> tuple[str, str] | Reply:
    """Check one command line (CRLF removed) and split it into verb and argument.

    The verb is upper-cased, or ``""`` when it is not ASCII (RFC 5321 2.4:
    non-ASCII commands get 500).  Trailing blanks are dropped (4.1.1).
    Returns a 500 reply for a bare CR, a NUL, invalid UTF-8, or a line over
    its verb's limit.
    """
    if b"\r" in raw or b"\x00" in raw:
        return _BAD_CHARACTER
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        return _NOT_UTF8
    verb, _, argument = line.partition(" ")
    verb = verb.upper() if verb.isascii() else ""
    limit = settings.max_command_line - 2
    if verb == "MAIL":
        limit = mail_line_limit(settings, auth=bool(settings.auth_mechanisms))
    elif verb == "AUTH" and settings.auth_mechanisms:
        limit = MAX_SASL_LINE_OCTETS - 2
    if len(raw) > limit:
        return LINE_TOO_LONG
    return verb, argument.strip(" \t")


class LineReader:
    """Frames lines ending in LF; keeps the state of a line being dropped."""

    def __init__(self) -> None:
        self._discarding = False

    def read(
        self, buf: bytearray, pos: int, cap: int, too_long: Reply
    ) -> tuple[int, bytes | Reply | Frame]:
        """Read one line from ``buf[pos:]``: at most ``cap`` octets before its LF.

        Returns the new offset and the line without its CRLF, a reply
        refusing it, or ``Frame.NEED``.
        """
        end = buf.find(b"\n", pos)
        if end < 0:
            if self._discarding or len(buf) - pos > cap:
                # Too long already: drop it as it arrives, answer at its end.
                self._discarding = True
                return len(buf), Frame.NEED
            return pos, Frame.NEED
        if self._discarding or end - pos > cap:
            self._discarding = False
            return end + 1, too_long
        if end == pos or buf[end - 1] != 0x0D:
            return end + 1, _BARE_LF
        return end + 1, bytes(buf[pos : end - 1])
