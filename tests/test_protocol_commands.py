"""The command dialogue: verbs, sequence, replies, limits.  Every case is fed
whole, byte by byte and at random splits (``assert_feeding_invariant``)."""

from __future__ import annotations

import pytest

from mailgate.protocol import (
    NEED_DATA,
    ConnectionClosed,
    ConnectionSettings,
    DataStart,
    Ehlo,
    Expn,
    Helo,
    MailFrom,
    RcptTo,
    Reply,
    Rset,
    ServerConnection,
    State,
    Vrfy,
)
from protocol_helpers import HOSTNAME, Dialogue, assert_feeding_invariant

EHLO = b"EHLO client.example\r\n"
HELO = b"HELO client.example\r\n"
MAIL = b"MAIL FROM:<a@example.org>\r\n"
RCPT = b"RCPT TO:<b@example.com>\r\n"


def check(
    flights: list[bytes] | bytes, settings: ConnectionSettings | None = None, **kwargs: object
) -> Dialogue:
    return assert_feeding_invariant(flights, settings=settings, **kwargs)  # type: ignore[arg-type]


def codes(flights: list[bytes] | bytes, settings: ConnectionSettings | None = None) -> list[int]:
    """The reply codes after the greeting."""
    return check(flights, settings).codes[1:]


# ------------------------------------------------------------------- basics


def test_greeting_is_sent_first() -> None:
    dialogue = check([])
    assert dialogue.output == b"220 mx.test ESMTP mailgate ready\r\n"
    assert dialogue.conn.state is State.CONNECTED


@pytest.mark.parametrize("verb", [b"ehlo", b"EhLo", b"EHLO"])
def test_verbs_are_case_insensitive(verb: bytes) -> None:
    dialogue = check(
        [verb + b" c.example\r\nmail from:<a@b.example>\r\nrCpT tO:<c@d.example>\r\nnoop\r\n"]
    )
    assert dialogue.codes[1:] == [250, 250, 250, 250]
    assert isinstance(dialogue.events[0], Ehlo)


def test_trailing_blanks_are_tolerated() -> None:
    assert codes([b"EHLO c.example  \r\nMAIL FROM:<a@b.example> \t\r\nDATA \r\n"]) == [
        250,
        250,
        503,
    ]


def test_helo_gets_a_one_line_reply_and_no_extensions() -> None:
    dialogue = check([HELO])
    assert dialogue.replies[1] == b"250 mx.test\r\n"
    assert dialogue.events == [Helo("client.example")]
    assert not dialogue.conn.extended
    assert dialogue.conn.helo_name == "client.example"


def test_ehlo_lists_the_extensions() -> None:
    dialogue = check([EHLO])
    assert dialogue.replies[1] == (
        b"250-mx.test Hello client.example\r\n"
        b"250-SIZE 26214400\r\n"
        b"250-8BITMIME\r\n"
        b"250-PIPELINING\r\n"
        b"250-CHUNKING\r\n"
        b"250-ENHANCEDSTATUSCODES\r\n"
        b"250-DSN\r\n"
        b"250-SMTPUTF8\r\n"
        b"250 HELP\r\n"
    )
    assert dialogue.conn.extended


def test_ehlo_without_size_limit_and_without_smtputf8() -> None:
    settings = ConnectionSettings(hostname=HOSTNAME, max_message_size=0, smtputf8=False)
    lines = check([EHLO], settings).reply_lines()
    assert b"250-SIZE" in lines
    assert not any(b"SMTPUTF8" in line for line in lines)


def test_ehlo_offers_starttls_and_auth_only_when_configured() -> None:
    plain = check([EHLO]).output
    assert b"STARTTLS" not in plain
    assert b"AUTH" not in plain
    settings = ConnectionSettings(hostname=HOSTNAME, starttls=True, auth_mechanisms=("PLAIN",))
    before_tls = check([EHLO], settings).output
    assert b"250-STARTTLS\r\n" in before_tls
    assert b"AUTH" not in before_tls  # auth_requires_tls
    relaxed = ConnectionSettings(
        hostname=HOSTNAME, auth_mechanisms=("PLAIN", "LOGIN"), auth_requires_tls=False
    )
    assert b"250-AUTH PLAIN LOGIN\r\n" in check([EHLO], relaxed).output
    implicit = ConnectionSettings(
        hostname=HOSTNAME, starttls=True, tls_active=True, auth_mechanisms=("PLAIN",)
    )
    after = check([EHLO], implicit).output
    assert b"STARTTLS" not in after
    assert b"250-AUTH PLAIN\r\n" in after


