"""The client engine, synchronously: every case fed whole, byte by byte and at random splits."""

from __future__ import annotations

import base64

import pytest

from client_helpers import GREETING, Peer, ehlo_reply, envelope, reply, tls_peer
from mailgate.protocol import (
    AuthReply,
    ClientState,
    ConnectionClosed,
    Greeting,
    HelloReply,
    LocalProtocolError,
    QuitReply,
    RemoteProtocolError,
    ResetReply,
    ServerClosing,
    StartTLSReply,
)
from protocol_helpers import Split, feedings


@pytest.fixture(params=list(feedings()), ids=lambda split: split.__name__)
def split(request: pytest.FixtureRequest) -> Split:
    """Every case is fed whole, byte by byte and at random splits."""
    feeding: Split = request.param
    return feeding


# ---------------------------------------------------------------- greeting, EHLO


def test_greeting_and_ehlo_extensions(split: Split) -> None:
    peer = Peer(split)
    assert peer.server(GREETING) == [Greeting(reply(220, None, "mx.test ESMTP ready"))]
    peer.conn.hello()
    assert peer.sent() == b"EHLO client.test\r\n"
    events = peer.server(ehlo_reply("SIZE 10240000", "AUTH PLAIN LOGIN", "pipelining", "x=y", ""))
    assert len(events) == 1
    hello = events[0]
    assert isinstance(hello, HelloReply)
    assert hello.extended
    assert hello.extensions == {
        "SIZE": ("10240000",),
        "AUTH": ("PLAIN", "LOGIN"),
        "PIPELINING": (),
    }
    assert peer.conn.state is ClientState.READY
    assert peer.conn.extended


@pytest.mark.parametrize("code", [500, 502, 554])
def test_ehlo_refused_falls_back_to_helo(split: Split, code: int) -> None:
    peer = Peer(split)
    peer.server(GREETING)
    peer.conn.hello()
    peer.sent()
    assert peer.server(f"{code} 5.5.1 no EHLO\r\n".encode()) == []
    assert peer.sent() == b"HELO client.test\r\n"
    assert peer.server(b"250 mx.test\r\n") == [HelloReply(reply(250, None, "mx.test"))]
    assert not peer.conn.extended
    assert peer.conn.state is ClientState.READY


def test_helo_refused_and_ehlo_temporary_failure(split: Split) -> None:
    peer = Peer(split)
    peer.server(GREETING)
    peer.conn.hello()
    peer.server(b"550 no\r\n")
    assert peer.server(b"550 no HELO either\r\n") == [
        HelloReply(reply(550, None, "no HELO either"))
    ]
    assert peer.conn.state is ClientState.CONNECTED
    peer.conn.hello()
    peer.sent()
    assert peer.server(b"451 later\r\n") == [HelloReply(reply(451, None, "later"))]
    assert peer.sent() == b""
    assert peer.conn.state is ClientState.CONNECTED


def test_refused_greeting_allows_only_quit(split: Split) -> None:
    peer = Peer(split)
    peer.server(b"554 go away\r\n")
    assert peer.conn.state is ClientState.REFUSED
    with pytest.raises(LocalProtocolError):
        peer.conn.hello()
    peer.conn.quit()
    assert peer.sent() == b"QUIT\r\n"
    assert peer.server(b"221 bye\r\n") == [QuitReply(reply(221, None, "bye")), ConnectionClosed()]


def test_421_greeting_closes(split: Split) -> None:
    peer = Peer(split)
    assert peer.server(b"421 busy\r\n") == [
        Greeting(reply(421, None, "busy")),
        ConnectionClosed(),
    ]


# --------------------------------------------------------------------- replies


def test_multiline_replies_and_enhanced_codes(split: Split) -> None:
    peer = Peer(split)
    peer.ready("ENHANCEDSTATUSCODES")
    peer.conn.reset()
    peer.sent()
    events = peer.server(b"250-2.0.0 first\r\n250-2.0.0 second\r\n250-third\r\n250 2.0.0\r\n")
    assert events == [ResetReply(reply(250, "2.0.0", "first\nsecond\nthird\n"))]
    peer.conn.reset()
    # An enhanced code of another class is text; a bare LF ends a line.
    assert peer.server(b"250 5.0.0 odd\n") == [ResetReply(reply(250, None, "5.0.0 odd"))]
    peer.conn.reset()
    assert peer.server(b"250\r\n") == [ResetReply(reply(250, None, ""))]


def test_enhanced_codes_only_when_offered(split: Split) -> None:
    peer = Peer(split)
    peer.ready()
    peer.conn.reset()
    assert peer.server(b"250 2.0.0 OK\r\n") == [ResetReply(reply(250, None, "2.0.0 OK"))]


def test_control_characters_in_reply_text_are_replaced(split: Split) -> None:
    peer = Peer(split)
    peer.ready()
    peer.conn.reset()
    assert peer.server(b"250 a\rb\x00c\xff\r\n") == [
        ResetReply(reply(250, None, "a\ufffdb\ufffdc\ufffd"))
    ]


@pytest.mark.parametrize(
    "data",
    [
        b"25 short\r\n",
        b"abc text\r\n",
        b"150 one hundred\r\n",
        b"650 six hundred\r\n",
        b"250x no separator\r\n",
        b"250-first\r\n251 second\r\n",
        b"250-" + b"x" * 2100 + b"\r\n",
        b"250-line\r\n" * 201,
    ],
)
def test_malformed_replies_raise(split: Split, data: bytes) -> None:
    peer = Peer(split)
    peer.ready()
    peer.conn.reset()
    with pytest.raises(RemoteProtocolError):
        peer.server(data)


