"""Hypothesis properties of the client engine: chunking, dot-stuffing, arbitrary input."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from client_helpers import GREETING, Loopback, ehlo_reply
from mailgate.protocol import (
    NEED_DATA,
    AnyClientEvent,
    ClientConnection,
    ClientSettings,
    ClientState,
    ConnectionClosed,
    ConnectionSettings,
    ContentRequest,
    Envelope,
    Greeting,
    HelloReply,
    MessageReply,
    Recipient,
    RemoteProtocolError,
    Reply,
    StartTLSReply,
)
from mailgate.protocol._client_wire import ReplyReader
from protocol_helpers import HOSTNAME

FAST = settings(max_examples=80, deadline=None)
RECIPIENTS = ("b@example.com", "c@example.com", "d@example.com")
ENVELOPE = Envelope(sender="a@example.org", recipients=tuple(Recipient(r) for r in RECIPIENTS))
CONTENT = (b"Subject: hi\r\n", b"\r\n", b".dot\r\nbody")


class Driver:
    """Reacts to each event as a shell would: EHLO, one message, QUIT."""

    def __init__(self, *, tls: bool = False, **settings: bool) -> None:
        self.conn = ClientConnection(ClientSettings(hostname="client.test", **settings))
        self.tls = tls
        self.events: list[AnyClientEvent] = []
        self.out = bytearray()

    def feed(self, pieces: list[bytes]) -> None:
        for piece in pieces:
            self.conn.receive_data(piece)
            self.drain()
        self.conn.receive_eof()
        self.drain()

    def drain(self) -> None:
        conn = self.conn
        while self.events[-1:] != [ConnectionClosed()]:
            event = conn.next_event()
            if event is NEED_DATA:
                break
            self.events.append(event)
            if isinstance(event, ConnectionClosed):
                break
            self.react(event)
            self.out += conn.data_to_send()

    def react(self, event: AnyClientEvent) -> None:
        conn = self.conn
        if isinstance(event, Greeting) and conn.state is ClientState.CONNECTED:
            conn.hello()
        elif isinstance(event, HelloReply) and conn.state is ClientState.READY:
            if self.tls and "STARTTLS" in conn.extensions and not conn.tls_active:
                conn.starttls()
            else:
                conn.mail(ENVELOPE)
        elif isinstance(event, StartTLSReply) and conn.state is ClientState.TLS_HANDSHAKE:
            conn.tls_established()
            conn.hello()
        elif isinstance(event, ContentRequest):
            for chunk in CONTENT:
                conn.send_content(chunk)
            conn.end_content()
        elif isinstance(event, MessageReply) and conn.state is ClientState.READY:
            conn.quit()


def cut(data: bytes, sizes: list[int]) -> list[bytes]:
    pieces, i = [], 0
    for size in sizes:
        pieces.append(data[i : i + size])
        i += size
    return [*pieces, data[i:]]


rcpt_reply = st.sampled_from(
    [b"250 2.1.5 OK\r\n", b"450-4.2.0 busy\r\n450 4.2.0 try later\r\n", b"550 5.1.1 unknown\r\n"]
)


@st.composite
def server_stream(draw: st.DrawFn) -> tuple[bytes, bool]:
    """A server's whole side of one session: pipelined or not, DATA or BDAT."""
    keywords = draw(
        st.lists(st.sampled_from(["PIPELINING", "CHUNKING", "ENHANCEDSTATUSCODES", "8BITMIME"]))
    )
    pipelining = "PIPELINING" in keywords
    chunking = pipelining and "CHUNKING" in keywords
    rcpts = [draw(rcpt_reply) for _ in RECIPIENTS]
    accepted = any(r.startswith(b"250") for r in rcpts)
    stream = GREETING + ehlo_reply(*keywords) + b"250 2.1.0 OK\r\n" + b"".join(rcpts)
    if chunking and accepted:
        stream += b"250 2.0.0 chunk\r\n" * (len(CONTENT) - 1) + b"250 2.0.0 queued\r\n"
    elif not accepted:
        data_refused = b"554 5.5.1 no valid recipients\r\n" if pipelining and not chunking else b""
        stream += data_refused + b"250 2.0.0 reset\r\n"
    else:
        stream += b"354 go\r\n250 2.0.0 queued\r\n"
    return stream + b"221 2.0.0 bye\r\n", pipelining


