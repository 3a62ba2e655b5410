"""RFC 5321 MUSTs a black-box conformance run found failing, against the engine:
quoted local parts, address literals, lengths, source routes, the recipient
limit and the error budget, bare line endings in commands, control
characters.  Every case is fed whole, byte by byte and at random splits."""

from __future__ import annotations

import pytest

from mailgate.protocol import (
    AuthCredentials,
    ConnectionSettings,
    DataStart,
    Ehlo,
    Expn,
    Helo,
    MailFrom,
    RcptTo,
    Reply,
    State,
    Vrfy,
    dot_atom_local_part,
)
from protocol_helpers import HOSTNAME, Dialogue, assert_feeding_invariant

EHLO = b"EHLO client.example\r\n"
MAIL = b"MAIL FROM:<a@example.org>\r\n"
AUTH = ConnectionSettings(
    hostname=HOSTNAME, auth_mechanisms=("PLAIN", "LOGIN"), auth_requires_tls=False
)


def check(
    flights: list[bytes] | bytes, settings: ConnectionSettings | None = None, **kwargs: object
) -> Dialogue:
    return assert_feeding_invariant(flights, settings=settings, **kwargs)  # type: ignore[arg-type]


def last_reply(flights: list[bytes] | bytes, settings: ConnectionSettings | None = None) -> bytes:
    return check(flights, settings).reply_lines()[-1]


def rcpt(path: bytes) -> RcptTo | bytes:
    """The RcptTo event for ``RCPT TO:path``, or the reply line refusing it."""
    dialogue = check([EHLO + MAIL + b"RCPT TO:" + path + b"\r\n"])
    event = dialogue.events[-1]
    return event if isinstance(event, RcptTo) else dialogue.reply_lines()[-1]


def mail(path: bytes) -> MailFrom | bytes:
    """The MailFrom event for ``MAIL FROM:path``, or the reply line refusing it."""
    dialogue = check([EHLO + b"MAIL FROM:" + path + b"\r\n"])
    event = dialogue.events[-1]
    return event if isinstance(event, MailFrom) else dialogue.reply_lines()[-1]


# ------------------------------------------------- quoted local parts (2.4, 4.1.2)


@pytest.mark.parametrize(
    ("local", "key"),
    [
        ("u", "u"),
        ("First.Last", "First.Last"),
        ('"u"', "u"),
        ('"First.Last"', "First.Last"),
        ('"a\\b"', "ab"),
        ('"\\u\\s\\e\\r"', "user"),
        ('"jö"', "jö"),
        ('"a b"', None),
        ('"|/bin/sh -c id"', None),
        ('"a..b"', None),
        ('".a"', None),
        ('""', None),
        ('"a\\ b"', None),
        ('"a\\"b"', None),
        ('"a@b"', None),
        ('"a"."b"', None),
        ('"', None),
        ("a b", None),
        ("", None),
    ],
)
def test_dot_atom_local_part(local: str, key: str | None) -> None:
    assert dot_atom_local_part(local) == key


@pytest.mark.parametrize(
    "path",
    [b'<"u"@example.org>', b'<"a\\b"@example.org>', b'<"a b"@example.org>', b'<"|x"@example.org>'],
)
def test_quoted_local_parts_are_valid_syntax_and_kept_as_written(path: bytes) -> None:
    # The engine hands the mailbox over as written; matching is the policy's.
    event = rcpt(path)
    assert isinstance(event, RcptTo)
    assert event.address == path[1:-1].decode()


# ---------------------------------------------------- address literals (4.1.3)


@pytest.mark.parametrize(
    "literal",
    [b"[192.0.2.1]", b"[IPv6:2001:db8::1]", b"[ipv6:::1]", b"[IPv6:::ffff:192.0.2.1]"],
)
def test_address_literals(literal: bytes) -> None:
    for event in (rcpt(b"<u@" + literal + b">"), mail(b"<u@" + literal + b">")):
        assert isinstance(event, (RcptTo, MailFrom))
        assert event.address == "u@" + literal.decode()


def test_an_ipv6_literal_needs_its_tag() -> None:
    text = b"An IPv6 address literal needs its IPv6: tag (RFC 5321 4.1.3)"
    assert rcpt(b"<u@[2001:db8::1]>") == b"501 5.1.3 " + text
    assert mail(b"<u@[2001:db8::1]>") == b"501 5.1.7 " + text
    assert rcpt(b"<u@[::1]>") == b"501 5.1.3 " + text