def test_hello_needs_a_name() -> None:
    assert codes([b"HELO\r\nEHLO \r\n"]) == [501, 501]


def test_ehlo_resets_a_transaction() -> None:
    dialogue = check([EHLO + MAIL + RCPT + EHLO + b"DATA\r\n" + MAIL])
    assert dialogue.codes[1:] == [250, 250, 250, 250, 503, 250]
    assert dialogue.conn.recipients == 0


def test_unknown_and_unimplemented_commands() -> None:
    assert codes([b"FOO\r\nTURN\r\nETRN x\r\n\r\n \r\nNOOP\r\n"]) == [500, 502, 502, 500, 500, 250]


def test_non_ascii_verbs_are_unknown() -> None:
    # Dotless i and long s upper-case to "I" and "S" in Python.
    dialogue = check(["qu\u0131t\r\n\u017ftarttls\r\nNOOP\r\n".encode()])
    assert dialogue.codes[1:] == [500, 500, 250]
    assert dialogue.conn.state is State.CONNECTED


def test_help_noop_rset_vrfy_expn_before_hello() -> None:
    dialogue = check([b"HELP\r\nNOOP x y\r\nRSET\r\nVRFY bob\r\nEXPN list\r\n"])
    assert dialogue.codes[1:] == [214, 250, 250, 252, 550]
    assert dialogue.events == [Rset(), Vrfy("bob"), Expn("list")]
    assert dialogue.conn.state is State.CONNECTED


def test_vrfy_and_expn_need_an_argument() -> None:
    assert codes([b"VRFY\r\nEXPN  \r\n"]) == [501, 501]


def test_rset_anywhere_in_a_transaction() -> None:
    dialogue = check(
        [EHLO + MAIL + b"RSET\r\n" + MAIL + RCPT + b"RSET\r\nRCPT TO:<c@d.example>\r\n"]
    )
    assert dialogue.codes[1:] == [250, 250, 250, 250, 250, 250, 503]
    assert dialogue.conn.state is State.READY


@pytest.mark.parametrize("verb", [b"RSET", b"DATA", b"QUIT"])
def test_commands_without_parameters(verb: bytes) -> None:
    dialogue = check([EHLO + MAIL + RCPT + verb + b" x\r\n"])
    assert dialogue.codes[-1] == 501
    assert dialogue.conn.state is State.RCPT


def test_quit_closes() -> None:
    dialogue = check([EHLO + b"QUIT\r\nNOOP\r\n"])
    assert dialogue.codes[1:] == [250, 221]
    assert dialogue.output.endswith(b"221 2.0.0 mx.test closing connection\r\n")
    assert dialogue.events[-1] == ConnectionClosed()
    assert dialogue.conn.state is State.CLOSED


def test_quit_in_a_transaction_just_closes() -> None:
    dialogue = check([EHLO + MAIL + RCPT + b"QUIT\r\n"])
    assert dialogue.events[-1] == ConnectionClosed()
    assert dialogue.app.messages == []


def test_eof_closes() -> None:
    dialogue = check([EHLO + b"NOOP"], eof=True)
    assert dialogue.codes[1:] == [250]
    assert dialogue.events[-1] == ConnectionClosed()


def test_eof_before_the_greeting_is_answered() -> None:
    conn = ServerConnection()
    conn.receive_data(b"EHLO early\r\n")
    conn.receive_eof()
    assert conn.next_event() == ConnectionClosed()


# ------------------------------------------------------------- bad sequence


