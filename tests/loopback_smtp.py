"""Receiving MTAs on loopback addresses, for delivery tests (see loopback.py).

``ReceivingMTAs`` starts aiosmtpd servers, one per loopback address
(127.0.0.2, 127.0.0.3, ...): all on port 25 when the tests run as root, as
in CI, so delivery code finds them as it finds any MX; otherwise on one
free port shared by all of them, which the delivery code's port override
then targets.  Each server records what it accepts (the envelope with its
MAIL and RCPT parameters as sent, DSN ones included) and answers as
scripted: per recipient, after DATA, or with a greeting such as 421.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import DATA_SIZE_DEFAULT, SMTP, AuthResult, Envelope, LoginPassword, Session

__all__ = ["DSN_PARAMETERS", "ReceivedMessage", "ReceivingMTA", "ReceivingMTAs", "Refusal"]

SMTP_PORT = 25  # RFC 5321 4.5.4.2
READY_TIMEOUT_SECONDS = 10.0  # a busy CI machine may take a while to start a thread


@dataclass(frozen=True)
class ReceivedMessage:
    """One transaction an MTA accepted: the envelope as received, and the content."""

    sender: str  # "" for the null reverse-path
    recipients: tuple[str, ...]
    content: bytes
    mail_options: tuple[str, ...]  # MAIL's parameters, as sent
    rcpt_options: Mapping[str, tuple[str, ...]]  # each accepted recipient's, as sent
    peer: str  # the client's address
    tls: bool
    login: str | None  # the AUTH identity, if the client authenticated


@dataclass(frozen=True)
class Refusal:
    """A command an MTA refused as scripted: ``RCPT`` with the recipient, or ``DATA``."""

    command: str
    argument: str
    reply: str


@dataclass
class ReceivingMTA:
    """One aiosmtpd server on ``host:port``; ``stop()`` makes the address refuse connections."""

    host: str
    port: int
    hostname: str
    messages: list[ReceivedMessage] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    _controller: _Controller | None = field(default=None, repr=False)
    _placeholder: socket.socket | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        """True while the server accepts connections."""
        return self._controller is not None

    def stop(self) -> None:
        """Stop the server; the address keeps refusing connections until teardown."""
        if self._controller is not None:
            self._controller.stop()
            self._controller = None
            # A socket bound but not listening is answered with RST: refused.
            if self._placeholder is None:
                self._placeholder = _bound(self.host, self.port, reuse=True)

    def close(self) -> None:
        """Stop the server and release the address."""
        self.stop()
        if self._placeholder is not None:
            self._placeholder.close()
            self._placeholder = None


# RFC 3461 4: DSN parameters, which aiosmtpd does not know and would refuse with 555.
DSN_PARAMETERS = frozenset({"RET", "ENVID", "NOTIFY", "ORCPT"})


class _Envelope(Envelope):
    def __init__(self) -> None:
        super().__init__()
        self.parameters: tuple[str, ...] = ()  # MAIL's, as sent (aiosmtpd upper-cases them)
        self.parameters_by_recipient: dict[str, tuple[str, ...]] = {}


class _SMTP(SMTP):
    """aiosmtpd's server, taking DSN parameters, with an optional fixed greeting."""

    def __init__(self, handler: _Handler, *, greeting: str | None, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._greeting = greeting
        self.parameters: tuple[str, ...] = ()  # those of the command being handled

    def _create_envelope(self) -> Envelope:
        return _Envelope()

    def _getparams(self, params: Sequence[str]) -> dict[str, str | bool] | None:
        known = super()._getparams(params)
        return (
            None if known is None else {k: v for k, v in known.items() if k not in DSN_PARAMETERS}
        )

    async def smtp_MAIL(self, arg: str | None) -> None:
        self.parameters = self._parameters("FROM:", arg)
        envelope = self.envelope
        before = envelope.mail_from if envelope is not None else None
        await super().smtp_MAIL(arg)
        if isinstance(envelope, _Envelope) and before is None and envelope.mail_from is not None:
            envelope.parameters = self.parameters

    async def smtp_RCPT(self, arg: str | None) -> None:
        self.parameters = self._parameters("TO:", arg)
        await super().smtp_RCPT(arg)

    def _parameters(self, keyword: str, arg: str | None) -> tuple[str, ...]:
        stripped = self._strip_command_keyword(keyword, arg or "")
        _, parameters = self._getaddr(stripped or "")
        return tuple((parameters or "").split())

    async def _handle_client(self) -> None:
        if self._greeting is None:
            await super()._handle_client()
            return
        await self.push(self._greeting)  # RFC 5321 3.1: e.g. 421, then close
        assert self.transport is not None
        self.transport.close()


class _Handler:
    """The aiosmtpd hooks: scripted replies, and a record of what was accepted."""

    def __init__(
        self, mta: ReceivingMTA, replies: Mapping[str, str], data_reply: str | None, *, auth: bool
    ) -> None:
        self._mta = mta
        self._replies = {address.lower(): reply for address, reply in replies.items()}
        self._data_reply = data_reply
        self._auth = auth

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        if not self._auth:  # aiosmtpd offers AUTH that always fails after STARTTLS
            responses = [line for line in responses if not line.startswith("250-AUTH")]
        return [*responses[:-1], "250-DSN", responses[-1]]

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        reply = self._replies.get(address.lower())
        if reply is not None:
            self._mta.refusals.append(Refusal("RCPT", address, reply))
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        assert isinstance(envelope, _Envelope)
        assert isinstance(server, _SMTP)
        envelope.parameters_by_recipient[address] = server.parameters
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope, _Envelope)
        content = envelope.content
        assert isinstance(content, bytes)
        if self._data_reply is not None:
            self._mta.refusals.append(Refusal("DATA", "", self._data_reply))
            return self._data_reply
        login = session.auth_data.login if isinstance(session.auth_data, LoginPassword) else None
        self._mta.messages.append(
            ReceivedMessage(
                sender="" if envelope.mail_from in (None, "<>") else str(envelope.mail_from),
                recipients=tuple(envelope.rcpt_tos),
                content=content,
                mail_options=envelope.parameters,
                rcpt_options=dict(envelope.parameters_by_recipient),
                peer=str(session.peer[0] if isinstance(session.peer, tuple) else session.peer),
                tls=session.ssl is not None,
                login=login.decode() if login is not None else None,
            )
        )
        return "250 2.0.0 OK: queued"