@pytest.mark.parametrize(
    ("literal", "text"),
    [
        (b"[IPv6:2001:db8:::1]", b"Bad IPv6 address literal"),
        (b"[IPv6:192.0.2.1]", b"Bad IPv6 address literal"),
        (b"[x-tag:content]", b"Bad address literal (RFC 5321 4.1.3)"),
        (b"[192.0.2.256]", b"Bad address literal (RFC 5321 4.1.3)"),
        (b"[localhost]", b"Bad address literal (RFC 5321 4.1.3)"),
        (b"[]", b"Bad address literal (RFC 5321 4.1.3)"),
    ],
)
def test_bad_address_literals(literal: bytes, text: bytes) -> None:
    assert rcpt(b"<u@" + literal + b">") == b"501 5.1.3 " + text


# ---------------------------------------------------------- lengths (4.5.3.1)


def domain_of(octets: int, label: int = 63) -> bytes:
    """A domain name of exactly ``octets`` octets, labels at most ``label`` long."""
    labels, left = [], octets
    while left > label + 1:
        labels.append(b"a" * label)
        left -= label + 1
    labels.append(b"b" * left)
    domain = b".".join(labels)
    assert len(domain) == octets
    return domain


@pytest.mark.parametrize("octets", [253, 255])
def test_a_long_domain_is_no_long_path(octets: int) -> None:
    # <u@ + 253 octets + > is 257 octets: over 4.5.3.1.3's 256, yet 4.5.3.1.2
    # says a domain of up to 255 octets MUST be received.
    domain = domain_of(octets)
    assert isinstance(rcpt(b"<u@" + domain + b">"), RcptTo)
    longest = b"<" + b"l" * 64 + b"@" + domain + b">"
    event = mail(longest)
    assert isinstance(event, MailFrom)
    assert event.address == longest[1:-1].decode()


@pytest.mark.parametrize(
    ("path", "text"),
    [
        (b"<" + b"l" * 65 + b"@example.org>", b"Local part too long (over 64 octets)"),
        (b'<"' + b"l" * 63 + b'"@example.org>', b"Local part too long (over 64 octets)"),
        (b"<u@" + domain_of(256) + b">", b"Domain too long (over 255 octets)"),
        (b"<u@" + b"a" * 64 + b".example>", b"Domain label too long (over 63 octets)"),
        (b"<u@example." + b"a" * 64 + b">", b"Domain label too long (over 63 octets)"),
    ],
)
def test_over_long_parts_are_refused_by_name(path: bytes, text: bytes) -> None:
    assert rcpt(path) == b"501 5.1.3 " + text
    assert mail(path) == b"501 5.1.7 " + text


def test_label_and_local_part_limits_exactly() -> None:
    assert isinstance(rcpt(b"<" + b"l" * 64 + b"@" + b"a" * 63 + b".example>"), RcptTo)


def test_a_non_ascii_label_counts_as_its_a_label() -> None:
    # 30 CJK characters are 90 octets of UTF-8, but "xn--" and 40-odd of
    # punycode in DNS; 70 of them pass 63 however they are written.
    utf8 = b"MAIL FROM:<a@example.org> SMTPUTF8\r\n"
    short, long = ("例" * 30).encode(), ("例" * 70).encode()
    dialogue = check([EHLO + utf8 + b"RCPT TO:<u@" + short + b".jp>\r\n"])
    assert isinstance(dialogue.events[-1], RcptTo)
    dialogue = check([EHLO + utf8 + b"RCPT TO:<u@" + long + b".jp>\r\n"])
    assert dialogue.reply_lines()[-1] == b"501 5.1.3 Domain label too long (over 63 octets)"


# ------------------------------------------------ source routes (4.1.1.3, C)