@pytest.mark.parametrize(
    ("dialogue", "expected"),
    [
        (MAIL, [503]),  # MAIL before HELO
        (RCPT, [503]),
        (b"DATA\r\n", [503]),
        (EHLO + RCPT, [250, 503]),  # RCPT before MAIL
        (EHLO + b"DATA\r\n", [250, 503]),  # DATA before MAIL
        (EHLO + MAIL + b"DATA\r\n", [250, 250, 503]),  # DATA before RCPT
        (EHLO + MAIL + MAIL, [250, 250, 503]),  # nested MAIL
        (EHLO + MAIL + RCPT + MAIL, [250, 250, 250, 503]),
    ],
)
def test_bad_sequence(dialogue: bytes, expected: list[int]) -> None:
    assert codes([dialogue]) == expected


def test_a_refused_command_leaves_the_state() -> None:
    def refuse_mail(event: object) -> Reply | None:
        return Reply(550, "5.7.1", "No") if isinstance(event, MailFrom) else None

    dialogue = check([EHLO + MAIL + RCPT], policy=refuse_mail)
    assert dialogue.codes[1:] == [250, 550, 503]
    assert dialogue.conn.state is State.READY


def test_a_refused_recipient_leaves_data_out_of_sequence() -> None:
    def refuse_rcpt(event: object) -> Reply | None:
        return Reply(550, "5.1.1", "No such user") if isinstance(event, RcptTo) else None

    dialogue = check([EHLO + MAIL + RCPT + b"DATA\r\n"], policy=refuse_rcpt)
    assert dialogue.codes[1:] == [250, 250, 550, 503]
    assert DataStart() not in dialogue.events


def test_a_refused_ehlo_leaves_the_session_unidentified() -> None:
    def refuse(event: object) -> Reply | None:
        return Reply(550, "5.7.1", "Go away") if isinstance(event, Ehlo) else None

    dialogue = check([EHLO + MAIL], policy=refuse)
    assert dialogue.codes[1:] == [550, 503]


# -------------------------------------------------------------- MAIL / RCPT


def mail_event(line: bytes, settings: ConnectionSettings | None = None) -> MailFrom | int:
    dialogue = check([EHLO + line + b"\r\n"], settings)
    last = dialogue.events[-1]
    return last if isinstance(last, MailFrom) else dialogue.codes[-1]


def rcpt_event(
    line: bytes, mail: bytes = MAIL, settings: ConnectionSettings | None = None
) -> RcptTo | int:
    dialogue = check([EHLO + mail + line + b"\r\n"], settings)
    last = dialogue.events[-1]
    return last if isinstance(last, RcptTo) else dialogue.codes[-1]


