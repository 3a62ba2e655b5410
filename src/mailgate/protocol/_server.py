"""The server side of an SMTP session, sans I/O.

Strategy.  Bytes go in through ``receive_data``; ``next_event`` parses as far
as it can and returns one event, or ``NEED_DATA``.  Replies go out through
``send`` and are collected until the shell calls ``data_to_send``, so replies
to pipelined commands leave together when the input runs dry (RFC 2920 3.2).

Invariants.
- Input is framed in one of four ways: command lines, DATA content, BDAT
  octets, and SASL response lines.  The framing changes only when a reply
  is sent, so nothing is ever parsed under the wrong framing.
- After a ``Command`` event the engine reads nothing more until the
  application has replied to it: a reply decides the next state.
- The engine answers protocol errors itself (500, 501, 503, 504, 552, 555,
  and 421 when the error budget is spent); the application only ever sees
  valid, in-sequence commands.
- Only ``<CRLF>.<CRLF>`` ends DATA (RFC 5321 2.3.8 and 4.1.1.4); DATA is
  consumed a whole line at a time, so a line start is always just after
  a CRLF.
- Every byte received before a ``220`` to STARTTLS is dropped when that
  reply is sent (RFC 3207 4.2, CVE-2011-0411).
"""

from __future__ import annotations

import base64
import binascii
from collections import deque
from collections.abc import Callable
from typing import Final

from mailgate.protocol._address import PathError, parse_params, parse_path
from mailgate.protocol._errors import LocalProtocolError
from mailgate.protocol._events import (
    AuthResponse,
    AuthStart,
    BdatChunk,
    Command,
    ConnectionClosed,
    DataAborted,
    DataChunk,
    DataEnd,
    DataStart,
    Ehlo,
    Event,
    Expn,
    Helo,
    MailFrom,
    RcptTo,
    Rset,
    StartTLS,
    Vrfy,
)
from mailgate.protocol._limits import (
    MAX_MAIL_LINE_EXTRA_OCTETS,
    MAX_SASL_LINE_OCTETS,
    MAX_SIZE_DIGITS,
)
from mailgate.protocol._replies import Reply
from mailgate.protocol._settings import ConnectionSettings
from mailgate.protocol._state import Kind, State, transition

__all__ = ["NEED_DATA", "ServerConnection"]

_LineHandler = Callable[[bytes], "Event | None"]


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()
"""``next_event`` has nothing to return until more data arrives."""

_OK = Reply(250, "2.0.0", "OK")
_BAD_SEQUENCE = "5.5.1"
_SYNTAX = "5.5.4"
_HELP_TEXT = (
    "Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT HELP VRFY EXPN\n"
    "See RFC 5321 for details"
)
_NOT_IMPLEMENTED = frozenset({"TURN", "ETRN", "ATRN", "SEND", "SOML", "SAML"})
_MAIL_ONLY_AFTER = (State.READY,)
_IN_TRANSACTION = (State.MAIL, State.RCPT, State.BDAT)

_ABORT_REPLIES = {
    "size": (552, "5.3.4", "Message size exceeds the fixed maximum"),
    "line": (554, "5.6.0", "Message has a line longer than the limit (RFC 5321 4.5.3.1.6)"),
    "bare": (
        554,
        "5.6.0",
        "Message has a bare CR or LF; lines must end with CRLF (RFC 5321 2.3.8)",
    ),
}


def _reply(code: int, enhanced: str, text: str) -> Reply:
    return Reply(code, enhanced, text)


