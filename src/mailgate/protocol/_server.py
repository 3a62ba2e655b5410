"""The server side of an SMTP session, sans I/O.

Strategy.  Bytes go in through ``receive_data``; ``next_event`` parses as far
as it can and returns one event, or ``NEED_DATA``.  Replies go out through
``send`` and are collected until the shell calls ``data_to_send``, so replies
to pipelined commands leave together when the input runs dry (RFC 2920 3.2).
This module reads the client's side: it frames command and SASL lines and
runs the commands.  The session's state and the replies that move it are
``_dialogue``'s; what each command may do in each state is in the tables
of ``_state``, and what the session offers in ``_offers``; command
arguments are parsed in ``_commands``, message content framed in
``_content``, and the SASL mechanisms run in ``_sasl``.

Invariants.
- Input is framed in one of four ways: command lines, DATA content, BDAT
  octets, and SASL response lines.  The framing changes only when a reply
  is sent, so nothing is ever parsed under the wrong framing.
- After a ``Command`` event the engine reads nothing more until the
  application has replied to it: a reply decides the next state.
- Every state change is a move of ``_state.TRANSITIONS``, on the
  application's reply or on the engine's own, bar the move to ``CLOSED``
  on a 421 or the end of input.
- The engine answers protocol errors itself (500, 501, 502, 503, 504, 538,
  552, 555, and 421 when the error budget is spent) and runs AUTH's SASL
  exchange; the application only ever sees valid, in-sequence commands,
  free of control characters, and of AUTH only the credentials to check.
- Only 5xx replies, the engine's or the application's, spend the budget: a
  4xx is the server's own temporary condition or flow control (452 too
  many recipients), never the client's fault; nor is a 5xx the application
  marks as not ``charged`` (a failure it made on purpose).
- A command line is executed whole or not at all: an over-long line, a
  bare CR or LF (the line runs on to the next CRLF), a NUL or invalid
  UTF-8 gets a 500 and nothing of it runs.
- The same input gives the same events and replies however it is split
  into packets.
- Once ``next_event`` says ``NEED_DATA`` the engine keeps only input it
  could not read yet (a line not finished), so a client that stops
  part-way through a message costs that much, not its last packet.
- Every byte received before a ``220`` to STARTTLS is dropped when that
  reply is sent (RFC 3207 4.2, CVE-2011-0411).
"""

from __future__ import annotations

import base64
from typing import Literal, assert_type

