"""One SMTP session: an ``asyncio.Protocol`` pumping bytes through the engine.

The session is a thin shell.  The engine parses and answers protocol
errors; the session decides policy (who may send to whom), streams content
into a spool and commits it through the ``MailSink`` port.  Only the shell
knows about time: the idle timeout lives here.

The session is made with a ``SessionContext`` (``server._context``): what
it needs of the server that accepted it, and nothing more.  The received
time of a message comes from the context's clock, the one the rest of the
node uses.  AUTH reaches the session as the credentials to check, the
engine having run the SASL exchange.

Replies to pipelined commands are collected and written once the engine
needs more input (RFC 2920 3.2).  While a commit is in flight the session
stops reading if much input piles up, so a flooding client costs bounded
memory; nothing already received is ever dropped.

Logging (logger ``mailgate.smtp``, fields as in ``server._log``): one line
at info for each message accepted and for each command or message refused
by policy, the store or the content checks; one summary at debug for each
connection admitted, when it closes.  The engine's answers to syntax and
sequence errors are only counted (``errors=``): a hostile client would
otherwise choose how much is logged.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Sequence
from typing import assert_type, cast

from mailgate.model import Envelope, TLSInfo
from mailgate.ports import InsufficientStorageError, Spool
from mailgate.protocol import (
    NEED_DATA,
    AnyEvent,
    AuthCredentials,
    BdatChunk,
    ConnectionClosed,
    DataAborted,
    DataChunk,
    DataEnd,
    DataStart,
    Ehlo,
    Expn,
    Helo,
    MailFrom,
    RcptTo,
    Reply,
    Rset,
    ServerConnection,
    StartTLS,
    State,
    Vrfy,
)
from mailgate.server._context import SessionContext
from mailgate.server._log import LogFields, clean
from mailgate.server._tls import TLSLayer

__all__ = ["Session"]

log = logging.getLogger("mailgate.smtp")

_PAUSE_INPUT_OCTETS = 256 * 1024
_TEMPORARY_FAILURE = Reply(451, "4.3.0", "Temporary failure, please try again later")
_NO_ROOM = Reply(452, "4.3.1", "Insufficient system storage")  # RFC 3463 X.3.1
_MAIL_OK = Reply(250, "2.1.0", "Sender OK")
_RSET_OK = Reply(250, "2.0.0", "Flushed")
_START_DATA = Reply(354, None, "End data with <CR><LF>.<CR><LF>")
_AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
_AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
_AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")
_MAX_AUTH_DELAY_SECONDS = 10.0
MAX_LOGGED_RECIPIENTS = 100
"""Recipients named in a message's log line; ``nrcpt=`` counts them all when there are more."""
TLS_HANDSHAKE_TIMEOUT_SECONDS = 30.0
LINGER_SECONDS = 1.0
"""How long a closed session waits for the client to close too, reading and dropping."""


class _Transaction:
    __slots__ = ("mail", "rcpt_params", "recipients", "spool")

    def __init__(self, mail: MailFrom) -> None:
        self.mail = mail
        self.recipients: list[str] = []
        self.rcpt_params: list[dict[str, str | None]] = []
        self.spool: Spool | None = None


def _why_closed(replies: bytes) -> str:
    """How the engine ended a session, told by its last replies: QUIT, 421 or EOF."""
    if replies.startswith(b"221 ") or b"\n221 " in replies:
        return "QUIT"
    if replies.startswith(b"421") or b"\n421" in replies:
        return "421"  # its error budget was spent, or BDAT was unreadable
    return "EOF"


def _refusal_in(replies: bytes, reason: str) -> str | None:
    """The line of ``replies`` that refused a message for ``reason`` (``DataAborted``)."""
    wanted = reason.encode("utf-8", "replace")
    for line in reversed(replies.split(b"\r\n")):
        if line[3:4] == b" " and line[:3].isdigit() and line.endswith(wanted):
            return line.decode("utf-8", "replace")
    return None


