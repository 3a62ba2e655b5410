"""Helpers for the client engine's tests: a scripted server, and a loopback pair.

``Peer`` drives a ``ClientConnection`` with canned server octets, fed
through one of ``protocol_helpers.feedings()``, and records the events.
``Loopback`` joins a ``ClientConnection`` to the project's own
``ServerConnection`` (run by the protocol tests' ``ReferenceApp``), so that
what the client writes is read by a real engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mailgate.protocol import (
    NEED_DATA,
    AnyClientEvent,
    ClientConnection,
    ClientSettings,
    ConnectionClosed,
    ConnectionSettings,
    Envelope,
    Recipient,
    Reply,
    ServerConnection,
)
from protocol_helpers import HOSTNAME, Policy, ReferenceApp, Split, whole

GREETING = b"220 mx.test ESMTP ready\r\n"
CLIENT = "client.test"


def ehlo_reply(*keywords: str) -> bytes:
    """A 250 reply to EHLO announcing ``keywords``."""
    lines = ["mx.test hello", *keywords]
    return Reply(250, None, "\n".join(lines)).to_bytes()


def drain(conn: ClientConnection) -> list[AnyClientEvent]:
    """Every event available now; stops after the first ``ConnectionClosed``."""
    events: list[AnyClientEvent] = []
    while (event := conn.next_event()) is not NEED_DATA:
        events.append(event)
        if isinstance(event, ConnectionClosed):
            break
    return events


class Peer:
    """A client engine and a scripted server whose octets arrive split by ``split``."""

    def __init__(self, split: Split = whole, **settings: bool) -> None:
        self.conn = ClientConnection(ClientSettings(hostname=CLIENT, **settings))
        self.split = split
        self.events: list[AnyClientEvent] = []

    def server(self, data: bytes) -> list[AnyClientEvent]:
        """Feed the server's octets; the events they made."""
        new: list[AnyClientEvent] = []
        for piece in self.split(data):
            self.conn.receive_data(piece)
            new += drain(self.conn)
        self.events += new
        return new

    def sent(self) -> bytes:
        return self.conn.data_to_send()

    def ready(self, *keywords: str) -> None:
        """Greeting and EHLO answered with ``keywords``."""
        self.server(GREETING)
        self.conn.hello()
        assert self.sent() == b"EHLO client.test\r\n"
        self.server(ehlo_reply(*keywords))


@dataclass
class Loopback:
    """A client engine talking to the project's own server engine."""

    client: ClientConnection
    app: ReferenceApp
    events: list[AnyClientEvent] = field(default_factory=list)
    wire: bytearray = field(default_factory=bytearray)
    """Every octet the client wrote."""

    @classmethod
    def start(
        cls,
        *,
        client: ClientSettings | None = None,
        server: ConnectionSettings | None = None,
        policy: Policy | None = None,
    ) -> Loopback:
        conn = ServerConnection(server or ConnectionSettings(hostname=HOSTNAME))
        app = ReferenceApp(conn, policy)
        app.greet()
        loop = cls(ClientConnection(client or ClientSettings(hostname=CLIENT)), app)
        loop.run()
        return loop

    def run(self) -> list[AnyClientEvent]:
        """Exchange octets until both sides wait; the client's new events."""
        new: list[AnyClientEvent] = []
        while True:
            to_client = self.app.conn.data_to_send()
            if to_client:
                self.client.receive_data(to_client)
            new += drain(self.client)
            to_server = self.client.data_to_send()
            self.wire += to_server
            if not to_client and not to_server:
                break
            if to_server and not self.app.closed:
                self.app.conn.receive_data(to_server)
                self.app.pump()
                self.app.finish_handshake()
        self.events += new
        return new


ALL = ("PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8", "DSN", "SIZE 1000")
"""EHLO keywords of a server offering every extension the engine uses but CHUNKING."""
OK = b"250 2.0.0 OK\r\n"


def envelope(*recipients: str, **options: object) -> Envelope:
    """From ``a@example.org`` to ``recipients`` (``b@example.com`` by default)."""
    return Envelope(
        sender="a@example.org",
        recipients=tuple(Recipient(r) for r in recipients or ("b@example.com",)),
        **options,  # type: ignore[arg-type]
    )


def reply(code: int, enhanced: str | None, text: str) -> Reply:
    """A ``Reply``, spelt short for the expected events of a case."""
    return Reply(code, enhanced, text)


def tls_peer(split: Split, *keywords: str) -> Peer:
    """A peer over implicit TLS with a transcript, after EHLO offering ``keywords``."""
    peer = Peer(split, tls_active=True, transcript=True)
    peer.ready(*keywords)
    return peer
