"""Message content: DATA framing, dot-stuffing, limits, smuggling, and BDAT.
Every case is fed whole, byte by byte and at random splits."""

from __future__ import annotations

import pytest

from mailgate.protocol import (
    NEED_DATA,
    BdatChunk,
    ConnectionClosed,
    ConnectionSettings,
    DataAborted,
    DataChunk,
    DataEnd,
    DataStart,
    Reply,
    ServerConnection,
    State,
)
from protocol_helpers import HOSTNAME, Dialogue, assert_feeding_invariant, joined_events

OPEN = b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n"
DATA = OPEN + b"DATA\r\n"


def check(
    flights: list[bytes] | bytes, settings: ConnectionSettings | None = None, **kwargs: object
) -> Dialogue:
    return assert_feeding_invariant(flights, settings=settings, **kwargs)  # type: ignore[arg-type]


def content_events(dialogue: Dialogue) -> list[object]:
    events = joined_events(dialogue.events)
    start = next(
        i for i, e in enumerate(events) if isinstance(e, (DataStart, BdatChunk, DataChunk))
    )
    return events[start:]


def rejecting() -> ConnectionSettings:
    return ConnectionSettings(hostname=HOSTNAME, bare_line_endings="reject")


LONG_LINE = "Message has a line over 1000 octets (RFC 5321 4.5.3.1.6)"


# ----------------------------------------------------------------------- DATA


def test_data_round_trip() -> None:
    dialogue = check([DATA, b"Subject: x\r\n\r\nbody\r\n.\r\n"])
    assert content_events(dialogue) == [
        DataStart(),
        DataChunk(b"Subject: x\r\n\r\nbody\r\n"),
        DataEnd(20),
    ]
    assert dialogue.codes[-1] == 250
    assert dialogue.conn.state is State.READY
    assert dialogue.conn.recipients == 0


def test_empty_message() -> None:
    dialogue = check([DATA, b".\r\n"])
    assert content_events(dialogue) == [DataStart(), DataEnd(0)]


def test_content_pipelined_with_data_is_read_after_354() -> None:
    dialogue = check([DATA + b"hello\r\n.\r\nQUIT\r\n"])
    assert dialogue.app.messages[0].content == b"hello\r\n"
    assert dialogue.codes[-2:] == [250, 221]


@pytest.mark.parametrize(
    ("sent", "received"),
    [
        (b"..\r\n", b".\r\n"),
        (b"..hidden\r\n", b".hidden\r\n"),
        (b"a\r\n...\r\n", b"a\r\n..\r\n"),
        (b"x.\r\n.y\r\n", b"x.\r\ny\r\n"),
        (b". \r\n", b" \r\n"),
    ],
)
def test_dot_unstuffing(sent: bytes, received: bytes) -> None:
    dialogue = check([DATA, sent + b".\r\n"])
    assert dialogue.app.messages[0].content == received


def test_two_messages_in_one_session() -> None:
    dialogue = check([DATA, b"one\r\n.\r\n" + OPEN[16:] + b"DATA\r\n", b"two\r\n.\r\n"])
    assert [m.content for m in dialogue.app.messages] == [b"one\r\n", b"two\r\n"]


def test_refused_data_keeps_the_transaction() -> None:
    def refuse(event: object) -> Reply | None:
        return Reply(451, "4.3.0", "Later") if isinstance(event, DataStart) else None

    dialogue = check([DATA + b"DATA\r\n"], policy=refuse)
    assert dialogue.codes[-2:] == [451, 451]
    assert dialogue.conn.state is State.RCPT


def test_a_refused_message_ends_the_transaction() -> None:
    def refuse(event: object) -> Reply | None:
        return Reply(554, "5.7.1", "Spam") if isinstance(event, DataEnd) else None

    dialogue = check([DATA, b"x\r\n.\r\nRCPT TO:<b@example.com>\r\n"], policy=refuse)
    assert dialogue.codes[-2:] == [554, 503]
    assert dialogue.conn.state is State.READY


# ------------------------------------------------------------------ smuggling

SMUGGLED = b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nevil\r\n"


