"""DSN parameters on MAIL and RCPT (RFC 3461 4, RFC 6533 3), and the pure
functions that read them.  Dialogue cases are fed whole, byte by byte and at
random splits (``assert_feeding_invariant``)."""

from __future__ import annotations

import contextlib
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailgate.protocol import (
    ConnectionSettings,
    MailFrom,
    Notify,
    OriginalRecipient,
    RcptTo,
    Ret,
    parse_envid,
    parse_notify,
    parse_orcpt,
    parse_ret,
    utf8_addr_decode,
    utf8_addr_encode,
    xtext_decode,
    xtext_encode,
)
from protocol_helpers import Dialogue, assert_feeding_invariant

EHLO = b"EHLO client.example\r\n"
HELO = b"HELO client.example\r\n"
MAIL = b"MAIL FROM:<a@example.org>\r\n"
UTF8_MAIL = b"MAIL FROM:<a@example.org> SMTPUTF8\r\n"
FAST = settings(max_examples=200, deadline=None)


def check(flights: list[bytes], settings: ConnectionSettings | None = None) -> Dialogue:
    return assert_feeding_invariant(flights, settings=settings)


def last_reply(dialogue: Dialogue) -> bytes:
    return dialogue.reply_lines()[-1]


def mail(params: bytes) -> MailFrom | bytes:
    """The MailFrom event for MAIL with ``params``, or the refusal's reply line."""
    dialogue = check([EHLO + b"MAIL FROM:<a@example.org> " + params + b"\r\n"])
    event = dialogue.events[-1]
    return event if isinstance(event, MailFrom) else last_reply(dialogue)


def rcpt(params: bytes, mail_line: bytes = MAIL) -> RcptTo | bytes:
    """The RcptTo event for RCPT with ``params``, or the refusal's reply line."""
    line = b"RCPT TO:<b@example.com> " + params + b"\r\n"
    dialogue = check([EHLO + mail_line + line])
    event = dialogue.events[-1]
    return event if isinstance(event, RcptTo) else last_reply(dialogue)


# --------------------------------------------------------------- the offer


def test_ehlo_offers_dsn_but_helo_takes_no_parameter() -> None:
    assert b"250-DSN" in check([EHLO]).reply_lines()
    dialogue = check([HELO + MAIL + b"RCPT TO:<b@example.com> NOTIFY=NEVER\r\n"])
    assert last_reply(dialogue) == b"555 5.5.4 Parameters need EHLO"
    dialogue = check([HELO + b"MAIL FROM:<a@example.org> RET=FULL\r\n"])
    assert last_reply(dialogue) == b"555 5.5.4 Parameters need EHLO"


# ------------------------------------------------------------------ MAIL


@pytest.mark.parametrize(
    ("params", "ret", "envid"),
    [
        (b"RET=FULL", Ret.FULL, None),
        (b"ret=hdrs", Ret.HDRS, None),
        (b"RET=Hdrs ENVID=abc+2Bdef", Ret.HDRS, "abc+def"),
        (b"ENVID=QQ314159", None, "QQ314159"),
        (b"ENVID=a+20b+3Dc", None, "a b=c"),
        (b"ENVID=" + b"e" * 100, None, "e" * 100),
        (b"ENVID=+2B+2B", None, "++"),
    ],
)
def test_mail_dsn_parameters(params: bytes, ret: Ret | None, envid: str | None) -> None:
    event = mail(params)
    assert isinstance(event, MailFrom)
    assert (event.ret, event.envid) == (ret, envid)
    # Kept as sent, to be relayed verbatim (RFC 3461 5.2.1).
    raw = dict(word.split(b"=", 1) for word in params.split())
    assert event.params == {k.decode().upper(): v.decode() for k, v in raw.items()}