@pytest.mark.parametrize(
    ("line", "address"),
    [
        (b"MAIL FROM:<a@example.org>", "a@example.org"),
        (b"MAIL FROM:a@example.org", "a@example.org"),
        (b"mail from: <a@example.org>", "a@example.org"),
        (b"MAIL FROM:<>", ""),
        (b'MAIL FROM:<"john smith"@example.org>', '"john smith"@example.org'),
        (b'MAIL FROM:<"a>b"@example.org>', '"a>b"@example.org'),
        (b'MAIL FROM:<"a\\"b"@example.org>', '"a\\"b"@example.org'),
        (b'MAIL FROM:<"">@example.org>', None),
        (b"MAIL FROM:<Mixed.Case@Example.ORG>", "Mixed.Case@Example.ORG"),
        (b"MAIL FROM:<a@[192.0.2.1]>", "a@[192.0.2.1]"),
        (b"MAIL FROM:<a@[IPv6:2001:db8::1]>", "a@[IPv6:2001:db8::1]"),
        (b"MAIL FROM:<a@[ipv6:::ffff:192.0.2.1]>", "a@[ipv6:::ffff:192.0.2.1]"),
        (b"MAIL FROM:<a@[IPv6:1:2:3:4:5:6:7:8]>", "a@[IPv6:1:2:3:4:5:6:7:8]"),
        (b"MAIL FROM:<a@[IPv6:1:2:3:4:5:6:192.0.2.1]>", "a@[IPv6:1:2:3:4:5:6:192.0.2.1]"),
        (b"MAIL FROM:<@relay.example,@other.example:a@example.org>", "a@example.org"),
        (b"MAIL FROM:<@relay.example:a@example.org>", "a@example.org"),
    ],
)
def test_mail_paths(line: bytes, address: str | None) -> None:
    event = mail_event(line)
    if address is None:
        assert event == 501
    else:
        assert isinstance(event, MailFrom)
        assert event.address == address


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"MAIL", 501),
        (b"MAIL TO:<a@example.org>", 501),
        (b"MAIL FROM:", 501),
        (b"MAIL FROM:<", 501),
        (b"MAIL FROM:<a@example.org", 501),
        (b"MAIL FROM:<a@example.org>SIZE=10", 501),
        (b"MAIL FROM:<a@example.org>>", 501),
        (b"MAIL FROM:<a b@example.org>", 501),
        (b"MAIL FROM:<a@>", 501),
        (b"MAIL FROM:<@example.org>", 501),
        (b"MAIL FROM:<a@-bad.example>", 501),
        (b"MAIL FROM:<a@bad-.example>", 501),
        (b"MAIL FROM:<a..b@example.org>", 501),
        (b"MAIL FROM:<.a@example.org>", 501),
        (b'MAIL FROM:<"unterminated@example.org>', 501),
        (b"MAIL FROM:<a@[192.0.2.256]>", 501),
        (b"MAIL FROM:<a@[192.0.2]>", 501),
        (b"MAIL FROM:<a@[IPv6:2001:db8:::1]>", 501),
        (b"MAIL FROM:<a@[IPv6:2001:db8::1::2]>", 501),
        (b"MAIL FROM:<a@[IPv6:zz::1]>", 501),
        (b"MAIL FROM:<a@[IPv6:1:2:3:4:5:6:7]>", 501),
        (b"MAIL FROM:<a@[IPv6:1:2:3:4:5:6:7:8:9]>", 501),
        (b"MAIL FROM:<a@[IPv6:1:2:3:4:5:6:7::]>", 501),
        (b"MAIL FROM:<a@[IPv6:12345::1]>", 501),
        (b"MAIL FROM:<a@[IPv6:::1.2.3]>", 501),
        (b"MAIL FROM:<a@[IPv6:1.2.3.4::]>", 501),
        (b"MAIL FROM:<a@[IPv6:1:2:3:4:5:1.2.3.4]>", 501),
        (b"MAIL FROM:<a@[]>", 501),
        (b"MAIL FROM:<a@[x-tag:content]>", 501),  # no tag but IPv6 is registered
        (b"MAIL FROM:<a@[2001:db8::1]>", 501),
        (b"MAIL FROM:<@relay:a@example.org>,", 501),
        (b"MAIL FROM:<Postmaster>", 501),
        (b"MAIL FROM:<" + b"l" * 65 + b"@example.org>", 501),
        (b"MAIL FROM:<a@" + b"d." * 127 + b"org>", 501),
        (b"MAIL FROM:<a@example.org> BODY", 501),
        (b"MAIL FROM:<a@example.org> BODY=BINARYMIME", 501),
        (b"MAIL FROM:<a@example.org> SIZE", 501),
        (b"MAIL FROM:<a@example.org> SIZE=", 501),
        (b"MAIL FROM:<a@example.org> SIZE=1k", 501),
        (b"MAIL FROM:<a@example.org> SIZE=\xd9\xa3", 501),  # ARABIC-INDIC DIGIT THREE
        (b"MAIL FROM:<a@example.org> SIZE=" + b"1" * 21, 501),
        (b"MAIL FROM:<a@example.org> SIZE=1 SIZE=2", 501),
        (b"MAIL FROM:<a@example.org> SIZE=1 size=2", 501),
        (b"MAIL FROM:<a@example.org> -X=1", 501),
        (b"MAIL FROM:<a@example.org> X=a=b", 501),
        (b"MAIL FROM:<a@example.org> SMTPUTF8=yes", 501),
        (b"MAIL FROM:<a@example.org> AUTH=<>", 555),  # AUTH not offered
        (b"MAIL FROM:<a@example.org> RET=FULL RET=HDRS", 501),
        (b"MAIL FROM:<a@example.org> NOTIFY=NEVER", 555),  # a RCPT parameter
        (b"MAIL FROM:<a@example.org> X-UNKNOWN", 555),
        (b"MAIL FROM:<a@example.org> SIZE=26214401", 552),
        ("MAIL FROM:<jö@example.org>".encode(), 550),
    ],
)
def test_mail_refused(line: bytes, code: int) -> None:
    assert mail_event(line) == code