@FAST
@given(server_stream(), st.lists(st.integers(0, 40), max_size=30))
def test_any_chunking_gives_the_same_events(stream: tuple[bytes, bool], sizes: list[int]) -> None:
    data, _ = stream
    whole = Driver()
    whole.feed([data])
    split = Driver()
    split.feed(cut(data, sizes))
    assert split.events == whole.events
    assert split.out == whole.out
    assert isinstance(whole.events[-1], ConnectionClosed)
    assert any(isinstance(e, MessageReply) for e in whole.events)


content_chunks = st.lists(
    st.one_of(
        st.binary(max_size=30),
        st.sampled_from([b".", b"\r", b"\n", b"\r\n", b"\r\n.", b".\r\n", b"..", b"\r\n.\r\n"]),
    ),
    max_size=20,
)


def normalised(content: bytes) -> bytes:
    out = re.sub(rb"\r\n|\r|\n", b"\r\n", content)
    return out if not out or out.endswith(b"\r\n") else out + b"\r\n"


@FAST
@given(content_chunks, st.booleans(), st.booleans())
def test_content_round_trips_through_the_server_engine(
    chunks: list[bytes], chunking: bool, pipelining: bool
) -> None:
    server = ConnectionSettings(hostname=HOSTNAME, max_text_line=100_000, max_message_size=0)
    client = ClientSettings(hostname="client.test", chunking=chunking, pipelining=pipelining)
    loop = Loopback.start(client=client, server=server)
    loop.client.hello()
    loop.run()
    loop.client.mail(ENVELOPE)
    assert isinstance(loop.run()[-1], ContentRequest)
    for chunk in chunks:
        loop.client.send_content(chunk)
        loop.run()
    loop.client.end_content()
    final = loop.run()[-1]
    assert isinstance(final, MessageReply)
    assert final.reply.code == 250
    (message,) = loop.app.messages
    assert message.content == normalised(b"".join(chunks))
    assert message.recipients == list(RECIPIENTS)


@FAST
@given(st.binary(max_size=300), st.sampled_from(["greeting", "ehlo", "mail", "starttls"]))
def test_arbitrary_server_bytes_raise_only_remote_protocol_error(noise: bytes, stage: str) -> None:
    prefix = {
        "greeting": b"",
        "ehlo": GREETING,
        "mail": GREETING + ehlo_reply("PIPELINING", "CHUNKING", "ENHANCEDSTATUSCODES"),
        "starttls": GREETING + ehlo_reply("STARTTLS", "PIPELINING"),
    }[stage]
    driver = Driver(tls=True)
    try:
        driver.feed([prefix, noise])
    except RemoteProtocolError:
        pass


@st.composite
def replies(draw: st.DrawFn) -> Reply:
    code = draw(st.integers(200, 599))
    detail = st.tuples(st.integers(0, 999), st.integers(0, 999))
    status = detail.map(lambda pair: f"{str(code)[0]}.{pair[0]}.{pair[1]}")
    # RFC 3463 2: enhanced codes have the classes 2, 4 and 5 only.
    enhanced = draw(st.none() | status) if code // 100 != 3 else None
    words = st.text(alphabet="abcXYZ.,;:()<>é", min_size=1, max_size=8)
    line = st.lists(words, max_size=4).map(" ".join)
    return Reply(code, enhanced, "\n".join(draw(st.lists(line, min_size=1, max_size=5))))


@FAST
@given(replies(), st.lists(st.integers(1, 9), max_size=20))
def test_rendered_replies_read_back_equal(reply: Reply, sizes: list[int]) -> None:
    reader = ReplyReader()
    buf, pos, found = bytearray(), 0, None
    for piece in filter(None, cut(reply.to_bytes(), sizes)):
        assert found is None
        buf += piece
        pos, found = reader.read(buf, pos, enhanced=True)
    assert found == reply
    assert pos == len(buf)