@pytest.mark.parametrize(
    ("params", "reply"),
    [
        (b"RET=BOTH", b"501 5.5.4 RET must be FULL or HDRS (RFC 3461 4.3)"),
        (b"RET", b"501 5.5.4 RET must be FULL or HDRS (RFC 3461 4.3)"),
        (b"RET=FULL RET=FULL", b"501 5.5.4 Parameter RET given twice"),
        (b"ENVID", b"501 5.5.4 Syntax: ENVID=<xtext>"),
        (b"ENVID=" + b"e" * 101, b"501 5.5.4 ENVID is longer than 100 octets (RFC 3461 4.4)"),
        (b"ENVID=a+2", b"501 5.5.4 Bad xtext (RFC 3461 4)"),
        (b"ENVID=a+2b", b"501 5.5.4 Bad xtext (RFC 3461 4)"),
        (b"ENVID=a+b", b"501 5.5.4 Bad xtext (RFC 3461 4)"),
        (b"ENVID=a+0D+0Ab", b"501 5.5.4 ENVID holds a control character"),
        (b"ENVID=+00", b"501 5.5.4 ENVID holds a control character"),
        (b"ENVID=+C3+A9", b"501 5.5.4 xtext encodes US-ASCII only (RFC 3461 4)"),
        (b"ENVID=x ENVID=y", b"501 5.5.4 Parameter ENVID given twice"),
        (b"X-DSN=1", b"555 5.5.4 Unsupported parameter X-DSN"),
    ],
)
def test_mail_dsn_refusals(params: bytes, reply: bytes) -> None:
    assert mail(params) == reply


def test_non_ascii_envid_is_bad_xtext_even_with_smtputf8() -> None:
    refused = mail("SMTPUTF8 ENVID=é".encode())
    assert refused == b"501 5.5.4 Bad xtext (RFC 3461 4)"


# ------------------------------------------------------------------ RCPT

ALL = Notify.SUCCESS | Notify.FAILURE | Notify.DELAY


@pytest.mark.parametrize(
    ("params", "notify", "orcpt"),
    [
        (b"NOTIFY=NEVER", Notify.NEVER, None),
        (b"notify=never", Notify.NEVER, None),
        (b"NOTIFY=SUCCESS", Notify.SUCCESS, None),
        (b"NOTIFY=SUCCESS,FAILURE", Notify.SUCCESS | Notify.FAILURE, None),
        (b"NOTIFY=delay,Failure,SUCCESS", ALL, None),
        (b"NOTIFY=DELAY,DELAY", Notify.DELAY, None),
        (
            b"ORCPT=rfc822;bob@example.net",
            None,
            OriginalRecipient("rfc822", "bob@example.net"),
        ),
        (
            b"ORCPT=RFC822;b+2Bx+3Dy@example.net NOTIFY=FAILURE",
            Notify.FAILURE,
            OriginalRecipient("rfc822", "b+x=y@example.net"),
        ),
        (
            b"ORCPT=X400;+20c+3DUS+3Ba+3D+3Bp+3DExample+3B",
            None,
            OriginalRecipient("x400", " c=US;a=;p=Example;"),
        ),
    ],
)
def test_rcpt_dsn_parameters(
    params: bytes, notify: Notify | None, orcpt: OriginalRecipient | None
) -> None:
    event = rcpt(params)
    assert isinstance(event, RcptTo)
    assert (event.notify, event.orcpt) == (notify, orcpt)
    raw = dict(word.split(b"=", 1) for word in params.split())
    assert event.params == {k.decode().upper(): v.decode() for k, v in raw.items()}


def test_a_recipient_without_dsn_parameters_has_none() -> None:
    event = rcpt(b"")
    assert isinstance(event, RcptTo)
    assert (event.params, event.notify, event.orcpt) == ({}, None, None)


NOTIFY_SYNTAX = b"501 5.5.4 Unknown NOTIFY keyword: use SUCCESS, FAILURE, DELAY or NEVER"
ORCPT_SYNTAX = b"501 5.5.4 Syntax: ORCPT=<addr-type>;<xtext> (RFC 3461 4.2)"