@pytest.mark.parametrize(
    "fake",
    [
        b"\n.\n",
        b"\n.\r\n",
        b"\r.\r\n",
        b"\r\n.\n",
        b"\r\n.\r",
        b"\r\n.\r\r\n",
        b"\n.\r",
        b"\r.\r",
        b"\r.\n",
        b"\r\n\x00.\r\n",
        b"\r\n.\x00\r\n",
        b"\r\n \r\n.\n",
    ],
)
@pytest.mark.parametrize("mode", ["normalise", "reject"])
def test_smuggling_never_ends_data(fake: bytes, mode: str) -> None:
    settings = ConnectionSettings(hostname=HOSTNAME, bare_line_endings=mode)  # type: ignore[arg-type]
    body = b"Subject: x\r\n\r\nfirst" + fake + SMUGGLED
    dialogue = check([DATA, body + b".\r\n"], settings)
    events = content_events(dialogue)
    assert sum(isinstance(e, (DataEnd, DataAborted)) for e in events) == 1
    assert not any(isinstance(e, DataStart) for e in events[1:])
    bare = fake.replace(b"\r\n", b"")
    if mode == "reject" and (b"\r" in bare or b"\n" in bare):
        # A bare CR or LF refuses the message, after its terminator.
        assert isinstance(events[-1], DataAborted)
        assert dialogue.codes[-1] == 554
        assert dialogue.app.messages == []
    else:
        (message,) = dialogue.app.messages
        assert message.sender == "a@example.org"
        assert message.content.endswith(b"evil\r\n")
        assert b"MAIL FROM:<evil@example.org>\r\n" in message.content
        content = message.content
        assert content.count(b"\r") == content.count(b"\n") == content.count(b"\r\n")


@pytest.mark.parametrize("fake", [b"\n.\n", b"\r.\r", b"\r.\r\n", b"\r\n.\n", b"\n.\r\n"])
def test_smuggling_is_plain_content_when_normalising(fake: bytes) -> None:
    # The lone dot of a fake terminator stays, as content (RFC 5321 4.5.2
    # removes a leading dot only when other characters follow it).
    dialogue = check([DATA, b"first" + fake + SMUGGLED + b".\r\n"])
    (message,) = dialogue.app.messages
    assert message.sender == "a@example.org"
    assert message.content == b"first\r\n.\r\n" + SMUGGLED
    assert dialogue.codes[-1] == 250


def test_dot_crlf_in_mid_line_is_content() -> None:
    dialogue = check([DATA, b"a.\r\nb .\r\n.\r\n"])
    assert dialogue.app.messages[0].content == b"a.\r\nb .\r\n"


def test_nul_in_content_is_kept() -> None:
    dialogue = check([DATA, b"a\x00b\r\n.\r\n"])
    assert dialogue.app.messages[0].content == b"a\x00b\r\n"


# --------------------------------------------------------- bare line endings


@pytest.mark.parametrize("body", [b"a\nb\r\n", b"a\rb\r\n", b"a\r\r\n", b"\n\r\n", b"ok\r\nx\n"])
def test_bare_line_endings_refused_after_the_terminator(body: bytes) -> None:
    dialogue = check([DATA, body + b"more\r\n.\r\nNOOP\r\n"], rejecting())
    events = content_events(dialogue)
    assert isinstance(events[-1], DataAborted)
    assert not any(isinstance(e, DataChunk) and b"more" in e.data for e in events)
    assert dialogue.codes[-2:] == [554, 250]
    assert b"554 5.6.0 Message has a bare CR or LF" in dialogue.output
    assert dialogue.conn.state is State.READY
    assert dialogue.app.messages == []


@pytest.mark.parametrize(
    ("body", "stored"),
    [
        (b"a\nb\r\n", b"a\r\nb\r\n"),
        (b"a\rb\r\n", b"a\r\nb\r\n"),
        (b"a\r\r\n", b"a\r\n\r\n"),
        (b"a\n..b\r\n", b"a\r\n.b\r\n"),  # a dot after a bare LF is stuffed, as smtplib does
        (b"a\n.b\r\n", b"a\r\nb\r\n"),
        (b"..a\nb\r\n", b".a\r\nb\r\n"),
        (b"a\n.\nb\r\n", b"a\r\n.\r\nb\r\n"),  # a lone dot is kept
        (b"a\r\n.\nb\r\n", b"a\r\n.\r\nb\r\n"),
        (b"a\n\n\r\n", b"a\r\n\r\n\r\n"),
        (b"a\r\rb\n\r\n", b"a\r\n\r\nb\r\n\r\n"),
    ],
)
def test_bare_line_endings_normalised_by_default(body: bytes, stored: bytes) -> None:
    dialogue = check([DATA, body + b".\r\n"])
    assert dialogue.app.messages[0].content == stored


