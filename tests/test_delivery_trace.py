"""The Received trace header (RFC 5321 4.4) and message ids."""

from __future__ import annotations

import base64
import concurrent.futures
import re
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailgate.delivery import id_timestamp, new_message_id, received_header
from mailgate.model import Envelope, MessageId, TLSInfo

WHEN = datetime(2026, 11, 29, 6, 37, 34, tzinfo=UTC)
ID = MessageId("01KB4M1SA0ABCDEFGHJKMNPQRS")


def envelope(**changes: object) -> Envelope:
    fields: dict[str, object] = {
        "mail_from": "a@client.test",
        "rcpt_to": ("b@mx.test",),
        "received_at": WHEN,
        "helo_name": "client.test",
        "client_address": "192.0.2.1",
    }
    fields.update(changes)
    return Envelope(**fields)  # type: ignore[arg-type]


def header(**changes: object) -> str:
    return received_header(envelope(**changes), ID, hostname="mx.test", when=WHEN).decode()


def test_the_usual_header() -> None:
    assert header(client_hostname="mail.client.test") == (
        "Received: from client.test (mail.client.test [192.0.2.1])\r\n"
        f"\tby mx.test (mailgate) with ESMTP id {ID}\r\n"
        "\tfor <b@mx.test>; Sun, 29 Nov 2026 06:37:34 +0000\r\n"
    )


def test_without_reverse_dns_the_address_literal_alone() -> None:
    assert header().startswith("Received: from client.test ([192.0.2.1])\r\n")


def test_ipv6_address_literal() -> None:
    assert "([IPv6:2001:db8::1])" in header(client_address="2001:db8:0::1")


def test_for_only_with_exactly_one_recipient() -> None:
    text = header(rcpt_to=("b@mx.test", "c@mx.test"))
    assert "for" not in text
    assert text.endswith(f"with ESMTP id {ID};\r\n\tSun, 29 Nov 2026 06:37:34 +0000\r\n")


@pytest.mark.parametrize("protocol", ["ESMTP", "ESMTPS", "ESMTPA", "ESMTPSA", "UTF8SMTPS"])
def test_protocol_is_the_envelopes(protocol: str) -> None:
    assert f" with {protocol} id " in header(protocol=protocol)


def test_a_protocol_that_is_not_an_atom_is_not_trusted() -> None:
    assert " with ESMTP id " in header(protocol="ESMTP\r\nX-Evil: 1")


def test_tls_comment() -> None:
    text = header(tls=TLSInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384"))
    assert "\r\n\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384)\r\n" in text


@pytest.mark.parametrize(
    "changes",
    [
        {"helo_name": "evil\r\nX-Injected: yes"},
        {"helo_name": "evil\nX-Injected: yes"},
        {"helo_name": "evil\rX-Injected: yes\x00"},
        {"client_hostname": "host\r\nX-Injected: yes"},
        {"rcpt_to": ("b@mx.test>\r\nX-Injected: yes",)},
        {"rcpt_to": ("b\x00@mx.test\u2028X-Injected: yes",)},
        {"tls": TLSInfo("TLSv1.3\r\nX-Injected: yes", "c\nX-Injected: yes")},
        {"helo_name": "x) (y\r\n X-Injected: yes", "protocol": "UTF8SMTP"},
    ],
)
def test_client_text_never_breaks_the_header(changes: dict[str, object]) -> None:
    text = header(**changes)
    assert "X-Injected: yes\r\n" not in text
    assert not re.search(r"\r\n(?![\t])", text[:-2]), "only folded continuation lines"
    assert "\n" not in text.replace("\r\n", "")
    assert "\r" not in text.replace("\r\n", "")
    assert "\x00" not in text
    assert "\u2028" not in text


@given(
    helo=st.text(max_size=400),
    rcpt=st.text(max_size=400),
    rdns=st.text(max_size=400),
    protocol=st.sampled_from(["ESMTP", "UTF8SMTP"]),
)
def test_any_client_text_gives_well_formed_short_lines(
    helo: str, rcpt: str, rdns: str, protocol: str
) -> None:
    raw = received_header(
        envelope(helo_name=helo, rcpt_to=(rcpt,), client_hostname=rdns, protocol=protocol),
        ID,
        hostname="mx.test",
        when=WHEN,
    )
    lines = raw.split(b"\r\n")
    assert lines[-1] == b""
    assert lines[0].startswith(b"Received: from ")
    for line in lines[1:-1]:
        assert line.startswith(b"\t")
    for line in lines[:-1]:
        assert len(line) < 998  # RFC 5322 2.1.1
        assert not re.search(rb"[\x00-\x08\x0a-\x1f\x7f]", line)


def test_message_ids_are_26_crockford_characters_sortable_by_time() -> None:
    earlier = new_message_id(datetime(2026, 1, 1, tzinfo=UTC))
    later = new_message_id(datetime(2026, 1, 1, 0, 0, 0, 1000, tzinfo=UTC))
    assert re.fullmatch(r"[0-9A-HJKMNP-TV-Z]{26}", earlier)
    assert earlier < later
    assert id_timestamp(later) == datetime(2026, 1, 1, 0, 0, 0, 1000, tzinfo=UTC)
    assert len({new_message_id(WHEN) for _ in range(1000)}) == 1000


def test_ids_are_the_time_and_random_bits_in_crockford_base32() -> None:
    crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    # Checked against the standard library's RFC 4648 base32: the same 5-bit groups.
    rfc4648 = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", crockford.encode())
    millis = int(WHEN.timestamp() * 1000)
    for message_id in [new_message_id(WHEN) for _ in range(200)]:
        value = 0
        for char in message_id:
            value = value * 32 + crockford.index(char)
        assert value >> 80 == millis
        encoded = base64.b32encode((value << 30).to_bytes(20))[:26].translate(rfc4648)
        assert encoded.decode() == message_id


def test_ids_of_one_millisecond_sort_in_the_order_they_were_made() -> None:
    made = [new_message_id(WHEN) for _ in range(1000)]
    assert made == sorted(made)
    assert {id_timestamp(m) for m in made} == {id_timestamp(made[0])}
    # From several threads at once: still all different.
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda _: new_message_id(WHEN), range(4000)))
    assert len(set(ids)) == len(ids)
