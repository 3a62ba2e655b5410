"""Taking stored mail apart for the message view."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailgate.web._mime import canonical_header_name, parse_message


@pytest.mark.parametrize(
    ("name", "canonical"),
    [("message-id", "Message-Id"), ("CONTENT-TYPE", "Content-Type"), ("x-mailer", "X-Mailer")],
)
def test_header_names_as_mailpit_gives_them(name: str, canonical: str) -> None:
    assert canonical_header_name(name) == canonical


def test_nested_parts_get_dotted_ids() -> None:
    raw = (
        b"Content-Type: multipart/mixed; boundary=outer\r\n\r\n"
        b"--outer\r\nContent-Type: multipart/alternative; boundary=inner\r\n\r\n"
        b"--inner\r\nContent-Type: text/plain; charset=iso-8859-1\r\n\r\ncaf\xe9\r\n"
        b"--inner\r\nContent-Type: text/html\r\n\r\n<p>caf&eacute;</p>\r\n--inner--\r\n"
        b"--outer\r\nContent-Type: text/plain; name=notes.txt\r\n"
        b"Content-Disposition: attachment; filename=notes.txt\r\n\r\nnotes\r\n"
        b"--outer\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\nhi\r\n"
        b"--outer--\r\n"
    )
    message = parse_message(raw)
    assert message.text.strip() == "café"
    assert message.html.strip() == "<p>caf&eacute;</p>"
    assert [(p.part_id, p.filename, p.content_type) for p in message.parts] == [
        ("2", "notes.txt", "text/plain"),
        ("3", "", "message/rfc822"),
    ]
    assert message.parts[0].data.strip() == b"notes"
    assert b"Subject: inner" in message.parts[1].data


def test_a_single_part_attachment_is_part_1() -> None:
    raw = (
        b"Content-Type: application/pdf\r\nContent-Disposition: attachment; filename=a.pdf\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n"
    )
    (part,) = parse_message(raw).parts
    assert (part.part_id, part.data) == ("1", b"%PDF-")


def test_an_unknown_charset_is_read_as_utf8() -> None:
    raw = b"Content-Type: text/plain; charset=x-nonsense\r\n\r\nh\xc3\xa9llo \xff\r\n"
    assert parse_message(raw).text.startswith("héllo \ufffd")


@given(st.binary(max_size=2000))
def test_any_bytes_parse_without_raising(raw: bytes) -> None:
    message = parse_message(raw)
    message.header_values()
    message.html_with_inline_images()


@given(
    st.lists(
        st.sampled_from(
            [
                b"Content-Type: multipart/mixed; boundary=b\r\n",
                b"--b\r\n",
                b"--b--\r\n",
                b"\r\n",
                b"Content-Type: text/html\r\n",
                b"Content-Transfer-Encoding: base64\r\n",
                b"=?utf-8?q?x?=\r\n",
                b"Content-Disposition: attachment; filename*=utf-8''%ff\r\n",
                b"<img src=cid:x>\r\n",
                b"Content-ID: <x>\r\n",
                b"Subject: =?bogus?b?!!?=\r\n",
            ]
        ),
        max_size=30,
    )
)
def test_mime_shaped_garbage_parses_without_raising(lines: list[bytes]) -> None:
    parse_message(b"".join(lines)).html_with_inline_images()