def smtplib_body(lines: int = 200) -> bytes:
    """DATA as ``smtplib.SMTP.sendmail`` sends ``EmailMessage.as_bytes()``: lines
    ending in LF alone, dots stuffed after each LF, then CRLF.CRLF."""
    body = b"Subject: lf\n\n" + b"".join(b"line %d of the body\n" % i for i in range(lines))
    return body + b"..starts with a dot\n" + b"\r\n.\r\n"


def test_an_lf_only_message_is_stored_with_crlf() -> None:
    body = smtplib_body()
    assert b"\r\n" not in body[:-5]
    assert len(body) > 4000
    dialogue = check([DATA, body])
    (message,) = dialogue.app.messages
    lines = [b"Subject: lf", b""] + [b"line %d of the body" % i for i in range(200)]
    assert message.content == b"\r\n".join([*lines, b".starts with a dot", b"", b""])
    assert dialogue.codes[-1] == 250


def test_an_lf_only_message_streams() -> None:
    # Lines ended by bare LFs are delivered as they come, with no CRLF in sight.
    dialogue = check([DATA, smtplib_body()[:-5]])
    chunks = [e for e in dialogue.events if isinstance(e, DataChunk)]
    assert b"".join(c.data for c in chunks).endswith(b"\r\n.starts with a dot\r\n")


def test_an_lf_only_message_is_a_bare_line_ending_problem_when_rejecting() -> None:
    # Its 4,000 octets hold no CRLF, but no line is long: the fault is the LF.
    dialogue = check([DATA, smtplib_body() + b"NOOP\r\n"], rejecting())
    assert dialogue.codes[-2:] == [554, 250]
    assert b"554 5.6.0 Message has a bare CR or LF" in dialogue.output


def test_lines_split_by_a_bare_lf_count_one_by_one() -> None:
    body = b"x" * 900 + b"\n" + b"y" * 900 + b"\r\n.\r\n"
    dialogue = check([DATA, body])
    assert dialogue.app.messages[0].content == b"x" * 900 + b"\r\n" + b"y" * 900 + b"\r\n"
    dialogue = check([DATA, b"x" * 900 + b"\n" + b"y" * 1200 + b"\r\n.\r\n"])
    assert dialogue.codes[-1] == 554
    assert dialogue.app.messages == []


def test_a_bare_cr_at_the_packet_end_may_be_a_crlf() -> None:
    dialogue = check([DATA, b"a\r", b"\nb\r", b"c\r\n.\r\n"])
    assert dialogue.app.messages[0].content == b"a\r\nb\r\nc\r\n"


# ----------------------------------------------------------------- line limit


def test_text_line_limit() -> None:
    ok = b"x" * 998 + b"\r\n"
    stuffed_ok = b"." + b"." * 998 + b"\r\n"  # the stuffed dot is not counted
    dialogue = check([DATA, ok + stuffed_ok + b".\r\n"])
    assert dialogue.app.messages[0].content == ok + b"." * 998 + b"\r\n"


@pytest.mark.parametrize("length", [999, 1000, 5000, 100_000])
def test_over_long_text_line_refused_after_the_terminator(length: int) -> None:
    body = b"first\r\n" + b"y" * length + b"\r\nlast\r\n.\r\nNOOP\r\n"
    dialogue = check([DATA, body])
    events = content_events(dialogue)
    assert events == [DataStart(), DataChunk(b"first\r\n"), DataAborted(LONG_LINE)]
    assert dialogue.codes[-2:] == [554, 250]
    assert b"554 5.6.0 " + LONG_LINE.encode() + b"\r\n" in dialogue.output


def test_over_long_line_with_a_cr_at_the_packet_end() -> None:
    dialogue = check([DATA, b"y" * 1500 + b"\r", b"\n.\r\n"])
    assert isinstance(content_events(dialogue)[-1], DataAborted)