def test_mail_enhanced_codes() -> None:
    output = check([EHLO + b"MAIL FROM:<a b@c>\r\nMAIL FROM:<a@example.org> SIZE=99999999999\r\n"])
    assert b"501 5.1.7 Bad address syntax\r\n" in output.output
    assert b"552 5.3.4 Message size exceeds the fixed maximum\r\n" in output.output
    utf8 = check([EHLO + "MAIL FROM:<jö@example.org>\r\n".encode()]).output
    assert utf8.endswith(b"550 5.6.7 Non-ASCII address needs SMTPUTF8\r\n")


def test_mail_parameters() -> None:
    event = mail_event(b"MAIL FROM:<a@example.org> size=1000 body=8bitmime SMTPUTF8")
    assert isinstance(event, MailFrom)
    assert (event.size, event.body, event.smtputf8) == (1000, "8BITMIME", True)
    assert event.params == {"SIZE": "1000", "BODY": "8bitmime", "SMTPUTF8": None}
    assert isinstance(mail_event(b"MAIL FROM:<a@example.org> BODY=7BIT"), MailFrom)


def test_size_without_limit() -> None:
    settings = ConnectionSettings(hostname=HOSTNAME, max_message_size=0)
    event = mail_event(b"MAIL FROM:<a@example.org> SIZE=" + b"9" * 20, settings)
    assert isinstance(event, MailFrom)


def test_parameters_after_helo_get_555() -> None:
    dialogue = check([HELO + b"MAIL FROM:<a@example.org> SIZE=10\r\n" + MAIL])
    assert dialogue.codes[1:] == [250, 555, 250]
    dialogue = check([HELO + MAIL + b"RCPT TO:<b@example.com> NOTIFY=NEVER\r\n"])
    assert dialogue.codes[-1] == 555


def test_smtputf8_parameter_when_not_offered() -> None:
    settings = ConnectionSettings(hostname=HOSTNAME, smtputf8=False)
    assert mail_event(b"MAIL FROM:<a@example.org> SMTPUTF8", settings) == 555


def test_utf8_addresses_need_smtputf8() -> None:
    utf8_mail = "MAIL FROM:<jö@exämple.org> SMTPUTF8\r\n".encode()
    event = mail_event(utf8_mail[:-2])
    assert isinstance(event, MailFrom)
    assert event.address == "jö@exämple.org"
    utf8_rcpt = "RCPT TO:<ü@例え.jp>".encode()
    accepted = rcpt_event(utf8_rcpt, mail=utf8_mail)
    assert isinstance(accepted, RcptTo)
    assert accepted.address == "ü@例え.jp"
    assert rcpt_event(utf8_rcpt) == 553
    refused = check([EHLO + MAIL + utf8_rcpt + b"\r\n"]).output
    assert refused.endswith(b"553 5.6.7 Non-ASCII address needs SMTPUTF8\r\n")


def test_smtputf8_is_per_transaction() -> None:
    utf8_mail = "MAIL FROM:<jö@example.org> SMTPUTF8\r\n".encode()
    rcpt = "RCPT TO:<ü@example.com>\r\n".encode()
    dialogue = check([EHLO + utf8_mail + rcpt + b"RSET\r\n" + MAIL + rcpt])
    assert dialogue.codes[1:] == [250, 250, 250, 250, 250, 553]