@pytest.mark.parametrize(
    ("params", "reply"),
    [
        (b"NOTIFY", b"501 5.5.4 Syntax: NOTIFY=NEVER or NOTIFY=SUCCESS,FAILURE,DELAY"),
        (b"NOTIFY=NEVER,SUCCESS", b"501 5.5.4 NOTIFY=NEVER must stand alone (RFC 3461 4.1)"),
        (b"NOTIFY=FAILURE,NEVER", b"501 5.5.4 NOTIFY=NEVER must stand alone (RFC 3461 4.1)"),
        (b"NOTIFY=ALWAYS", NOTIFY_SYNTAX),
        (b"NOTIFY=SUCCESS,,FAILURE", NOTIFY_SYNTAX),
        (b"NOTIFY=SUCCESS,", NOTIFY_SYNTAX),
        (b"NOTIFY=SUCCESS NOTIFY=FAILURE", b"501 5.5.4 Parameter NOTIFY given twice"),
        (b"ORCPT", ORCPT_SYNTAX),
        (b"ORCPT=bob@example.net", ORCPT_SYNTAX),
        (b"ORCPT=rfc822;", ORCPT_SYNTAX),
        (b"ORCPT=;bob@example.net", ORCPT_SYNTAX),
        (b"ORCPT=rfc@822;bob@example.net", ORCPT_SYNTAX),
        (b"ORCPT=rfc822;bob+4", b"501 5.5.4 Bad xtext (RFC 3461 4)"),
        (b"ORCPT=rfc822;a+0D+0ASubject:+20x", b"501 5.5.4 ORCPT holds a control character"),
        (b"ORCPT=rfc822;a+0Ab", b"501 5.5.4 ORCPT holds a control character"),
        (b"ORCPT=rfc822;a+09b", b"501 5.5.4 ORCPT holds a control character"),
        (b"ORCPT=rfc822;a+7Fb", b"501 5.5.4 ORCPT holds a control character"),
        (b"ORCPT=rfc822;a ORCPT=rfc822;b", b"501 5.5.4 Parameter ORCPT given twice"),
        (
            b"ORCPT=utf-8;bob@example.net",
            b"501 5.5.4 ORCPT of type utf-8 needs SMTPUTF8 (RFC 6533 3)",
        ),
        (b"X-DSN=1", b"555 5.5.4 Unsupported parameter X-DSN"),
    ],
)
def test_rcpt_dsn_refusals(params: bytes, reply: bytes) -> None:
    assert rcpt(params) == reply


def test_an_injected_line_break_never_reaches_an_event() -> None:
    # A raw CR or LF ends no command: the line is refused whole (RFC 5321 2.3.8).
    dialogue = check([EHLO + MAIL + b"RCPT TO:<b@example.com> ORCPT=rfc822;a\rX: y\r\n"])
    assert not any(isinstance(event, RcptTo) for event in dialogue.events)


@pytest.mark.parametrize(
    ("params", "address"),
    [
        (b"ORCPT=utf-8;bob@example.net", "bob@example.net"),
        (b"ORCPT=UTF-8;j\\x{F6}rg@\\x{4F8B}.example", "jörg@例.example"),
        ("ORCPT=utf-8;jörg@例.example".encode(), "jörg@例.example"),
        (b"ORCPT=utf-8;a\\x{2B}b@example.net", "a+b@example.net"),
        (b"ORCPT=utf-8;\\x{1F600}@example.net", "\U0001f600@example.net"),
    ],
)
def test_utf8_orcpt_with_smtputf8(params: bytes, address: str) -> None:
    event = rcpt(params, mail_line=UTF8_MAIL)
    assert isinstance(event, RcptTo)
    assert event.orcpt == OriginalRecipient("utf-8", address)


UTF8_SYNTAX = b"501 5.5.4 Bad utf-8 address encoding (RFC 6533 3)"


@pytest.mark.parametrize(
    ("params", "reply"),
    [
        (b"ORCPT=utf-8;a+2Bb", UTF8_SYNTAX),  # xtext's hexchar is not utf-8-addr-xtext
        (b"ORCPT=utf-8;a\\b", UTF8_SYNTAX),
        (b"ORCPT=utf-8;a\\x{}b", UTF8_SYNTAX),
        (b"ORCPT=utf-8;a\\x{110000}", UTF8_SYNTAX),
        (b"ORCPT=utf-8;a\\x{D800}", UTF8_SYNTAX),
        (b"ORCPT=utf-8;a\\x{D}\\x{A}b", b"501 5.5.4 ORCPT holds a control character"),
        (b"ORCPT=utf-8;a\\x{85}b", b"501 5.5.4 ORCPT holds a control character"),
        (b"ORCPT=utf-8;a\\x{2028}b", b"501 5.5.4 ORCPT holds a control character"),
        ("ORCPT=rfc822;jörg@example.net".encode(), b"501 5.5.4 Bad xtext (RFC 3461 4)"),
    ],
)
def test_utf8_orcpt_refusals(params: bytes, reply: bytes) -> None:
    assert rcpt(params, mail_line=UTF8_MAIL) == reply


def test_non_ascii_orcpt_without_smtputf8_is_bad_syntax() -> None:
    refused = rcpt("ORCPT=utf-8;jörg@example.net".encode())
    assert isinstance(refused, bytes)
    assert refused.startswith(b"501 5.5.4 Bad parameter syntax: ORCPT=utf-8;j")


# ----------------------------------------------------------- line lengths


