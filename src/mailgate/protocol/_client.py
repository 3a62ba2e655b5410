"""The client side of an SMTP session, sans I/O: the mirror of ``ServerConnection``.

Strategy.  The caller asks for commands (``hello``, ``starttls``,
``authenticate``, ``mail``, ``send_content``, ``end_content``, ``reset``,
``quit``); the engine queues their octets for ``data_to_send`` and expects
one reply to each, in order.  Bytes from the server go in through
``receive_data``; ``next_event`` reads replies, matches each to the oldest
command still waiting for one, and returns the events they make, or
``NEED_DATA``.  The caller starts nothing but whole steps: the engine runs
what lies between (the HELO fallback, AUTH's ``334`` challenges, the RCPTs
after MAIL without PIPELINING, the RSET after a transaction that failed
half-way), so a shell is a pump and a few decisions.

Invariants.
- Replies are matched to commands first in, first out (RFC 5321 4.2, RFC
  2920 3.1), however the input is split into packets.
- With PIPELINING (RFC 2920), MAIL, every RCPT and DATA leave in one write;
  without it, each command waits for the reply to the one before.  Content
  waits for a 354 (DATA is a synchronisation point, RFC 2920 3.1).
- Every status is checked (RFC 2920 3.1): the content is sent only after a
  354 to DATA and only when MAIL and at least one RCPT were accepted.  A 354
  that comes anyway gets a lone dot, so the peer's transaction ends empty.
  BDAT (RFC 3030) is used only with PIPELINING, and its content only after
  every RCPT reply, for the same reason; after a failed chunk no other is
  sent (RFC 3030 2).
- A message the peer cannot take (SIZE, 8BITMIME, SMTPUTF8) is refused
  before anything of it is sent (``check``, ``MessageRefused``).
- AUTH is offered to the caller only once TLS is up, never in plaintext.
- After STARTTLS's 220 every byte already received is dropped, and after
  ``tls_established`` all that was learnt before TLS is forgotten: the
  extensions, the session must say EHLO again (RFC 3207 4.2).
- A 421 to any command ends the session (RFC 5321 3.8): the event for the
  command, the transaction's outcome, then ``ConnectionClosed``.
- Caller requests out of turn raise ``LocalProtocolError`` and change
  nothing; replies that cannot be read or matched raise
  ``RemoteProtocolError``.
"""

from __future__ import annotations

import base64
from collections import deque
from collections.abc import Mapping
from typing import assert_never

from mailgate.protocol._client_events import (
    AnyClientEvent,
    AuthReply,
    ClientSettings,
    ContentRequest,
    Envelope,
    Greeting,
    HelloReply,
    MailReply,
    MessageRefused,
    MessageReply,
    QuitReply,
    RcptReply,
    ResetReply,
    ServerClosing,
    StartTLSReply,
)
from mailgate.protocol._client_state import (
    NEEDS_8BITMIME,
    NEEDS_SMTPUTF8,
    ClientState,
    OpenTransaction,
    Sent,
    SentCommand,
    TranscriptLine,
    size_limit,
)
from mailgate.protocol._client_wire import ContentEncoder, ReplyReader, parse_extensions
from mailgate.protocol._errors import LocalProtocolError, RemoteProtocolError
from mailgate.protocol._events import NEED_DATA, ConnectionClosed, _NeedData
from mailgate.protocol._replies import Reply

__all__ = ["ClientConnection"]

_MASK = "****"