@pytest.mark.parametrize(
    ("line", "address"),
    [
        (b"RCPT TO:<b@example.com>", "b@example.com"),
        (b"RCPT TO:b@example.com", "b@example.com"),
        (b"rcpt to:<postmaster>", "postmaster"),
        (b"RCPT TO:<PostMaster>", "PostMaster"),
        (b"RCPT TO:<postmaster@example.com>", "postmaster@example.com"),
        (b"RCPT TO:<@hop1,@hop2:b@example.com>", "b@example.com"),
        (b'RCPT TO:<"with space"@[IPv6:::1]>', '"with space"@[IPv6:::1]'),
    ],
)
def test_rcpt_paths(line: bytes, address: str) -> None:
    event = rcpt_event(line)
    assert isinstance(event, RcptTo)
    assert event.address == address
    assert event.params == {}


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"RCPT", 501),
        (b"RCPT FROM:<b@example.com>", 501),
        (b"RCPT TO:", 501),
        (b"RCPT TO:<>", 501),
        (b"RCPT TO:<postmaster", 501),
        (b"RCPT TO:<b@example.com> X-UNKNOWN", 555),
        (b"RCPT TO:<b@example.com> RET=FULL", 555),  # a MAIL parameter
        (b"RCPT TO:<b@example.com> NOTIFY=NEVER notify=never", 501),
        (b"RCPT TO:<b@example.com> =x", 501),
    ],
)
def test_rcpt_refused(line: bytes, code: int) -> None:
    assert rcpt_event(line) == code


def test_too_many_recipients() -> None:
    settings = ConnectionSettings(hostname=HOSTNAME, max_recipients=2)
    dialogue = check([EHLO + MAIL + RCPT + RCPT + RCPT + b"DATA\r\n"], settings)
    assert dialogue.codes[1:] == [250, 250, 250, 250, 452, 354]
    assert b"452 4.5.3 Too many recipients\r\n" in dialogue.output
    assert dialogue.conn.recipients == 2


# --------------------------------------------------------------- line limits


def test_command_line_limit() -> None:
    ok = b"VRFY " + b"x" * (512 - 7) + b"\r\n"
    too_long = b"VRFY " + b"x" * (512 - 6) + b"\r\n"
    assert len(ok) == 512
    assert codes([ok + too_long + b"NOOP\r\n"]) == [252, 500, 250]


def test_mail_line_may_be_136_octets_longer() -> None:
    # RFC 1870 3 (SIZE) adds 26 octets, RFC 3461 4 (RET and ENVID) 110.
    mail = b"MAIL FROM:<a@example.org> SIZE=1 X=" + b"y" * 200
    padding = 512 + 26 + 110 - len(mail) - 2 - len(b" Z=")
    ok = mail + b" Z=" + b"z" * padding + b"\r\n"
    assert len(ok) == 648
    dialogue = check([EHLO + ok + b"RSET\r\n" + ok[:-2] + b"z\r\n"])
    assert dialogue.codes[1:] == [250, 555, 250, 500]  # X= is unknown, but the line was read


@pytest.mark.parametrize("length", [700, 5000, 70000])
def test_over_long_line_is_refused_without_running_any_of_it(length: int) -> None:
    line = b"QUIT " + b"x" * length + b"\r\nQUIT\r\n"
    dialogue = check([EHLO + b"MAIL FROM:<a@example.org>" + b" " * length + b"\r\n" + line])
    assert dialogue.codes[1:] == [250, 500, 500, 221]
    assert b"500 5.5.2 Line too long\r\n" in dialogue.output
    assert not any(isinstance(event, MailFrom) for event in dialogue.events)


def test_over_long_line_in_separate_packets() -> None:
    dialogue = check([EHLO, b"NOOP " + b"x" * 400, b"y" * 400, b"z" * 400 + b"\r\n", b"NOOP\r\n"])
    assert dialogue.codes[1:] == [250, 500, 250]


def test_over_long_line_without_end_then_eof() -> None:
    # Refused as soon as it is surely too long, before its end comes.
    dialogue = check([EHLO + b"x" * 2000], eof=True)
    assert dialogue.codes[1:] == [250, 500]
    assert dialogue.events[-1] == ConnectionClosed()


def test_bare_line_endings_in_commands() -> None:
    # RFC 5321 2.3.8: only CRLF ends a line, so all of this up to the CRLF is
    # one malformed line: one reply, and none of the QUITs in it runs.
    dialogue = check([EHLO + b"NOOP\nQUIT\n\nNOOP\rQUIT\r\nRSET\r\n"])
    assert dialogue.codes[1:] == [250, 500, 250]
    assert b"500 5.5.2 Bare LF received; end lines with CRLF (RFC 5321 2.3.8)\r\n" in (
        dialogue.output
    )
    assert dialogue.conn.state is State.READY


def test_nul_and_invalid_utf8_in_commands() -> None:
    assert codes([b"NOOP\x00\r\nNOOP \xff\xfe\r\nNOOP\r\n"]) == [500, 500, 250]


