"""The client engine's transactions, synchronously: every case fed whole, byte by byte
and at random splits.  PIPELINING and not, BDAT, 421 anywhere, local refusals."""

from __future__ import annotations

import pytest

from client_helpers import ALL, GREETING, OK, Peer, envelope, reply, tls_peer
from mailgate.protocol import (
    AuthReply,
    ClientConnection,
    ClientSettings,
    ClientState,
    ConnectionClosed,
    ContentRequest,
    Envelope,
    HelloReply,
    LocalProtocolError,
    MailReply,
    MessageRefused,
    MessageReply,
    QuitReply,
    RcptReply,
    Recipient,
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


# ----------------------------------------------------------------- transactions


def test_pipelined_transaction_in_one_write(split: Split) -> None:
    peer = Peer(split, chunking=False)
    peer.ready(*ALL, "CHUNKING")
    env = Envelope(
        sender="a@example.org",
        recipients=(
            Recipient("b@example.com", notify="SUCCESS,FAILURE", orcpt="rfc822;b@example.com"),
            Recipient("c@example.com"),
            Recipient("d@example.com"),
        ),
        size=500,
        ret="HDRS",
        envid="QQ314159",
    )
    peer.conn.mail(env)
    assert peer.sent() == (
        b"MAIL FROM:<a@example.org> SIZE=500 RET=HDRS ENVID=QQ314159\r\n"
        b"RCPT TO:<b@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@example.com\r\n"
        b"RCPT TO:<c@example.com>\r\n"
        b"RCPT TO:<d@example.com>\r\n"
        b"DATA\r\n"
    )
    events = peer.server(
        b"250 2.1.0 OK\r\n250 2.1.5 OK\r\n450 4.2.0 busy\r\n550 5.1.1 unknown\r\n354 go\r\n"
    )
    assert events == [
        MailReply(reply(250, "2.1.0", "OK")),
        RcptReply("b@example.com", reply(250, "2.1.5", "OK")),
        RcptReply("c@example.com", reply(450, "4.2.0", "busy")),
        RcptReply("d@example.com", reply(550, "5.1.1", "unknown")),
        ContentRequest(reply(354, None, "go")),
    ]
    peer.conn.send_content(b".leading dot\r\nline\r")
    peer.conn.send_content(b"\n.second\nbare")
    peer.conn.end_content()
    assert peer.sent() == b"..leading dot\r\nline\r\n..second\r\nbare\r\n.\r\n"
    assert peer.server(b"250 2.0.0 queued as 1\r\n") == [
        MessageReply(reply(250, "2.0.0", "queued as 1"))
    ]
    assert peer.conn.state is ClientState.READY


def test_without_pipelining_one_command_at_a_time(split: Split) -> None:
    peer = Peer(split)
    peer.ready("8BITMIME", "CHUNKING")
    peer.conn.mail(envelope("b@example.com", "c@example.com", eight_bit=True))
    assert peer.sent() == b"MAIL FROM:<a@example.org> BODY=8BITMIME\r\n"
    assert peer.server(b"250 OK\r\n") == [MailReply(reply(250, None, "OK"))]
    assert peer.sent() == b"RCPT TO:<b@example.com>\r\n"
    peer.server(b"550 no\r\n")
    assert peer.sent() == b"RCPT TO:<c@example.com>\r\n"
    peer.server(b"250 OK\r\n")
    assert peer.sent() == b"DATA\r\n"
    assert peer.server(b"354 go\r\n") == [ContentRequest(reply(354, None, "go"))]
    peer.conn.send_content(b"")
    peer.conn.end_content()
    assert peer.sent() == b".\r\n"
    assert peer.server(b"554 5.7.1 spam\r\n") == [MessageReply(reply(554, None, "5.7.1 spam"))]
    # After the dot the transaction is over: no RSET is needed.
    assert peer.sent() == b""


def test_no_recipient_accepted_without_pipelining(split: Split) -> None:
    peer = Peer(split)
    peer.ready()
    peer.conn.mail(envelope())
    peer.server(b"250 OK\r\n")
    peer.sent()
    events = peer.server(b"550 no\r\n")
    assert events[-1] == MessageReply(reply(554, "5.5.1", "No valid recipients"))
    assert peer.sent() == b"RSET\r\n"
    peer.conn.mail(envelope())
    assert peer.sent() == b"", "MAIL waits for the RSET's reply"
    assert peer.server(b"250 reset\r\n") == []
    assert peer.sent() == b"MAIL FROM:<a@example.org>\r\n"


@pytest.mark.parametrize("data_reply", [b"503 5.5.1 no valid recipients\r\n", b"354 go\r\n"])
def test_no_recipient_accepted_with_pipelining(split: Split, data_reply: bytes) -> None:
    peer = Peer(split)
    peer.ready("PIPELINING")
    peer.conn.mail(envelope())
    peer.sent()
    events = peer.server(b"250 OK\r\n550 no\r\n" + data_reply)
    if data_reply.startswith(b"354"):
        # RFC 2920 3.1: a 354 that comes anyway gets a lone dot.
        assert events == [
            MailReply(reply(250, None, "OK")),
            RcptReply("b@example.com", reply(550, None, "no")),
        ]
        assert peer.sent() == b".\r\n"
        events = peer.server(b"554 no valid recipients\r\n")
        assert peer.sent() == b""
    else:
        assert peer.sent() == b"RSET\r\n"
        assert peer.server(b"250 reset\r\n") == []
    assert events[-1] == MessageReply(reply(554, "5.5.1", "No valid recipients"))
    assert peer.conn.state is ClientState.READY


def test_mail_refused(split: Split) -> None:
    peer = Peer(split)
    peer.ready()
    peer.conn.mail(envelope("b@example.com", "c@example.com"))
    peer.sent()
    assert peer.server(b"451 4.3.0 later\r\n") == [
        MailReply(reply(451, None, "4.3.0 later")),
        MessageReply(reply(451, None, "4.3.0 later")),
    ]
    assert peer.sent() == b""
    pipelined = Peer(split)
    pipelined.ready("PIPELINING")
    pipelined.conn.mail(envelope())
    pipelined.sent()
    events = pipelined.server(b"550 bad sender\r\n503 need MAIL\r\n503 need RCPT\r\n")
    assert events[-1] == MessageReply(reply(550, None, "bad sender"))
    assert pipelined.sent() == b""


def test_data_refused_after_recipients_resets(split: Split) -> None:
    peer = Peer(split)
    peer.ready("PIPELINING")
    peer.conn.mail(envelope())
    peer.sent()
    events = peer.server(b"250 OK\r\n250 OK\r\n451 4.3.0 no DATA now\r\n")
    assert events[-1] == MessageReply(reply(451, None, "4.3.0 no DATA now"))
    assert peer.sent() == b"RSET\r\n"


def test_reset_and_second_message(split: Split) -> None:
    peer = Peer(split)
    peer.ready("PIPELINING")
    peer.conn.reset()
    assert peer.sent() == b"RSET\r\n"
    with pytest.raises(LocalProtocolError):
        peer.conn.mail(envelope())
    assert peer.server(OK) == [ResetReply(reply(250, None, "2.0.0 OK"))]
    for _ in range(2):
        peer.conn.mail(envelope())
        peer.sent()
        peer.server(b"250 OK\r\n250 OK\r\n354 go\r\n")
        peer.conn.send_content(b"hi\r\n")
        peer.conn.end_content()
        assert peer.sent() == b"hi\r\n.\r\n"
        assert peer.server(OK)[-1] == MessageReply(reply(250, None, "2.0.0 OK"))


# ------------------------------------------------------------------------ BDAT


def test_bdat_chunks(split: Split) -> None:
    peer = Peer(split)
    peer.ready("PIPELINING", "CHUNKING")
    peer.conn.mail(envelope())
    assert peer.sent() == b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n"
    assert peer.server(b"250 OK\r\n250 OK\r\n")[-1] == ContentRequest(None)
    peer.conn.send_content(b".one\r")
    assert peer.sent() == b"", "a chunk is held until the next shows it is not the last"
    peer.conn.send_content(b"\ntwo")
    assert peer.sent() == b"BDAT 4\r\n.one"
    peer.conn.end_content()
    assert peer.sent() == b"BDAT 7 LAST\r\n\r\ntwo\r\n"
    assert peer.server(b"250 4 octets\r\n") == []
    assert peer.server(b"250 queued\r\n") == [MessageReply(reply(250, None, "queued"))]


def test_bdat_empty_message(split: Split) -> None:
    peer = Peer(split)
    peer.ready("PIPELINING", "CHUNKING")
    peer.conn.mail(envelope())
    peer.server(b"250 OK\r\n250 OK\r\n")
    peer.sent()
    peer.conn.end_content()
    assert peer.sent() == b"BDAT 0 LAST\r\n"


def bdat_peer(split: Split) -> Peer:
    peer = Peer(split)
    peer.ready("PIPELINING", "CHUNKING")
    peer.conn.mail(envelope())
    peer.server(b"250 OK\r\n250 OK\r\n")
    peer.sent()
    return peer


def test_bdat_failed_chunk_stops_the_rest(split: Split) -> None:
    peer = bdat_peer(split)
    peer.conn.send_content(b"one\r\n")
    peer.conn.send_content(b"two\r\n")
    peer.conn.send_content(b"three\r\n")
    assert peer.sent() == b"BDAT 5\r\none\r\nBDAT 5\r\ntwo\r\n"
    assert peer.server(b"552 5.3.4 too big\r\n") == []
    peer.conn.send_content(b"four\r\n")
    peer.conn.end_content()
    assert peer.sent() == b"", "RFC 3030 2: no chunk after a failed one"
    assert peer.server(b"503 5.5.1 discarded\r\n") == [
        MessageReply(reply(552, None, "5.3.4 too big"))
    ]
    assert peer.sent() == b"RSET\r\n"


def test_bdat_failure_known_before_the_end(split: Split) -> None:
    peer = bdat_peer(split)
    peer.conn.send_content(b"one\r\n")
    peer.conn.send_content(b"two\r\n")
    peer.server(b"452 4.3.1 full\r\n")
    peer.conn.end_content()
    assert peer.conn.next_event() == MessageReply(reply(452, None, "4.3.1 full"))
    assert peer.sent() == b"BDAT 5\r\none\r\nRSET\r\n"


def test_bdat_failure_after_last_chunk_sent(split: Split) -> None:
    peer = bdat_peer(split)
    peer.conn.send_content(b"one\r\n")
    peer.conn.send_content(b"two\r\n")
    peer.conn.end_content()
    peer.sent()
    events = peer.server(b"451 4.3.0 broke\r\n503 5.5.1 no transaction\r\n")
    assert events == [MessageReply(reply(451, None, "4.3.0 broke"))]
    assert peer.sent() == b"RSET\r\n"
    peer = bdat_peer(split)
    peer.conn.end_content()
    assert peer.server(b"554 5.6.0 bad\r\n") == [MessageReply(reply(554, None, "5.6.0 bad"))]
    assert peer.sent().endswith(b"RSET\r\n")


# ------------------------------------------------------------------ 421 anywhere


@pytest.mark.parametrize(
    ("keywords", "act", "expected"),
    [
        ((), lambda c: c.reset(), [ResetReply]),
        (("STARTTLS",), lambda c: c.starttls(), [StartTLSReply]),
        (("PIPELINING",), lambda c: c.mail(envelope()), [MailReply, MessageReply]),
    ],
)
def test_421_ends_the_session(
    split: Split, keywords: tuple[str, ...], act: object, expected: list[type]
) -> None:
    peer = Peer(split)
    peer.ready(*keywords)
    act(peer.conn)  # type: ignore[operator]
    events = peer.server(b"421 4.3.2 shutting down\r\n")
    assert [type(e) for e in events] == [*expected, ConnectionClosed]
    with pytest.raises(LocalProtocolError):
        peer.conn.reset()


def test_421_to_ehlo_auth_rcpt_data_and_quit(split: Split) -> None:
    peer = Peer(split)
    peer.server(GREETING)
    peer.conn.hello()
    assert [type(e) for e in peer.server(b"421 bye\r\n")] == [HelloReply, ConnectionClosed]
    peer = tls_peer(split, "AUTH PLAIN")
    peer.conn.authenticate("PLAIN", "a", "b")
    assert [type(e) for e in peer.server(b"421 bye\r\n")] == [AuthReply, ConnectionClosed]
    peer = Peer(split)
    peer.ready("PIPELINING")
    peer.conn.mail(envelope())
    events = peer.server(b"250 OK\r\n421 4.4.5 overloaded\r\n")
    assert events[1:] == [
        RcptReply("b@example.com", reply(421, None, "4.4.5 overloaded")),
        MessageReply(reply(421, None, "4.4.5 overloaded")),
        ConnectionClosed(),
    ]
    peer = Peer(split)
    peer.ready("PIPELINING")
    peer.conn.mail(envelope())
    events = peer.server(b"250 OK\r\n250 OK\r\n421 bye\r\n")
    assert events[-2:] == [MessageReply(reply(421, None, "bye")), ConnectionClosed()]
    peer = Peer(split)
    peer.ready()
    peer.conn.quit()
    assert peer.server(b"421 bye\r\n") == [QuitReply(reply(421, None, "bye")), ConnectionClosed()]


def test_421_while_sending_content(split: Split) -> None:
    peer = Peer(split)
    peer.ready("PIPELINING")
    peer.conn.mail(envelope())
    peer.server(b"250 OK\r\n250 OK\r\n354 go\r\n")
    assert peer.server(b"421 4.4.2 timeout\r\n") == [
        ServerClosing(reply(421, None, "4.4.2 timeout")),
        MessageReply(reply(421, None, "4.4.2 timeout")),
        ConnectionClosed(),
    ]
    with pytest.raises(LocalProtocolError):
        peer.conn.send_content(b"x")


def test_421_after_auto_rset_and_bdat(split: Split) -> None:
    peer = Peer(split)
    peer.ready()
    peer.conn.mail(envelope())
    peer.server(b"250 OK\r\n550 no\r\n")
    assert peer.server(b"421 bye\r\n") == [ConnectionClosed()]
    peer = bdat_peer(split)
    peer.conn.send_content(b"a")
    peer.conn.send_content(b"b")
    assert peer.server(b"421 bye\r\n") == [
        MessageReply(reply(421, None, "bye")),
        ConnectionClosed(),
    ]


# ------------------------------------------------------------- local refusals


@pytest.mark.parametrize(
    ("keywords", "options", "code", "enhanced"),
    [
        (("SIZE 1000", "8BITMIME", "SMTPUTF8"), {"size": 1001}, 552, "5.3.4"),
        (("SIZE", "SMTPUTF8"), {"eight_bit": True}, 554, "5.6.3"),
        (("8BITMIME",), {"utf8_headers": True}, 553, "5.6.7"),
        (("8BITMIME", "SMTPUTF8"), {"sender": "jörg@example.org"}, None, None),
        (("8BITMIME",), {"sender": "jörg@example.org"}, 553, "5.6.7"),
        (("SIZE 0", "SIZE"), {"size": 10**9}, None, None),
    ],
)
def test_refused_before_sending(
    split: Split,
    keywords: tuple[str, ...],
    options: dict[str, object],
    code: int | None,
    enhanced: str | None,
) -> None:
    peer = Peer(split)
    peer.ready(*keywords)
    options = dict(options)  # shared by every feeding of the case
    env = Envelope(
        sender=str(options.pop("sender", "a@example.org")),
        recipients=(Recipient("b@example.com"),),
        **options,  # type: ignore[arg-type]
    )
    refusal = peer.conn.check(env)
    if code is None:
        assert refusal is None
        peer.conn.mail(env)
        assert peer.sent().startswith(b"MAIL FROM:<")
        return
    assert refusal is not None
    assert (refusal.code, refusal.enhanced) == (code, enhanced)
    with pytest.raises(MessageRefused) as raised:
        peer.conn.mail(env)
    assert raised.value.reply == refusal
    assert peer.sent() == b""
    assert peer.conn.state is ClientState.READY


def test_smtputf8_and_8bitmime_parameters(split: Split) -> None:
    peer = Peer(split)
    peer.ready("8BITMIME", "SMTPUTF8", "SIZE 100")
    env = Envelope(sender="jörg@example.org", recipients=(Recipient("b@example.com"),), size=5)
    peer.conn.mail(env)
    assert peer.sent() == "MAIL FROM:<jörg@example.org> SIZE=5 SMTPUTF8\r\n".encode()


def test_helo_session_sends_no_parameters(split: Split) -> None:
    peer = Peer(split)
    peer.server(GREETING)
    peer.conn.hello()
    peer.server(b"502 no\r\n")
    peer.server(b"250 mx\r\n")
    r = Recipient("b@example.com", notify="NEVER", orcpt="rfc822;b@example.com")
    peer.sent()
    peer.conn.mail(Envelope(sender="", recipients=(r,), size=10, ret="FULL", envid="x"))
    assert peer.sent() == b"MAIL FROM:<>\r\n"


# ------------------------------------------------------------- caller mistakes


def test_out_of_order_calls_raise(split: Split) -> None:
    conn = ClientConnection()
    for call in (conn.hello, conn.reset, conn.quit, conn.end_content, conn.tls_established):
        with pytest.raises(LocalProtocolError):
            call()
    with pytest.raises(LocalProtocolError):
        conn.send_content(b"x")
    peer = Peer(split)
    peer.ready("PIPELINING")
    with pytest.raises(LocalProtocolError):
        peer.conn.hello()
    with pytest.raises(LocalProtocolError):
        peer.conn.end_content()
    peer.conn.mail(envelope())
    for call in (peer.conn.reset, peer.conn.quit, peer.conn.end_content):
        with pytest.raises(LocalProtocolError):
            call()
    with pytest.raises(LocalProtocolError):
        peer.conn.mail(envelope())


@pytest.mark.parametrize(
    "make",
    [
        lambda: Recipient(""),
        lambda: Recipient("a b@example.com"),
        lambda: Recipient("a@example.com\r\nRSET"),
        lambda: Recipient("a@example.com", notify="NEVER X"),
        lambda: Recipient("a@example.com", orcpt=""),
        lambda: Recipient("a@example.com", orcpt="rfc822;a=b"),
        lambda: Envelope(sender="a>@b", recipients=(Recipient("c@d"),)),
        lambda: Envelope(sender="a@b", recipients=()),
        lambda: Envelope(sender="a@b", recipients=(Recipient("c@d"),), size=-1),
        lambda: Envelope(sender="a@b", recipients=(Recipient("c@d"),), envid="a b"),
        lambda: ClientSettings(hostname="bad name"),
    ],
)
def test_values_that_cannot_go_on_the_wire(make: object) -> None:
    with pytest.raises(ValueError):
        make()  # type: ignore[operator]


def test_transcript_is_off_by_default(split: Split) -> None:
    peer = Peer(split)
    peer.ready()
    assert peer.conn.take_transcript() == []