def test_rcpt_line_may_be_500_octets_longer() -> None:
    # RFC 3461 4: NOTIFY and ORCPT lengthen the RCPT line by 500 octets.
    head = b"RCPT TO:<b@example.com> NOTIFY=SUCCESS ORCPT=rfc822;"
    ok = head + b"o" * (512 + 500 - len(head) - 2) + b"\r\n"
    assert len(ok) == 1012
    dialogue = check([EHLO + MAIL + ok + ok[:-2] + b"o\r\n"])
    assert dialogue.codes[1:] == [250, 250, 250, 500]
    assert dialogue.reply_lines()[-1] == b"500 5.5.2 Line too long"


# ------------------------------------------------------------ the values


def test_xtext_examples() -> None:
    assert xtext_encode("a+b=c d\r\n~") == "a+2Bb+3Dc+20d+0D+0A~"
    assert xtext_decode("a+2Bb+3Dc+20d+0D+0A~") == "a+b=c d\r\n~"
    assert xtext_decode("") == ""
    assert xtext_decode("plain") == "plain"
    with pytest.raises(ValueError, match="US-ASCII"):
        xtext_encode("é")
    for bad in ("a=b", "a b", "a+", "+2", "+2b", "+GG", "é"):
        with pytest.raises(ValueError, match="Bad xtext"):
            xtext_decode(bad)
    with pytest.raises(ValueError, match="US-ASCII"):
        xtext_decode("+80")


@FAST
@given(st.text(alphabet=st.characters(max_codepoint=0x7F)))
def test_xtext_round_trips(text: str) -> None:
    encoded = xtext_encode(text)
    assert encoded.isascii()
    assert all("!" <= char <= "~" and char != "=" for char in encoded)
    assert xtext_decode(encoded) == text


@FAST
@given(st.text(alphabet=st.characters(max_codepoint=0x7F)))
def test_xtext_decoding_is_undone_by_encoding_canonical_text(text: str) -> None:
    # Whatever decodes, encodes again to a canonical form that decodes the same.
    try:
        decoded = xtext_decode(text)
    except ValueError:
        return
    assert xtext_decode(xtext_encode(decoded)) == decoded


@FAST
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",))))
def test_utf8_addr_round_trips(address: str) -> None:
    encoded = utf8_addr_encode(address)
    assert encoded.isascii()
    assert "+" not in encoded
    assert "=" not in encoded
    if address:
        assert utf8_addr_decode(encoded) == address


def test_utf8_addr_examples() -> None:
    assert utf8_addr_encode("jörg+x@例.example") == "j\\x{F6}rg\\x{2B}x@\\x{4F8B}.example"
    assert utf8_addr_decode("a\\x{5C}b") == "a\\b"
    with pytest.raises(ValueError, match="utf-8"):
        utf8_addr_decode("")


def test_parsers_take_the_value_as_a_client_sent_it() -> None:
    assert parse_ret("full") is Ret.FULL
    assert parse_envid("x+2By") == "x+y"
    assert parse_notify("SUCCESS,DELAY") == Notify.SUCCESS | Notify.DELAY
    assert not parse_notify("NEVER")
    assert parse_orcpt("rfc822;b@example.net", utf8=False).address == "b@example.net"
    assert parse_orcpt("utf-8;b@example.net", utf8=True).is_utf8
    assert not parse_orcpt("rfc822;b@example.net", utf8=True).is_utf8
    for parse in (parse_ret, parse_envid, parse_notify):
        with pytest.raises(ValueError):
            parse(None)
    with pytest.raises(ValueError):
        parse_orcpt(None, utf8=True)
    with pytest.raises(ValueError, match="NOTIFY"):
        parse_notify("\u017fuccess")  # LATIN SMALL LETTER LONG S upper-cases to "S"
    with pytest.raises(ValueError, match="RET"):
        parse_ret("hdr\u017f")


CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


@FAST
@given(st.text(max_size=80), st.booleans())
def test_any_text_parses_or_raises_value_error_and_decodes_to_no_control(
    text: str, utf8: bool
) -> None:
    with contextlib.suppress(ValueError):
        assert not CONTROL.search(parse_envid(text))
    with contextlib.suppress(ValueError):
        assert not CONTROL.search(parse_orcpt(text, utf8=utf8).address)
    with contextlib.suppress(ValueError):
        assert isinstance(parse_notify(text), Notify)
    with contextlib.suppress(ValueError):
        assert parse_ret(text) in (Ret.FULL, Ret.HDRS)