def test_larger_text_line_limit() -> None:
    settings = ConnectionSettings(hostname=HOSTNAME, max_text_line=2000)
    dialogue = check([DATA, b"z" * 1998 + b"\r\n.\r\n"], settings)
    assert len(dialogue.app.messages[0].content) == 2000
    dialogue = check([DATA, b"z" * 1999 + b"\r\n.\r\n"], settings)
    assert b"554 5.6.0 Message has a line over 2000 octets (RFC 5321 4.5.3.1.6)" in dialogue.output


@pytest.mark.parametrize("settings", [rejecting(), None], ids=["reject", "normalise"])
def test_first_fault_wins_line_before_bare(settings: ConnectionSettings | None) -> None:
    dialogue = check([DATA, b"q" * 1200 + b"\n\r\nbare\rx\r\n.\r\n"], settings)
    assert b"554 5.6.0 Message has a line over 1000 octets" in dialogue.output


def test_first_fault_wins_bare_before_line() -> None:
    dialogue = check([DATA, b"bare\rx\r\n" + b"q" * 1200 + b"\r\n.\r\n"], rejecting())
    assert b"554 5.6.0 Message has a bare CR or LF" in dialogue.output


# ------------------------------------------------------------------ size limit


def small(size: int = 20, **kwargs: object) -> ConnectionSettings:
    return ConnectionSettings(hostname=HOSTNAME, max_message_size=size, **kwargs)  # type: ignore[arg-type]


def test_size_limit_exactly() -> None:
    dialogue = check([DATA, b"123456789012345678\r\n.\r\n"], small())
    assert dialogue.codes[-1] == 250


def test_size_over_the_limit_is_refused_after_the_terminator() -> None:
    dialogue = check([DATA, b"1234567890\r\n1234567890\r\nmore\r\n.\r\nNOOP\r\n"], small())
    events = content_events(dialogue)
    assert events == [
        DataStart(),
        DataChunk(b"1234567890\r\n"),
        DataAborted("Message size exceeds the fixed maximum"),
    ]
    assert dialogue.codes[-2:] == [552, 250]
    assert b"552 5.3.4 Message size exceeds the fixed maximum\r\n" in dialogue.output


def test_size_with_normalising() -> None:
    settings = small(bare_line_endings="normalise")
    again = DATA[16:] + b"123456789\n12345678\r\n.\r\n"
    dialogue = check([DATA, b"12345678\n12345678\r\n.\r\n" + again], settings)
    assert dialogue.codes[-5:] == [250, 250, 250, 354, 552]  # 20, then 21 octets


def test_size_declared_over_the_limit() -> None:
    dialogue = check([b"EHLO c\r\nMAIL FROM:<a@example.org> SIZE=21\r\n"], small())
    assert dialogue.codes[-1] == 552


def test_eof_in_data_aborts() -> None:
    dialogue = check([DATA, b"partial\r\nline"], eof=True)
    assert content_events(dialogue) == [
        DataStart(),
        DataChunk(b"partial\r\n"),
        DataAborted("connection closed"),
        ConnectionClosed(),
    ]


def test_shutdown_in_data_aborts() -> None:
    conn = ServerConnection()
    conn.send(Reply(220, None, "hi"))
    conn.receive_data(DATA + b"part\r\n")
    while (event := conn.next_event()) is not NEED_DATA:
        if isinstance(event, DataStart):
            conn.send(Reply(354, None, "go"))
        elif not isinstance(event, DataChunk):
            conn.send(
                conn.ehlo_reply("x")
                if event.__class__.__name__ == "Ehlo"
                else Reply(250, "2.0.0", "ok")
            )
    conn.send(Reply(421, "4.3.2", "Shutting down"))
    assert conn.next_event() == DataAborted("connection closed by the server")
    assert conn.next_event() == ConnectionClosed()


# ----------------------------------------------------------------------- BDAT


def bdat(size: int, data: bytes, last: bool = False) -> bytes:
    return b"BDAT %d%s\r\n" % (size, b" LAST" if last else b"") + data


def test_bdat_single_chunk() -> None:
    dialogue = check([OPEN + bdat(13, b"Subject: x\r\n.", last=True)])
    assert content_events(dialogue) == [DataChunk(b"Subject: x\r\n."), BdatChunk(13, True, 13)]
    assert dialogue.app.messages[0].content == b"Subject: x\r\n."
    assert dialogue.conn.state is State.READY