from mailgate.protocol._address import ArgumentError
from mailgate.protocol._commands import (
    command_verbs,
    parse_auth,
    parse_bdat,
    parse_hello,
    parse_lookup,
    parse_mail,
    parse_rcpt,
    require_no_argument,
    require_printable,
)
from mailgate.protocol._content import Frame
from mailgate.protocol._dialogue import Dialogue
from mailgate.protocol._errors import LocalProtocolError
from mailgate.protocol._events import (
    NEED_DATA,
    AnyEvent,
    AuthCredentials,
    BdatChunk,
    Command,
    ConnectionClosed,
    DataAborted,
    DataChunk,
    DataEnd,
    DataStart,
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
from mailgate.protocol._offers import auth_offered
from mailgate.protocol._replies import Reply
from mailgate.protocol._sasl import Challenge, Credentials, SaslFailure, SaslServer
from mailgate.protocol._settings import ConnectionSettings
from mailgate.protocol._state import REFUSALS, Kind, State, Step, Verb

__all__ = ["NEED_DATA", "ServerConnection"]

_OK = Reply(250, "2.0.0", "OK")
_HELP = Reply(
    214,
    "2.0.0",
    "Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT HELP VRFY EXPN\n"
    "See RFC 5321 for details",
)
_UNRECOGNIZED = Reply(500, "5.5.2", "Command not recognized")
_UNIMPLEMENTED = Reply(502, "5.5.1", "Command not implemented")


class ServerConnection(Dialogue):
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
        super().__init__(settings or ConnectionSettings())
        self._eof = False
        self._lines = LineReader()
        self._line_cap = command_line_cap(self.settings)
        self._verbs = command_verbs(self.settings)
        self._sasl: SaslServer | None = None

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

    # ---------------------------------------------------------------- events

    def next_event(self) -> AnyEvent | _NeedData:
        """The next event, or ``NEED_DATA``.

        Raises ``LocalProtocolError`` while a command still awaits its reply.
        """
        if self._pending is not None:
            raise LocalProtocolError(f"reply to {type(self._pending).__name__} first")
        while True:
            if self._queued:
                event: AnyEvent | _NeedData | None = self._queued.popleft()
            else:
                event = self._next_framed()
            if event is None:
                continue
            if isinstance(event, Command):
                self._pending = event
            return event

    def _next_framed(self) -> AnyEvent | _NeedData | None:
        """Parse under the current framing; ``None`` means "go round again"."""
        match self.state:
            case State.DATA:
                return self._next_data()
            case (
                State.READY | State.MAIL | State.RCPT | State.BDAT | State.CONNECTED | State.REFUSED
            ):
                if self._content.bdat_remaining:
                    return self._next_chunk()
                return self._next_command()
            case State.AUTH:
                return self._next_sasl_line()
            case State.GREETING | State.TLS_HANDSHAKE:
                return self._need_data_or_close()
            case _:  # the type checker proves no other is left
                assert_type(self.state, Literal[State.CLOSED])
                return ConnectionClosed()

    def _need_data_or_close(self) -> _NeedData | None:
        if not self._eof:
            if self._pos:
                # Let go of what was read now, not at the next receive_data: a
                # client that stops part-way would keep its last packet in memory.
                del self._buf[: self._pos]
                self._pos = 0
            return NEED_DATA
        # RFC 5321 4.1.1.10: a premature close aborts the open transaction.
        self._close(abort="connection closed")
        return None

    # ---------------------------------------------------------- command lines

    def _next_command(self) -> AnyEvent | _NeedData | None:
        lines = self._lines
        self._pos, found = lines.read(self._buf, self._pos, self._line_cap, LINE_TOO_LONG)
        if isinstance(found, bytes):
            return self._command_line(found)
        if isinstance(found, Reply):
            if is_bdat_line(self._buf, lines.start):
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

    def _command_line(self, raw: bytes) -> AnyEvent | None:
        split = split_command(raw, self.settings)
        if isinstance(split, Reply):
            if is_bdat_line(raw, 0):
                self._close_unframed_bdat()
            else:
                self._refuse(split)
            return None
        name, argument = split
        verb = self._verbs.get(name, Verb.UNRECOGNIZED)
        refusal = REFUSALS.get((self.state, verb))
        if refusal is None:
            refusal = self._withheld.get(verb)
        try:
            return self._command(verb, argument, refusal)
        except ArgumentError as error:
            self._refuse(error.reply)
            return None

    def _command(self, verb: Verb, argument: str, refusal: Reply | None) -> AnyEvent | None:
        """Run a command, unless ``refusal``: the event for the application, if any.

        Raises ``ArgumentError`` for arguments against the command's grammar.
        """
        if verb is Verb.BDAT:
            # Even when refused, a chunk is read (RFC 3030 2).
            return self._bdat(argument, refusal)
        if refusal is not None:
            self._refuse(refusal)
            return None
        if verb is Verb.UNRECOGNIZED or verb is Verb.UNIMPLEMENTED:
            # No command we run: its arguments are not even looked at.
            raise ArgumentError(_UNRECOGNIZED if verb is Verb.UNRECOGNIZED else _UNIMPLEMENTED)
        require_printable(argument)
        match verb:
            case Verb.MAIL:
                return parse_mail(
                    argument,
                    extended=self.extended,
                    smtputf8=self.settings.smtputf8,
                    max_message_size=self.settings.max_message_size,
                    auth=auth_offered(self.settings, tls_active=self.tls_active),
                )
            case Verb.RCPT:
                full = self.recipients >= self.settings.max_recipients
                return parse_rcpt(
                    argument, extended=self.extended, smtputf8=self.smtputf8, full=full
                )
            case Verb.DATA:
                require_no_argument(argument, "DATA")
                return DataStart()
            case Verb.HELO | Verb.EHLO:
                return parse_hello(argument, extended=verb is Verb.EHLO)
            case Verb.RSET:
                require_no_argument(argument, "RSET")
                return Rset()
            case Verb.NOOP:
                # RFC 5321 4.1.1.9: a parameter is ignored.
                self._answer(verb, _OK)
                return None
            case Verb.HELP:
                self._answer(verb, _HELP)
                return None
            case Verb.QUIT:
                require_no_argument(argument, "QUIT")
                aborted = self._content_open()
                hostname = self.settings.hostname
                self._answer(verb, Reply(221, "2.0.0", f"{hostname} closing connection"))
                self._close()
                return DataAborted("QUIT during BDAT") if aborted else None
            case Verb.VRFY | Verb.EXPN:
                return parse_lookup(argument, verb=verb.name)
            case Verb.STARTTLS:
                # RFC 3207 4: STARTTLS takes no parameters.
                require_no_argument(argument, "STARTTLS")
                return StartTLS()
            case _:  # the type checker proves no other is left
                assert_type(verb, Literal[Verb.AUTH])
                return self._auth(argument)

    # ------------------------------------------------------------------ AUTH

    def _auth(self, argument: str) -> AnyEvent | None:
        auth = parse_auth(argument, mechanisms=self.settings.auth_mechanisms)
        self._sasl = sasl = SaslServer(auth.mechanism)
        return self._sasl_step(Verb.AUTH, sasl.start(auth.initial_response))

    def _next_sasl_line(self) -> AnyEvent | _NeedData | None:
        self._pos, found = self._lines.read(
            self._buf, self._pos, MAX_SASL_LINE_OCTETS, SASL_LINE_TOO_LONG
        )
        sasl = self._sasl
        assert sasl is not None  # the AUTH state reads lines only inside an exchange
        if isinstance(found, bytes):
            return self._sasl_step(
                Step.SASL_RESPONSE, sasl.receive_line(found.decode("latin-1").strip(" "))
            )
        if isinstance(found, Reply):
            # RFC 4954 4: any failure ends the exchange.
            return self._sasl_step(Step.SASL_RESPONSE, SaslFailure(found))
        return self._need_data_or_close()

    def _sasl_step(
        self, kind: Kind, step: Challenge | Credentials | SaslFailure
    ) -> AnyEvent | None:
        """Answer one step of AUTH's exchange (RFC 4954 4)."""
        match step:
            case Challenge():
                self._answer(kind, Reply(334, None, base64.b64encode(step.data).decode("ascii")))
                return None
            case Credentials():
                sasl = self._sasl
                assert sasl is not None
                self._sasl = None
                # Complete: the application's verdict on them ends the exchange.
                self._move(kind, positive=True)
                return AuthCredentials(sasl.mechanism, step.username, step.password)
            case _:  # the type checker proves no other is left
                assert_type(step, SaslFailure)
                self._sasl = None
                self._answer(kind, step.reply)
                return None

    # ---------------------------------------------------------- DATA and BDAT

    def _next_data(self) -> AnyEvent | _NeedData | None:
        self._pos, found = self._content.read_data(self._buf, self._pos)
        if isinstance(found, bytes):
            return DataChunk(found)
        if found is Frame.NEED:
            return self._need_data_or_close()
        if found is Frame.END:
            return self._finish_data()
        return None

    def _finish_data(self) -> AnyEvent:
        error = self._content.error
        if error is None:
            return DataEnd(self._content.size)
        # RFC 1870 6.3, RFC 5321 4.1.1.4: refused after the terminator,
        # and the transaction is over.
        self._answer(Step.DATA_END, error)
        return DataAborted(error.text)

    def _bdat(self, argument: str, refusal: Reply | None) -> AnyEvent | None:
        arguments = parse_bdat(argument)
        if arguments is None:
            # Without a size nobody can tell where the next command starts.
            self._close_unframed_bdat()
            return None
        if refusal is None:
            refusal = arguments.refusal
        if refusal is None and self.state is State.RCPT:
            self._content.begin()
        self._content.begin_chunk(arguments.size, arguments.last, refusal)
        if not arguments.size:
            return self._finish_chunk()
        return None

    def _next_chunk(self) -> AnyEvent | _NeedData | None:
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

    def _finish_chunk(self) -> AnyEvent | None:
        content = self._content
        failure = content.bdat_refusal or content.error
        content.bdat_refusal = None
        if failure is None:
            return BdatChunk(content.bdat_size, content.bdat_last, content.size)
        if self.state is not State.RCPT and self.state is not State.BDAT:
            self._refuse(failure)  # out of sequence: no transaction to fail
            return None
        # RFC 3030 2: a failed chunk fails the whole transaction.
        self._answer(Step.BDAT_LAST if content.bdat_last else Verb.BDAT, failure)
        return DataAborted(failure.text)
