"""Delivery reports (RFC 3464, RFC 6522, RFC 6533) as readers see them: the
``email`` package, and a mailing-list manager's bounce scanner (flufl.bounce)."""

from __future__ import annotations

import email
import re
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage, Message

import pytest
from flufl.bounce import scan_message
from hypothesis import given, settings
from hypothesis import strategies as st

from mailgate.protocol import Notify, OriginalRecipient, Ret, parse_orcpt
from mailgate.queue._reports import (
    DEFAULT_MAX_RETURNED_OCTETS,
    Action,
    DeliveryReport,
    OriginalMessage,
    RecipientStatus,
    build_report,
    should_report,
)

ARRIVED = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
NOW = ARRIVED + timedelta(minutes=20)
HEADER = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: bob@example.net, carol@example.net\r\n"
    b"Subject: quarterly figures\r\n"
    b"Message-ID: <m1@example.org>\r\n"
)
BODY = b"Here they are.\r\n"
CONTENT = HEADER + b"\r\n" + BODY
REPLY = "550-5.1.1 The account you tried to reach does not exist.\r\n550 5.1.1 Check the address."


def original(**changes: object) -> OriginalMessage:
    values: dict[str, object] = {
        "sender": "alice@example.org",
        "content": CONTENT,
        "arrival_date": ARRIVED,
        "envid": "QQ314159",
    }
    values.update(changes)
    return OriginalMessage(**values)  # type: ignore[arg-type]


def failed(address: str = "bob@example.net", **changes: object) -> RecipientStatus:
    values: dict[str, object] = {
        "final_recipient": address,
        "action": Action.FAILED,
        "status": "5.1.1",
        "original_recipient": OriginalRecipient("rfc822", address),
        "remote_mta": "mx.example.net",
        "diagnostic": REPLY,
        "last_attempt": NOW,
    }
    values.update(changes)
    return RecipientStatus(**values)  # type: ignore[arg-type]


def delayed(address: str = "carol@example.net") -> RecipientStatus:
    return RecipientStatus(
        final_recipient=address,
        action=Action.DELAYED,
        status="4.4.1",
        remote_mta="mx2.example.net",
        diagnostic="421 4.4.1 Try again later",
        last_attempt=NOW,
        will_retry_until=ARRIVED + timedelta(days=5),
    )


def build(
    message: OriginalMessage | None = None,
    recipients: list[RecipientStatus] | None = None,
    **options: int,
) -> DeliveryReport:
    return build_report(
        message or original(),
        recipients or [failed()],
        reporting_mta="mx.example.org",
        report_id="01JREPORT",
        now=NOW,
        **options,
    )