def test_bdat_multi_chunk_without_dot_stuffing() -> None:
    dialogue = check([OPEN + bdat(5, b"..\r\n.") + bdat(3, b"\r\n.") + bdat(0, b"", last=True)])
    assert dialogue.app.messages[0].content == b"..\r\n.\r\n."
    assert content_events(dialogue) == [
        DataChunk(b"..\r\n."),
        BdatChunk(5, False, 5),
        DataChunk(b"\r\n."),
        BdatChunk(3, False, 8),
        BdatChunk(0, True, 8),
    ]
    assert dialogue.codes[-3:] == [250, 250, 250]


def test_bdat_0_last_alone() -> None:
    dialogue = check([OPEN + bdat(0, b"", last=True)])
    assert dialogue.app.messages[0].content == b""
    assert dialogue.codes[-1] == 250


def test_bdat_0_is_a_chunk() -> None:
    dialogue = check([OPEN + bdat(0, b"") + b"bdat 2 last\r\nab"])
    assert content_events(dialogue) == [
        BdatChunk(0, False, 0),
        DataChunk(b"ab"),
        BdatChunk(2, True, 2),
    ]


def test_bdat_chunk_in_separate_packets() -> None:
    dialogue = check([OPEN + b"BDAT 10 LAST\r\n", b"01234", b"56789NOOP\r\n"])
    assert dialogue.app.messages[0].content == b"0123456789"
    assert dialogue.codes[-2:] == [250, 250]


@pytest.mark.parametrize(
    ("before", "text"),
    [
        (b"EHLO c\r\n", b"Send MAIL first"),
        (b"EHLO c\r\nMAIL FROM:<a@example.org>\r\n", b"No valid recipients"),
        (b"HELO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n", b"Send EHLO first"),
        (b"", b"Send EHLO first"),
    ],
)
def test_bdat_out_of_sequence_is_read_then_refused(before: bytes, text: bytes) -> None:
    dialogue = check([before + bdat(9, b"NOOP\r\nXYZ", last=True) + b"NOOP\r\n"])
    assert dialogue.codes[-2:] == [503, 250]
    assert b"503 5.5.1 " + text in dialogue.output
    assert not any(isinstance(e, (DataChunk, BdatChunk)) for e in dialogue.events)


def test_bdat_after_last_needs_a_new_transaction() -> None:
    dialogue = check([OPEN + bdat(1, b"a", last=True) + bdat(1, b"b", last=True)])
    assert dialogue.codes[-2:] == [250, 503]
    assert len(dialogue.app.messages) == 1


def test_data_after_bdat_is_out_of_sequence() -> None:
    dialogue = check(
        [OPEN + bdat(1, b"a") + b"DATA\r\nRCPT TO:<c@example.com>\r\n" + bdat(1, b"b", last=True)]
    )
    assert dialogue.codes[-4:] == [250, 503, 503, 250]
    assert dialogue.app.messages[0].content == b"ab"


def test_a_failed_chunk_fails_the_transaction() -> None:
    def refuse_first(event: object) -> Reply | None:
        if isinstance(event, BdatChunk) and event.total == 3:
            return Reply(452, "4.3.1", "Disk full")
        return None

    dialogue = check(
        [OPEN + bdat(3, b"abc") + bdat(3, b"def") + bdat(3, b"ghi", last=True) + b"NOOP\r\n"],
        policy=refuse_first,
    )
    assert dialogue.codes[-4:] == [452, 503, 503, 250]
    assert dialogue.app.messages == []
    assert dialogue.conn.state is State.READY


def test_bad_bdat_syntax_after_the_size_is_read_then_refused() -> None:
    dialogue = check([OPEN + bdat(2, b"ab") + b"BDAT 3 FIRST\r\nxyz" + bdat(1, b"q", last=True)])
    assert dialogue.codes[-3:] == [250, 501, 503]
    events = content_events(dialogue)
    assert DataAborted("Syntax: BDAT size [LAST]") in events
    assert dialogue.app.messages == []
    dialogue = check([OPEN + b"BDAT 2 LAST MORE\r\nab" + b"NOOP\r\n"])
    assert dialogue.codes[-2:] == [501, 250]