class _Controller(Controller):
    """A Controller serving on a socket bound beforehand, so port 0 and busy addresses work."""

    def __init__(
        self, handler: _Handler, sock: socket.socket, *, greeting: str | None, **kwargs: Any
    ) -> None:
        host, port = sock.getsockname()[:2]
        super().__init__(
            handler, hostname=host, port=port, ready_timeout=READY_TIMEOUT_SECONDS, **kwargs
        )
        self._sock = sock
        self._greeting = greeting
        self._protocols: set[_SMTP] = set()

    def factory(self) -> SMTP:
        server = _SMTP(self.handler, greeting=self._greeting, loop=self.loop, **self.SMTP_kwargs)
        self._protocols.add(server)
        return server

    def _create_server(self) -> Awaitable[asyncio.AbstractServer]:
        return self.loop.create_server(self._factory_invoker, sock=self._sock)

    def _trigger_server(self) -> None:
        # aiosmtpd connects once to check that factory() works; make one in
        # the loop's thread instead, so no test sees a connection it did not make.
        self.loop.call_soon_threadsafe(self._factory_invoker)

    def stop(self, no_assert: bool = False) -> None:
        # Close the clients' connections first, so none outlives the loop.
        self.loop.call_soon_threadsafe(self._close_connections)
        super().stop(no_assert)

    def _close_connections(self) -> None:
        for server in self._protocols:
            if server.transport is not None:
                server.transport.close()


