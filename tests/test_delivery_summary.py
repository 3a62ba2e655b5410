"""The summary parsed from a message as it is stored."""

from __future__ import annotations

import base64
import io
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from mailgate.delivery import summarize
from mailgate.model import Address, Envelope, MessageId, MessageSummary

WHEN = datetime(2026, 11, 29, tzinfo=UTC)
ID = MessageId("01KB4M1SA0ABCDEFGHJKMNPQRS")


def summary(raw: bytes) -> MessageSummary:
    return summarize(io.BytesIO(raw), message_id=ID, received_at=WHEN, size=len(raw))


def test_plain_message() -> None:
    s = summary(
        b"Received: from x by y; Sun, 29 Nov 2026 00:00:00 +0000\r\n"
        b"From: Barry Gibbs <bg@example.com>\r\n"
        b'To: a@example.com, "Smith, Ann" <ann@example.com>\r\n'
        b"Cc: c@example.com\r\nBcc: d@example.com\r\nReply-To: r@example.com\r\n"
        b"Subject: Hello\r\n\tthere\r\n"
        b"Date: Mon, 30 Nov 2026 10:00:00 +0200\r\n"
        b"Message-ID: <abc@example.com>\r\n\r\n"
        b"Hi,\r\n\r\nsee   you.\r\n"
    )
    assert s.sender == Address("Barry Gibbs", "bg@example.com")
    assert s.to == (Address("", "a@example.com"), Address("Smith, Ann", "ann@example.com"))
    assert s.cc == (Address("", "c@example.com"),)
    assert s.bcc == (Address("", "d@example.com"),)
    assert s.reply_to == (Address("", "r@example.com"),)
    assert s.subject == "Hello there"  # unfolded; the folding tab shows as a space
    assert s.date == datetime(2026, 11, 30, 10, tzinfo=timezone(timedelta(hours=2)))
    assert s.message_id == "abc@example.com"
    assert s.snippet == "Hi, see you."
    assert s.attachments == 0
    assert (s.id, s.received_at) == (ID, WHEN)


def test_rfc2047_subject_and_names() -> None:
    s = summary(
        b"From: =?ISO-8859-1?Q?Andr=E9?= Pirard <pirard@example.be>\r\n"
        b"Subject: =?utf-8?B?SMOpbGzDtg==?= =?utf-8?q?_w=C3=B6rld?=\r\n\r\nbody\r\n"
    )
    assert s.subject == "Héllö wörld"
    assert s.sender == Address("André Pirard", "pirard@example.be")


def test_utf8_headers_rfc6532() -> None:
    s = summary("Subject: Grüße\r\nFrom: Jürgen <j@bücher.example>\r\n\r\nx".encode())
    assert s.subject == "Grüße"
    assert s.sender == Address("Jürgen", "j@bücher.example")


def test_missing_headers_give_empty_fields() -> None:
    s = summary(b"\r\njust a body\r\n")
    assert s == MessageSummary(id=ID, received_at=WHEN, size=s.size, snippet="just a body")


def test_no_body_at_all() -> None:
    s = summary(b"Subject: only headers")
    assert (s.subject, s.snippet) == ("only headers", "")


def test_garbage_headers_never_raise() -> None:
    s = summary(
        b"this line has no colon\r\n"
        b"From: <<<@@@>>>\r\n"
        b"To: ,,,;;;\r\n"
        b"Date: not a date at all\r\n"
        b"Subject: =?bogus-charset?q?x?= =?utf-8?b?!!!?=\x00\x07\r\n"
        b"Content-Type: multipart/mixed; boundary=\r\n"
        b"\xff\xfe: binary\r\n\r\nbody"
    )
    assert s.date is None
    assert "\x00" not in s.subject
    assert "\x07" not in s.subject


def test_multipart_snippet_and_attachments() -> None:
    attachment = base64.encodebytes(b"%PDF-1.4 " * 100)
    s = summary(
        b"From: a@example.com\r\nSubject: report\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="outer"\r\n\r\n'
        b"preamble\r\n"
        b"--outer\r\n"
        b'Content-Type: multipart/alternative; boundary="inner"\r\n\r\n'
        b"--inner\r\n"
        b"Content-Type: text/plain; charset=iso-8859-1\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        b"Voil=E0 the =\r\nreport.\r\n"
        b"--inner\r\n"
        b"Content-Type: text/html\r\n\r\n"
        b"<p>HTML version</p>\r\n"
        b"--inner--\r\n"
        b"--outer\r\n"
        b'Content-Type: application/pdf; name="r.pdf"\r\n'
        b"Content-Disposition: attachment; filename=r.pdf\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + attachment + b"--outer\r\n"
        b"Content-Type: image/png\r\n"
        b"Content-Disposition: inline; filename=logo.png\r\n\r\n"
        b"PNG\r\n"
        b"--outer\r\n"
        b"Content-Type: text/csv\r\n"
        b"Content-Disposition: attachment; filename*=utf-8''d%C3%A4ta.csv\r\n\r\n"
        b"a,b\r\n"
        b"--outer--\r\n"
        b"epilogue\r\n"
    )
    assert s.snippet == "Voilà the report."
    assert s.attachments == 2


def test_html_only_snippet_is_text() -> None:
    s = summary(
        b"Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(
            b"<html><head><style>p {color: red}</style></head>"
            b"<body><p>Hello &amp; welcome</p><script>alert(1)</script></body></html>"
        )
    )
    assert s.snippet == "Hello & welcome"