@pytest.mark.parametrize(
    ("path", "address"),
    [
        (b"<@[127.0.0.1]:user@remote.example>", "user@remote.example"),
        (b"<@a.example,@b.example:user@c.example>", "user@c.example"),
        (b"<@a.example,@[192.0.2.1],@[IPv6:2001:db8::1]:user@c.example>", "user@c.example"),
        (b'<@a.example:"q u"@c.example>', '"q u"@c.example'),
    ],
)
def test_source_routes_are_accepted_and_dropped(path: bytes, address: str) -> None:
    event = rcpt(path)
    assert isinstance(event, RcptTo)
    assert event.address == address
    event_from = mail(path)
    assert isinstance(event_from, MailFrom)
    assert event_from.address == address


@pytest.mark.parametrize(
    "path",
    [b"<@:user@c.example>", b"<@a.example;@b.example:user@c.example>", b"<@[x]:u@c.example>"],
)
def test_bad_source_routes(path: bytes) -> None:
    assert rcpt(path) == b"501 5.1.3 Bad address syntax"


# ------------------------------- the recipient limit and the error budget (4.5.3.1.10)


def test_recipients_past_the_limit_get_452_and_the_rest_goes_on() -> None:
    # Postfix's behaviour: 1,100 RCPTs pipelined with DATA, a limit of 1,000.
    rcpts = b"".join(b"RCPT TO:<r%d@example.com>\r\n" % i for i in range(1100))
    dialogue = check([EHLO + MAIL + rcpts + b"DATA\r\n", b"Subject: x\r\n\r\nhi\r\n.\r\n"])
    assert dialogue.codes[1:] == [250, 250] + [250] * 1000 + [452] * 100 + [354, 250]
    assert dialogue.output.count(b"452 4.5.3 Too many recipients\r\n") == 100
    (message,) = dialogue.app.messages
    assert message.recipients == [f"r{i}@example.com" for i in range(1000)]
    assert dialogue.conn.errors == 0


def test_a_452_is_answered_after_the_syntax() -> None:
    settings = ConnectionSettings(hostname=HOSTNAME, max_recipients=1)
    rcpts = b"RCPT TO:<a@b.example>\r\nRCPT TO:<bad@>\r\nRCPT TO:<c@d.example>\r\n"
    dialogue = check([EHLO + MAIL + rcpts], settings)
    assert dialogue.codes[1:] == [250, 250, 250, 501, 452]


def test_4xx_replies_never_spend_the_error_budget() -> None:
    settings = ConnectionSettings(hostname=HOSTNAME, error_budget=2, max_recipients=1)

    def busy(event: object) -> Reply | None:
        if isinstance(event, MailFrom) and event.address == "full@example.org":
            return Reply(452, "4.3.1", "Insufficient system storage")
        if isinstance(event, DataStart):
            return Reply(451, "4.3.0", "Temporary failure")
        return None

    rcpts = b"RCPT TO:<b@example.com>\r\n" * 30
    storage = b"MAIL FROM:<full@example.org>\r\n" * 30
    dialogue = check(
        [EHLO + storage + MAIL + rcpts + b"DATA\r\n" * 30 + b"NOOP\r\n"], settings, policy=busy
    )
    assert dialogue.codes[1:] == [250] + [452] * 30 + [250, 250] + [452] * 29 + [451] * 30 + [250]
    assert dialogue.conn.errors == 0
    assert dialogue.conn.state is State.RCPT


def test_5xx_replies_still_spend_it() -> None:
    settings = ConnectionSettings(hostname=HOSTNAME, error_budget=2)

    def refuse(event: object) -> Reply | None:
        return Reply(451, "4.3.0", "Later") if isinstance(event, RcptTo) else None

    dialogue = check(
        [EHLO + MAIL + b"RCPT TO:<b@example.com>\r\nFOO\r\nRSET\r\nBAR\r\n"],
        settings,
        policy=refuse,
    )
    assert dialogue.codes[1:] == [250, 250, 451, 500, 250, 500, 421]


def test_a_5xx_the_server_made_on_purpose_spends_none_of_it() -> None:
    settings = ConnectionSettings(hostname=HOSTNAME, error_budget=2)

    def fail(event: object) -> Reply | None:
        if isinstance(event, RcptTo):
            return Reply(550, "5.3.0", "Chaos recipient error", charged=False)
        return None

    rcpts = b"RCPT TO:<b@example.com>\r\n" * 30
    dialogue = check([EHLO + MAIL + rcpts + b"FOO\r\nBAR\r\n"], settings, policy=fail)
    assert dialogue.codes[1:] == [250, 250] + [550] * 30 + [500, 500, 421]
    assert dialogue.output.count(b"550 5.3.0 Chaos recipient error\r\n") == 30


