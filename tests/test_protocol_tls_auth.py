"""STARTTLS (RFC 3207), AUTH's exchange (RFC 4954), and driving the engine wrongly."""

from __future__ import annotations

import base64

import pytest

from mailgate.protocol import (
    NEED_DATA,
    AuthCredentials,
    Command,
    ConnectionClosed,
    ConnectionSettings,
    DataStart,
    Ehlo,
    LocalProtocolError,
    MailFrom,
    Reply,
    ServerConnection,
    StartTLS,
    State,
)
from protocol_helpers import HOSTNAME, Dialogue, assert_feeding_invariant

EHLO = b"EHLO c.example\r\n"
TLS = ConnectionSettings(hostname=HOSTNAME, starttls=True, auth_mechanisms=("PLAIN", "LOGIN"))
AUTH = ConnectionSettings(
    hostname=HOSTNAME, auth_mechanisms=("PLAIN", "LOGIN"), auth_requires_tls=False
)


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def check(
    flights: list[bytes] | bytes, settings: ConnectionSettings | None = None, **kwargs: object
) -> Dialogue:
    return assert_feeding_invariant(flights, settings=settings, **kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------ STARTTLS


def test_starttls_resets_the_session() -> None:
    dialogue = check([EHLO + b"STARTTLS\r\n", b"MAIL FROM:<a@example.org>\r\n" + EHLO], TLS)
    assert dialogue.codes[1:] == [250, 220, 503, 250]
    conn = dialogue.conn
    assert conn.tls_active
    assert conn.extended
    after = dialogue.replies[-1]
    assert b"STARTTLS" not in after
    assert b"250-AUTH PLAIN LOGIN\r\n" in after
    assert [type(e) for e in dialogue.events] == [Ehlo, StartTLS, Ehlo]


def test_plaintext_pipelined_behind_starttls_is_discarded() -> None:
    injected = b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<b@example.com>\r\n"
    flights = [EHLO + b"STARTTLS\r\n" + injected, EHLO + b"MAIL FROM:<a@example.org>\r\n"]
    dialogue = check(flights, TLS)
    assert dialogue.codes[1:] == [250, 220, 250, 250]
    mails = [e for e in dialogue.events if isinstance(e, MailFrom)]
    assert mails == [MailFrom("a@example.org", {}, None, None, False)]


def test_bytes_during_the_handshake_are_ignored() -> None:
    conn = ServerConnection(TLS)
    conn.send(Reply(220, None, "hi"))
    conn.receive_data(EHLO + b"STARTTLS\r\n")
    assert isinstance(conn.next_event(), Ehlo)
    conn.send(conn.ehlo_reply("hi"))
    assert isinstance(conn.next_event(), StartTLS)
    conn.send(Reply(220, "2.0.0", "Go ahead"))
    conn.receive_data(b"\x16\x03\x01 client hello")
    assert conn.next_event() is NEED_DATA
    assert not conn.has_buffered_input
    conn.tls_established()
    assert conn.state is State.CONNECTED
    assert conn.next_event() is NEED_DATA


def test_refused_starttls_stays_in_plaintext() -> None:
    def refuse(event: object) -> Reply | None:
        return Reply(454, "4.7.0", "TLS not available") if isinstance(event, StartTLS) else None

    dialogue = check([EHLO + b"STARTTLS\r\nMAIL FROM:<a@example.org>\r\n"], TLS, policy=refuse)
    assert dialogue.codes[1:] == [250, 454, 250]
    assert not dialogue.conn.tls_active


@pytest.mark.parametrize(
    ("flight", "settings", "code", "text"),
    [
        (EHLO + b"STARTTLS now\r\n", TLS, 501, b"takes no parameters"),
        (b"STARTTLS\r\n", TLS, 503, b"Send EHLO first"),
        (b"HELO c\r\nSTARTTLS\r\n", TLS, 503, b"Send EHLO first"),
        (EHLO + b"MAIL FROM:<a@example.org>\r\nSTARTTLS\r\n", TLS, 503, b"Finish the"),
        (EHLO + b"STARTTLS\r\n", None, 502, b"not implemented"),
    ],
)
def test_starttls_refused(
    flight: bytes, settings: ConnectionSettings | None, code: int, text: bytes
) -> None:
    dialogue = check([flight], settings or ConnectionSettings(hostname=HOSTNAME))
    assert dialogue.codes[-1] == code
    assert text in dialogue.output


def test_starttls_twice() -> None:
    dialogue = check([EHLO + b"STARTTLS\r\n", EHLO + b"STARTTLS\r\n"], TLS)
    assert dialogue.codes[-1] == 503
    assert b"TLS already active" in dialogue.output


def test_tls_established_out_of_turn() -> None:
    conn = ServerConnection(TLS)
    with pytest.raises(LocalProtocolError):
        conn.tls_established()


# ---------------------------------------------------------------------- AUTH

PLAIN_OK = b64(b"\x00alice\x00secret")
PLAIN_BAD = b64(b"\x00alice\x00wrong")


def test_auth_plain_with_initial_response() -> None:
    dialogue = check([EHLO + b"AUTH PLAIN " + PLAIN_OK + b"\r\n"], AUTH)
    assert dialogue.codes[1:] == [250, 235]
    assert dialogue.events[-1] == AuthCredentials("PLAIN", "alice", "secret")
    assert dialogue.conn.authenticated
    assert dialogue.conn.state is State.READY


def test_auth_plain_with_a_challenge() -> None:
    dialogue = check([EHLO + b"auth plain\r\n", PLAIN_OK + b"\r\n"], AUTH)
    assert dialogue.replies[-2].endswith(b"334 \r\n")
    assert dialogue.codes[1:] == [250, 334, 235]
    assert dialogue.events[-1] == AuthCredentials("PLAIN", "alice", "secret")


def test_auth_login_in_steps() -> None:
    flights = [EHLO + b"AUTH LOGIN\r\n", b64(b"alice") + b"\r\n", b64(b"secret") + b"\r\n"]
    dialogue = check(flights, AUTH)
    assert dialogue.codes[1:] == [250, 334, 334, 235]
    assert b"334 VXNlcm5hbWU6\r\n" in dialogue.output
    assert b"334 UGFzc3dvcmQ6\r\n" in dialogue.output
    # The application sees one event, once the exchange is complete.
    assert dialogue.events[1:] == [AuthCredentials("LOGIN", "alice", "secret")]


def test_auth_login_with_the_username_as_initial_response() -> None:
    flights = [EHLO + b"AUTH LOGIN " + b64(b"alice") + b"\r\n", b64(b"secret") + b"\r\n"]
    dialogue = check(flights, AUTH)
    assert dialogue.codes[1:] == [250, 334, 235]
    assert dialogue.events[-1] == AuthCredentials("LOGIN", "alice", "secret")


def test_auth_failure_allows_another_try() -> None:
    flights = [EHLO + b"AUTH PLAIN " + PLAIN_BAD + b"\r\n", b"AUTH PLAIN " + PLAIN_OK + b"\r\n"]
    dialogue = check(flights, AUTH)
    assert dialogue.codes[1:] == [250, 535, 235]


def test_auth_empty_initial_response() -> None:
    dialogue = check([EHLO + b"AUTH PLAIN =\r\nNOOP\r\n"], AUTH)
    assert dialogue.codes[1:] == [250, 501, 250]  # PLAIN refuses an empty message
    assert b"501 5.5.2 Malformed authentication response\r\n" in dialogue.output
    assert not any(isinstance(e, AuthCredentials) for e in dialogue.events)
    assert dialogue.conn.state is State.READY


def test_auth_empty_response_line() -> None:
    # An empty LOGIN user name is the application's to refuse.
    flights = [EHLO + b"AUTH LOGIN\r\n", b"\r\n", b64(b"pw") + b"\r\n"]
    dialogue = check(flights, AUTH)
    assert dialogue.codes[1:] == [250, 334, 334, 535]
    assert dialogue.events[-1] == AuthCredentials("LOGIN", "", "pw")


@pytest.mark.parametrize(
    ("flights", "code", "text"),
    [
        ([EHLO + b"AUTH PLAIN " + b64(b"root\x00alice\x00secret") + b"\r\n"], 535, b"5.7.8"),
        ([EHLO + b"AUTH PLAIN " + b64(b"alice\x00secret") + b"\r\n"], 501, b"Malformed"),
        ([EHLO + b"AUTH PLAIN\r\n", b64(b"\xff\x00a\x00b") + b"\r\n"], 501, b"Malformed"),
        ([EHLO + b"AUTH LOGIN\r\n", b64(b"a\x00b") + b"\r\n"], 501, b"Malformed"),
    ],
)
def test_auth_responses_the_mechanism_refuses(flights: list[bytes], code: int, text: bytes) -> None:
    dialogue = check([*flights, b"NOOP\r\n"], AUTH)
    assert dialogue.codes[-2:] == [code, 250]
    assert text in dialogue.output
    assert not any(isinstance(e, AuthCredentials) for e in dialogue.events)
    assert dialogue.conn.state is State.READY
    assert not dialogue.conn.authenticated


def test_auth_credentials_hide_the_password() -> None:
    assert "secret" not in repr(AuthCredentials("PLAIN", "alice", "secret"))


@pytest.mark.parametrize("code", [454, 535])
def test_auth_refused_by_the_application_allows_another_try(code: int) -> None:
    def refuse_once(event: object) -> Reply | None:
        if isinstance(event, AuthCredentials) and event.username == "alice":
            return Reply(code, f"{code // 100}.7.0", "No")
        return None

    flights = [
        EHLO + b"AUTH PLAIN " + PLAIN_OK + b"\r\n",
        b"AUTH PLAIN " + b64(b"\x00bob\x00secret") + b"\r\n",
    ]
    dialogue = check(flights, AUTH, policy=refuse_once)
    assert dialogue.codes[1:] == [250, code, 235]
    assert dialogue.conn.errors == (code >= 500)


def test_auth_reply_421_closes() -> None:
    def bye(event: object) -> Reply | None:
        return Reply(421, "4.3.2", "Bye") if isinstance(event, AuthCredentials) else None

    dialogue = check([EHLO + b"AUTH PLAIN " + PLAIN_OK + b"\r\nNOOP\r\n"], AUTH, policy=bye)
    assert dialogue.codes[1:] == [250, 421]
    assert dialogue.conn.state is State.CLOSED


def test_auth_cancelled() -> None:
    dialogue = check([EHLO + b"AUTH LOGIN\r\n", b"*\r\n", b"NOOP\r\n"], AUTH)
    assert dialogue.codes[1:] == [250, 334, 501, 250]
    assert b"501 5.0.0 Authentication cancelled\r\n" in dialogue.output
    assert dialogue.conn.state is State.READY
    assert not dialogue.conn.authenticated


@pytest.mark.parametrize("line", [b"not base64!", b"YQ", b"=", b"\xff\xfe", b"YQ==\tYQ=="])
def test_auth_undecodable_response(line: bytes) -> None:
    dialogue = check([EHLO + b"AUTH LOGIN\r\n", line + b"\r\n", b"NOOP\r\n"], AUTH)
    assert dialogue.codes[1:] == [250, 334, 501, 250]
    assert b"501 5.5.2 Cannot decode response\r\n" in dialogue.output
    assert dialogue.conn.state is State.READY


@pytest.mark.parametrize("ending", [b"\n", b"\r"])
def test_auth_bare_line_ending_in_a_response_ends_the_exchange(ending: bytes) -> None:
    # RFC 5321 2.3.8: the response line runs on to the CRLF, so the NOOP
    # after the bare line ending is part of it, and is never run.
    dialogue = check([EHLO + b"AUTH LOGIN\r\n", b"YWxpY2U=" + ending + b"NOOP\r\nRSET\r\n"], AUTH)
    assert dialogue.codes[1:] == [250, 334, 500, 250]
    assert b"500 5.5.2 Bare " in dialogue.output
    assert dialogue.conn.state is State.READY
    assert not any(isinstance(e, AuthCredentials) for e in dialogue.events)


def test_auth_over_long_response_line() -> None:
    dialogue = check([EHLO + b"AUTH LOGIN\r\n", b"QUFB" * 3100 + b"\r\nNOOP\r\n"], AUTH)
    assert dialogue.codes[1:] == [250, 334, 500, 250]
    assert b"500 5.5.6 Authentication exchange line is too long\r\n" in dialogue.output


def test_auth_long_initial_response_is_read() -> None:
    response = b64(b"\x00alice\x00" + b"p" * 9000)
    dialogue = check([EHLO + b"AUTH PLAIN " + response + b"\r\n"], AUTH)
    assert dialogue.codes[-1] == 535


@pytest.mark.parametrize(
    ("flight", "code", "text"),
    [
        (EHLO + b"AUTH CRAM-MD5\r\n", 504, b"5.5.4 Unrecognized authentication type"),
        (EHLO + b"AUTH\r\n", 501, b"5.5.4 Syntax: AUTH"),
        (EHLO + b"AUTH PLAIN a b\r\n", 501, b"Syntax: AUTH"),
        (EHLO + b"AUTH PLAIN !!!!\r\n", 501, b"5.5.2 Cannot decode"),
        (EHLO + b"AUTH PLAIN *\r\n", 501, b"5.5.2 Cannot decode"),
        (b"AUTH PLAIN\r\n", 503, b"Send EHLO first"),
        (b"HELO c\r\nAUTH PLAIN\r\n", 503, b"Send EHLO first"),
        (EHLO + b"MAIL FROM:<a@example.org>\r\nAUTH PLAIN\r\n", 503, b"Not during a mail"),
    ],
)
def test_auth_refused(flight: bytes, code: int, text: bytes) -> None:
    dialogue = check([flight], AUTH)
    assert dialogue.codes[-1] == code
    assert text in dialogue.output


def test_auth_twice() -> None:
    dialogue = check([EHLO + b"AUTH PLAIN " + PLAIN_OK + b"\r\nAUTH PLAIN\r\n"], AUTH)
    assert dialogue.codes[-2:] == [235, 503]
    assert b"Already authenticated" in dialogue.output


def test_auth_not_configured() -> None:
    assert check([EHLO + b"AUTH PLAIN\r\n"]).codes[-1] == 502


def test_auth_before_tls_gets_538() -> None:
    dialogue = check([EHLO + b"AUTH PLAIN " + PLAIN_OK + b"\r\n"], TLS)
    assert dialogue.codes[-1] == 538
    assert b"538 5.7.11 Encryption required" in dialogue.output


def test_auth_after_tls() -> None:
    flights = [EHLO + b"STARTTLS\r\n", EHLO + b"AUTH PLAIN " + PLAIN_OK + b"\r\n"]
    dialogue = check(flights, TLS)
    assert dialogue.codes[-1] == 235


def test_mail_auth_parameter_when_auth_is_offered() -> None:
    mail = b"MAIL FROM:<a@example.org> AUTH=<>\r\n"
    dialogue = check([EHLO + mail], AUTH)
    assert dialogue.codes[1:] == [250, 250]
    assert dialogue.events[-1] == MailFrom("a@example.org", {"AUTH": "<>"})
    dialogue = check([EHLO + b"MAIL FROM:<a@example.org> AUTH\r\n"], AUTH)
    assert dialogue.codes[-1] == 501


def test_mail_line_with_auth_may_be_500_octets_longer() -> None:
    mail = b"MAIL FROM:<a@example.org> AUTH=" + b"x" * 900 + b"\r\n"
    assert check([EHLO + mail], AUTH).codes[-1] == 250
    assert check([EHLO + mail]).codes[-1] == 500


# ------------------------------------------------------- driving it wrongly


def started() -> ServerConnection:
    conn = ServerConnection()
    conn.send(Reply(220, None, "hi"))
    return conn


def next_command(conn: ServerConnection, data: bytes) -> Command:
    conn.receive_data(data)
    event = conn.next_event()
    assert isinstance(event, Command)
    return event


def test_greeting_must_be_220_554_or_421() -> None:
    with pytest.raises(LocalProtocolError, match="greeting"):
        ServerConnection().send(Reply(250, "2.0.0", "hi"))


def test_reply_without_a_command() -> None:
    conn = started()
    with pytest.raises(LocalProtocolError, match="no command"):
        conn.send(Reply(250, "2.0.0", "OK"))


def test_next_event_before_replying() -> None:
    conn = started()
    next_command(conn, EHLO)
    with pytest.raises(LocalProtocolError, match="reply to Ehlo first"):
        conn.next_event()


def test_250_to_data() -> None:
    conn = started()
    for line in (EHLO, b"MAIL FROM:<a@b.example>\r\n", b"RCPT TO:<c@d.example>\r\n"):
        next_command(conn, line)
        conn.send(Reply(250, "2.0.0", "OK"))
    assert isinstance(next_command(conn, b"DATA\r\n"), DataStart)
    with pytest.raises(LocalProtocolError, match="354"):
        conn.send(Reply(250, "2.0.0", "OK"))


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (EHLO, Reply(354, None, "go")),
        (b"STARTTLS\r\n", Reply(250, "2.0.0", "OK")),
    ],
)
def test_impossible_replies(line: bytes, reply: Reply) -> None:
    conn = ServerConnection(TLS)
    conn.send(Reply(220, None, "hi"))
    if line == b"STARTTLS\r\n":
        next_command(conn, EHLO)
        conn.send(conn.ehlo_reply("hi"))
    next_command(conn, line)
    with pytest.raises(LocalProtocolError):
        conn.send(reply)