# ---------------------------------------------------------------- pipelining


def test_a_pipelined_group_gives_every_event_in_order_and_replies_together() -> None:
    group = EHLO + MAIL + RCPT + b"RCPT TO:<c@example.com>\r\nNOOP\r\nDATA\r\n"
    dialogue = check([group])
    assert [type(event) for event in dialogue.events] == [Ehlo, MailFrom, RcptTo, RcptTo, DataStart]
    assert dialogue.codes == [220, 250, 250, 250, 250, 250, 354]
    assert len(dialogue.replies) == 2  # all of them in one write


def test_has_buffered_input_while_a_group_is_read() -> None:
    conn = ServerConnection()
    conn.send(Reply(220, None, "hi"))
    conn.receive_data(EHLO + b"NOOP\r\n")
    event = conn.next_event()
    assert isinstance(event, Ehlo)
    assert conn.has_buffered_input
    conn.send(conn.ehlo_reply("hi"))
    assert conn.next_event() is NEED_DATA
    assert not conn.has_buffered_input


# --------------------------------------------------------- the error budget


def test_error_budget_ends_with_421() -> None:
    settings = ConnectionSettings(hostname=HOSTNAME, error_budget=3)
    dialogue = check([b"FOO\r\nBAR\r\nNOOP\r\nBAZ\r\nNOOP\r\n"], settings)
    assert dialogue.codes[1:] == [500, 500, 250, 500, 421]
    assert dialogue.output.endswith(b"421 4.7.0 mx.test Too many errors, closing connection\r\n")
    assert dialogue.events[-1] == ConnectionClosed()


def test_application_refusals_count_against_the_budget() -> None:
    settings = ConnectionSettings(hostname=HOSTNAME, error_budget=2)

    def refuse(event: object) -> Reply | None:
        return Reply(550, "5.1.1", "No") if isinstance(event, RcptTo) else None

    dialogue = check([EHLO + MAIL + RCPT + RCPT + RCPT], settings, policy=refuse)
    assert dialogue.codes[1:] == [250, 250, 550, 550, 421]


# ------------------------------------------------------------- 554 greeting


def test_554_greeting_allows_only_quit() -> None:
    conn = ServerConnection()
    conn.send(Reply(554, "5.7.1", "No service"))
    conn.receive_data(EHLO + b"NOOP\r\nBDAT 3\r\nabcRSET\r\nQUIT\r\n")
    assert conn.next_event() == ConnectionClosed()
    assert conn.next_event() == ConnectionClosed()
    lines = conn.data_to_send().split(b"\r\n")
    assert [line[:3] for line in lines[:-1]] == [b"554", b"503", b"503", b"503", b"503", b"221"]
    assert conn.next_event() is not NEED_DATA


def test_421_greeting_closes() -> None:
    conn = ServerConnection()
    conn.send(Reply(421, "4.3.2", "Too busy"))
    conn.receive_data(EHLO)
    assert conn.next_event() == ConnectionClosed()
    assert conn.data_to_send() == b"421 4.3.2 Too busy\r\n"


def test_unsolicited_421_shutdown() -> None:
    conn = ServerConnection()
    conn.send(Reply(220, None, "hi"))
    conn.receive_data(EHLO)
    assert isinstance(conn.next_event(), Ehlo)
    conn.send(conn.ehlo_reply("hi"))
    conn.send(Reply(421, "4.3.2", "Shutting down"))
    assert conn.state is State.CLOSED
    assert conn.data_to_send().endswith(b"421 4.3.2 Shutting down\r\n")
    assert conn.next_event() == ConnectionClosed()
    conn.receive_data(b"NOOP\r\n")  # ignored
    assert conn.next_event() == ConnectionClosed()


def test_421_as_a_reply_closes() -> None:
    def busy(event: object) -> Reply | None:
        return Reply(421, "4.3.2", "Bye") if isinstance(event, MailFrom) else None

    dialogue = check([EHLO + MAIL + RCPT], policy=busy)
    assert dialogue.codes[1:] == [250, 421]
    assert dialogue.events[-1] == ConnectionClosed()