class ClientConnection:
    """One SMTP session, client side.

    Typical use by a shell::

        conn = ClientConnection(ClientSettings(hostname="client.example"))
        conn.receive_data(bytes_from_socket)
        while (event := conn.next_event()) is not NEED_DATA:
            ...  # Greeting: conn.hello(); HelloReply: conn.mail(envelope) ...
        socket.write(conn.data_to_send())
    """

    def __init__(self, settings: ClientSettings | None = None) -> None:
        self.settings = settings = settings or ClientSettings()
        self.state = ClientState.GREETING
        self.tls_active = settings.tls_active
        self.extended = False
        """Whether the session began with a positive EHLO reply."""
        self.extensions: Mapping[str, tuple[str, ...]] = {}
        """The peer's EHLO keywords and their parameters."""
        self.authenticated = False
        self._buf = bytearray()
        self._pos = 0
        self._eof = False
        self._reader = ReplyReader()
        self._out: list[bytes] = []
        self._inflight: deque[SentCommand] = deque()
        self._waiting: deque[SentCommand] = deque()
        self._events: deque[AnyClientEvent] = deque()
        self._txn: OpenTransaction | None = None
        self._auth_responses: deque[str] = deque()
        self._transcript: list[TranscriptLine] = []

    # ------------------------------------------------------------------ input

    def receive_data(self, data: bytes) -> None:
        """Feed bytes received from the server.

        Ignored once the session is closed or while the TLS handshake runs.

        Raises ``LocalProtocolError`` after ``receive_eof``.
        """
        if self._eof:
            raise LocalProtocolError("receive_data after receive_eof")
        if self.state is ClientState.CLOSED or self.state is ClientState.TLS_HANDSHAKE:
            return
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def receive_eof(self) -> None:
        """The server closed its side (or the connection broke)."""
        self._eof = True

    def next_event(self) -> AnyClientEvent | _NeedData:
        """The next event, or ``NEED_DATA``.

        Raises ``RemoteProtocolError`` for a malformed reply, or one that
        no command asked for.
        """
        while not self._events:
            if self.state is ClientState.CLOSED:
                return ConnectionClosed()
            if self.state is ClientState.TLS_HANDSHAKE and not self._eof:
                return NEED_DATA
            reply = self._read_reply()
            if reply is None:
                if not self._eof:
                    return NEED_DATA
                self._close()
            else:
                self._on_reply(reply)
        return self._events.popleft()

    def _read_reply(self) -> Reply | None:
        if self.state is ClientState.TLS_HANDSHAKE:
            return None
        enhanced = "ENHANCEDSTATUSCODES" in self.extensions
        self._pos, reply = self._reader.read(self._buf, self._pos, enhanced=enhanced)
        if reply is not None and self.settings.transcript:
            wire = reply.to_bytes().decode("utf-8")
            self._transcript += [("S", line) for line in wire.split("\r\n")[:-1]]
        return reply

    # ----------------------------------------------------------------- output

    def data_to_send(self) -> bytes:
        """All octets queued since the last call, ready for the wire."""
        out = b"".join(self._out)
        self._out.clear()
        return out

    def take_transcript(self) -> list[TranscriptLine]:
        """The transcript lines since the last call (with ``transcript=True``).

        Secrets (AUTH's responses) are masked; message content is one line
        giving its size.
        """
        lines, self._transcript = self._transcript, []
        return lines

    def _write(self, command: SentCommand) -> None:
        self._out.append(command.wire)
        self._inflight.append(command)
        self._log(command.log)

    def _log(self, line: str) -> None:
        if self.settings.transcript:
            self._transcript.append(("C", line))

    def _queue(self, kind: Sent, line: str, *, log: str = "", recipient: str = "") -> None:
        wire = line.encode("utf-8") + b"\r\n"
        self._waiting.append(SentCommand(kind, wire, log or line, recipient))
        self._flush()

    def _flush(self) -> None:
        while self._waiting and (self._pipelining or not self._inflight):
            self._write(self._waiting.popleft())

    @property
    def _pipelining(self) -> bool:
        return self.settings.pipelining and "PIPELINING" in self.extensions

    def _require(self, *states: ClientState) -> None:
        if self.state not in states:
            raise LocalProtocolError(f"not allowed in state {self.state.name}")

    # -------------------------------------------------------------- commands

    def hello(self) -> None:
        """Send EHLO (HELO follows by itself if the server refuses EHLO with 5xx).

        Raises ``LocalProtocolError`` unless greeted, or TLS just established.
        """
        self._require(ClientState.CONNECTED)
        self.state = ClientState.HELLO
        self._queue(Sent.EHLO, f"EHLO {self.settings.hostname}")

    def starttls(self) -> None:
        """Send STARTTLS; after its ``220`` run the handshake, then ``tls_established``.

        Raises ``LocalProtocolError`` outside ``READY``, when TLS is already
        up or the server did not offer STARTTLS.
        """
        self._require(ClientState.READY)
        if self.tls_active or "STARTTLS" not in self.extensions:
            raise LocalProtocolError("STARTTLS is not on offer")
        self.state = ClientState.STARTTLS
        self._queue(Sent.STARTTLS, "STARTTLS")

    def tls_established(self) -> None:
        """The handshake succeeded: forget the session before TLS (RFC 3207 4.2).

        Call ``hello`` next.

        Raises ``LocalProtocolError`` unless the server said 220 to STARTTLS.
        """
        self._require(ClientState.TLS_HANDSHAKE)
        self._buf.clear()
        self._pos = 0
        self._reader = ReplyReader()
        self.tls_active = True
        self.extended = False
        self.extensions = {}
        self.authenticated = False
        self.state = ClientState.CONNECTED

    def authenticate(self, mechanism: str, username: str, password: str) -> None:
        """Authenticate with SASL ``PLAIN`` (RFC 4616) or ``LOGIN``; ends in ``AuthReply``.

        Raises ``LocalProtocolError`` outside ``READY``, without TLS, after
        a successful AUTH, or when the server does not offer the mechanism.
        """
        self._require(ClientState.READY)
        if not self.tls_active:
            raise LocalProtocolError("AUTH only over TLS: the password would travel in clear")
        mechanism = mechanism.upper()
        offered = {name.upper() for name in self.extensions.get("AUTH", ())}
        if self.authenticated or mechanism not in offered or mechanism not in ("PLAIN", "LOGIN"):
            raise LocalProtocolError(f"AUTH {mechanism} is not on offer")
        self.state = ClientState.AUTH
        if mechanism == "PLAIN":
            response = _b64(f"\0{username}\0{password}")
            self._queue(Sent.AUTH, f"AUTH PLAIN {response}", log=f"AUTH PLAIN {_MASK}")
        else:
            self._auth_responses.extend((_b64(username), _b64(password)))
            self._queue(Sent.AUTH, "AUTH LOGIN")

    def check(self, envelope: Envelope) -> Reply | None:
        """Whether the server, as it introduced itself, can take this message.

        Returns ``None``, or the permanent reply to bounce it with: ``553
        5.6.7`` when it needs SMTPUTF8 (RFC 6531 3.2), ``554 5.6.3`` when it
        is 8-bit without 8BITMIME (RFC 6152 3), ``552 5.3.4`` when it is
        larger than SIZE (RFC 1870 6.1).
        """
        offered = self.extensions
        if envelope.needs_smtputf8 and "SMTPUTF8" not in offered:
            return NEEDS_SMTPUTF8
        if (envelope.eight_bit or envelope.utf8_headers) and "8BITMIME" not in offered:
            return NEEDS_8BITMIME
        limit = size_limit(offered)
        if limit and envelope.size is not None and envelope.size > limit:
            return Reply(552, "5.3.4", f"Message size exceeds the server's limit of {limit}")
        return None

    def mail(self, envelope: Envelope) -> None:
        """Start a transaction: MAIL, the RCPTs, and DATA unless BDAT is used.

        Events follow: ``MailReply``, a ``RcptReply`` per recipient, then
        ``ContentRequest`` or the transaction's ``MessageReply``.

        Raises ``MessageRefused`` (nothing sent) when ``check`` refuses the
        message, ``LocalProtocolError`` outside ``READY``.
        """
        self._require(ClientState.READY)
        refusal = self.check(envelope)
        if refusal is not None:
            raise MessageRefused(refusal)
        chunking = self._pipelining and self.settings.chunking and "CHUNKING" in self.extensions
        self._txn = OpenTransaction(
            chunking=chunking,
            encoder=ContentEncoder(stuff=not chunking),
            unanswered=len(envelope.recipients),
        )
        self.state = ClientState.TRANSACTION
        dsn = "DSN" in self.extensions
        params = []
        if "SIZE" in self.extensions and envelope.size is not None:
            params.append(f"SIZE={envelope.size}")
        if envelope.eight_bit or envelope.utf8_headers:
            params.append("BODY=8BITMIME")
        if envelope.needs_smtputf8:
            params.append("SMTPUTF8")
        if dsn and envelope.ret is not None:
            params.append(f"RET={envelope.ret}")
        if dsn and envelope.envid is not None:
            params.append(f"ENVID={envelope.envid}")
        self._queue(Sent.MAIL, " ".join([f"MAIL FROM:<{envelope.sender}>", *params]))
        for recipient in envelope.recipients:
            params = []
            if dsn and recipient.notify is not None:
                params.append(f"NOTIFY={recipient.notify}")
            if dsn and recipient.orcpt is not None:
                params.append(f"ORCPT={recipient.orcpt}")
            line = " ".join([f"RCPT TO:<{recipient.address}>", *params])
            self._queue(Sent.RCPT, line, recipient=recipient.address)
        if not chunking:
            self._txn.data_sent = self._pipelining
            self._queue(Sent.DATA, "DATA")

    def send_content(self, chunk: bytes) -> None:
        """Send the next chunk of the message (any size, any split).

        Raises ``LocalProtocolError`` unless a ``ContentRequest`` asked for it.
        """
        self._require(ClientState.CONTENT)
        txn = self._txn
        assert txn is not None
        data = txn.encoder.encode(chunk)
        txn.octets += len(chunk)
        if not txn.chunking:
            self._out.append(data)
        elif data and txn.failure is None:
            # RFC 3030 2: after a failed chunk, no more are sent.
            if txn.held is not None:
                self._write_bdat(txn.held, last=False)
            txn.held = data

    def end_content(self) -> None:
        """End the message; its ``MessageReply`` follows.

        Raises ``LocalProtocolError`` unless a ``ContentRequest`` asked for content.
        """
        self._require(ClientState.CONTENT)
        txn = self._txn
        assert txn is not None
        self.state = ClientState.CONTENT_SENT
        tail = txn.encoder.finish()
        summary = f"[{txn.octets} octets of content]"
        if not txn.chunking:
            self._log(summary)
            self._write(SentCommand(Sent.DOT, tail, "."))
        elif txn.failure is None:
            self._write_bdat((txn.held or b"") + tail, last=True)
            self._log(summary)
        else:
            txn.ending = True
            self._end_failed_chunks(txn)

    def _write_bdat(self, data: bytes, *, last: bool) -> None:
        line = f"BDAT {len(data)}{' LAST' if last else ''}"
        kind = Sent.BDAT_LAST if last else Sent.BDAT
        self._write(SentCommand(kind, line.encode("ascii") + b"\r\n" + data, line))

    def reset(self) -> None:
        """Send RSET (RFC 5321 4.1.1.5), as between messages on one connection.

        Raises ``LocalProtocolError`` outside ``READY``.
        """
        self._require(ClientState.READY)
        self.state = ClientState.RESET
        self._queue(Sent.RSET, "RSET")

    def quit(self) -> None:
        """Send QUIT; ``QuitReply`` then ``ConnectionClosed`` follow.

        Raises ``LocalProtocolError`` while a command of the caller's is
        under way, or once closed.
        """
        self._require(ClientState.REFUSED, ClientState.CONNECTED, ClientState.READY)
        self.state = ClientState.QUIT
        self._queue(Sent.QUIT, "QUIT")

    # ---------------------------------------------------------------- replies

    def _on_reply(self, reply: Reply) -> None:
        if self.state is ClientState.GREETING:
            self.state = ClientState.CONNECTED if reply.code == 220 else ClientState.REFUSED
            self._events.append(Greeting(reply))
            if reply.code == 421:
                self._close()
            return
        if not self._inflight:
            if reply.code != 421:
                raise RemoteProtocolError(f"a {reply.code} reply no command asked for")
            self._events.append(ServerClosing(reply))
            if self._txn is not None:
                self._finish(reply)
            self._close()
            return
        command = self._inflight.popleft()
        if reply.code == 421 and command.kind is not Sent.QUIT:
            self._server_closing(command, reply)
            return
        self._answer(command, reply)
        self._flush()

    def _server_closing(self, command: SentCommand, reply: Reply) -> None:
        """RFC 5321 3.8: 421 ends the session, whatever it answered."""
        match command.kind:
            case Sent.EHLO | Sent.HELO:
                self._events.append(HelloReply(reply))
            case Sent.STARTTLS:
                self._events.append(StartTLSReply(reply))
            case Sent.AUTH:
                self._events.append(AuthReply(reply))
            case Sent.MAIL:
                self._events.append(MailReply(reply))
            case Sent.RCPT:
                self._events.append(RcptReply(command.recipient, reply))
            case Sent.RSET:
                self._events.append(ResetReply(reply))
            case (
                Sent.DATA
                | Sent.DOT
                | Sent.LONE_DOT
                | Sent.BDAT
                | Sent.BDAT_LAST
                | Sent.AUTO_RSET
                | Sent.QUIT
            ):
                pass  # no event of its own: the transaction's outcome says it
            case _:  # pragma: no cover - the type checker proves no other is left
                assert_never(command.kind)
        if self._txn is not None:
            self._finish(reply)
        self._close()

    def _answer(self, command: SentCommand, reply: Reply) -> None:
        positive = reply.code // 100 == 2
        match command.kind:
            case Sent.EHLO:
                if positive:
                    self.extended = True
                    self.extensions = parse_extensions(reply)
                    self.state = ClientState.READY
                    self._events.append(HelloReply(reply, True, self.extensions))
                elif reply.code >= 500:
                    # RFC 5321 3.2: a server that refuses EHLO may still take HELO.
                    self._queue(Sent.HELO, f"HELO {self.settings.hostname}")
                else:
                    self.state = ClientState.CONNECTED
                    self._events.append(HelloReply(reply))
            case Sent.HELO:
                self.state = ClientState.READY if positive else ClientState.CONNECTED
                self._events.append(HelloReply(reply))
            case Sent.STARTTLS:
                if reply.code == 220:
                    # RFC 3207 4.2: nothing received before TLS may be read after it.
                    self.state = ClientState.TLS_HANDSHAKE
                    self._buf.clear()
                    self._pos = 0
                else:
                    self.state = ClientState.READY
                self._events.append(StartTLSReply(reply))
            case Sent.AUTH:
                self._auth_step(reply)
            case Sent.MAIL | Sent.RCPT | Sent.DATA | Sent.LONE_DOT:
                self._transaction_step(command, reply)
            case Sent.DOT | Sent.BDAT | Sent.BDAT_LAST:
                self._content_step(command, reply)
            case Sent.RSET:
                self.state = ClientState.READY
                self._events.append(ResetReply(reply))
            case Sent.AUTO_RSET:
                pass  # the transaction it closes has already had its outcome
            case Sent.QUIT:
                self._events.append(QuitReply(reply))
                self._close()
            case _:  # pragma: no cover - the type checker proves no other is left
                assert_never(command.kind)

    def _auth_step(self, reply: Reply) -> None:
        if reply.code == 334:
            # RFC 4954 4: answer each challenge; "*" cancels one we cannot answer.
            if self._auth_responses:
                wire = self._auth_responses.popleft().encode("ascii") + b"\r\n"
                self._write(SentCommand(Sent.AUTH, wire, _MASK))
            else:
                self._write(SentCommand(Sent.AUTH, b"*\r\n", "*"))
            return
        self._auth_responses.clear()
        self.authenticated = reply.code // 100 == 2
        self.state = ClientState.READY
        self._events.append(AuthReply(reply))

    def _transaction_step(self, command: SentCommand, reply: Reply) -> None:
        txn = self._txn
        assert txn is not None
        match command.kind:
            case Sent.MAIL:
                txn.mail = reply
                self._events.append(MailReply(reply))
                if reply.code // 100 != 2 and not self._pipelining:
                    # The RCPTs and DATA never left: nothing more will answer.
                    self._waiting.clear()
                    self._finish(reply)
            case Sent.RCPT:
                txn.unanswered -= 1
                txn.accepted += reply.code // 100 == 2
                self._events.append(RcptReply(command.recipient, reply))
                if not txn.unanswered and not txn.data_sent:
                    self._recipients_answered(txn)
            case Sent.DATA:
                if reply.code == 354 and txn.sendable:
                    self.state = ClientState.CONTENT
                    self._events.append(ContentRequest(reply))
                elif reply.code == 354:
                    # RFC 2920 3.1: DATA accepted without a recipient: end it empty.
                    self._write(SentCommand(Sent.LONE_DOT, b".\r\n", "."))
                else:
                    self._fail(reply if txn.sendable else txn.outcome())
            case _:
                self._finish(txn.outcome())

    def _recipients_answered(self, txn: OpenTransaction) -> None:
        """Every RCPT is answered and DATA has not been sent."""
        if not txn.sendable:
            self._waiting.clear()  # DATA, without PIPELINING
            self._fail(txn.outcome())
        elif txn.chunking:
            self.state = ClientState.CONTENT
            self._events.append(ContentRequest(None))

    def _content_step(self, command: SentCommand, reply: Reply) -> None:
        txn = self._txn
        assert txn is not None
        failed = reply.code // 100 != 2
        if command.kind is Sent.DOT:
            self._finish(reply)  # after the dot the peer's transaction is over either way
        elif command.kind is Sent.BDAT:
            if failed and txn.failure is None:
                txn.failure = reply
            if txn.ending:
                self._end_failed_chunks(txn)
        elif txn.failure is not None or failed:
            # RFC 3030 2: a failed chunk fails the transaction; RSET makes sure it ends.
            self._fail(txn.failure or reply)
        else:
            self._finish(reply)

    def _end_failed_chunks(self, txn: OpenTransaction) -> None:
        """After a failed BDAT chunk: the outcome once no chunk awaits a reply."""
        assert txn.failure is not None
        if not any(command.kind is Sent.BDAT for command in self._inflight):
            self._fail(txn.failure)

    def _fail(self, reply: Reply) -> None:
        """End a transaction that may still be open at the server, with RSET if so."""
        txn = self._txn
        assert txn is not None
        assert txn.mail is not None
        self._finish(reply)
        if txn.mail.code // 100 == 2:
            self._queue(Sent.AUTO_RSET, "RSET")

    def _finish(self, reply: Reply) -> None:
        self._txn = None
        self._events.append(MessageReply(reply))
        self.state = ClientState.READY

    def _close(self) -> None:
        self.state = ClientState.CLOSED
        self._buf.clear()
        self._pos = 0
        self._inflight.clear()
        self._waiting.clear()
        self._txn = None


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")