# ------------------------------------------- bare line endings in commands (2.3.8)


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"NOOP\nNOOP\r\n", b"500 5.5.2 Bare LF received; end lines with CRLF (RFC 5321 2.3.8)"),
        (b"NOOP\rNOOP\r\n", b"500 5.5.2 Bare CR received; end lines with CRLF (RFC 5321 2.3.8)"),
        (b"\nQUIT\r\n", b"500 5.5.2 Bare LF received; end lines with CRLF (RFC 5321 2.3.8)"),
        (b"QUIT\r\rQUIT\r\n", b"500 5.5.2 Bare CR received; end lines with CRLF (RFC 5321 2.3.8)"),
        (b"QUIT\n\r\n", b"500 5.5.2 Bare LF received; end lines with CRLF (RFC 5321 2.3.8)"),
    ],
)
def test_a_bare_line_ending_makes_one_malformed_line(line: bytes, reply: bytes) -> None:
    dialogue = check([EHLO + line + b"NOOP\r\n"])
    assert dialogue.reply_lines()[-2:] == [reply, b"250 2.0.0 OK"]
    assert dialogue.conn.state is State.READY


def test_nothing_after_a_bare_lf_runs() -> None:
    # The desync that smuggling and pipelining confusion start from: a server
    # that ended the line at the LF would run the MAIL and the RCPT here.
    smuggled = b"RSET\nMAIL FROM:<evil@example.org>\nRCPT TO:<b@example.com>\r\n"
    dialogue = check([EHLO + MAIL + b"RCPT TO:<c@example.com>\r\n" + smuggled + b"DATA\r\n"])
    assert dialogue.codes[1:] == [250, 250, 250, 500, 354]
    assert [type(e) for e in dialogue.events] == [Ehlo, MailFrom, RcptTo, DataStart]


def test_an_lf_only_client_hears_at_once() -> None:
    # The reply comes at the bare LF, not at a CRLF that may never come.
    dialogue = check([b"EHLO client.example\nMAIL FROM:<a@example.org>\n"])
    assert dialogue.codes[1:] == [500]
    assert dialogue.conn.state is State.CONNECTED


def test_a_bare_line_ending_past_the_limit_is_a_long_line() -> None:
    # Past the longest line of any verb: RCPT's 512 + 500 octets (RFC 3461 4).
    dialogue = check([EHLO + b"NOOP " + b"x" * 1100 + b"\nNOOP\r\nNOOP\r\n"])
    assert dialogue.reply_lines()[-2:] == [b"500 5.5.2 Line too long", b"250 2.0.0 OK"]


def test_a_cr_at_the_packet_end_waits_for_the_next() -> None:
    dialogue = check([EHLO + b"NOOP\r", b"\nNOOP\r", b"x\r\nNOOP\r\n"])
    assert dialogue.codes[1:] == [250, 250, 500, 250]


# ------------------------------------------- control characters (4.1.2, 4.2.2)

CONTROL = b"501 5.5.4 Control character in command arguments"


@pytest.mark.parametrize(
    "line",
    [
        b"EHLO a\x01b",
        b"HELO a\x7fb",
        b"HELO a\x1b[31mb",
        b"EHLO a\tb",
        "EHLO a\u0085b".encode(),  # NEL, a C1 control
        "EHLO a\u2028b".encode(),  # LINE SEPARATOR
        b"VRFY a\x01",
        b"EXPN \x1b[2J",
        b"NOOP \x07",
        b"HELP \x08",
        b"RSET \x01",
        b"QUIT \x01",
    ],
)
def test_control_characters_get_501(line: bytes) -> None:
    dialogue = check([line + b"\r\n" + EHLO + b"QUIT\r\n"])
    assert dialogue.reply_lines()[1] == CONTROL
    assert dialogue.codes[-2:] == [250, 221]
    assert not any(isinstance(e, (Helo, Vrfy, Expn)) for e in dialogue.events)


def test_control_characters_after_starttls_get_501_where_it_is_offered() -> None:
    tls = ConnectionSettings(hostname=HOSTNAME, starttls=True)
    assert last_reply([EHLO + b"STARTTLS \x01\r\n"], tls) == CONTROL
    # Not offered, it is not implemented, whatever its argument (as TURN, RFC 5321 4.2.4).
    assert last_reply([EHLO + b"STARTTLS \x01\r\n"]) == b"502 5.5.1 Command not implemented"