def test_snippet_is_at_most_250_characters() -> None:
    s = summary(b"Subject: long\r\n\r\n" + b"word " * 10_000)
    assert len(s.snippet) == 250


def test_a_long_single_part_is_read_only_as_far_as_its_snippet_needs() -> None:
    text = "Grüße aus Köln. " * 2_000
    encoded = base64.encodebytes(text.encode()).replace(b"\n", b"\r\n")
    raw = (
        b"Subject: long\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + encoded
    )
    reader = io.BytesIO(raw)
    s = summarize(reader, message_id=ID, received_at=WHEN, size=len(raw))
    assert s.snippet == " ".join(text.split())[:250]
    assert reader.tell() < 16 * 1024 < len(raw)  # the headers and the first 8 KiB


def test_a_date_header_read_again_gives_the_same_time() -> None:
    raw = b"Date: Sun, 29 Nov 2026 12:26:44 +0100\r\n\r\n"
    first, again = summary(raw), summary(raw)
    assert first.date == again.date == datetime(2026, 11, 29, 11, 26, 44, tzinfo=UTC)
    assert summary(b"Date: not a date\r\n\r\n").date is None


def test_unclosed_multipart_and_lone_boundaries() -> None:
    s = summary(
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: text/plain\r\n\r\nfirst part\r\n"
        b"--b\r\nContent-Disposition: attachment; filename=x\r\n\r\nnever closed"
    )
    assert (s.snippet, s.attachments) == ("first part", 1)


def test_a_line_longer_than_the_read_limit() -> None:
    s = summary(b"Subject: " + b"s" * 200_000 + b"\r\n\r\n" + b"b" * 200_000)
    assert s.subject.startswith("sss")
    assert s.snippet == "b" * 250


@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    summary(raw)


@given(st.lists(st.sampled_from([
    b"--b\r\n", b"--b--\r\n", b"--c\r\n", b"Content-Type: multipart/mixed; boundary=c\r\n",
    b"Content-Disposition: attachment; filename=f\r\n", b"\r\n", b"text\r\n",
    b"Content-Transfer-Encoding: base64\r\n", b"=?utf-8?b?x\r\n", b"Content-Type: text/html\r\n",
]), max_size=60))  # fmt: skip
def test_arbitrary_mime_structure_never_raises(lines: list[bytes]) -> None:
    summary(b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + b"".join(lines))


def test_inline_parts_are_counted_apart_from_attachments_and_bodies() -> None:
    s = summary(
        b'Content-Type: multipart/mixed; boundary="m"\r\n\r\n'
        b'--m\r\nContent-Type: multipart/related; boundary="r"\r\n\r\n'
        b"--r\r\nContent-Type: text/html\r\nContent-ID: <body@x>\r\n\r\n<img src=cid:a@x>\r\n"
        b"--r\r\nContent-Type: image/png\r\nContent-ID: <a@x>\r\n\r\npng\r\n"
        b"--r\r\nContent-Type: image/gif\r\nContent-Disposition: inline\r\n\r\ngif\r\n"
        b"--r--\r\n"
        b"--m\r\nContent-Type: image/png\r\nContent-ID: <b@x>\r\n"
        b'Content-Disposition: attachment; filename="b.png"\r\n\r\npng\r\n'
        b"--m--\r\n"
    )
    # The HTML body is the body, whatever its Content-ID; an attachment is never inline.
    assert (s.inline, s.attachments) == (2, 1)
    assert summary(b"Content-Type: image/png\r\nContent-ID: <only@x>\r\n\r\npng").inline == 1
    assert summary(b"Subject: plain\r\n\r\ntext").inline == 0


def envelope(*recipients: str, params: tuple[dict[str, str | None], ...] = ()) -> Envelope:
    return Envelope(
        mail_from="app@example.com", rcpt_to=recipients, received_at=WHEN, rcpt_params=params
    )


def test_envelope_recipients_no_header_names_are_bcc() -> None:
    raw = b"To: Ann <Ann@Example.com>\r\nCc: c@example.com\r\nBcc: d@example.com\r\n\r\nx"
    s = summarize(
        io.BytesIO(raw),
        message_id=ID,
        received_at=WHEN,
        size=len(raw),
        envelope=envelope(
            "ann@example.com", "c@example.com", "d@example.com", "hidden@example.org",
            "hidden@example.org", "HIDDEN@example.org", "audit@example.net",
        ),
    )  # fmt: skip
    assert s.bcc == (
        Address("", "d@example.com"),
        Address("", "hidden@example.org"),
        Address("", "audit@example.net"),
    )
    assert s.to == (Address("Ann", "Ann@Example.com"),)
    # Without the envelope (a message summarized again from its bytes): the header only.
    assert summary(raw).bcc == (Address("", "d@example.com"),)


def test_an_alias_is_bcc_as_the_client_named_it_not_as_its_members() -> None:
    raw = b"To: team@example.com\r\n\r\nx"
    alias = {"ORCPT": "rfc822;team@example.com"}  # what the session gives an alias's members
    hidden = {"ORCPT": "rfc822;staff@example.com"}
    members = envelope(
        "ann@example.com", "bob@example.com", "carl@example.com", "dora@example.com",
        params=(alias, alias, hidden, {"ORCPT": "x400;c=fr"}),
    )  # fmt: skip
    s = summarize(io.BytesIO(raw), message_id=ID, received_at=WHEN, size=3, envelope=members)
    # team@ is in To: its members are no blind copy; staff@ is not: it is, once; an
    # ORCPT that names no mailbox leaves the recipient as it is.
    assert s.bcc == (Address("", "staff@example.com"), Address("", "dora@example.com"))
