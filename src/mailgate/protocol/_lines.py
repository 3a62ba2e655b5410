"""Line framing for commands and SASL responses (RFC 5321 2.3.8, 4.5.3.1.4).

Strategy.  ``LineReader`` reads one CRLF-terminated line from the
connection's buffer and hands back the new offset with the line, a
``Reply`` refusing it, or ``Frame.NEED``.  ``split_command`` then checks
and splits a command line.  A refused line is never executed, not even in
part.

Invariants.
- Only CRLF ends a line (2.3.8).  A bare LF or a bare CR does not: the line
  that holds one runs on to the next CRLF and is refused whole, with one
  reply, so what follows a bare line ending is never read as a command.
  That desync is how command smuggling and pipelining confusion start.
- A line is refused as soon as its fault is seen: the first CR or LF that
  is not a CRLF (a bare line ending), or its length passing the limit
  before any CRLF, whichever comes first.  The rest of it, through its
  CRLF, is then dropped as it arrives.  So a client that ends lines with LF
  alone hears at once why nothing it says is done, and the refusal depends
  on the line's octets only, never on how the input was split.
"""

from __future__ import annotations

from mailgate.protocol._content import Frame
from mailgate.protocol._limits import (
    MAX_AUTH_PARAM_EXTRA_OCTETS,
    MAX_DSN_MAIL_EXTRA_OCTETS,
    MAX_DSN_RCPT_EXTRA_OCTETS,
    MAX_MAIL_LINE_EXTRA_OCTETS,
    MAX_SASL_LINE_OCTETS,
)
from mailgate.protocol._replies import Reply
from mailgate.protocol._settings import ConnectionSettings

__all__ = ["LINE_TOO_LONG", "SASL_LINE_TOO_LONG", "LineReader", "is_bdat_line", "split_command"]

_CRLF = b"\r\n"
LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long")
# RFC 4954 4: an over-long response line fails the exchange with 500 5.5.6.
SASL_LINE_TOO_LONG = Reply(500, "5.5.6", "Authentication exchange line is too long")
_BARE_LF = Reply(500, "5.5.2", "Bare LF received; end lines with CRLF (RFC 5321 2.3.8)")
_BARE_CR = Reply(500, "5.5.2", "Bare CR received; end lines with CRLF (RFC 5321 2.3.8)")
_BAD_CHARACTER = Reply(500, "5.5.2", "NUL character in command")
_NOT_UTF8 = Reply(500, "5.5.2", "Command is not valid UTF-8")


def mail_line_limit(settings: ConnectionSettings, *, auth: bool) -> int:
    """The longest MAIL line, CRLF excluded: SIZE, RET and ENVID (and AUTH=) lengthen it."""
    limit = settings.max_command_line - 2 + MAX_MAIL_LINE_EXTRA_OCTETS + MAX_DSN_MAIL_EXTRA_OCTETS
    return limit + MAX_AUTH_PARAM_EXTRA_OCTETS if auth else limit


def rcpt_line_limit(settings: ConnectionSettings) -> int:
    """The longest RCPT line, CRLF excluded: NOTIFY and ORCPT lengthen it."""
    return settings.max_command_line - 2 + MAX_DSN_RCPT_EXTRA_OCTETS


def command_line_cap(settings: ConnectionSettings) -> int:
    """The longest command line worth reading to its end, LF excluded."""
    auth = bool(settings.auth_mechanisms)
    cap = max(mail_line_limit(settings, auth=auth), rcpt_line_limit(settings))
    if auth:
        cap = max(cap, MAX_SASL_LINE_OCTETS - 2)
    return cap + 1  # the CR of the CRLF


def is_bdat_line(buf: bytes | bytearray, start: int) -> bool:
    """Whether the line at ``buf[start:]`` is a BDAT command (RFC 3030 2).

    A BDAT line refused as a line (a bare line ending, a NUL, too long) says
    nothing trustworthy of its chunk's size: the session cannot go on.
    """
    return bytes(buf[start : start + 5]).upper() == b"BDAT "


def split_command(raw: bytes, settings: ConnectionSettings) -> tuple[str, str] | Reply:
    """Check one command line (CRLF removed) and split it into verb and argument.

    The verb is upper-cased, or ``""`` when it is not ASCII (RFC 5321 2.4:
    non-ASCII commands get 500).  Trailing blanks are dropped (4.1.1).
    Returns a 500 reply for a NUL, invalid UTF-8, or a line over its
    verb's limit.
    """
    if b"\x00" in raw:
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
    elif verb == "RCPT":
        limit = rcpt_line_limit(settings)
    elif verb == "AUTH" and settings.auth_mechanisms:
        limit = MAX_SASL_LINE_OCTETS - 2
    if len(raw) > limit:
        return LINE_TOO_LONG
    return verb, argument.strip(" \t")


class LineReader:
    """Frames CRLF-terminated lines; remembers a refused line still arriving."""

    def __init__(self) -> None:
        self._dropping = False
        self.start = 0
        """Where the line last read (or refused) begins in the buffer."""

    def read(
        self, buf: bytearray, pos: int, cap: int, too_long: Reply
    ) -> tuple[int, bytes | Reply | Frame]:
        """Read one line from ``buf[pos:]``: at most ``cap`` octets before its LF.

        Returns the new offset and the line without its CRLF, a reply
        refusing it (sent once; the rest of the line is dropped), or
        ``Frame.NEED``.
        """
        if self._dropping:
            end = buf.find(_CRLF, pos)
            if end < 0:
                # Keep a trailing CR: its LF may be in the next packet.
                return len(buf) - buf.endswith(b"\r", pos), Frame.NEED
            self._dropping = False
            pos = end + 2
        self.start = pos
        # Only the first CR or LF within the limit matters: a CRLF ends the
        # line, anything else is a fault, and so is reaching the limit first.
        window = min(len(buf), pos + cap)
        cr = buf.find(b"\r", pos, window)
        lf = buf.find(b"\n", pos, window)
        if lf >= 0 and (cr < 0 or lf < cr):
            self._dropping = True
            return lf + 1, _BARE_LF
        if cr >= 0:
            if cr + 1 == len(buf):
                return pos, Frame.NEED
            if buf[cr + 1] == 0x0A:
                return cr + 2, bytes(buf[pos:cr])
            self._dropping = True
            return cr + 1, _BARE_CR
        if len(buf) - pos >= cap:
            self._dropping = True
            return pos, too_long
        return pos, Frame.NEED