@pytest.mark.parametrize(
    "line",
    [
        b"MAIL FROM:<a@b.c> X\x01=1",
        b"MAIL FROM:<a@b.c> X=\x01",
        b"MAIL FROM:<a@b.c>\tSIZE=10",
        b"MAIL FROM:<a\x01@b.c>",
        b'MAIL FROM:<"a\x7f"@b.c>',
        "MAIL FROM:<a@b.c> SMTPUTF8 X=a\u009bb".encode(),
    ],
)
def test_control_characters_in_mail_get_501(line: bytes) -> None:
    dialogue = check([EHLO + line + b"\r\n" + MAIL])
    assert dialogue.reply_lines()[-2:] == [CONTROL, b"250 2.1.0 Sender OK"]


def test_control_characters_in_rcpt_get_501() -> None:
    dialogue = check([EHLO + MAIL + b"RCPT TO:<b\x01@b.c>\r\nRCPT TO:<b@b.c> \x01\r\n"])
    assert dialogue.reply_lines()[-2:] == [CONTROL, CONTROL]
    assert dialogue.conn.state is State.MAIL


def test_control_characters_in_auth_get_501() -> None:
    dialogue = check([EHLO + b"AUTH PLAIN \x01\r\nAUTH LOGIN\x01\r\nAUTH LOGIN\r\n"], AUTH)
    assert dialogue.reply_lines()[-3:] == [CONTROL, CONTROL, b"334 VXNlcm5hbWU6"]
    assert dialogue.conn.state is State.AUTH
    dialogue = check([EHLO + b"AUTH LOGIN\r\n", b"YQ==\x01\r\nNOOP\r\n"], AUTH)
    assert dialogue.codes[-2:] == [501, 250]
    assert not any(isinstance(e, AuthCredentials) for e in dialogue.events)


def test_an_unknown_verb_with_a_control_character_is_unknown() -> None:
    assert check([b"FO\x01O\r\nFOO \x01\r\n"]).codes[1:] == [500, 500]


def test_a_bad_parameter_is_echoed_printable_only() -> None:
    line = "MAIL FROM:<a@b.c> é=1\r\n".encode()
    assert last_reply([EHLO + line]) == b"501 5.5.4 Bad parameter syntax: ?=1"
    ascii_only = ConnectionSettings(hostname=HOSTNAME, smtputf8=False)
    line = "MAIL FROM:<a@b.c> X=é Y=ü\r\n".encode()
    assert last_reply([EHLO + line], ascii_only) == b"501 5.5.4 Bad parameter syntax: X=?"


def test_a_long_parameter_name_is_echoed_short() -> None:
    # A MAIL or RCPT line may be over 1000 octets, a reply line at most 512 (RFC 5321
    # 4.5.3.1.5): a reply names at most 40 characters of a parameter.
    shown = b"X" * 40
    long_key = b"X" * 600 + b"=1"
    assert last_reply([EHLO + b"MAIL FROM:<a@b.c> " + long_key + b"\r\n"], AUTH) == (
        b"555 5.5.4 Unsupported parameter " + shown
    )
    rcpt = MAIL + b"RCPT TO:<d@e.f> " + long_key + b"\r\n"
    assert last_reply([EHLO + rcpt]) == b"555 5.5.4 Unsupported parameter " + shown
    twice = b"MAIL FROM:<a@b.c> " + b"X" * 300 + b"=1 " + b"X" * 300 + b"=2\r\n"
    assert last_reply([EHLO + twice]) == b"501 5.5.4 Parameter " + shown + b" given twice"


def test_non_ascii_hello_names_are_not_control_characters() -> None:
    dialogue = check(["EHLO exämple.org\r\n".encode()])
    assert dialogue.events == [Ehlo("exämple.org")]
    assert dialogue.reply_lines()[1] == "250-mx.test Hello exämple.org".encode()


def test_trailing_tabs_are_blanks_still() -> None:
    dialogue = check([b"EHLO c.example\t\r\nNOOP\r\n"])
    assert dialogue.events == [Ehlo("c.example")]