def parse(report: DeliveryReport) -> EmailMessage:
    parsed = email.message_from_bytes(report.content, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    assert not parsed.defects
    return parsed


def parts(parsed: EmailMessage) -> list[Message]:
    payload = parsed.get_payload()
    assert isinstance(payload, list)
    return payload


def status_blocks(part: Message) -> list[Message]:
    blocks = part.get_payload()
    assert isinstance(blocks, list)
    return blocks


# ------------------------------------------------------------- the report


def test_a_bounce_has_the_structure_of_rfc_3464() -> None:
    report = build(recipients=[failed(), failed("dave@example.net", original_recipient=None)])
    parsed = parse(report)
    assert parsed.get_content_type() == "multipart/report"
    assert parsed.get_param("report-type") == "delivery-status"
    assert parsed["From"] == "Mail Delivery System <MAILER-DAEMON@mx.example.org>"
    assert parsed["From"].addresses[0].addr_spec == "MAILER-DAEMON@mx.example.org"
    assert parsed["To"].addresses[0].addr_spec == "alice@example.org"
    assert b"\r\nTo: <alice@example.org>\r\n" in report.content
    assert parsed["Auto-Submitted"] == "auto-replied"
    assert parsed["Subject"] == "Undeliverable: mail returned to sender"
    assert parsed["Date"].datetime == NOW
    assert parsed["Message-ID"] == "<01JREPORT@mx.example.org>" == report.message_id
    assert report.recipient == "alice@example.org"
    assert not report.smtputf8
    assert not report.eight_bit
    notice, status, returned = parts(parsed)
    assert [p.get_content_type() for p in (notice, status, returned)] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    text = notice.get_payload(decode=True)
    assert isinstance(text, bytes)
    assert b"<bob@example.net>: failed (5.1.1)" in text
    assert b"mx.example.net said:" in text
    assert b"    550-5.1.1 The account you tried to reach does not exist.\r\n" in text
    assert b"    550 5.1.1 Check the address.\r\n" in text
    per_message, bob, dave = status_blocks(status)
    assert per_message["Reporting-MTA"] == "dns; mx.example.org"
    assert per_message["Original-Envelope-Id"] == "QQ314159"
    assert per_message["Arrival-Date"] == "Tue, 01 Dec 2026 09:30:00 +0000"
    assert bob["Original-Recipient"] == "rfc822; bob@example.net"
    assert bob["Final-Recipient"] == "rfc822; bob@example.net"
    assert bob["Action"] == "failed"
    assert bob["Status"] == "5.1.1"
    assert bob["Remote-MTA"] == "dns; mx.example.net"
    assert " ".join(bob["Diagnostic-Code"].split()) == (
        "smtp; 550-5.1.1 The account you tried to reach does not exist. "
        "550 5.1.1 Check the address."
    )
    assert bob["Last-Attempt-Date"] == "Tue, 01 Dec 2026 09:50:00 +0000"
    assert bob["Will-Retry-Until"] is None
    assert dave["Original-Recipient"] is None
    assert dave["Final-Recipient"] == "rfc822; dave@example.net"


def test_flufl_bounce_finds_the_failed_recipients() -> None:
    report = build(recipients=[failed(), failed("dave@example.net"), delayed()])
    scanned = scan_message(email.message_from_bytes(report.content))
    assert scanned == {b"bob@example.net", b"dave@example.net"}


def test_flufl_bounce_reports_the_original_recipient_an_alias_was_sent_to() -> None:
    member = failed(
        "bob@internal.example", original_recipient=OriginalRecipient("rfc822", "team@example.net")
    )
    report = build(recipients=[member])
    assert scan_message(email.message_from_bytes(report.content)) == {b"team@example.net"}
    text = parts(parse(report))[0].get_payload(decode=True)
    assert isinstance(text, bytes)
    assert b"<bob@internal.example> (sent to <team@example.net>): failed" in text


def test_a_delay_notice() -> None:
    report = build(recipients=[delayed()])
    parsed = parse(report)
    assert parsed["Subject"] == "Delayed mail (still being retried)"
    notice, status, _ = parts(parsed)
    _, carol = status_blocks(status)
    assert carol["Action"] == "delayed"
    assert carol["Status"] == "4.4.1"
    assert carol["Will-Retry-Until"] == "Sun, 06 Dec 2026 09:30:00 +0000"
    text = notice.get_payload(decode=True)
    assert isinstance(text, bytes)
    assert b"delivery will be tried until Sun, 06 Dec 2026 09:30:00 +0000" in text
    # A delay is not a bounce.
    assert scan_message(email.message_from_bytes(report.content)) == set()


@pytest.mark.parametrize("action", [Action.DELIVERED, Action.RELAYED, Action.EXPANDED])
def test_a_success_notice(action: Action) -> None:
    recipient = RecipientStatus(final_recipient="bob@example.net", action=action, status="2.0.0")
    parsed = parse(build(recipients=[recipient]))
    assert parsed["Subject"] == "Delivery report: mail delivered"
    _, bob = status_blocks(parts(parsed)[1])
    assert bob["Action"] == str(action)
    assert bob["Remote-MTA"] is None
    assert bob["Diagnostic-Code"] is None


def test_without_envid_there_is_no_original_envelope_id() -> None:
    per_message = status_blocks(parts(parse(build(original(envid=None))))[1])[0]
    assert per_message["Original-Envelope-Id"] is None
    assert per_message["Reporting-MTA"] == "dns; mx.example.org"


# ------------------------------------------------------ what is returned


@pytest.mark.parametrize("ret", [None, Ret.HDRS])
def test_the_header_is_returned_unless_full_was_asked_for(ret: Ret | None) -> None:
    returned = parts(parse(build(original(ret=ret))))[2]
    assert returned.get_content_type() == "text/rfc822-headers"
    assert returned.get_payload(decode=True) == HEADER
    assert BODY not in build(original(ret=ret)).content


def test_the_whole_message_is_returned_for_ret_full() -> None:
    report = build(original(ret=Ret.FULL))
    returned = parts(parse(report))[2]
    assert returned.get_content_type() == "message/rfc822"
    (inner,) = returned.get_payload()  # type: ignore[misc]
    assert isinstance(inner, Message)
    assert inner["Subject"] == "quarterly figures"
    assert inner.get_payload() == BODY.decode()
    assert CONTENT in report.content


def test_an_original_over_the_limit_is_returned_as_its_header() -> None:
    big = HEADER + b"\r\n" + b"x" * 998 + b"\r\n"
    limit = len(big) - 1
    returned = parts(parse(build(original(ret=Ret.FULL, content=big), max_returned_octets=limit)))
    assert returned[2].get_content_type() == "text/rfc822-headers"
    assert returned[2].get_payload(decode=True) == HEADER
    exact = parts(parse(build(original(ret=Ret.FULL, content=big), max_returned_octets=len(big))))
    assert exact[2].get_content_type() == "message/rfc822"
    assert DEFAULT_MAX_RETURNED_OCTETS == 50_000


def test_a_header_over_the_limit_is_cut_at_a_line() -> None:
    header = b"".join(b"X-Line-%d: %s\r\n" % (n, b"v" * 40) for n in range(100))
    cut = parts(parse(build(original(content=header + b"\r\nbody\r\n"), max_returned_octets=200)))
    returned = cut[2].get_payload(decode=True)
    assert isinstance(returned, bytes)
    assert 0 < len(returned) <= 200
    assert returned.endswith(b"\r\n")
    assert header.startswith(returned)
    tiny = parts(parse(build(original(content=header), max_returned_octets=10)))[2]
    assert tiny.get_payload(decode=True) == b""


def test_odd_originals_are_returned_with_crlf_line_ends() -> None:
    bare = parts(parse(build(original(ret=Ret.FULL, content=b"Subject: a\nX: b\r\rbody"))))
    inner = bare[2].get_payload()[0]  # type: ignore[index]
    assert isinstance(inner, Message)
    assert inner["X"] == "b"
    assert inner.get_payload() == "body\r\n"
    headless = parts(parse(build(original(content=b"\r\njust a body\r\n"))))
    assert headless[2].get_payload(decode=True) == b""
    no_body = parts(parse(build(original(content=b"Subject: only"))))
    assert no_body[2].get_payload(decode=True) == b"Subject: only\r\n"
    empty = parts(parse(build(original(content=b"", ret=Ret.FULL))))
    assert empty[2].get_content_type() == "message/rfc822"


def test_the_boundary_is_never_in_a_part() -> None:
    trap = CONTENT + b"--=_report_01JREPORT\r\n--=_report_01JREPORT.1--\r\n"
    report = build(original(ret=Ret.FULL, content=trap))
    parsed = parse(report)
    assert parsed.get_boundary() == "=_report_01JREPORT.2"
    assert len(parts(parsed)) == 3
    weird = build_report(
        original(), [failed()], reporting_mta="mx.example.org", report_id="<a b>", now=NOW
    )
    assert parse(weird).get_boundary() == "=_report__a_b_"
    assert weird.message_id == "<_a_b_@mx.example.org>"


# -------------------------------------------------------------- SMTPUTF8


def test_an_smtputf8_original_gets_the_global_types() -> None:
    content = "From: Jörg <jörg@bücher.example>\r\nSubject: Grüße\r\n\r\nHallo\r\n".encode()
    orcpt = parse_orcpt("utf-8;\\x{7528}\\x{6237}@example.net", utf8=True)
    recipient = failed("用户@example.net", original_recipient=orcpt, diagnostic="550 5.1.1 Ünknown")
    message = original(sender="jörg@bücher.example", content=content, smtputf8=True)
    report = build(message, [recipient])
    assert report.smtputf8
    assert report.eight_bit
    # RFC 6532 headers: read as UTF-8 text (the bytes parser would escape them).
    parsed = email.message_from_string(report.content.decode("utf-8"), policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    assert not parsed.defects
    assert parsed.get_param("report-type") == "global-delivery-status"
    assert parsed["To"].addresses[0].addr_spec == "jörg@bücher.example"
    notice, status, returned = parts(parsed)
    assert notice.get_content_charset() == "utf-8"
    assert "<用户@example.net>: failed (5.1.1)" in notice.get_payload()
    assert status.get_content_type() == "message/global-delivery-status"
    assert returned.get_content_type() == "message/global-headers"
    fields = report.content.decode("utf-8")
    assert "Original-Recipient: utf-8; 用户@example.net\r\n" in fields
    assert "Final-Recipient: utf-8; 用户@example.net\r\n" in fields
    assert "Diagnostic-Code: smtp; 550 5.1.1 Ünknown\r\n" in fields
    returned_header = "From: Jörg <jörg@bücher.example>\r\nSubject: Grüße\r\n"
    assert (
        "message/global-headers\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        + (returned_header + "\r\n--")
        in fields
    )
    full = parts(parse(build(original(content=content, smtputf8=True, ret=Ret.FULL))))
    assert full[2].get_content_type() == "message/global"
    assert content in build(original(content=content, smtputf8=True, ret=Ret.FULL)).content


def test_a_utf8_address_in_an_ascii_report_is_encoded() -> None:
    orcpt = OriginalRecipient("utf-8", "jörg@example.net")
    report = build(recipients=[failed("jörg@example.net", original_recipient=orcpt)])
    assert not report.eight_bit
    _, block = status_blocks(parts(parse(report))[1])
    assert block["Original-Recipient"] == "utf-8; j\\x{F6}rg@example.net"
    assert block["Final-Recipient"] == "utf-8; j\\x{F6}rg@example.net"
    # A long one is cut between escapes, never inside one.
    long = OriginalRecipient("utf-8", "é" * 100 + "@example.net")
    report = build(recipients=[failed(original_recipient=long)])
    _, block = status_blocks(parts(parse(report))[1])
    assert block["Original-Recipient"] == "utf-8; " + "\\x{E9}" * 83


# ------------------------------------------------- nothing from input splits a field


INJECTIONS = [
    "550 no\r\nX-Injected: yes",
    "550 no\nX-Injected: yes",
    "550 no\rX-Injected: yes",
    "550 no\r\n\r\nX-Injected: yes",
    "550 no\u2028X-Injected: yes",
    "550 no\x85X-Injected: yes",
]


def all_field_names(report: DeliveryReport) -> set[str]:
    parsed = parse(report)
    names = {name.lower() for name in parsed}
    for part in parts(parsed):
        names |= {name.lower() for name in part}
        if part.get_content_type() == "message/delivery-status":
            for block in status_blocks(part):
                names |= {name.lower() for name in block}
    return names


@pytest.mark.parametrize("injected", INJECTIONS)
def test_a_line_break_in_a_reply_or_orcpt_adds_no_field(injected: str) -> None:
    orcpt = OriginalRecipient("rfc822", "bob@example.net" + injected[6:])
    recipient = failed(diagnostic=injected, original_recipient=orcpt, remote_mta="mx\r\nX: 1")
    report = build(original(envid="id\r\nX-Injected: yes"), [recipient])
    assert "x-injected" not in all_field_names(report)
    assert b"\nX-Injected" not in report.content
    assert b"\nX:" not in report.content
    (bob,) = status_blocks(parts(parse(report))[1])[1:]
    assert "X-Injected: yes" in bob["Diagnostic-Code"]
    assert "\n" not in bob["Original-Recipient"].replace("\r\n ", "")


def status_fields(report: DeliveryReport) -> list[list[str]]:
    """The field names of each block of the delivery-status part, read without a parser."""
    boundary = parse_any(report).get_boundary()
    assert boundary is not None
    for chunk in report.content.decode().split("--" + boundary):
        head, _, body = chunk.partition("\r\n\r\n")
        if head.endswith("delivery-status\r\nContent-Transfer-Encoding: 7bit") or head.endswith(
            "delivery-status\r\nContent-Transfer-Encoding: 8bit"
        ):
            blocks = body.removesuffix("\r\n\r\n").split("\r\n\r\n")
            unfolded = [re.sub(r"\r\n[ \t]", " ", block) for block in blocks]
            return [[line.split(":")[0] for line in block.split("\r\n")] for block in unfolded]
    raise AssertionError("no delivery-status part")


def parse_any(report: DeliveryReport) -> EmailMessage:
    parsed = email.message_from_string(report.content.decode(), policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    assert not parsed.defects
    return parsed


@settings(max_examples=150, deadline=None)
@given(
    reply=st.text(max_size=300),
    address=st.text(min_size=1, max_size=600),
    addr_type=st.sampled_from(["rfc822", "utf-8", "x400"]),
    smtputf8=st.booleans(),
)
def test_no_text_whatever_adds_a_field(
    reply: str, address: str, addr_type: str, smtputf8: bool
) -> None:
    orcpt = OriginalRecipient(addr_type, address)
    recipient = failed(address, diagnostic=reply or None, original_recipient=orcpt)
    report = build(original(smtputf8=smtputf8, envid=reply), [recipient])
    assert all(len(line) <= 998 for line in report.content.split(b"\r\n"))
    assert report.content.isascii() or smtputf8
    per_message, per_recipient = status_fields(report)
    assert set(per_message) <= {"Reporting-MTA", "Original-Envelope-Id", "Arrival-Date"}
    assert [name for name in per_recipient if name != "Diagnostic-Code"] == [
        "Original-Recipient",
        "Final-Recipient",
        "Action",
        "Status",
        "Remote-MTA",
        "Last-Attempt-Date",
    ]
    assert per_recipient.count("Diagnostic-Code") <= 1
    assert len(parts(parse_any(report))) == 3


def test_a_long_reply_is_folded_and_bounded() -> None:
    reply = "550 5.7.1 " + " ".join(["word"] * 2000) + " " + "w" * 3000
    report = build(recipients=[failed(diagnostic=reply)])
    lines = report.content.split(b"\r\n")
    assert all(len(line) <= 998 for line in lines)
    diagnostic = status_blocks(parts(parse(report))[1])[1]["Diagnostic-Code"]
    assert diagnostic.startswith("smtp; 550 5.7.1 word word")
    assert len(diagnostic) <= 2100


def test_a_long_multi_line_reply_is_bounded_in_the_text_too() -> None:
    reply = "\r\n".join(f"550-{n} " + "x" * 500 for n in range(10))
    report = build(recipients=[failed(diagnostic=reply, remote_mta=None)])
    text = parts(parse(report))[0].get_payload(decode=True)
    assert isinstance(text, bytes)
    assert b"    the reply:\r\n    550-0 x" in text
    assert b"550-3 x" in text
    assert b"550-4 " not in text  # 2000 characters of it at most


# --------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("recipient", "match"),
    [
        (failed(status="4.1.1"), "does not fit"),
        (failed(status="5.1"), "does not fit"),
        (failed(status="5.1.1000"), "does not fit"),
        (RecipientStatus(final_recipient="c@d.e", action=Action.DELAYED, status="5.0.0"), "fit"),
        (RecipientStatus(final_recipient="c@d.e", action=Action.RELAYED, status="4.0.0"), "fit"),
    ],
)
def test_a_status_must_fit_its_action(recipient: RecipientStatus, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build(recipients=[recipient])


def test_no_report_without_recipients_or_to_the_null_sender() -> None:
    with pytest.raises(ValueError, match="one recipient"):
        build_report(original(), [], reporting_mta="mx", report_id="r", now=NOW)
    with pytest.raises(ValueError, match="null sender"):
        build(original(sender=""))


# ---------------------------------------------------- who gets a report

ALL = Notify.SUCCESS | Notify.FAILURE | Notify.DELAY


@pytest.mark.parametrize(
    ("action", "notify", "expected"),
    [
        (Action.FAILED, None, True),
        (Action.DELAYED, None, False),
        (Action.DELIVERED, None, False),
        (Action.RELAYED, None, False),
        (Action.EXPANDED, None, False),
        (Action.FAILED, Notify.NEVER, False),
        (Action.DELAYED, Notify.NEVER, False),
        (Action.DELIVERED, Notify.NEVER, False),
        (Action.FAILED, Notify.FAILURE, True),
        (Action.FAILED, Notify.SUCCESS, False),
        (Action.FAILED, Notify.DELAY, False),
        (Action.FAILED, Notify.SUCCESS | Notify.DELAY, False),
        (Action.DELAYED, Notify.DELAY, True),
        (Action.DELAYED, Notify.FAILURE, False),
        (Action.DELAYED, Notify.FAILURE | Notify.DELAY, True),
        (Action.DELIVERED, Notify.SUCCESS, True),
        (Action.DELIVERED, Notify.FAILURE | Notify.DELAY, False),
        (Action.RELAYED, Notify.SUCCESS, True),
        (Action.EXPANDED, Notify.SUCCESS, True),
        (Action.RELAYED, Notify.FAILURE, False),
        (Action.FAILED, ALL, True),
        (Action.DELAYED, ALL, True),
        (Action.DELIVERED, ALL, True),
    ],
)
def test_who_gets_a_report(action: Action, notify: Notify | None, expected: bool) -> None:
    assert should_report(action, sender="alice@example.org", notify=notify) is expected
    # Never to the null sender, whatever was asked (RFC 3461 6.2).
    assert should_report(action, sender="", notify=notify) is False