@pytest.mark.parametrize("reply", [Reply(250, "2.0.0", "OK"), Reply(334, None, "")])
def test_auth_credentials_take_235_or_an_error(reply: Reply) -> None:
    conn = ServerConnection(AUTH)
    conn.send(Reply(220, None, "hi"))
    next_command(conn, EHLO)
    conn.send(conn.ehlo_reply("hi"))
    next_command(conn, b"AUTH PLAIN " + PLAIN_OK + b"\r\n")
    with pytest.raises(LocalProtocolError, match="AuthCredentials takes 235"):
        conn.send(reply)


def test_send_after_close() -> None:
    conn = started()
    next_command(conn, b"QUIT\r\n") if False else conn.receive_data(b"QUIT\r\n")
    assert conn.next_event() == ConnectionClosed()
    with pytest.raises(LocalProtocolError, match="closed"):
        conn.send(Reply(421, "4.3.2", "bye"))


def test_receive_data_after_eof() -> None:
    conn = started()
    conn.receive_eof()
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"NOOP\r\n")


def test_a_sasl_line_that_reads_like_bdat_is_only_a_bad_response() -> None:
    dialogue = check([EHLO + b"AUTH LOGIN\r\n", b"BDAT 3 LAST\nabc\r\nNOOP\r\n"], AUTH)
    assert dialogue.codes[1:] == [250, 334, 500, 250]
