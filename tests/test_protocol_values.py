"""The engine's values: replies, settings, the NEED_DATA sentinel, SASL mechanisms."""

from __future__ import annotations

import pytest

from mailgate.protocol import NEED_DATA, ConnectionSettings, Reply
from mailgate.protocol._sasl import Challenge, Credentials, SaslFailure, SaslServer


def test_need_data_repr() -> None:
    assert repr(NEED_DATA) == "NEED_DATA"


def test_reply_text_may_hold_tabs_and_utf8() -> None:
    # RFC 5321 4.2: textstring = 1*(%d09 / %d32-126); SMTPUTF8 allows UTF-8.
    assert Reply(250, None, "a\tb é").to_bytes() == "250 a\tb é\r\n".encode()


def test_reply_rendering() -> None:
    assert Reply(250, "2.0.0", "OK").to_bytes() == b"250 2.0.0 OK\r\n"
    assert Reply(220, None, "hi").to_bytes() == b"220 hi\r\n"
    multi = Reply(250, "2.1.5", "one\ntwo\n")
    assert multi.lines == ("2.1.5 one", "2.1.5 two", "2.1.5")
    assert multi.to_bytes() == b"250-2.1.5 one\r\n250-2.1.5 two\r\n250 2.1.5\r\n"
    assert Reply(354, None, "go").is_positive
    assert not Reply(421, "4.3.2", "bye").is_positive


@pytest.mark.parametrize(
    ("code", "enhanced", "text"),
    [
        (199, None, "x"),
        (600, None, "x"),
        (250, "5.0.0", "class differs"),
        (250, "2.0", "too short"),
        (250, "2.0.0", "bad\rtext"),
        (250, "2.0.0", "nul\x00"),
        (250, "2.0.0", "del\x7f"),
        (250, "2.0.0", "nel\u0085"),
        (250, "2.0.0", "line\u2028separator"),
    ],
)
def test_reply_validation(code: int, enhanced: str | None, text: str) -> None:
    with pytest.raises(ValueError):
        Reply(code, enhanced, text)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_command_line": 511},
        {"max_text_line": 999},
        {"max_message_size": -1},
        {"max_recipients": 0},
        {"error_budget": 0},
        {"auth_mechanisms": ("PLAIN", "CRAM-MD5")},  # the engine runs PLAIN and LOGIN
    ],
)
def test_settings_validation(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ConnectionSettings(**kwargs)  # type: ignore[arg-type]


def test_sasl_unknown_mechanism() -> None:
    with pytest.raises(ValueError):
        SaslServer("CRAM-MD5")


def test_sasl_plain() -> None:
    assert SaslServer("PLAIN").start(b"al\x00al\x00pw") == Credentials("al", "pw")
    assert SaslServer("PLAIN").start(b"\x00al\x00pw") == Credentials("al", "pw")
    other = SaslServer("PLAIN").start(b"root\x00al\x00pw")
    assert isinstance(other, SaslFailure)
    assert other.reply.code == 535
    for bad in (b"\xff\x00a\x00b", b"\x00\x00pw", b"a\x00b"):
        result = SaslServer("PLAIN").start(bad)
        assert isinstance(result, SaslFailure)
        assert result.reply.code == 501


def test_sasl_login() -> None:
    login = SaslServer("LOGIN")
    assert login.start(None) == Challenge(b"Username:")
    assert login.step(b"al") == Challenge(b"Password:")
    assert login.step(b"pw") == Credentials("al", "pw")
    for bad in (b"\xff", b"a\x00b"):
        result = SaslServer("LOGIN").start(bad)
        assert isinstance(result, SaslFailure)
