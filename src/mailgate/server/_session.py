"""One SMTP session: an ``asyncio.Protocol`` pumping bytes through the engine.

The session is a thin shell.  The engine parses and answers protocol
errors; the session decides policy (who may send to whom), streams content
into a spool and commits it through the ``MailSink`` port.  Only the shell
knows about time: it notes when the client last made progress, and the
server's deadlines (``server._deadlines``) read that.

It is made with a ``SessionContext`` (``server._context``): what it needs
of its server, the node's one clock included.  AUTH reaches it as the
credentials to check, the engine having run the SASL exchange.

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
from mailgate.ports import InsufficientStorageError, SMTPReplyError, Spool, StoreError
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
from mailgate.server._auth import AuthAttempts
from mailgate.server._context import SessionContext
from mailgate.server._log import SessionLog, clean, refusal_in, why_closed
from mailgate.server._tls import TLSLayer
from mailgate.server._transaction import Transaction, protocol_name

__all__ = ["Session"]

log = logging.getLogger("mailgate.smtp")

_PAUSE_INPUT_OCTETS = 256 * 1024
_TEMPORARY_FAILURE = Reply(451, "4.3.0", "Temporary failure, please try again later")
_NO_ROOM = Reply(452, "4.3.1", "Insufficient system storage")  # RFC 3463 X.3.1
_RSET_OK = Reply(250, "2.0.0", "Flushed")
_START_DATA = Reply(354, None, "End data with <CR><LF>.<CR><LF>")
TLS_HANDSHAKE_TIMEOUT_SECONDS = 30.0
LINGER_SECONDS = 1.0
"""How long a closed session waits for the client to close too, reading and dropping."""


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
        self._txn: Transaction | None = None
        self._busy = False
        self._backlog = 0
        self._paused = False
        self._write_paused = False
        self._closed = False
        self.admitted_at = self.progress_at = 0.0
        self._tls: TLSInfo | None = None
        self._tls_layer: TLSLayer | None = None
        self._handshake_handle: asyncio.TimerHandle | None = None
        self._linger_handle: asyncio.TimerHandle | None = None
        self._client_done = False
        self._auth: AuthAttempts | None = None
        self.auth_user: str | None = None
        # The loop that made the session runs it; asked once, as asking costs a getpid().
        self._loop = asyncio.get_running_loop()
        self.closed = self._loop.create_future()
        self._log = SessionLog(self._loop.time(), context.counters)

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
        self.admitted_at = self.progress_at = self._loop.time()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._abort_transaction()
        if self._handshake_handle is not None:
            self._handshake_handle.cancel()
        if self._linger_handle is not None:
            self._linger_handle.cancel()
        if self._host.unregister(self) and log.isEnabledFor(logging.DEBUG):
            self._log.summary(self._peer[0], self._conn.helo_name, self._conn.errors, exc)
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        # Only progress counts against the deadlines, not bytes: see _pump.
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

    @property
    def waiting(self) -> bool:
        """Whether the client waits on the server, or the session is closed already."""
        return self._busy or self._closed

    @property
    def content_progress(self) -> tuple[float, int] | None:
        """While a message's content arrives: when it began, and its octets so far."""
        txn = self._txn
        if txn is None or txn.spool is None:
            return None
        return txn.content_started, txn.spool.size

    def time_out(self, reason: str) -> None:
        """Cut the client off for a deadline it missed (server._deadlines)."""
        log.info("%s for %s", reason.lower(), self._peer[0])
        self._log.end = "timeout"
        self.shutdown(Reply(421, "4.4.2", f"{self._context.hostname} {reason}, closing"))

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
        self._log.end = self._log.end or str(reply.code)
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
        progress = False
        try:
            while not self._closed:
                event = conn.next_event()
                if event is NEED_DATA:
                    break
                progress = True
                if self._handle(event):
                    # An asynchronous step took over (it resumes the pump), or the
                    # session is over.
                    break
        except Exception:
            log.exception("session with %s failed", self._peer[0])
            self._log.end = "error"
            self.shutdown(Reply(421, "4.3.0", f"{self._context.hostname} Internal error, closing"))
            return
        if progress:  # a whole command line, or content: bytes alone are no progress
            self.progress_at = self._loop.time()
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
                self._log.end = why_closed(self._flush())
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
        self._log.commands += 1
        return took_over

    def _greet_or_reset(self, event: Helo | Ehlo | Rset) -> None:
        conn = self._conn
        hostname = self._context.hostname
        if isinstance(event, Ehlo):
            # Any name is taken (RFC 5321 4.1.4), cleaned of what would make the reply unsendable.
            name = clean(event.name, 64)
            conn.send(conn.ehlo_reply(f"{hostname} Hello {name} [{self._peer[0]}]"))
        elif isinstance(event, Helo):
            conn.send(Reply(250, None, hostname))
        else:
            conn.send(_RSET_OK)

    def _envelope_command(self, event: MailFrom | RcptTo) -> None:
        conn = self._conn
        if isinstance(event, MailFrom):
            needs_auth = self._listener.require_auth and self.auth_user is None
            reply = self._policy.check_sender(self._sink, event.size, self._peer[0], needs_auth)
            if reply.is_positive:
                self._txn = Transaction(event)
                conn.send(reply)
            else:
                self._refuse(reply, event.address)
            return
        txn = self._txn
        assert txn is not None
        may_relay = self.auth_user is not None or self._policy.trusts(self._peer[0])
        reply = self._policy.check_recipient(event.address, may_relay=may_relay)
        if reply.is_positive:
            txn.add(event.address, self._policy.expand(event.address), event.params)
            conn.send(reply)
            return
        self._refuse(reply, txn.mail.address, (event.address,))

    def _spool(self) -> Spool:
        txn = self._txn
        assert txn is not None
        if txn.spool is None:
            txn.spool = self._sink.begin(self._envelope(txn))
            txn.content_started = self._loop.time()
        return txn.spool

    def _protocol(self, mail: MailFrom) -> str:
        conn = self._conn
        return protocol_name(
            extended=conn.extended,
            smtputf8=mail.smtputf8,
            tls=conn.tls_active,
            authenticated=self.auth_user is not None,
        )

    def _envelope(self, txn: Transaction) -> Envelope:
        return txn.envelope(
            received_at=self._clock.now(),
            helo_name=self._conn.helo_name,
            client=self._peer,
            protocol=self._protocol(txn.mail),
            auth_user=self.auth_user,
            tls=self._tls,
            is_local=self._policy.is_local,
        )

    def _abort_transaction(self) -> None:
        txn, self._txn = self._txn, None
        if txn is not None and txn.spool is not None:
            txn.spool.discard()

    def _content_refused(self, event: DataAborted) -> None:
        """The engine refused the message (too big, a bad line) and has said so."""
        txn = self._txn
        # The refusal is among the replies not yet written (before a 421, maybe): written now.
        reply = refusal_in(self._flush(), event.reason)
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
        self._log.refused(reply, sender, recipients, self._peer[0], self._conn.helo_name)

    # ---------------------------------------------------------- AUTH

    def _authenticate(self, credentials: AuthCredentials) -> bool:
        self._busy = True
        task = self._loop.create_task(self._check_credentials(credentials))
        self._host.track(task)
        return True

    async def _check_credentials(self, credentials: AuthCredentials) -> None:
        if self._auth is None:
            authenticator = self._context.authenticator
            assert authenticator is not None  # AUTH is offered only with one (SMTPServer)
            self._auth = AuthAttempts(authenticator, self._context, self._peer[0])
        outcome = await self._auth.check(credentials)
        if outcome.user is not None:
            self.auth_user = outcome.user
        if outcome.give_up:
            self._busy = False
            if not self._closed:
                self._conn.send(outcome.reply)
            self.shutdown(
                Reply(421, "4.7.0", f"{self._context.hostname} Too many authentication failures")
            )
            return
        self._resume(outcome.reply)

    # ------------------------------------------------------- async steps

    def _start_commit(self) -> None:
        txn, self._txn = self._txn, None
        assert txn is not None
        assert txn.spool is not None
        self._busy = True
        task = self._loop.create_task(self._commit(txn, txn.spool))
        self._host.track(task)

    async def _commit(self, txn: Transaction, spool: Spool) -> None:
        try:
            message_id = await self._sink.commit(spool)
        except SMTPReplyError as error:  # refused for what it is (a mail loop): no failure
            reply = error.reply
        except StoreError as error:  # the store says why in one line: no traceback a message
            log.error("could not store a message from %s: %s", self._peer[0], error)
            reply = _NO_ROOM if isinstance(error, InsufficientStorageError) else _TEMPORARY_FAILURE
        except Exception:
            log.exception("could not store a message from %s", self._peer[0])
            reply = _TEMPORARY_FAILURE
        else:
            reply = Reply(250, "2.0.0", f"Ok: queued as {message_id}")
            self._log.messages += 1
            if log.isEnabledFor(logging.INFO):
                self._log.accepted(
                    message_id,
                    txn.mail.address,
                    txn.recipients,
                    spool.size,
                    client=self._peer[0],
                    helo=self._conn.helo_name,
                    proto=self._protocol(txn.mail),
                    tls=self._tls.version if self._tls is not None else None,
                    auth=self.auth_user,
                )
        if not reply.is_positive:
            self._log_refusal(reply, txn.mail.address, txn.recipients)
        self._resume(reply)

    def _resume(self, reply: Reply) -> None:
        self._busy = False
        self._backlog = 0
        if self._closed:
            return
        self.progress_at = self._loop.time()  # the wait was the server's, not the client's
        self._conn.send(reply)
        self._set_reading()
        self._pump()

    def _start_tls(self) -> bool:
        tls_context = self._context.tls_context
        assert tls_context is not None  # STARTTLS is offered only with one (SMTPServer)
        self._conn.send(Reply(220, "2.0.0", "Ready to start TLS"))
        self._flush()
        self._busy = True  # every byte from here is TLS; the engine dropped what was pipelined
        self._begin_tls(tls_context)
        if self._client_done:  # its end came first (while a commit was in flight)
            self._receive_tls(b"", eof=True)  # so no handshake will come: close now
        return True

    def _begin_tls(self, context: ssl.SSLContext) -> None:
        self._tls_layer = TLSLayer(context, self._context.counters)
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
        self.progress_at = self._loop.time()