def test_unsolicited_replies(split: Split) -> None:
    peer = Peer(split)
    peer.ready()
    with pytest.raises(RemoteProtocolError):
        peer.server(b"250 nobody asked\r\n")
    peer = Peer(split)
    peer.ready()
    assert peer.server(b"421 4.4.2 idle too long\r\n") == [
        ServerClosing(reply(421, None, "4.4.2 idle too long")),
        ConnectionClosed(),
    ]
    peer.conn.receive_data(b"ignored")
    assert peer.conn.next_event() == ConnectionClosed()


def test_eof_closes_even_mid_reply(split: Split) -> None:
    peer = Peer(split)
    peer.ready()
    peer.conn.reset()
    peer.server(b"250-partial\r\n")
    peer.conn.receive_eof()
    assert peer.conn.next_event() == ConnectionClosed()
    with pytest.raises(LocalProtocolError):
        peer.conn.receive_data(b"more")


# ------------------------------------------------------------------- STARTTLS


def test_starttls_drops_plaintext_and_forgets_extensions(split: Split) -> None:
    peer = Peer(split)
    peer.ready("STARTTLS", "PIPELINING")
    with pytest.raises(LocalProtocolError):
        peer.conn.tls_established()
    peer.conn.starttls()
    assert peer.sent() == b"STARTTLS\r\n"
    # Injected after the 220, in the same packet: never read (RFC 3207 4.2).
    events = peer.server(b"220 2.0.0 go ahead\r\n250 injected\r\n")
    assert events == [StartTLSReply(reply(220, None, "2.0.0 go ahead"))]
    assert peer.conn.state is ClientState.TLS_HANDSHAKE
    peer.server(b"more plaintext\r\n")
    peer.conn.tls_established()
    assert peer.conn.tls_active
    assert peer.conn.extensions == {}
    assert peer.conn.state.name == "CONNECTED"
    with pytest.raises(LocalProtocolError):
        peer.conn.mail(envelope())
    peer.conn.hello()
    assert peer.sent() == b"EHLO client.test\r\n"
    peer.server(ehlo_reply("PIPELINING"))
    with pytest.raises(LocalProtocolError):
        peer.conn.starttls()


def test_starttls_refused_and_not_offered(split: Split) -> None:
    peer = Peer(split)
    peer.ready()
    with pytest.raises(LocalProtocolError):
        peer.conn.starttls()
    peer = Peer(split)
    peer.ready("STARTTLS")
    peer.conn.starttls()
    assert peer.server(b"454 4.7.0 TLS not available\r\n") == [
        StartTLSReply(reply(454, None, "4.7.0 TLS not available"))
    ]
    assert peer.conn.state is ClientState.READY


def test_eof_during_handshake_closes(split: Split) -> None:
    peer = Peer(split)
    peer.ready("STARTTLS")
    peer.conn.starttls()
    peer.server(b"220 go\r\n")
    assert peer.conn.next_event() is not ConnectionClosed()
    peer.conn.receive_eof()
    assert peer.conn.next_event() == ConnectionClosed()


# ------------------------------------------------------------------------ AUTH


def test_auth_plain(split: Split) -> None:
    peer = tls_peer(split, "AUTH PLAIN LOGIN")
    peer.conn.authenticate("plain", "alice", "s3cret")
    wire = base64.b64encode(b"\0alice\0s3cret")
    assert peer.sent() == b"AUTH PLAIN " + wire + b"\r\n"
    assert peer.server(b"235 2.7.0 OK\r\n") == [AuthReply(reply(235, None, "2.7.0 OK"))]
    assert peer.conn.authenticated
    with pytest.raises(LocalProtocolError):
        peer.conn.authenticate("PLAIN", "alice", "s3cret")
    transcript = peer.conn.take_transcript()
    assert ("C", "AUTH PLAIN ****") in transcript
    assert not any("s3cret" in line or wire.decode() in line for _, line in transcript)


def test_auth_login_answers_challenges(split: Split) -> None:
    peer = tls_peer(split, "AUTH LOGIN")
    peer.conn.authenticate("LOGIN", "alice", "s3cret")
    assert peer.sent() == b"AUTH LOGIN\r\n"
    assert peer.server(b"334 VXNlcm5hbWU6\r\n") == []
    assert peer.sent() == base64.b64encode(b"alice") + b"\r\n"
    assert peer.server(b"334 UGFzc3dvcmQ6\r\n") == []
    assert peer.sent() == base64.b64encode(b"s3cret") + b"\r\n"
    # A third challenge cannot be answered: cancel it (RFC 4954 4).
    assert peer.server(b"334 more?\r\n") == []
    assert peer.sent() == b"*\r\n"
    assert peer.server(b"501 cancelled\r\n") == [AuthReply(reply(501, None, "cancelled"))]
    assert not peer.conn.authenticated
    assert peer.conn.state is ClientState.READY
    assert [line for kind, line in peer.conn.take_transcript() if kind == "C"][-3:] == [
        "****",
        "****",
        "*",
    ]


def test_auth_refused_locally(split: Split) -> None:
    plain = Peer(split)
    plain.ready("AUTH PLAIN")
    with pytest.raises(LocalProtocolError, match="TLS"):
        plain.conn.authenticate("PLAIN", "alice", "pw")
    assert plain.sent() == b""
    peer = tls_peer(split, "AUTH PLAIN")
    for mechanism in ("LOGIN", "CRAM-MD5"):
        with pytest.raises(LocalProtocolError):
            peer.conn.authenticate(mechanism, "alice", "pw")
    peer = tls_peer(split, "AUTH CRAM-MD5")
    with pytest.raises(LocalProtocolError):
        peer.conn.authenticate("CRAM-MD5", "alice", "pw")
