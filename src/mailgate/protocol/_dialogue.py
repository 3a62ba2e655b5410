"""The session's side of the dialogue: its state and facts, and the replies that move them.

Strategy.  ``Dialogue`` is the half of ``ServerConnection`` that the replies
drive: the application's through ``send``, the engine's own through
``_answer`` (which moves the session too) and ``_refuse`` (which moves
nothing).  Every move is one of ``_state.TRANSITIONS``, bar the move to
``CLOSED``; after every move to ``READY`` no transaction facts are left.
What the session offers is taken stock of (``_offers``) whenever a fact
it depends on changes.  Reading the client's side is ``ServerConnection``'s
job (``_server``).
"""

from __future__ import annotations

from collections import deque
from typing import assert_type

from mailgate.protocol._content import ContentReader
from mailgate.protocol._errors import LocalProtocolError
from mailgate.protocol._events import (
    AnyCommand,
    AnyEvent,
    AuthCredentials,
    BdatChunk,
    DataAborted,
    DataEnd,
    DataStart,
    Ehlo,
    Expn,
    Helo,
    MailFrom,
    RcptTo,
    Rset,
    StartTLS,
    Vrfy,
)
from mailgate.protocol._offers import keywords, withheld
from mailgate.protocol._replies import Reply
from mailgate.protocol._settings import ConnectionSettings
from mailgate.protocol._state import Kind, State, Step, judge, transition

__all__ = ["Dialogue"]


class Dialogue:
    """The state of one SMTP session, server side, and the replies sent in it."""

    def __init__(self, settings: ConnectionSettings) -> None:
        self.settings = settings
        self.state = State.GREETING
        self.extended = False
        """Whether the session began with EHLO (extensions allowed)."""
        self.helo_name = ""
        self.tls_active = settings.tls_active
        self.authenticated = False
        self.smtputf8 = False
        """Whether the open transaction declared SMTPUTF8."""
        self.recipients = 0
        """Recipients accepted in the open transaction."""
        self.errors = 0
        """Permanent (5xx) replies sent so far, counted against the error budget."""
        self._buf = bytearray()
        self._pos = 0
        self._out: list[bytes] = []
        self._pending: AnyCommand | None = None
        self._queued: deque[AnyEvent] = deque()
        self._content = ContentReader(settings)
        self._withheld = withheld(
            settings, extended=False, tls_active=self.tls_active, authenticated=False
        )

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
        return keywords(self.settings, tls_active=self.tls_active)

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
        kind, positive = judge(command, reply)
        self._pending = None
        self._emit(reply)
        if reply.code == 421:
            self._close()
            return
        self._move(kind, positive=positive)
        if positive:
            self._after_positive(command)
        self._spend_error_budget(reply)

    def _send_unsolicited(self, reply: Reply) -> None:
        if self.state is State.GREETING and reply.code in (220, 554):
            self._emit(reply)
            self._move(Step.GREETING, positive=reply.code == 220)
            return
        if reply.code != 421:
            if self.state is State.GREETING:
                raise LocalProtocolError("the greeting must be 220, 554 or 421")
            raise LocalProtocolError("no command is waiting for a reply")
        self._emit(reply)
        self._close(abort="connection closed by the server")

    def _move(self, kind: Kind, *, positive: bool) -> None:
        """Take the tables' move for a reply to input of ``kind``."""
        self.state = state = transition(self.state, kind, positive=positive)
        if state is State.READY:
            # No transaction is open (RFC 5321 4.1.1.4, 4.1.1.5, 4.1.4).
            self._reset_transaction()

    def _after_positive(self, command: AnyCommand) -> None:
        match command:
            case MailFrom():
                self.smtputf8 = command.smtputf8
                self.recipients = 0
            case RcptTo():
                self.recipients += 1
            case DataStart():
                self._content.begin()
            case Ehlo():
                self._identified(command.name, extended=True)
            case Helo():
                self._identified(command.name, extended=False)
            case StartTLS():
                # RFC 3207 4.2 and CVE-2011-0411: plaintext pipelined behind
                # STARTTLS must never be executed inside the TLS session.
                self._buf.clear()
                self._pos = 0
            case DataEnd() | BdatChunk() | Rset() | Vrfy() | Expn():
                pass  # the move was all
            case _:  # the type checker proves no other is left
                assert_type(command, AuthCredentials)
                self.authenticated = True
                self._offer()

    def _identified(self, name: str, *, extended: bool) -> None:
        self.extended = extended
        self.helo_name = name
        self._offer()

    def _offer(self) -> None:
        """Take stock of what the session offers, after one of its facts changed."""
        self._withheld = withheld(
            self.settings,
            extended=self.extended,
            tls_active=self.tls_active,
            authenticated=self.authenticated,
        )

    def _reset_transaction(self) -> None:
        self.smtputf8 = False
        self.recipients = 0

    def _emit(self, reply: Reply) -> None:
        self._out.append(reply.to_bytes())

    def _answer(self, kind: Kind, reply: Reply) -> None:
        """Answer input on the engine's own authority, moving as the tables say."""
        self._emit(reply)
        self._move(kind, positive=reply.code < 400)
        self._spend_error_budget(reply)

    def _refuse(self, reply: Reply) -> None:
        """Refuse a command or a line on the engine's own authority; nothing moves."""
        self._emit(reply)
        self._spend_error_budget(reply)

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
        if reply.code < 500 or not reply.charged or self.state is State.CLOSED:
            return
        self.errors += 1
        if self.errors >= self.settings.error_budget:
            hostname = self.settings.hostname
            self._emit(Reply(421, "4.7.0", f"{hostname} Too many errors, closing connection"))
            self._close(abort="too many errors")

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
        self.authenticated = False
        self._identified("", extended=False)
        self._move(Step.TLS_DONE, positive=True)
