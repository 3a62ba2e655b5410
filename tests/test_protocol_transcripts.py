"""Golden transcripts played against the engine, under every feeding."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocol_helpers import (
    TRANSCRIPTS,
    Split,
    feedings,
    load_transcript,
    play_transcript,
    reply_line_matches,
    transcript_flights,
)

PATHS = sorted(TRANSCRIPTS.glob("*.smtp"))


def test_there_are_transcripts() -> None:
    assert len(PATHS) >= 5


@pytest.mark.parametrize("split", list(feedings()), ids=lambda split: split.__name__)
@pytest.mark.parametrize("path", PATHS, ids=lambda path: path.stem)
def test_transcript(path: Path, split: Split) -> None:
    play_transcript(path, split=split)


def test_hand_typed_session_delivers_two_messages() -> None:
    dialogue = play_transcript(TRANSCRIPTS / "hand_typed_session.smtp")
    first, second = dialogue.app.messages
    assert first.sender == "myaddress@mydomain.com"
    assert first.recipients == ["first@mydomain.com", "second@mydomain.com"]
    assert first.content == (
        b"Subject: hello\r\nCC: second@mydomain.com\r\n\r\nThis is a test.\r\n"
    )
    assert second.sender == "second@mydomain.com"
    assert second.content == b"Subject: again\r\n\r\n.A line that starts with a dot.\r\n"
    assert dialogue.codes == [220, 250, 250, 250, 250, 354, 250, 250, 250, 354, 250, 221]


def test_smuggled_commands_never_run() -> None:
    dialogue = play_transcript(TRANSCRIPTS / "smuggling.smtp")
    (message,) = dialogue.app.messages
    assert message.sender == "a@example.org"
    assert message.content == (
        b"Subject: one\r\n\r\nfirst\r\n.\r\nMAIL FROM:<evil@example.org>\r\n"
        b"RCPT TO:<b@example.com>\r\nDATA\r\nsecond\r\n.\r\nstill the first message\r\n"
    )
    assert b"evil" not in dialogue.output


def test_lf_lines_are_stored_with_crlf() -> None:
    dialogue = play_transcript(TRANSCRIPTS / "bare_line_endings.smtp")
    (message,) = dialogue.app.messages
    assert message.sender == "a@example.org"
    assert message.content == (
        b"Subject: sent with LF\r\n\r\nfirst line\r\n.second line\r\n.\r\nstill the message\r\n\r\n"
    )
    assert b"evil" not in dialogue.output


def test_routes_are_dropped_and_quoted_local_parts_kept() -> None:
    dialogue = play_transcript(TRANSCRIPTS / "addresses.smtp")
    (message,) = dialogue.app.messages
    assert message.sender == "a@[IPv6:2001:db8::1]"
    assert message.recipients[:3] == [
        '"u"@example.org',
        '"a\\b"@example.org',
        "b@[IPv6:2001:db8::1]",
    ]
    assert message.recipients[4:] == ["user@remote.example", "user@c.example"]
    assert len(message.recipients[3]) == len("u@") + 253


def test_load_transcript_kinds(tmp_path: Path) -> None:
    path = tmp_path / "t.smtp"
    path.write_text("# comment\n\nS: 220 ...\nC: NOOP\nC~ a\\r\\x00\\\\\\t\\n\nS~ 250 .*\n")
    assert load_transcript(path) == [
        ("S", b"220 ..."),
        ("C", b"NOOP\r\n"),
        ("C", b"a\r\x00\\\t\n"),
        ("S~", b"250 .*"),
    ]


def test_load_transcript_refuses_unknown_steps(tmp_path: Path) -> None:
    path = tmp_path / "t.smtp"
    path.write_text("S: 220 x\nX: what\n")
    with pytest.raises(ValueError, match=":2:"):
        load_transcript(path)


def test_transcript_must_begin_with_the_greeting() -> None:
    with pytest.raises(ValueError, match="greeting"):
        transcript_flights([("C", b"NOOP\r\n")])


def test_reply_line_matching() -> None:
    assert reply_line_matches("S", b"250 ... Hello ...", b"250 mx Hello [1.2.3.4]")
    assert not reply_line_matches("S", b"250 2.0.0 OK", b"250 2.0.0 OK!")
    assert reply_line_matches("S~", rb"250 \d+", b"250 42")
    assert not reply_line_matches("S~", rb"250 \d+", b"250 4x")


def test_a_wrong_reply_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "t.smtp"
    path.write_text("S: 220 ...\nC: NOOP\nS: 251 ...\n")
    with pytest.raises(AssertionError, match="flight 1"):
        play_transcript(path)