class ReceivingMTAs:
    """Starts receiving MTAs on loopback addresses; ``close()`` stops them all.

    ``port`` is the port all of them listen on: 25 as root, else one free
    port chosen when the first starts (``port=0`` asks for that as root).
    ``ca`` signs the certificates of the MTAs started with ``tls=True``.
    """

    def __init__(self, port: int | None = None) -> None:
        # Port 25 needs root; anyone else gets a free port, once the first MTA binds it.
        self.port = port if port is not None else SMTP_PORT if os.geteuid() == 0 else 0
        self._mtas: list[ReceivingMTA] = []
        self._ca: trustme.CA | None = None

    @property
    def ca(self) -> trustme.CA:
        """The certificate authority of the MTAs' STARTTLS certificates."""
        if self._ca is None:
            self._ca = trustme.CA()
        return self._ca

    def client_context(self) -> ssl.SSLContext:
        """An SSL context for clients that trusts ``ca``."""
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context

    def __call__(
        self,
        host: str | None = None,
        *,
        hostname: str | None = None,
        replies: Mapping[str, str] | None = None,
        greeting: str | None = None,
        data_reply: str | None = None,
        refuse: bool = False,
        tls: bool = False,
        require_tls: bool = False,
        auth: Mapping[str, str] | None = None,
        data_size_limit: int = DATA_SIZE_DEFAULT,
    ) -> ReceivingMTA:
        """Start one MTA on ``host`` (default: the next free 127.0.0.N).

        ``replies`` maps recipients to the reply their RCPT gets (e.g.
        ``"450 4.2.1 Try later"``); ``greeting`` replaces the 220 greeting
        and closes the connection (e.g. ``"421 4.3.2 Not now"``);
        ``data_reply`` is the reply to every message after DATA;
        ``refuse`` starts no server, so connections are refused; ``tls``
        offers STARTTLS with a certificate from ``ca`` for ``hostname`` and
        the address (``require_tls`` demands it before MAIL); ``auth`` maps
        user names to passwords for AUTH PLAIN and LOGIN (over TLS only
        when ``tls`` is on).  ``data_size_limit`` is the SIZE it takes (0: any).
        """
        sock = self._bind(host, listen=not refuse)
        address, port = sock.getsockname()[:2]
        if not self.port:
            self.port = port
        mta = ReceivingMTA(address, port, hostname or f"mta-{address}.loopback.test")
        self._mtas.append(mta)
        if refuse:
            mta._placeholder = sock
            return mta
        kwargs: dict[str, Any] = {
            "server_hostname": mta.hostname,
            "enable_SMTPUTF8": True,
            "data_size_limit": data_size_limit,
        }
        if tls:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.ca.issue_cert(mta.hostname, address).configure_cert(context)
            kwargs |= {"tls_context": context, "require_starttls": require_tls}
        if auth is not None:
            kwargs |= {"authenticator": _authenticator(auth), "auth_require_tls": tls}
        controller = _Controller(
            _Handler(mta, replies or {}, data_reply, auth=auth is not None),
            sock,
            greeting=greeting,
            **kwargs,
        )
        try:
            controller.start()
        except BaseException:
            controller.stop(no_assert=True)
            if not controller.loop.is_closed():  # the server never started
                controller.loop.close()
            sock.close()
            raise
        mta._controller = controller
        return mta

    def close(self) -> None:
        """Stop every MTA started, and release every address bound."""
        for mta in self._mtas:
            mta.close()
        self._mtas.clear()

    def _bind(self, host: str | None, *, listen: bool) -> socket.socket:
        taken = {mta.host for mta in self._mtas}
        candidates: Iterable[str] = [host] if host else (f"127.0.0.{n}" for n in range(2, 255))
        for address in candidates:
            if address in taken and host is None:
                continue
            try:
                # Listening sockets share the address with TIME_WAIT leftovers of
                # earlier tests; a refusing one keeps it to itself.
                sock = _bound(address, self.port, reuse=listen, listen=listen)
            except OSError as error:
                if error.errno != errno.EADDRINUSE or host is not None:
                    raise
                continue
            return sock
        raise RuntimeError(f"no loopback address free on port {self.port}")


def _bound(host: str, port: int, *, reuse: bool, listen: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if reuse:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        if listen:
            sock.listen(socket.SOMAXCONN)
    except BaseException:
        sock.close()
        raise
    return sock


def _authenticator(users: Mapping[str, str]) -> Callable[..., AuthResult]:
    def authenticate(
        server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login, password = data.login.decode(), data.password.decode()
        if users.get(login) != password:
            return AuthResult(success=False, handled=False)  # aiosmtpd then answers 535
        return AuthResult(success=True, auth_data=data)

    return authenticate