@pytest.mark.parametrize(
    "line",
    [
        b"BDAT\r\n",
        b"BDAT x\r\n",
        b"BDAT -1\r\n",
        b"BDAT 1" + b"0" * 20 + b"\r\n",
        "BDAT \uff13\r\n".encode(),
    ],
)
def test_unreadable_bdat_size_closes(line: bytes) -> None:
    dialogue = check([OPEN + bdat(1, b"a") + line + b"NOOP\r\n"])
    assert dialogue.codes[-1] == 421
    assert b"421 4.5.4 Bad BDAT syntax, closing connection\r\n" in dialogue.output
    assert joined_events(dialogue.events)[-2:] == [
        DataAborted("bad BDAT syntax"),
        ConnectionClosed(),
    ]


def test_bdat_over_the_size_limit() -> None:
    flights = [
        OPEN
        + bdat(15, b"0123456789abcde")
        + bdat(10, b"fghijklmno")
        + bdat(5, b"vwxyz", last=True)
        + b"NOOP\r\n"
    ]
    dialogue = check(flights, small())
    events = content_events(dialogue)
    assert events == [
        DataChunk(b"0123456789abcde"),
        BdatChunk(15, False, 15),
        DataChunk(b"fghij"),
        DataAborted("Message size exceeds the fixed maximum"),
    ]
    assert dialogue.codes[-4:] == [250, 552, 503, 250]


def test_bdat_over_the_size_limit_in_the_first_chunk() -> None:
    dialogue = check([OPEN + bdat(30, b"x" * 30, last=True)], small())
    assert content_events(dialogue) == [
        DataChunk(b"x" * 20),
        DataAborted("Message size exceeds the fixed maximum"),
    ]
    dialogue = check([OPEN + bdat(20, b"x" * 20) + bdat(1, b"y", last=True)], small())
    assert content_events(dialogue)[-1] == DataAborted("Message size exceeds the fixed maximum")


def test_rset_during_bdat() -> None:
    dialogue = check([OPEN + bdat(2, b"ab") + b"RSET\r\n" + bdat(1, b"c", last=True)])
    assert dialogue.codes[-3:] == [250, 250, 503]
    assert dialogue.app.messages == []


def test_quit_during_bdat_aborts() -> None:
    dialogue = check([OPEN + bdat(2, b"ab") + b"QUIT\r\n"])
    assert joined_events(dialogue.events)[-2:] == [
        DataAborted("QUIT during BDAT"),
        ConnectionClosed(),
    ]


def test_eof_mid_chunk_aborts() -> None:
    dialogue = check([OPEN + b"BDAT 10\r\nabc"], eof=True)
    assert joined_events(dialogue.events)[-3:] == [
        DataChunk(b"abc"),
        DataAborted("connection closed"),
        ConnectionClosed(),
    ]


def test_eof_mid_refused_chunk_just_closes() -> None:
    dialogue = check([b"EHLO c\r\nBDAT 10\r\nabc"], eof=True)
    assert joined_events(dialogue.events)[-1:] == [ConnectionClosed()]
    assert not any(isinstance(e, DataAborted) for e in dialogue.events)


def test_rcpt_during_bdat() -> None:
    dialogue = check([OPEN + bdat(1, b"a") + b"RCPT TO:<c@example.com>\r\n"])
    assert b"503 5.5.1 BDAT transfer under way" in dialogue.output


@pytest.mark.parametrize(
    "line",
    [
        b"BDAT 4 LAST\nxy\r\n",  # a bare LF: where would the chunk begin?
        b"bdat 2 LAST\rab\r\n",  # a bare CR
        b"BDAT 3\x00\r\nabc",  # a NUL
        b"BDAT 2 \xff\r\nab",  # not UTF-8
        b"BDAT 2 LAST " + b"x" * 600 + b"\r\n",  # over the line limit
    ],
)
def test_a_bdat_line_refused_as_a_line_closes(line: bytes) -> None:
    """Its chunk cannot be framed, so nothing after it may be read as a command."""
    dialogue = check([OPEN + line + b"NOOP\r\nQUIT\r\n"])
    assert dialogue.codes[-1] == 421
    assert dialogue.output.endswith(b"421 4.5.4 Bad BDAT syntax, closing connection\r\n")
    assert joined_events(dialogue.events)[-1] == ConnectionClosed()
