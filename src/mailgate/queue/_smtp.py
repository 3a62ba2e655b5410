"""The SMTP client's asyncio shell: ``ClientConnection`` over a socket.

Strategy.  An ``asyncio.Protocol`` feeds every octet received straight into
the engine and wakes the one task that drives the session; that task asks
the engine for events, decides (TLS policy, what to send next), and writes
what the engine queued.  SMTP is formatted and parsed only by the engine.
Feeding the engine from ``data_received`` (rather than through a stream
buffer) means plaintext that arrives after STARTTLS's 220 reaches the
engine, which drops it: it can never be read as a reply inside TLS.

Invariants.
- Every wait has a deadline (RFC 5321 4.5.3.2): the connection and the
  greeting, each reply, each block of content, the reply to the content.
  A peer that goes silent or half-closes ends in ``DeliveryError``, never
  a hang.
- Every failure reaches the caller as one ``DeliveryError`` carrying a
  ``Reply``: the server's own, or one made up here (``451 4.4.1``: no
  connection; ``451 4.4.2``: timeout, or the connection broke; ``451
  4.5.0``: a reply that cannot be read; ``454 4.7.0``: TLS failed or is
  missing where the policy requires it), and whether it is temporary.
- Under the ``verify`` and ``encrypt`` policies a session never continues
  in plaintext: no STARTTLS, or a failed one, is an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from typing import TypeVar, cast

from mailgate.protocol import (
    NEED_DATA,
    AnyClientEvent,
    AuthReply,
    ClientConnection,
    ClientSettings,
    ClientState,
    ConnectionClosed,
    ContentRequest,
    Envelope,
    Greeting,
    HelloReply,
    MailgateError,
    MailReply,
    MessageRefused,
    MessageReply,
    QuitReply,
    RcptReply,
    RemoteProtocolError,
    Reply,
    ResetReply,
    ServerClosing,
    StartTLSReply,
)
from mailgate.queue._smtp_values import (
    COMMAND_TIMEOUT_SECONDS,
    CONNECT_TIMEOUT_SECONDS,
    DATA_BLOCK_TIMEOUT_SECONDS,
    DATA_TIMEOUT_SECONDS,
    Content,
    DeliveryError,
    DeliveryResult,
    SMTPClientSettings,
    TLSPolicy,
    Transaction,
    made_up,
)

__all__ = [
    "COMMAND_TIMEOUT_SECONDS",
    "CONNECT_TIMEOUT_SECONDS",
    "DATA_BLOCK_TIMEOUT_SECONDS",
    "DATA_TIMEOUT_SECONDS",
    "DeliveryError",
    "DeliveryResult",
    "SMTPClient",
    "SMTPClientSettings",
    "TLSPolicy",
    "Transaction",
    "connect",
]

QUIT_TIMEOUT_SECONDS = 5.0  # a courtesy: nothing depends on QUIT's reply
CONTENT_BLOCK_OCTETS = 64 * 1024  # what one write of content holds
READ_PAUSE_OCTETS = 1024 * 1024  # unread input at which reading pauses
_E = TypeVar("_E", bound=AnyClientEvent)


@functools.cache
def _unverified_context() -> ssl.SSLContext:
    """The one context of opportunistic TLS (RFC 7435): encrypt whatever certificate is shown.

    Made once: it verifies nothing, so it needs no CA certificates, whose
    loading (``create_default_context``) cost 20-40 ms at every connection.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class _Pump(asyncio.Protocol):
    """Feeds the engine from the transport and wakes the task that drives it."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.transport: asyncio.Transport | None = None
        self.wakeup = asyncio.Event()
        self.writable = asyncio.Event()
        self.writable.set()
        self.lost = asyncio.Event()
        self.eof = False
        self.unread = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A TCP transport, of asyncio or of uvloop (whose classes are not asyncio's).
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self.eof:
            self.conn.receive_data(data)
            self.unread += len(data)
            if self.unread > READ_PAUSE_OCTETS and self.transport is not None:
                self.transport.pause_reading()
            self.wakeup.set()

    def eof_received(self) -> bool:
        self._end()
        return False  # close our side too: a half-closed peer is a gone peer

    def connection_lost(self, exc: Exception | None) -> None:
        self._end()
        self.lost.set()

    def _end(self) -> None:
        if not self.eof:
            self.eof = True
            self.conn.receive_eof()
        self.wakeup.set()
        self.writable.set()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()


class SMTPClient:
    """One SMTP session with a server; made by ``connect``.

    ``greeting``, ``extensions`` and ``tls_active`` describe the session.
    Use as ``async with await connect(...) as client:`` or call ``aclose``.
    """

    def __init__(self, host: str, port: int, settings: SMTPClientSettings) -> None:
        self.host = host
        self.port = port
        self.settings = settings
        self.conn = ClientConnection(
            ClientSettings(
                hostname=settings.hostname,
                pipelining=settings.pipelining,
                chunking=settings.chunking,
                tls_active=settings.implicit_tls,
                transcript=settings.transcript is not None,
            )
        )
        self.greeting: Reply | None = None
        self._pump = _Pump(self.conn)
        self._closed = False

    @property
    def extensions(self) -> Mapping[str, tuple[str, ...]]:
        """The server's EHLO keywords, each with its parameters."""
        return self.conn.extensions

    @property
    def tls_active(self) -> bool:
        """Whether the session runs over TLS (implicit, or after STARTTLS)."""
        return self.conn.tls_active

    # ------------------------------------------------------------- opening

    async def _open(self) -> None:
        settings = self.settings
        context = self._tls_context()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(settings.connect_timeout):
                await loop.create_connection(
                    lambda: self._pump,
                    self.host,
                    self.port,
                    ssl=context if settings.implicit_tls else None,
                    server_hostname=self._server_name() if settings.implicit_tls else None,
                )
        except TimeoutError:
            raise made_up(451, "4.4.2", f"timeout connecting to {self.host}") from None
        except ssl.SSLError as error:
            raise made_up(454, "4.7.0", f"TLS failed: {error}") from None
        except OSError as error:
            reason = error.strerror or str(error)
            raise made_up(451, "4.4.1", f"connection to {self.host} failed: {reason}") from None
        try:
            greeting = await self._expect(Greeting, settings.connect_timeout, "the greeting")
            self.greeting = greeting.reply
            if greeting.reply.code != 220:
                raise DeliveryError(greeting.reply)
            await self._hello()
            await self._starttls_by_policy()
        except DeliveryError:
            await self.aclose()
            raise
        except BaseException:  # cancelled: no time for a polite QUIT
            self._abort()
            raise

    def _tls_context(self) -> ssl.SSLContext:
        if self.settings.tls == "verify":
            assert self.settings.tls_context is not None  # checked by the settings
            return self.settings.tls_context
        return _unverified_context()

    def _server_name(self) -> str:
        return self.settings.tls_server_name or self.host

    async def _hello(self) -> None:
        self.conn.hello()
        hello = await self._expect(HelloReply, self.settings.command_timeout, "EHLO")
        if hello.reply.code // 100 != 2:
            raise DeliveryError(hello.reply)

    async def _starttls_by_policy(self) -> None:
        policy = self.settings.tls
        if policy == "none" or self.conn.tls_active:
            return
        if "STARTTLS" not in self.conn.extensions:
            if policy == "may":
                return
            raise made_up(454, "4.7.0", f"TLS is required but {self.host} offers no STARTTLS")
        self.conn.starttls()
        reply = (await self._expect(StartTLSReply, self.settings.command_timeout, "STARTTLS")).reply
        if reply.code != 220:
            if policy == "may":
                return
            raise DeliveryError(reply, temporary=True)
        transport = self._pump.transport
        assert transport is not None
        try:
            async with asyncio.timeout(self.settings.command_timeout):
                upgraded = await asyncio.get_running_loop().start_tls(
                    transport, self._pump, self._tls_context(), server_hostname=self._server_name()
                )
        except TimeoutError:
            raise made_up(454, "4.7.0", "TLS failed: handshake timed out") from None
        except (ssl.SSLError, OSError) as error:
            raise made_up(454, "4.7.0", f"TLS failed: {error}") from None
        assert upgraded is not None
        self._pump.transport = upgraded
        self.conn.tls_established()
        await self._hello()

    # ------------------------------------------------------------ commands

    async def login(self, username: str, password: str, *, mechanism: str | None = None) -> Reply:
        """Authenticate with ``mechanism`` (by default PLAIN, else LOGIN); only over TLS.

        Raises ``DeliveryError``, always temporary (the fault is in our
        configuration or the server's, not in any message), when TLS is not
        up, no usable mechanism is offered, or the server refuses.
        """
        self._ready()
        offered = {name.upper() for name in self.extensions.get("AUTH", ())}
        usable = [m for m in ("PLAIN", "LOGIN") if m in offered]
        if mechanism is not None:
            usable = [m for m in usable if m == mechanism.upper()]
        mechanism = usable[0] if usable else None
        if not self.tls_active:
            raise made_up(454, "4.7.0", "AUTH refused: the session is not encrypted")
        if mechanism is None:
            raise made_up(454, "4.7.0", f"{self.host} offers no AUTH mechanism we use")
        self.conn.authenticate(mechanism, username, password)
        reply = (await self._expect(AuthReply, self.settings.command_timeout, "AUTH")).reply
        if reply.code // 100 != 2:
            raise DeliveryError(reply, temporary=True)
        return reply

    async def send(self, transaction: Transaction) -> DeliveryResult:
        """Send one message; the outcome for each recipient and for the message.

        Raises ``DeliveryError``: permanent when the server cannot take the
        message (SIZE, 8BITMIME, SMTPUTF8; nothing is sent), temporary when
        the connection breaks or times out before the message's outcome.  An
        error of the content's iterator (a store that cannot be read) drops the
        connection, so half a message is never ended with the final dot, and
        passes through.
        """
        self._ready()
        try:
            self.conn.mail(transaction.envelope)
        except MessageRefused as refused:
            raise DeliveryError(refused.reply, temporary=False) from None
        await self._write()
        mail: Reply | None = None
        rcpts: list[Reply] = []
        heard: list[AnyClientEvent] = []
        timeout = self.settings.command_timeout
        while True:
            if heard:
                event = self._check(heard.pop(0), closing_ok=True)
            else:
                event = await self._next(timeout, "the transaction", closing_ok=True)
            match event:
                case MailReply():
                    mail = event.reply
                case RcptReply():
                    rcpts.append(event.reply)
                case ContentRequest():
                    heard = await self._send_content(transaction.content, bdat=not event.reply)
                    timeout = self.settings.data_timeout
                case MessageReply():
                    await self._write()  # an RSET the engine queued after a failure
                    return self._result(transaction.envelope, mail, rcpts, event.reply)
                case _:
                    pass  # ServerClosing: the transaction's outcome follows

    @staticmethod
    def _result(
        envelope: Envelope, mail: Reply | None, rcpts: list[Reply], outcome: Reply
    ) -> DeliveryResult:
        accepted_mail = mail is not None and mail.code // 100 == 2
        results = []
        for index, recipient in enumerate(envelope.recipients):
            own = rcpts[index] if index < len(rcpts) else None
            if accepted_mail and own is not None and own.code // 100 != 2:
                results.append((recipient.address, own))
            else:
                results.append((recipient.address, outcome))
        return DeliveryResult(tuple(results), outcome)

    async def _send_content(self, content: Content, *, bdat: bool) -> list[AnyClientEvent]:
        """Send the content; with BDAT, the events of replies heard meanwhile.

        Each BDAT chunk is answered: a failed one heard before the next
        chunk stops the rest (RFC 3030 2), and a 421 ends the sending.
        """
        conn = self.conn
        heard: list[AnyClientEvent] = []
        try:
            async for chunk in _chunks(content):
                if bdat:
                    heard += self._poll()
                if conn.state is not ClientState.CONTENT:
                    return heard
                conn.send_content(chunk)
                await self._write(self.settings.data_block_timeout)
        except DeliveryError:
            raise
        except Exception:  # the content could not be read (a store's): never end half of it
            self._abort()
            raise
        conn.end_content()
        await self._write(self.settings.data_block_timeout)
        return heard

    def _poll(self) -> list[AnyClientEvent]:
        """The events of replies already received, without waiting for more."""
        heard: list[AnyClientEvent] = []
        while not heard or not isinstance(heard[-1], ConnectionClosed):
            event = self._event()
            if event is None:
                break
            heard.append(event)
        return heard

    async def reset(self) -> Reply:
        """RSET, to reuse the connection for another message.

        Raises ``DeliveryError`` when the server does not answer 250.
        """
        self._ready()
        self.conn.reset()
        reply = (await self._expect(ResetReply, self.settings.command_timeout, "RSET")).reply
        if reply.code // 100 != 2:
            raise DeliveryError(reply)
        return reply

    async def aclose(self) -> None:
        """Say QUIT if the session allows it, then close the connection; never raises."""
        if self._closed:
            return
        self._closed = True
        conn, pump = self.conn, self._pump
        if conn.state in (ClientState.READY, ClientState.CONNECTED, ClientState.REFUSED):
            with contextlib.suppress(DeliveryError, MailgateError):
                conn.quit()
                await self._write(QUIT_TIMEOUT_SECONDS)
                await self._expect(QuitReply, QUIT_TIMEOUT_SECONDS, "QUIT")
        transport = pump.transport
        if transport is None:
            return
        transport.close()
        try:
            async with asyncio.timeout(QUIT_TIMEOUT_SECONDS):
                await pump.lost.wait()
        except TimeoutError:
            transport.abort()

    async def __aenter__(self) -> SMTPClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # ---------------------------------------------------------------- pump

    def _ready(self) -> None:
        if self._closed or self.conn.state is not ClientState.READY:
            raise made_up(451, "4.4.2", f"the session with {self.host} is over")

    async def _write(self, timeout: float | None = None) -> None:
        data = self.conn.data_to_send()
        pump = self._pump
        if self.settings.transcript is not None:
            for direction, line in self.conn.take_transcript():
                self.settings.transcript(direction, line)
        if not data:
            return
        if pump.transport is None or pump.transport.is_closing():
            raise self._fail(made_up(451, "4.4.2", f"connection to {self.host} lost"))
        pump.transport.write(data)
        try:
            async with asyncio.timeout(timeout or self.settings.command_timeout):
                await pump.writable.wait()
        except TimeoutError:
            raise self._fail(made_up(451, "4.4.2", f"timeout sending to {self.host}")) from None

    async def _next(self, timeout: float, what: str, *, closing_ok: bool = False) -> AnyClientEvent:
        """The engine's next event; a closed or garbled session raises ``DeliveryError``."""
        pump = self._pump
        try:
            async with asyncio.timeout(timeout):
                while True:
                    # Cleared before the engine reads: input arriving while we
                    # write below wakes the wait at once.
                    pump.wakeup.clear()
                    event = self._event()
                    await self._write()
                    if event is not None:
                        break
                    pump.unread = 0
                    if pump.transport is not None and not pump.lost.is_set():
                        pump.transport.resume_reading()
                    await pump.wakeup.wait()
        except TimeoutError:
            raise self._fail(
                made_up(451, "4.4.2", f"timeout waiting for {what} from {self.host}")
            ) from None
        return self._check(event, closing_ok=closing_ok)

    def _event(self) -> AnyClientEvent | None:
        """The engine's next event, ``None`` for ``NEED_DATA``."""
        try:
            event = self.conn.next_event()
        except RemoteProtocolError as error:
            reply = made_up(451, "4.5.0", f"bad reply from {self.host}: {error}")
            raise self._fail(reply) from None
        return None if event is NEED_DATA else event

    def _check(self, event: AnyClientEvent, *, closing_ok: bool) -> AnyClientEvent:
        """``event``, unless it ends the session: then ``DeliveryError``."""
        if isinstance(event, ConnectionClosed):
            raise self._fail(made_up(451, "4.4.2", f"connection to {self.host} lost"))
        if isinstance(event, ServerClosing) and not closing_ok:
            raise self._fail(DeliveryError(event.reply))
        return event

    async def _expect(self, kind: type[_E], timeout: float, what: str) -> _E:
        event = await self._next(timeout, what)
        if not isinstance(event, kind):  # pragma: no cover - the engine's sequencing
            raise self._fail(made_up(451, "4.5.0", f"unexpected {type(event).__name__}"))
        return event

    def _fail(self, error: DeliveryError) -> DeliveryError:
        """The session cannot go on: drop the connection, hand back ``error``."""
        self._abort()
        return error

    def _abort(self) -> None:
        self._closed = True
        if self._pump.transport is not None:
            self._pump.transport.abort()


async def _chunks(content: Content) -> AsyncIterator[bytes]:
    if isinstance(content, bytes):
        for start in range(0, len(content), CONTENT_BLOCK_OCTETS):
            yield content[start : start + CONTENT_BLOCK_OCTETS]
    elif isinstance(content, AsyncIterable):
        async for chunk in content:
            yield chunk
    else:
        for chunk in content:
            yield chunk


async def connect(host: str, port: int, settings: SMTPClientSettings) -> SMTPClient:
    """Open an SMTP session: connect, greeting, EHLO, and STARTTLS as the policy says.

    Raises ``DeliveryError`` (``451 4.4.1`` no connection, ``451 4.4.2``
    timeout, ``454 4.7.0`` TLS failed or missing, or the server's refusal
    of the greeting or EHLO).  For example::

        settings = SMTPClientSettings(hostname="mx.example.org", tls="may")
        async with await connect("mx.example.com", 25, settings) as client:
            message = Transaction.of(content, sender="a@example.org", recipients=["b@example.com"])
            result = await client.send(message)
        for recipient, reply in result.recipients:
            ...  # 2xx delivered, 4xx retry, 5xx bounce
    """
    client = SMTPClient(host, port, settings)
    await client._open()
    return client
