"""The server side of an SMTP session, sans I/O.

Strategy.  Bytes go in through ``receive_data``; ``next_event`` parses as far
as it can and returns one event, or ``NEED_DATA``.  Replies go out through
``send`` and are collected until the shell calls ``data_to_send``, so replies
to pipelined commands leave together when the input runs dry (RFC 2920 3.2).
This module frames command and SASL lines and keeps the session; command
arguments are parsed in ``_commands`` and message content framed in
``_content``.

Invariants.
- Input is framed in one of four ways: command lines, DATA content, BDAT
  octets, and SASL response lines.  The framing changes only when a reply
  is sent, so nothing is ever parsed under the wrong framing.
- After a ``Command`` event the engine reads nothing more until the
  application has replied to it: a reply decides the next state.
- The engine answers protocol errors itself (500, 501, 503, 504, 552, 555,
  and 421 when the error budget is spent); the application only ever sees
  valid, in-sequence commands, free of control characters.
- Only 5xx replies, the engine's or the application's, spend the budget: a
  4xx is the server's own temporary condition or flow control (452 too
  many recipients), never the client's fault.
- A command line is executed whole or not at all: an over-long line, a
  bare CR or LF (the line runs on to the next CRLF), a NUL or invalid
  UTF-8 gets a 500 and nothing of it runs.
- The same input gives the same events and replies however it is split
  into packets.
- Every byte received before a ``220`` to STARTTLS is dropped when that
  reply is sent (RFC 3207 4.2, CVE-2011-0411).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from mailgate.protocol._address import ArgumentError
from mailgate.protocol._commands import (
    parse_auth,
    parse_bdat,
    parse_hello,
    parse_lookup,
    parse_mail,
    parse_rcpt,
    parse_sasl_response,
    require_no_argument,
    require_printable,
)
from mailgate.protocol._content import ContentReader, Frame
from mailgate.protocol._errors import LocalProtocolError
from mailgate.protocol._events import (
    NEED_DATA,
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
    Helo,
    MailFrom,
    RcptTo,
    Rset,
    StartTLS,
    _NeedData,
)
from mailgate.protocol._limits import MAX_SASL_LINE_OCTETS
from mailgate.protocol._lines import (
    LINE_TOO_LONG,
    SASL_LINE_TOO_LONG,
    LineReader,
    command_line_cap,
    is_bdat_line,
    split_command,
)
from mailgate.protocol._replies import Reply
from mailgate.protocol._settings import ConnectionSettings
from mailgate.protocol._state import Kind, State, is_acceptance, reply_kind, transition

__all__ = ["NEED_DATA", "ServerConnection"]

_LineHandler = Callable[[bytes], "Event | None"]


_OK = Reply(250, "2.0.0", "OK")
_BAD_SEQUENCE = "5.5.1"
_HELP_TEXT = (
    "Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT HELP VRFY EXPN\n"
    "See RFC 5321 for details"
)
# RFC 5321 4.2.4: known commands we do not implement get 502, not 500.
_NOT_IMPLEMENTED = frozenset({"TURN", "ETRN", "ATRN", "SEND", "SOML", "SAML"})
_IN_TRANSACTION = (State.MAIL, State.RCPT, State.BDAT)


_ENCRYPTION_REQUIRED = Reply(  # RFC 4954 6
    538, "5.7.11", "Encryption required for requested authentication mechanism"
)
_NOT_IMPLEMENTED_REPLY = Reply(502, "5.5.1", "Command not implemented")
_UNRECOGNIZED = Reply(500, "5.5.2", "Command not recognized")


def _bad_sequence(text: str) -> Reply:
    return Reply(503, _BAD_SEQUENCE, text)


def _require(ok: bool, text: str) -> None:
    """RFC 5321 4.1.4: a command out of sequence gets 503."""
    if not ok:
        raise ArgumentError(_bad_sequence(text))


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
        """Permanent (5xx) replies sent so far, counted against the error budget."""
        self._buf = bytearray()
        self._pos = 0
        self._eof = False
        self._out: list[bytes] = []
        self._pending: Command | None = None
        self._queued: deque[Event] = deque()
        self._lines = LineReader()
        self._line_cap = command_line_cap(self.settings)
        self._content = ContentReader(self.settings)

    # ------------------------------------------------------------------ input

    def receive_data(self, data: bytes) -> None:
        """Feed bytes received from the client.

        Bytes are ignored once the session is closed or a TLS handshake is
        under way (the shell feeds the handshake to its TLS layer instead).

        Raises ``LocalProtocolError`` after ``receive_eof``.
        """
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
        # RFC 3207 4.2: never offered again once TLS is up.
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

    # ---------------------------------------------------------------- replies

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
        kind = reply_kind(command, reply)
        positive = is_acceptance(command, reply)
        self._pending = None
        self._emit(reply)
        if reply.code == 421:
            self._close()
            return
        self.state = transition(self.state, kind, positive=positive)
        if positive:
            self._after_positive(command)
        if isinstance(command, (BdatChunk, DataEnd)) and self.state is State.READY:
            self._reset_transaction()
        self._spend_error_budget(reply)

    def _send_unsolicited(self, reply: Reply) -> None:
        if self.state is State.GREETING and reply.code in (220, 554):
            self._emit(reply)
            self.state = transition(self.state, Kind.GREETING, positive=reply.code == 220)
            return
        if reply.code != 421:
            if self.state is State.GREETING:
                raise LocalProtocolError("the greeting must be 220, 554 or 421")
            raise LocalProtocolError("no command is waiting for a reply")
        self._emit(reply)
        self._close(abort="connection closed by the server")

    def _after_positive(self, command: Command) -> None:
        if isinstance(command, (Helo, Ehlo)):
            # RFC 5321 4.1.4: EHLO/HELO also resets any transaction.
            self.extended = isinstance(command, Ehlo)
            self.helo_name = command.name
            self._reset_transaction()
        elif isinstance(command, MailFrom):
            self.smtputf8 = command.smtputf8
            self.recipients = 0
        elif isinstance(command, RcptTo):
            self.recipients += 1
        elif isinstance(command, DataStart):
            self._content.begin()
        elif isinstance(command, Rset):
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

    def _emit(self, reply: Reply) -> None:
        self._out.append(reply.to_bytes())

    def _content_open(self) -> bool:
        """Whether the application has (or may have) seen content of an open message."""
        if self.state in (State.DATA, State.BDAT):
            return True
        content = self._content
        return (
            self.state is State.RCPT and content.bdat_remaining > 0 and content.bdat_refusal is None
        )

    def _close(self, *, abort: str = "") -> None:
        """Close; with ``abort``, tell the application its open message is lost."""
        if abort and self._content_open():
            self._queued.append(DataAborted(abort))
        self.state = State.CLOSED
        self._buf.clear()
        self._pos = 0
        self._content.bdat_remaining = 0

    def _spend_error_budget(self, reply: Reply) -> None:
        if reply.code < 500 or self.state is State.CLOSED:
            return
        self.errors += 1
        if self.errors >= self.settings.error_budget:
            hostname = self.settings.hostname
            self._emit(Reply(421, "4.7.0", f"{hostname} Too many errors, closing connection"))
            self._close(abort="too many errors")

    def _refuse(self, reply: Reply) -> None:
        """Answer the client directly, on the engine's own authority."""
        self._emit(reply)
        if self.state is State.AUTH:
            # RFC 4954 4: any failure ends the exchange.
            self.state = transition(self.state, Kind.AUTH_DONE, positive=False)
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
        self.state = transition(self.state, Kind.TLS_DONE, positive=True)

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
        if self._content.bdat_remaining:
            return self._next_chunk()
        if state is State.AUTH:
            return self._next_line(MAX_SASL_LINE_OCTETS, self._handle_sasl_line, SASL_LINE_TOO_LONG)
        return self._next_line(self._line_cap, self._handle_command_line, LINE_TOO_LONG)

    def _need_data_or_close(self) -> _NeedData | None:
        if not self._eof:
            return NEED_DATA
        # RFC 5321 4.1.1.10: a premature close aborts the open transaction.
        self._close(abort="connection closed")
        return None

    # ---------------------------------------------------------- command lines

    def _next_line(
        self, cap: int, handle: _LineHandler, too_long: Reply
    ) -> Event | _NeedData | None:
        lines = self._lines
        self._pos, found = lines.read(self._buf, self._pos, cap, too_long)
        if isinstance(found, bytes):
            return handle(found)
        if isinstance(found, Reply):
            if self.state is not State.AUTH and is_bdat_line(self._buf, lines.start):
                self._close_unframed_bdat()
            else:
                self._refuse(found)
            return None
        return self._need_data_or_close()

    def _close_unframed_bdat(self) -> None:
        # A BDAT line that is refused as a line says nothing trustworthy of its
        # chunk's size: reading on would take chunk octets for commands.
        self._emit(Reply(421, "4.5.4", "Bad BDAT syntax, closing connection"))
        self._close(abort="bad BDAT syntax")

    def _handle_command_line(self, raw: bytes) -> Event | None:
        split = split_command(raw, self.settings)
        if isinstance(split, Reply):
            if is_bdat_line(raw, 0):
                self._close_unframed_bdat()
            else:
                self._refuse(split)
            return None
        verb, argument = split
        if verb == "BDAT":
            # Even when refused, a chunk is read (RFC 3030 2).
            return self._cmd_bdat(argument)
        if self.state is State.REFUSED and verb != "QUIT":
            self._refuse(_bad_sequence("Service refused; only QUIT is accepted"))
            return None
        handler = _COMMANDS.get(verb)
        if handler is None:
            self._refuse(_NOT_IMPLEMENTED_REPLY if verb in _NOT_IMPLEMENTED else _UNRECOGNIZED)
            return None
        try:
            require_printable(argument)
            return handler(self, argument)
        except ArgumentError as error:
            self._refuse(error.reply)
            return None

    def _cmd_helo(self, argument: str) -> Event | None:
        return parse_hello(argument, extended=False)

    def _cmd_ehlo(self, argument: str) -> Event | None:
        return parse_hello(argument, extended=True)

    def _cmd_mail(self, argument: str) -> Event | None:
        _require(self.state is not State.CONNECTED, "Send HELO or EHLO first")
        _require(self.state not in _IN_TRANSACTION, "Nested MAIL command")
        return parse_mail(
            argument,
            extended=self.extended,
            smtputf8=self.settings.smtputf8,
            max_message_size=self.settings.max_message_size,
            auth=self._auth_offered(),
        )

    def _cmd_rcpt(self, argument: str) -> Event | None:
        _require(self.state is not State.BDAT, "BDAT transfer under way")
        _require(self.state in (State.MAIL, State.RCPT), "Send MAIL first")
        full = self.recipients >= self.settings.max_recipients
        return parse_rcpt(argument, smtputf8=self.smtputf8, full=full)

    def _cmd_data(self, argument: str) -> Event | None:
        require_no_argument(argument, "DATA")
        # RFC 3030 2: DATA may not follow BDAT in one transaction.
        _require(self.state is not State.BDAT, "DATA cannot follow BDAT")
        _require(self.state is not State.MAIL, "No valid recipients")
        _require(self.state is State.RCPT, "Send MAIL first")
        return DataStart()

    def _cmd_rset(self, argument: str) -> Event | None:
        require_no_argument(argument, "RSET")
        return Rset()

    def _cmd_noop(self, argument: str) -> Event | None:
        # RFC 5321 4.1.1.9: a parameter is ignored.
        self._emit(_OK)
        return None

    def _cmd_help(self, argument: str) -> Event | None:
        self._emit(Reply(214, "2.0.0", _HELP_TEXT))
        return None

    def _cmd_quit(self, argument: str) -> Event | None:
        require_no_argument(argument, "QUIT")
        self._emit(Reply(221, "2.0.0", f"{self.settings.hostname} closing connection"))
        self._close(abort="QUIT during BDAT")
        return None

    def _cmd_vrfy(self, argument: str) -> Event | None:
        return parse_lookup(argument, verb="VRFY")

    def _cmd_expn(self, argument: str) -> Event | None:
        return parse_lookup(argument, verb="EXPN")

    def _cmd_starttls(self, argument: str) -> Event | None:
        if not self.settings.starttls:
            raise ArgumentError(_NOT_IMPLEMENTED_REPLY)
        # RFC 3207 4: STARTTLS takes no parameters.
        require_no_argument(argument, "STARTTLS")
        _require(not self.tls_active, "TLS already active")
        _require(self.extended, "Send EHLO first")
        _require(self.state is State.READY, "Finish the transaction first")
        return StartTLS()

    def _cmd_auth(self, argument: str) -> Event | None:
        settings = self.settings
        if not settings.auth_mechanisms:
            raise ArgumentError(_NOT_IMPLEMENTED_REPLY)
        # RFC 4954 4: not before EHLO, not in a transaction, not twice.
        _require(self.extended, "Send EHLO first")
        _require(self.state is State.READY, "Not during a mail transaction")
        _require(not self.authenticated, "Already authenticated")
        if not self._auth_offered():
            raise ArgumentError(_ENCRYPTION_REQUIRED)
        return parse_auth(argument, mechanisms=settings.auth_mechanisms)

    def _handle_sasl_line(self, raw: bytes) -> Event | None:
        try:
            return parse_sasl_response(raw.decode("latin-1").strip(" "))
        except ArgumentError as error:
            self._refuse(error.reply)
            return None

    # ---------------------------------------------------------- DATA and BDAT

    def _next_data(self) -> Event | _NeedData | None:
        self._pos, found = self._content.read_data(self._buf, self._pos)
        if isinstance(found, bytes):
            return DataChunk(found)
        if found is Frame.NEED:
            return self._need_data_or_close()
        if found is Frame.END:
            return self._finish_data()
        return None

    def _finish_data(self) -> Event:
        error = self._content.error
        if error is None:
            return DataEnd(self._content.size)
        # RFC 1870 6.3, RFC 5321 4.1.1.4: refused after the terminator,
        # and the transaction is over.
        self.state = transition(self.state, Kind.DATA_END, positive=False)
        self._reset_transaction()
        self._refuse(error)
        return DataAborted(error.text)

    def _cmd_bdat(self, argument: str) -> Event | None:
        arguments = parse_bdat(argument)
        if arguments is None:
            # Without a size nobody can tell where the next command starts.
            self._close_unframed_bdat()
            return None
        state = self.state
        refusal = arguments.refusal
        if refusal is None and state is State.REFUSED:
            refusal = _bad_sequence("Service refused; only QUIT is accepted")
        elif refusal is None and not self.extended:
            refusal = _bad_sequence("Send EHLO first")
        elif refusal is None and state not in (State.RCPT, State.BDAT):
            text = "No valid recipients" if state is State.MAIL else "Send MAIL first"
            refusal = _bad_sequence(text)
        if state is State.RCPT and refusal is None:
            self._content.begin()
        self._content.begin_chunk(arguments.size, arguments.last, refusal)
        if not arguments.size:
            return self._finish_chunk()
        return None

    def _next_chunk(self) -> Event | _NeedData | None:
        self._pos, found = self._content.read_chunk(self._buf, self._pos)
        if found is Frame.NEED:
            return self._need_data_or_close()
        event = DataChunk(found) if isinstance(found, bytes) else None
        if self._content.bdat_remaining:
            return event
        finished = self._finish_chunk()
        if event is None:
            return finished
        # Content is delivered only inside a transaction, and a chunk that
        # ends one always yields an event: BdatChunk or DataAborted.
        assert finished is not None
        self._queued.append(finished)
        return event

    def _finish_chunk(self) -> Event | None:
        content = self._content
        failure = content.bdat_refusal or content.error
        content.bdat_refusal = None
        if failure is None:
            return BdatChunk(content.bdat_size, content.bdat_last, content.size)
        # RFC 3030 2: a failed chunk fails the whole transaction.
        was_open = self.state in (State.RCPT, State.BDAT)
        if was_open:
            self.state = transition(self.state, Kind.BDAT_LAST, positive=False)
            self._reset_transaction()
        self._refuse(failure)
        return DataAborted(failure.text) if was_open else None


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
