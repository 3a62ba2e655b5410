"""The SASL PLAIN and LOGIN server mechanisms."""

from __future__ import annotations

import pytest

from mailgate.protocol._sasl import Challenge, Credentials, SaslFailure, SaslServer


def test_plain_with_initial_response() -> None:
    assert SaslServer("PLAIN").start(b"\x00alice\x00s3cret") == Credentials("alice", "s3cret")


def test_plain_with_matching_authzid() -> None:
    assert SaslServer("PLAIN").start(b"alice\x00alice\x00pw") == Credentials("alice", "pw")


def test_plain_refuses_acting_as_someone_else() -> None:
    result = SaslServer("PLAIN").start(b"root\x00alice\x00pw")
    assert isinstance(result, SaslFailure)
    assert result.reply.code == 535


def test_plain_without_initial_response_asks_with_an_empty_challenge() -> None:
    sasl = SaslServer("PLAIN")
    assert sasl.start(None) == Challenge(b"")
    assert sasl.step(b"\x00bob\x00pw") == Credentials("bob", "pw")


@pytest.mark.parametrize(
    "response", [b"", b"alice", b"\x00\x00pw", b"a\x00b\x00c\x00d", b"\xff\x00a\x00b"]
)
def test_plain_malformed(response: bytes) -> None:
    result = SaslServer("PLAIN").start(response)
    assert isinstance(result, SaslFailure)
    assert result.reply.code == 501


def test_login_two_steps() -> None:
    sasl = SaslServer("LOGIN")
    assert sasl.start(None) == Challenge(b"Username:")
    assert sasl.step(b"alice") == Challenge(b"Password:")
    assert sasl.step("pässword".encode()) == Credentials("alice", "pässword")


def test_login_with_the_username_as_initial_response() -> None:
    sasl = SaslServer("LOGIN")
    assert sasl.start(b"alice") == Challenge(b"Password:")
    assert sasl.step(b"pw") == Credentials("alice", "pw")


@pytest.mark.parametrize("response", [b"\xff", b"a\x00b"])
def test_login_malformed(response: bytes) -> None:
    result = SaslServer("LOGIN").start(response)
    assert isinstance(result, SaslFailure)
    assert result.reply.code == 501


@pytest.mark.parametrize(
    ("line", "code", "text"),
    [
        ("*", 501, "Authentication cancelled"),  # RFC 4954 4
        ("not base64!", 501, "Cannot decode response"),
        ("YQ", 501, "Cannot decode response"),
        ("\xff", 501, "Cannot decode response"),
    ],
)
def test_a_response_line_that_ends_the_exchange(line: str, code: int, text: str) -> None:
    sasl = SaslServer("LOGIN")
    sasl.start(None)
    result = sasl.receive_line(line)
    assert isinstance(result, SaslFailure)
    assert (result.reply.code, result.reply.text) == (code, text)


def test_response_lines_are_base64() -> None:
    sasl = SaslServer("LOGIN")
    assert sasl.receive_line("YWxpY2U=") == Challenge(b"Password:")
    assert sasl.receive_line("") == Credentials("alice", "")


def test_unknown_mechanism() -> None:
    with pytest.raises(ValueError):
        SaslServer("CRAM-MD5")