def _normalise_line_endings(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


def _split_path(argument: str) -> tuple[str, list[str]] | None:
    """Split ``<path> params`` into the path and the parameter words.

    Honours quoted local parts, which may hold ``>`` and spaces.
    """
    argument = argument.lstrip(" ")
    if not argument.startswith("<"):
        word, _, rest = argument.partition(" ")
        return word, rest.split()
    quoted = False
    i = 1
    while i < len(argument):
        char = argument[i]
        if quoted and char == "\\":
            i += 2
            continue
        if char == '"':
            quoted = not quoted
        elif char == ">" and not quoted:
            rest = argument[i + 1 :]
            if rest and not rest.startswith(" "):
                return None
            return argument[: i + 1], rest.split()
        i += 1
    return None


class ServerConnection:
    """One SMTP session, server side.

    Typical use by a shell::

        conn = ServerConnection(ConnectionSettings(hostname="mx.example"))
        conn.send(Reply(220, None, "mx.example ESMTP ready"))
        conn.receive_data(bytes_from_socket)
        while (event := conn.next_event()) is not NEED_DATA:
            ...  # reply to every Command with conn.send(...)
        socket.write(conn.data_to_send())
    """

    def __init__(self, settings: ConnectionSettings | None = None) -> None:
        self.settings = settings or ConnectionSettings()
        self.state = State.GREETING
        self.extended = False
        """Whether the session began with EHLO (extensions allowed)."""
        self.helo_name = ""
        self.tls_active = self.settings.tls_active
        self.authenticated = False
        self.smtputf8 = False
        """Whether the open transaction declared SMTPUTF8."""
        self.recipients = 0
        """Recipients accepted in the open transaction."""
        self.errors = 0
        """Error replies sent so far, counted against the error budget."""
        self._buf = bytearray()
        self._pos = 0
        self._eof = False
        self._out: list[bytes] = []
        self._pending: Command | None = None
        self._queued: deque[Event] = deque()
        # Framing of DATA and BDAT content.
        self._discarding_line = False
        self._terminated = False
        self._content_size = 0
        self._content_error = ""
        self._bdat_remaining = 0
        self._bdat_size = 0
        self._bdat_last = False
        self._bdat_refusal: Reply | None = None

    # ------------------------------------------------------------------ input

    def receive_data(self, data: bytes) -> None:
        """Feed bytes received from the client."""
        if self._eof:
            raise LocalProtocolError("receive_data after receive_eof")
        if self.state in (State.CLOSED, State.TLS_HANDSHAKE):
            return
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def receive_eof(self) -> None:
        """The client closed its side (or the connection broke)."""
        self._eof = True

    @property
    def has_buffered_input(self) -> bool:
        """Whether unparsed input is waiting (the shell flushes replies when not)."""
        return self._pos < len(self._buf)

    # ----------------------------------------------------------------- output

    def data_to_send(self) -> bytes:
        """All replies produced since the last call, ready for the wire."""
        out = b"".join(self._out)
        self._out.clear()
        return out

    def ehlo_reply(self, text: str) -> Reply:
        """A 250 reply to EHLO: ``text`` first, then the extension keywords."""
        return Reply(250, None, "\n".join((text, *self.extensions)))

    @property
    def extensions(self) -> tuple[str, ...]:
        """The EHLO keywords this session offers right now."""
        settings = self.settings
        size = settings.max_message_size
        keywords = [
            f"SIZE {size}" if size else "SIZE",
            "8BITMIME",
            "PIPELINING",
            "CHUNKING",
            "ENHANCEDSTATUSCODES",
        ]
        if settings.smtputf8:
            keywords.append("SMTPUTF8")
        if settings.starttls and not self.tls_active:
            keywords.append("STARTTLS")
        if self._auth_offered():
            keywords.append("AUTH " + " ".join(settings.auth_mechanisms))
        keywords.append("HELP")
        return tuple(keywords)

    def _auth_offered(self) -> bool:
        settings = self.settings
        return bool(settings.auth_mechanisms) and (
            self.tls_active or not settings.auth_requires_tls
        )

    def send(self, reply: Reply) -> None:
        """Answer the command last returned by ``next_event``.

        Outside a command, only the greeting (220, 554 or 421) and an
        unsolicited ``421`` (shutting down) may be sent.

        Raises ``LocalProtocolError`` for a reply nobody asked for, or one
        that makes no sense for the command (a 250 to DATA).
        """
        if self.state is State.CLOSED:
            raise LocalProtocolError("the session is closed")
        command = self._pending
        if command is None:
            self._send_unsolicited(reply)
            return
        kind = self._kind(command, reply)
        positive = self._check_polarity(command, reply)
        self._pending = None
        self._emit(reply)
        if reply.code == 421:
            self._close()
            return
        before = self.state
        self.state = transition(before, kind, positive=positive)
        if positive:
            self._after_positive(command)
        elif isinstance(command, (BdatChunk, DataEnd)):
            self._reset_transaction()
        self._spend_error_budget(reply)

    def _send_unsolicited(self, reply: Reply) -> None:
        if self.state is State.GREETING:
            if reply.code == 220:
                self.state = State.CONNECTED
            elif reply.code == 554:
                self.state = State.REFUSED
            elif reply.code != 421:
                raise LocalProtocolError("the greeting must be 220, 554 or 421")
            self._emit(reply)
            if reply.code == 421:
                self._close()
            return
        if reply.code != 421:
            raise LocalProtocolError("no command is waiting for a reply")
        self._emit(reply)
        self._close()

    @staticmethod
    def _kind(command: Command, reply: Reply) -> Kind:
        if isinstance(command, (Helo, Ehlo)):
            return Kind.HELLO
        if isinstance(command, MailFrom):
            return Kind.MAIL
        if isinstance(command, RcptTo):
            return Kind.RCPT
        if isinstance(command, DataStart):
            return Kind.DATA
        if isinstance(command, DataEnd):
            return Kind.DATA_END
        if isinstance(command, BdatChunk):
            return Kind.BDAT_LAST if command.last else Kind.BDAT
        if isinstance(command, Rset):
            return Kind.RSET
        if isinstance(command, StartTLS):
            return Kind.STARTTLS
        if isinstance(command, (AuthStart, AuthResponse)):
            return Kind.AUTH if reply.code == 334 else Kind.AUTH_DONE
        return Kind.OTHER

    @staticmethod
    def _check_polarity(command: Command, reply: Reply) -> bool:
        code = reply.code
        if isinstance(command, DataStart):
            if 200 <= code < 400 and code != 354:
                raise LocalProtocolError("DATA takes 354 or an error")
            return code == 354
        if isinstance(command, StartTLS):
            if 200 <= code < 400 and code != 220:
                raise LocalProtocolError("STARTTLS takes 220 or an error")
            return code == 220
        if isinstance(command, (AuthStart, AuthResponse)):
            return code in (334, 235)
        if 300 <= code < 400:
            raise LocalProtocolError(f"{code} is no answer to {type(command).__name__}")
        return code < 300

    def _after_positive(self, command: Command) -> None:
        if isinstance(command, (Helo, Ehlo)):
            self.extended = isinstance(command, Ehlo)
            self.helo_name = command.name
            self._reset_transaction()
        elif isinstance(command, MailFrom):
            self.smtputf8 = command.smtputf8
            self.recipients = 0
            self._content_size = 0
        elif isinstance(command, RcptTo):
            self.recipients += 1
        elif isinstance(command, DataStart):
            self._content_size = 0
            self._content_error = ""
            self._discarding_line = False
        elif isinstance(command, Rset) or (isinstance(command, BdatChunk) and command.last):
            self._reset_transaction()
        elif isinstance(command, StartTLS):
            # RFC 3207 4.2 and CVE-2011-0411: plaintext pipelined behind
            # STARTTLS must never be executed inside the TLS session.
            self._buf.clear()
            self._pos = 0
        elif isinstance(command, (AuthStart, AuthResponse)) and self.state is State.READY:
            self.authenticated = True

    def _reset_transaction(self) -> None:
        self.smtputf8 = False
        self.recipients = 0
        self._content_size = 0

    def _emit(self, reply: Reply) -> None:
        self._out.append(reply.to_bytes())

    def _close(self) -> None:
        self.state = State.CLOSED
        self._buf.clear()
        self._pos = 0

    def _spend_error_budget(self, reply: Reply) -> None:
        if reply.code < 400 or self.state is State.CLOSED:
            return
        self.errors += 1
        if self.errors >= self.settings.error_budget:
            self._emit(
                Reply(421, "4.7.0", f"{self.settings.hostname} Too many errors, closing connection")
            )
            self._close()

    def _refuse(self, code: int, enhanced: str, text: str) -> None:
        reply = Reply(code, enhanced, text)
        self._emit(reply)
        self._spend_error_budget(reply)

    # ------------------------------------------------------------------- TLS

    def tls_established(self) -> None:
        """The TLS handshake after STARTTLS succeeded: reset per RFC 3207 4.2.

        The client must say EHLO again; STARTTLS is no longer offered.

        Raises ``LocalProtocolError`` unless a 220 to STARTTLS was sent.
        """
        if self.state is not State.TLS_HANDSHAKE:
            raise LocalProtocolError("tls_established without an accepted STARTTLS")
        self._buf.clear()
        self._pos = 0
        self.tls_active = True
        self.extended = False
        self.helo_name = ""
        self.authenticated = False
        self._reset_transaction()
        self.state = State.CONNECTED

    # ---------------------------------------------------------------- events

    def next_event(self) -> Event | _NeedData:
        """The next event, or ``NEED_DATA``.

        Raises ``LocalProtocolError`` while a command still awaits its reply.
        """
        if self._pending is not None:
            raise LocalProtocolError(f"reply to {type(self._pending).__name__} first")
        while True:
            if self._queued:
                event: Event | _NeedData | None = self._queued.popleft()
            else:
                event = self._next_framed()
            if event is None:
                continue
            if isinstance(event, Command):
                self._pending = event
            return event

    def _next_framed(self) -> Event | _NeedData | None:
        """Parse under the current framing; ``None`` means "go round again"."""
        state = self.state
        if state is State.CLOSED:
            return ConnectionClosed()
        if state in (State.GREETING, State.TLS_HANDSHAKE):
            return self._need_data_or_close()
        if state is State.DATA:
            return self._next_data()
        if self._bdat_remaining:
            return self._next_bdat()
        if state is State.AUTH:
            return self._next_line(MAX_SASL_LINE_OCTETS, self._handle_sasl_line)
        return self._next_line(self._line_cap(), self._handle_command_line)

    def _line_cap(self) -> int:
        cap = self.settings.max_command_line + MAX_MAIL_LINE_EXTRA_OCTETS
        if self.settings.auth_mechanisms:
            cap = max(cap, MAX_SASL_LINE_OCTETS)
        return cap

    def _need_data_or_close(self) -> Event | _NeedData:
        if not self._eof:
            return NEED_DATA
        aborting = self.state in (State.DATA, State.BDAT) or self._bdat_remaining > 0
        self._close()
        self._bdat_remaining = 0
        if aborting:
            self._queued.append(ConnectionClosed())
            return DataAborted("connection closed")
        return ConnectionClosed()

    # ---------------------------------------------------------- command lines

    def _next_line(self, cap: int, handle: _LineHandler) -> Event | _NeedData | None:
        buf, pos = self._buf, self._pos
        end = buf.find(b"\n", pos)
        if self._discarding_line:
            if end < 0:
                self._pos = len(buf)
                return self._need_data_or_close()
            self._pos = end + 1
            self._discarding_line = False
            self._refuse(500, "5.5.2", "Line too long")
            return None
        if end < 0:
            if len(buf) - pos > cap:
                self._discarding_line = True
                self._pos = len(buf)
                return None
            return self._need_data_or_close()
        self._pos = end + 1
        if end == pos or buf[end - 1] != 0x0D:
            self._refuse(500, "5.5.2", "Bare LF received; end lines with CRLF (RFC 5321 2.3.8)")
            return None
        raw = bytes(buf[pos : end - 1])
        return handle(raw)

    def _handle_command_line(self, raw: bytes) -> Event | None:
        if b"\r" in raw or b"\x00" in raw:
            self._refuse(500, "5.5.2", "Invalid character in command")
            return None
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            self._refuse(500, "5.5.2", "Command is not valid UTF-8")
            return None
        verb, _, argument = line.partition(" ")
        verb = verb.upper()
        argument = argument.strip(" ")
        limit = self.settings.max_command_line - 2
        if verb == "MAIL":
            limit += MAX_MAIL_LINE_EXTRA_OCTETS
        elif verb == "AUTH":
            limit = MAX_SASL_LINE_OCTETS - 2
        if len(raw) > limit:
            self._refuse(500, "5.5.2", "Line too long")
            return None
        if self.state is State.REFUSED and verb != "QUIT":
            self._refuse(503, _BAD_SEQUENCE, "Service refused; only QUIT is accepted")
            return None
        handler = _COMMANDS.get(verb)
        if handler is None:
            if verb == "BDAT":
                return self._bdat(argument)
            if verb in _NOT_IMPLEMENTED:
                self._refuse(502, "5.5.1", "Command not implemented")
            else:
                self._refuse(500, "5.5.2", "Command not recognized")
            return None
        return handler(self, argument)

    def _no_argument(self, argument: str, name: str) -> bool:
        if argument:
            self._refuse(501, _SYNTAX, f"Syntax: {name} takes no parameters")
            return False
        return True

    def _hello(self, argument: str, *, extended: bool) -> Event | None:
        name = "EHLO" if extended else "HELO"
        if not argument:
            self._refuse(501, _SYNTAX, f"Syntax: {name} hostname")
            return None
        return Ehlo(argument) if extended else Helo(argument)

    def _cmd_helo(self, argument: str) -> Event | None:
        return self._hello(argument, extended=False)

    def _cmd_ehlo(self, argument: str) -> Event | None:
        return self._hello(argument, extended=True)

    def _cmd_mail(self, argument: str) -> Event | None:
        if self.state is State.CONNECTED:
            self._refuse(503, _BAD_SEQUENCE, "Send HELO or EHLO first")
            return None
        if self.state in _IN_TRANSACTION:
            self._refuse(503, _BAD_SEQUENCE, "Nested MAIL command")
            return None
        if argument[:5].upper() != "FROM:":
            self._refuse(501, _SYNTAX, "Syntax: MAIL FROM:<address>")
            return None
        split = _split_path(argument[5:])
        if split is None:
            self._refuse(501, "5.1.7", "Bad sender address syntax")
            return None
        path, words = split
        try:
            params = parse_params(words, utf8=self.settings.smtputf8)
            size, body, utf8 = self._mail_params(params)
            parsed = parse_path(
                path,
                allow_null=True,
                allow_postmaster=False,
                utf8=utf8,
                non_ascii_reply=Reply(550, "5.6.7", "Non-ASCII address needs SMTPUTF8"),
            )
        except PathError as error:
            self._refuse(error.reply.code, error.reply.enhanced or "5.5.4", error.reply.text)
            return None
        return MailFrom(parsed.address, params, size, body, utf8)

    def _mail_params(self, params: dict[str, str | None]) -> tuple[int | None, str | None, bool]:
        if params and not self.extended:
            raise PathError(Reply(555, "5.5.4", "Parameters need EHLO"))
        size: int | None = None
        body: str | None = None
        utf8 = False
        for key, value in params.items():
            if key == "SIZE":
                if value is None or not value.isdigit() or len(value) > MAX_SIZE_DIGITS:
                    raise PathError(Reply(501, "5.5.4", "Syntax: SIZE=<octets>"))
                size = int(value)
                limit = self.settings.max_message_size
                if limit and size > limit:
                    raise PathError(Reply(552, "5.3.4", "Message size exceeds the fixed maximum"))
            elif key == "BODY":
                body = (value or "").upper()
                if body not in ("7BIT", "8BITMIME"):
                    raise PathError(Reply(501, "5.5.4", "BODY must be 7BIT or 8BITMIME"))
            elif key == "SMTPUTF8" and self.settings.smtputf8:
                if value is not None:
                    raise PathError(Reply(501, "5.5.4", "SMTPUTF8 takes no value"))
                utf8 = True
            else:
                raise PathError(Reply(555, "5.5.4", f"Unsupported parameter {key}"))
        return size, body, utf8

    def _cmd_rcpt(self, argument: str) -> Event | None:
        if self.state not in (State.MAIL, State.RCPT):
            text = "Send MAIL first" if self.state is not State.BDAT else "BDAT transfer under way"
            self._refuse(503, _BAD_SEQUENCE, text)
            return None
        if argument[:3].upper() != "TO:":
            self._refuse(501, _SYNTAX, "Syntax: RCPT TO:<address>")
            return None
        split = _split_path(argument[3:])
        if split is None:
            self._refuse(501, "5.1.3", "Bad recipient address syntax")
            return None
        path, words = split
        try:
            params = parse_params(words, utf8=self.smtputf8)
            if params:
                raise PathError(Reply(555, "5.5.4", f"Unsupported parameter {next(iter(params))}"))
            parsed = parse_path(
                path,
                allow_null=False,
                allow_postmaster=True,
                utf8=self.smtputf8,
                non_ascii_reply=Reply(553, "5.6.7", "Non-ASCII address needs SMTPUTF8"),
            )
        except PathError as error:
            self._refuse(error.reply.code, error.reply.enhanced or "5.5.4", error.reply.text)
            return None
        if self.recipients >= self.settings.max_recipients:
            self._refuse(452, "4.5.3", "Too many recipients")
            return None
        return RcptTo(parsed.address, params)

    def _cmd_data(self, argument: str) -> Event | None:
        if not self._no_argument(argument, "DATA"):
            return None
        if self.state is not State.RCPT:
            texts = {
                State.MAIL: "No valid recipients",
                State.BDAT: "DATA cannot follow BDAT",
            }
            self._refuse(503, _BAD_SEQUENCE, texts.get(self.state, "Send MAIL first"))
            return None
        return DataStart()

    def _cmd_rset(self, argument: str) -> Event | None:
        if not self._no_argument(argument, "RSET"):
            return None
        return Rset()

    def _cmd_noop(self, argument: str) -> Event | None:
        # RFC 5321 4.1.1.9: a parameter is ignored.
        self._emit(_OK)
        return None

    def _cmd_help(self, argument: str) -> Event | None:
        self._emit(Reply(214, "2.0.0", _HELP_TEXT))
        return None

    def _cmd_quit(self, argument: str) -> Event | None:
        if not self._no_argument(argument, "QUIT"):
            return None
        aborting = self.state is State.BDAT
        self._emit(Reply(221, "2.0.0", f"{self.settings.hostname} closing connection"))
        self._close()
        return DataAborted("QUIT during BDAT") if aborting else None

    def _cmd_vrfy(self, argument: str) -> Event | None:
        if not argument:
            self._refuse(501, _SYNTAX, "Syntax: VRFY address")
            return None
        return Vrfy(argument)

    def _cmd_expn(self, argument: str) -> Event | None:
        if not argument:
            self._refuse(501, _SYNTAX, "Syntax: EXPN list")
            return None
        return Expn(argument)

    def _cmd_starttls(self, argument: str) -> Event | None:
        if not self.settings.starttls:
            self._refuse(502, "5.5.1", "Command not implemented")
            return None
        if not self._no_argument(argument, "STARTTLS"):
            return None
        if self.tls_active:
            self._refuse(503, _BAD_SEQUENCE, "TLS already active")
            return None
        if self.state is not State.READY:
            text = (
                "Send EHLO first"
                if self.state is State.CONNECTED
                else "Finish the transaction first"
            )
            self._refuse(503, _BAD_SEQUENCE, text)
            return None
        return StartTLS()

    def _cmd_auth(self, argument: str) -> Event | None:
        settings = self.settings
        if not settings.auth_mechanisms:
            self._refuse(502, "5.5.1", "Command not implemented")
            return None
        if self.state is not State.READY or not self.extended:
            text = "Send EHLO first" if not self.extended else "Not during a mail transaction"
            self._refuse(503, _BAD_SEQUENCE, text)
            return None
        if self.authenticated:
            self._refuse(503, _BAD_SEQUENCE, "Already authenticated")
            return None
        if not self._auth_offered():
            self._refuse(
                538, "5.7.11", "Encryption required for requested authentication mechanism"
            )
            return None
        mechanism, _, initial = argument.partition(" ")
        mechanism = mechanism.upper()
        initial = initial.strip(" ")
        if mechanism not in settings.auth_mechanisms:
            self._refuse(504, "5.5.4", "Unrecognized authentication type")
            return None
        if not initial:
            return AuthStart(mechanism, None)
        decoded = self._decode_sasl(initial)
        if decoded is None:
            return None
        return AuthStart(mechanism, decoded)

    def _decode_sasl(self, text: str) -> bytes | None:
        if text == "=":
            return b""
        try:
            return base64.b64decode(text.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            self._refuse(501, "5.5.2", "Cannot decode response")
            return None

    def _handle_sasl_line(self, raw: bytes) -> Event | None:
        text = raw.decode("latin-1").strip(" ")
        if text == "*":
            self.state = State.READY
            self._refuse(501, "5.0.0", "Authentication cancelled")
            return None
        decoded = b"" if not text else self._decode_sasl(text)
        if decoded is None:
            self.state = State.READY
            return None
        return AuthResponse(decoded)

    # ------------------------------------------------------------------- DATA

    def _next_data(self) -> Event | _NeedData | None:
        if self._terminated:
            self._terminated = False
            return self._finish_data()
        buf, pos = self._buf, self._pos
        size = len(buf)
        if self._discarding_line:
            end = buf.find(b"\r\n", pos)
            if end < 0:
                # Keep a trailing CR: its LF may be in the next packet.
                self._pos = size - 1 if buf.endswith(b"\r") else size
                return self._need_data_or_close()
            self._pos = end + 2
            self._discarding_line = False
        if buf.startswith(b".\r\n", self._pos):
            self._pos += 3
            return self._finish_data()
        pos = self._pos
        end = buf.find(b"\r\n.\r\n", pos)
        if end >= 0:
            content = bytes(buf[pos : end + 2])
            self._pos = end + 5
            self._terminated = True
        else:
            last = buf.rfind(b"\r\n", pos)
            if last < 0:
                if size - pos >= self.settings.max_text_line:
                    self._content_error = self._content_error or "line"
                    self._discarding_line = True
                    return None
                return self._need_data_or_close()
            content = bytes(buf[pos : last + 2])
            self._pos = last + 2
        chunk = self._take_content(content)
        return None if chunk is None else DataChunk(chunk)

    def _take_content(self, content: bytes) -> bytes | None:
        """Check and unstuff whole CRLF-terminated lines of DATA content."""
        if self._content_error:
            return None
        lines = content.count(b"\r\n")
        if content.count(b"\n") != lines or content.count(b"\r") != lines:
            if self.settings.bare_line_endings == "reject":
                self._content_error = "bare"
                return None
            content = _normalise_line_endings(content)
        # RFC 5321 4.5.2: a leading dot on any line is removed.
        if content.startswith(b"."):
            content = content[1:]
        content = content.replace(b"\r\n.", b"\r\n")
        if len(content) > self.settings.max_text_line - 2:
            longest = max(map(len, content.split(b"\r\n")))
            if longest > self.settings.max_text_line - 2:
                self._content_error = "line"
                return None
        self._content_size += len(content)
        limit = self.settings.max_message_size
        if limit and self._content_size > limit:
            self._content_error = "size"
            return None
        return content

    def _finish_data(self) -> Event | None:
        error = self._content_error
        if error:
            self._content_error = ""
            self.state = State.READY
            self._reset_transaction()
            self._refuse(*_ABORT_REPLIES[error])
            return DataAborted(_ABORT_REPLIES[error][2])
        return DataEnd(self._content_size)

    # ------------------------------------------------------------------- BDAT

    def _bdat(self, argument: str) -> Event | None:
        words = argument.split()
        if not words or not words[0].isdigit() or len(words[0]) > MAX_SIZE_DIGITS:
            # Without a size nobody can tell where the next command starts.
            self._emit(Reply(421, "4.5.4", "Bad BDAT syntax, closing connection"))
            self._close()
            return None
        self._bdat_size = int(words[0])
        self._bdat_remaining = self._bdat_size
        self._bdat_last = len(words) == 2 and words[1].upper() == "LAST"
        refusal: Reply | None = None
        if len(words) > 2 or (len(words) == 2 and not self._bdat_last):
            refusal = Reply(501, _SYNTAX, "Syntax: BDAT size [LAST]")
        elif not self.extended:
            refusal = Reply(503, _BAD_SEQUENCE, "Send EHLO first")
        elif self.state not in (State.RCPT, State.BDAT):
            text = "No valid recipients" if self.state is State.MAIL else "Send MAIL first"
            refusal = Reply(503, _BAD_SEQUENCE, text)
        self._bdat_refusal = refusal
        if self.state is State.RCPT:
            self._content_size = 0
            self._content_error = ""
        if self._bdat_remaining == 0:
            return self._finish_bdat()
        return None

    def _next_bdat(self) -> Event | _NeedData | None:
        available = len(self._buf) - self._pos
        if not available:
            return self._need_data_or_close()
        take = min(available, self._bdat_remaining)
        start = self._pos
        self._pos += take
        self._bdat_remaining -= take
        chunk: Event | None = None
        if self._bdat_refusal is None and not self._content_error:
            self._content_size += take
            limit = self.settings.max_message_size
            if limit and self._content_size > limit:
                self._content_error = "size"
            else:
                chunk = DataChunk(bytes(self._buf[start : start + take]))
        if self._bdat_remaining == 0:
            finished = self._finish_bdat()
            if chunk is None:
                return finished
            if finished is not None:
                self._queued.append(finished)
        return chunk

    def _finish_bdat(self) -> Event | None:
        refusal = self._bdat_refusal
        if refusal is not None:
            self._bdat_refusal = None
            self._emit(refusal)
            self._spend_error_budget(refusal)
            return None
        if self._content_error:
            self._content_error = ""
            was_open = self.state in (State.RCPT, State.BDAT)
            self.state = State.READY
            self._reset_transaction()
            self._refuse(*_ABORT_REPLIES["size"])
            return DataAborted(_ABORT_REPLIES["size"][2]) if was_open else None
        return BdatChunk(self._bdat_size, self._bdat_last, self._content_size)


_COMMANDS: dict[str, Callable[[ServerConnection, str], Event | None]] = {
    "HELO": ServerConnection._cmd_helo,
    "EHLO": ServerConnection._cmd_ehlo,
    "MAIL": ServerConnection._cmd_mail,
    "RCPT": ServerConnection._cmd_rcpt,
    "DATA": ServerConnection._cmd_data,
    "RSET": ServerConnection._cmd_rset,
    "NOOP": ServerConnection._cmd_noop,
    "HELP": ServerConnection._cmd_help,
    "QUIT": ServerConnection._cmd_quit,
    "VRFY": ServerConnection._cmd_vrfy,
    "EXPN": ServerConnection._cmd_expn,
    "STARTTLS": ServerConnection._cmd_starttls,
    "AUTH": ServerConnection._cmd_auth,
}