class Session(asyncio.Protocol):
    """The server side of one connection."""

    def __init__(self, context: SessionContext) -> None:
        self._context = context
        self._listener = context.listener
        self._host = context.host
        self._sink = context.sink
        self._policy = context.policy
        self._clock = context.clock
        self._conn = ServerConnection(context.listener.connection)
        self._transport: asyncio.Transport | None = None
        self._peer: tuple[str, int] = ("", 0)
        self._txn: _Transaction | None = None
        self._busy = False
        self._backlog = 0
        self._paused = False
        self._write_paused = False
        self._closed = False
        self._last_activity = 0.0
        self._idle_handle: asyncio.TimerHandle | None = None
        self._tls: TLSInfo | None = None
        self._tls_layer: TLSLayer | None = None
        self._handshake_handle: asyncio.TimerHandle | None = None
        self._linger_handle: asyncio.TimerHandle | None = None
        self._client_done = False
        self._auth_failures = 0
        self.auth_user: str | None = None
        # The loop that made the session runs it; asked once, as asking costs a getpid().
        self._loop = asyncio.get_running_loop()
        self.closed = self._loop.create_future()
        # What the connection summary counts (debug): see _log_summary.
        self._started = self._loop.time()
        self._commands = 0
        self._messages = 0
        self._refusals = 0
        self._end = ""

    # ------------------------------------------------------------ lifecycle

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self._peer = (str(peer[0]), int(peer[1]))
        if self._listener.implicit_tls:
            # RFC 8314 3.3: the greeting comes inside TLS, once the handshake is done.
            tls_context = self._context.tls_context
            assert tls_context is not None  # an implicit-TLS listener needs one (SMTPServer)
            self._begin_tls(tls_context)
            return
        self._admit()

    def _admit(self) -> None:
        """Greet the client, or refuse it when the server is full or closing."""
        refusal = self._host.register(self)
        hostname = self._context.hostname
        if refusal is not None:
            self._conn.send(Reply(421, "4.7.0", f"{hostname} {refusal}"))
            self._flush()
            # Never admitted, so unknown to the server's shutdown: no lingering.
            self._close_transport(linger=False)
            return
        self._conn.send(Reply(220, None, f"{hostname} ESMTP mailgate ready"))
        self._flush()
        self._touch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._abort_transaction()
        if self._idle_handle is not None:
            self._idle_handle.cancel()
        if self._handshake_handle is not None:
            self._handshake_handle.cancel()
        if self._linger_handle is not None:
            self._linger_handle.cancel()
        if self._host.unregister(self) and log.isEnabledFor(logging.DEBUG):
            self._log_summary(exc)
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        self._touch()
        if self._tls_layer is not None:
            self._receive_tls(data, eof=False)
            return
        self._receive(data)

    def _receive(self, data: bytes) -> None:
        self._conn.receive_data(data)
        if self._busy:
            # Keep everything (RFC 2920 3.2) but stop reading past a bound.
            self._backlog += len(data)
            self._set_reading()
            return
        self._pump()

    def eof_received(self) -> bool:
        self._client_done = True
        if self._closed:  # lingering after our close: the client has finished too
            if self._transport is not None:
                self._transport.close()
            return True
        # A client may send its last commands and half-close (Exim pipelines
        # the final dot or BDAT LAST with QUIT, then shuts down its side): what
        # was received is still carried out and answered, and the engine's
        # ConnectionClosed closes the transport once every reply is written.
        if self._tls_layer is not None:
            self._receive_tls(b"", eof=True)
        else:
            self._receive_eof()
        return True

    def _receive_eof(self) -> None:
        self._conn.receive_eof()
        if not self._busy:
            self._pump()

    def pause_writing(self) -> None:
        self._write_paused = True
        self._set_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._set_reading()

    # ------------------------------------------------------------- plumbing

    @property
    def peer(self) -> tuple[str, int]:
        """The client's address and port."""
        return self._peer

    @property
    def in_transaction(self) -> bool:
        """Whether a mail transaction is open (shutdown waits for it)."""
        return self._busy or self._conn.state in (
            State.MAIL,
            State.RCPT,
            State.DATA,
            State.BDAT,
        )

    def _touch(self) -> None:
        loop = self._loop
        self._last_activity = loop.time()
        if self._idle_handle is None:
            self._idle_handle = loop.call_later(self._context.limits.idle_timeout, self._check_idle)

    def _check_idle(self) -> None:
        loop = self._loop
        remaining = self._last_activity + self._context.limits.idle_timeout - loop.time()
        if remaining > 0:
            self._idle_handle = loop.call_later(remaining, self._check_idle)
            return
        self._idle_handle = None
        if self._busy:  # the store is slow, not the client
            self._touch()
            return
        log.info("idle timeout for %s", self._peer[0])
        self._end = "timeout"
        self.shutdown(Reply(421, "4.4.2", f"{self._context.hostname} Idle timeout, closing"))

    def shutdown(self, reply: Reply) -> None:
        """Say ``reply`` (a 421) and close, abandoning any open transaction.

        A session closed already, lingering for the client's end, is cut off.
        """
        transport = self._transport
        if transport is None:
            return
        if self._closed:
            if self._linger_handle is not None:
                transport.close()
            return
        self._end = self._end or str(reply.code)
        if self._conn.state is not State.CLOSED:
            self._conn.send(reply)
        self._flush()
        self._abort_transaction()
        self._close_transport()

    def _set_reading(self) -> None:
        transport = self._transport
        if transport is None or self._closed:
            return
        want_pause = self._write_paused or (self._busy and self._backlog > _PAUSE_INPUT_OCTETS)
        if want_pause and not self._paused:
            transport.pause_reading()
            self._paused = True
        elif not want_pause and self._paused:
            transport.resume_reading()
            self._paused = False

    def _flush(self) -> bytes:
        """Write the engine's replies; return them, in plaintext."""
        replies = out = self._conn.data_to_send()
        if out and self._transport is not None and not self._closed:
            layer = self._tls_layer
            if layer is not None:
                layer.send(out)
                out = layer.data_to_send()
            self._transport.write(out)
        return replies

    def _close_transport(self, *, linger: bool = True) -> None:
        """Close the connection once what was written is sent (with close_notify under TLS)."""
        transport = self._transport
        layer = self._tls_layer
        if transport is not None and not self._closed:
            if layer is not None:
                layer.close()
                transport.write(layer.data_to_send())
            if self._client_done or not linger or not transport.can_write_eof():
                transport.close()
            else:
                # A close with input unread (a close_notify, or more, sent after QUIT)
                # makes the kernel answer with a reset, which can destroy replies still
                # on their way: end our side instead, and close when the client does.
                try:
                    transport.write_eof()
                except OSError:  # the client is gone already: nothing to linger for
                    transport.close()
                else:
                    self._linger_handle = self._loop.call_later(LINGER_SECONDS, transport.close)
        self._closed = True

    # ------------------------------------------------------------ the pump

    def _pump(self) -> None:
        conn = self._conn
        try:
            while not self._closed:
                event = conn.next_event()
                if event is NEED_DATA or self._handle(event):
                    # Input ran dry, or an asynchronous step took over (it resumes
                    # the pump), or the session is over.
                    break
        except Exception:
            log.exception("session with %s failed", self._peer[0])
            self._end = "error"
            self.shutdown(Reply(421, "4.3.0", f"{self._context.hostname} Internal error, closing"))
            return
        self._flush()
        if self._host.closing and not self.in_transaction and not self._closed:
            self.shutdown(self._context.shutdown_reply)

    def _handle(self, event: AnyEvent) -> bool:
        """React to one event; return True when the pump must stop for it."""
        conn = self._conn
        took_over = False
        match event:
            case DataChunk():
                self._spool().write(event.data)
                return False
            case DataEnd():
                self._start_commit()
                return True
            case DataAborted():
                self._content_refused(event)
                return False
            case ConnectionClosed():
                self._end = _why_closed(self._flush())
                self._abort_transaction()
                self._close_transport()
                return True
            case MailFrom() | RcptTo():
                self._envelope_command(event)
            case DataStart():
                conn.send(_START_DATA)
                self._spool()
            case BdatChunk():
                self._spool()
                if event.last:
                    self._start_commit()
                    took_over = True
                else:
                    conn.send(Reply(250, "2.0.0", f"{event.size} octets received"))
            case Helo() | Ehlo() | Rset():
                self._abort_transaction()
                self._greet_or_reset(event)
            case Vrfy():
                conn.send(self._policy.vrfy(event.argument))
            case Expn():
                conn.send(self._policy.expn(event.argument))
            case StartTLS():
                took_over = self._start_tls()
            case _:  # the type checker proves no other is left
                assert_type(event, AuthCredentials)
                took_over = self._authenticate(event)
        self._commands += 1
        return took_over

    def _greet_or_reset(self, event: Helo | Ehlo | Rset) -> None:
        conn = self._conn
        hostname = self._context.hostname
        if isinstance(event, Ehlo):
            conn.send(conn.ehlo_reply(f"{hostname} Hello {self._greeting_name(event.name)}"))
        elif isinstance(event, Helo):
            conn.send(Reply(250, None, hostname))
        else:
            conn.send(_RSET_OK)

    def _greeting_name(self, name: str) -> str:
        # Any name is taken (RFC 5321 4.1.4), but a control character in it would
        # make the reply unsendable.
        return f"{clean(name, 64)} [{self._peer[0]}]"

    def _envelope_command(self, event: MailFrom | RcptTo) -> None:
        conn = self._conn
        if isinstance(event, MailFrom):
            if self._listener.require_auth and self.auth_user is None:
                self._refuse(_AUTH_REQUIRED, event.address)  # RFC 6409 4.3
                return
            if not self._sink.has_room(event.size or 0):
                log.warning("refusing a sender from %s: too little free disk space", self._peer[0])
                self._refuse(_NO_ROOM, event.address)
                return
            self._txn = _Transaction(event)
            conn.send(_MAIL_OK)
            return
        txn = self._txn
        assert txn is not None
        may_relay = self.auth_user is not None or self._policy.trusts(self._peer[0])
        reply = self._policy.check_recipient(event.address, may_relay=may_relay)
        if reply.is_positive:
            members = self._policy.expand(event.address)
            if members == (event.address,):
                txn.recipients.append(event.address)
                txn.rcpt_params.append(dict(event.params))
            else:  # an alias: its members receive the message, each once
                for member in members:
                    if member not in txn.recipients:
                        txn.recipients.append(member)
                        txn.rcpt_params.append(dict(event.params))
            conn.send(reply)
            return
        self._refuse(reply, txn.mail.address, (event.address,))

    def _spool(self) -> Spool:
        txn = self._txn
        assert txn is not None
        if txn.spool is None:
            txn.spool = self._sink.begin(self._envelope(txn))
        return txn.spool

    def _protocol(self, mail: MailFrom) -> str:
        """The protocol the trace header names (RFC 3848, RFC 6531 4.3)."""
        conn = self._conn
        protocol = "ESMTP" if conn.extended else "SMTP"
        if mail.smtputf8:
            protocol = "UTF8SMTP"
        if conn.tls_active:
            protocol += "S"
        if self.auth_user is not None:
            protocol += "A"
        return protocol

    def _envelope(self, txn: _Transaction) -> Envelope:
        conn = self._conn
        mail = txn.mail
        protocol = self._protocol(mail)
        return Envelope(
            mail_from=mail.address,
            rcpt_to=tuple(txn.recipients),
            received_at=self._clock.now(),
            helo_name=conn.helo_name,
            client_address=self._peer[0],
            client_port=self._peer[1],
            protocol=protocol,
            mail_params=dict(mail.params),
            rcpt_params=tuple(txn.rcpt_params),
            auth_user=self.auth_user,
            tls=self._tls,
            outbound=tuple(r for r in txn.recipients if not self._policy.is_local(r)),
        )

    def _abort_transaction(self) -> None:
        txn, self._txn = self._txn, None
        if txn is not None and txn.spool is not None:
            txn.spool.discard()

    def _content_refused(self, event: DataAborted) -> None:
        """The engine refused the message (too big, a bad line) and has said so."""
        txn = self._txn
        # The refusal is among the replies not yet written (before a 421, if
        # that was the client's last error): written now, a little early.
        reply = _refusal_in(self._flush(), event.reason)
        if reply is not None and txn is not None:
            self._log_refusal(reply, txn.mail.address, txn.recipients)
        elif log.isEnabledFor(logging.DEBUG):
            log.debug("transaction with %s aborted: %s", self._peer[0], event.reason)
        self._abort_transaction()

    # ------------------------------------------------------------- logging

    def _refuse(self, reply: Reply, sender: str, recipients: Sequence[str] = ()) -> None:
        """Send ``reply``, a refusal of a command, and log it."""
        self._conn.send(reply)
        self._log_refusal(reply, sender, recipients)

    def _log_refusal(self, reply: Reply | str, sender: str, recipients: Sequence[str]) -> None:
        """Count a refusal; log it at info with ``reply`` (a ``Reply``, or its first line)."""
        self._refusals += 1
        if not log.isEnabledFor(logging.INFO):
            return
        fields = self._address_fields(LogFields(), sender, recipients)
        self._client_fields(fields)
        fields["reply"] = reply if isinstance(reply, str) else f"{reply.code} {reply.lines[0]}"
        log.info("refused %s", fields, extra={"fields": fields})

    def _log_accepted(self, message_id: str, txn: _Transaction, size: int) -> None:
        fields = self._address_fields(LogFields(id=message_id), txn.mail.address, txn.recipients)
        fields["size"] = size
        self._client_fields(fields)
        fields["proto"] = self._protocol(txn.mail)
        if self._tls is not None:
            fields["tls"] = self._tls.version
        if self.auth_user is not None:
            fields["auth"] = clean(self.auth_user)
        log.info("%s", fields, extra={"fields": fields})

    @staticmethod
    def _address_fields(fields: LogFields, sender: str, recipients: Sequence[str]) -> LogFields:
        """Add ``from`` and ``to`` (when there are recipients), cleaned, to ``fields``."""
        fields["from"] = clean(sender)
        if recipients:
            fields["to"] = [clean(r) for r in recipients[:MAX_LOGGED_RECIPIENTS]]
            if len(recipients) > MAX_LOGGED_RECIPIENTS:
                fields["nrcpt"] = len(recipients)
        return fields

    def _client_fields(self, fields: LogFields) -> LogFields:
        """Add ``client`` and ``helo`` (when given), cleaned, to ``fields``."""
        fields["client"] = self._peer[0]
        helo = self._conn.helo_name
        if helo:
            fields["helo"] = clean(helo)
        return fields

    def _log_summary(self, exc: Exception | None) -> None:
        end = self._end or ("error" if exc is not None else "closed")
        fields = self._client_fields(LogFields())
        fields["duration"] = round(self._loop.time() - self._started, 3)
        fields["commands"] = self._commands + (end == "QUIT")
        fields["messages"] = self._messages
        fields["refused"] = self._refusals
        fields["errors"] = self._conn.errors
        fields["end"] = end
        log.debug("disconnect %s", fields, extra={"fields": fields})

    # ---------------------------------------------------------- AUTH

    def _authenticate(self, credentials: AuthCredentials) -> bool:
        self._busy = True
        task = self._loop.create_task(self._check_credentials(credentials))
        self._host.track(task)
        return True

    async def _check_credentials(self, credentials: AuthCredentials) -> None:
        authenticator = self._context.authenticator
        assert authenticator is not None  # AUTH is offered only with one (SMTPServer)
        try:
            ok = await authenticator.authenticate(credentials.username, credentials.password)
        except Exception:
            log.exception("authenticating %s failed", self._peer[0])
            self._resume(Reply(454, "4.7.0", "Temporary authentication failure"))
            return
        if ok:
            self.auth_user = credentials.username
            log.info("%s authenticated as %s", self._peer[0], credentials.username)
            self._resume(_AUTH_OK)
            return
        self._auth_failures += 1
        limits = self._context.limits
        # The address and user name are logged, never the password.
        log.warning(
            "authentication failure %d from %s for user %r",
            self._auth_failures,
            self._peer[0],
            credentials.username[:64],
        )
        delay = min(limits.auth_failure_delay * self._auth_failures, _MAX_AUTH_DELAY_SECONDS)
        if delay > 0:
            await asyncio.sleep(delay)
        if self._auth_failures >= max(limits.max_auth_failures, 3):  # RFC 4954 9
            self._busy = False
            if not self._closed:
                self._conn.send(_AUTH_FAILED)
            self.shutdown(
                Reply(421, "4.7.0", f"{self._context.hostname} Too many authentication failures")
            )
            return
        self._resume(_AUTH_FAILED)

    # ------------------------------------------------------- async steps

    def _start_commit(self) -> None:
        txn, self._txn = self._txn, None
        assert txn is not None
        assert txn.spool is not None
        self._busy = True
        task = self._loop.create_task(self._commit(txn, txn.spool))
        self._host.track(task)

    async def _commit(self, txn: _Transaction, spool: Spool) -> None:
        try:
            message_id = await self._sink.commit(spool)
        except InsufficientStorageError as error:
            log.error("could not store a message from %s: %s", self._peer[0], error)
            reply = _NO_ROOM
        except Exception:
            log.exception("could not store a message from %s", self._peer[0])
            reply = _TEMPORARY_FAILURE
        else:
            reply = Reply(250, "2.0.0", f"Ok: queued as {message_id}")
            self._messages += 1
            if log.isEnabledFor(logging.INFO):
                self._log_accepted(message_id, txn, spool.size)
            self._resume(reply)
            return
        self._log_refusal(reply, txn.mail.address, txn.recipients)
        self._resume(reply)

    def _resume(self, reply: Reply) -> None:
        self._busy = False
        self._backlog = 0
        if self._closed:
            return
        self._conn.send(reply)
        self._set_reading()
        self._pump()

    def _start_tls(self) -> bool:
        tls_context = self._context.tls_context
        assert tls_context is not None  # STARTTLS is offered only with one (SMTPServer)
        self._conn.send(Reply(220, "2.0.0", "Ready to start TLS"))
        self._flush()
        # From here every byte received is TLS; the engine has dropped what was
        # pipelined behind STARTTLS, and hears nothing until the handshake is done.
        self._busy = True
        self._begin_tls(tls_context)
        return True

    def _begin_tls(self, context: ssl.SSLContext) -> None:
        self._tls_layer = TLSLayer(context)
        timeout = min(TLS_HANDSHAKE_TIMEOUT_SECONDS, self._context.limits.idle_timeout)
        self._handshake_handle = self._loop.call_later(timeout, self._handshake_timed_out)

    def _handshake_timed_out(self) -> None:
        self._handshake_handle = None
        log.info("TLS handshake with %s timed out", self._peer[0])
        self._abort_transaction()
        self._close_transport()

    def _receive_tls(self, data: bytes, *, eof: bool) -> None:
        """Ciphertext (or the connection's end) from the client, through the TLS layer."""
        layer = self._tls_layer
        transport = self._transport
        assert layer is not None
        assert transport is not None
        if self._closed or layer.eof:
            return
        was_done = layer.handshake_done
        try:
            plain = layer.receive_eof() if eof else layer.receive(data)
        except ssl.SSLError as error:
            log.info("TLS with %s failed: %s", self._peer[0], error.reason or error)
            self._abort_transaction()
            self._closed = True
            transport.write(layer.data_to_send())  # the alert, if any
            transport.close()
            return
        if pending := layer.data_to_send():
            transport.write(pending)
        if not layer.handshake_done:
            return
        if not was_done:
            self._tls_ready(layer)
            if self._closed:
                return
        if plain:
            self._receive(plain)
        if layer.eof and not self._closed:
            self._receive_eof()

    def _tls_ready(self, layer: TLSLayer) -> None:
        if self._handshake_handle is not None:
            self._handshake_handle.cancel()
            self._handshake_handle = None
        self._tls = TLSInfo(version=layer.version, cipher=layer.cipher)
        if self._listener.implicit_tls:
            self._admit()
            return
        self._conn.tls_established()
        self._busy = False
        self._backlog = 0
