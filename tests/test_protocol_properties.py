"""Hypothesis properties of the engine: chunking, dot-stuffing, arbitrary input,
DATA framing, and a rule-based model of the envelope."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from mailgate.protocol import (
    Command,
    ConnectionSettings,
    DataAborted,
    DataChunk,
    DataEnd,
    State,
)
from protocol_helpers import HOSTNAME, joined_events, run_dialogue

FAST = settings(max_examples=60, deadline=None)
GENEROUS = ConnectionSettings(hostname=HOSTNAME, error_budget=10_000, max_message_size=4000)

COMMAND_LINES = [
    b"EHLO c.example\r\n",
    b"HELO c.example\r\n",
    b"MAIL FROM:<a@example.org>\r\n",
    b"MAIL FROM:<a@example.org> SIZE=10 BODY=8BITMIME\r\n",
    b"RCPT TO:<b@example.com>\r\n",
    b"RCPT TO:<postmaster>\r\n",
    b"MAIL FROM:<a@example.org> RET=HDRS ENVID=x+2By\r\n",
    b"RCPT TO:<b@example.com> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;b+2Bc@example.com\r\n",
    b"RCPT TO:<b@example.com> NOTIFY=NEVER,FAILURE\r\n",
    b"DATA\r\n",
    b"BDAT 5\r\nhello",
    b"BDAT 3 LAST\r\nend",
    b"BDAT 0 LAST\r\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"VRFY x\r\n",
    b"line of text\r\n",
    b".\r\n",
    b"..\r\n",
    b"\r\n.\r\n",
    b"bare\nlf\r\n",
    b"QUIT\r\n",
]

script = st.lists(
    st.one_of(st.sampled_from(COMMAND_LINES), st.binary(max_size=12)), max_size=25
).map(b"".join)


def splits(data: bytes, cuts: list[int]) -> list[bytes]:
    pieces, i = [], 0
    for cut in cuts:
        if i >= len(data):
            break
        pieces.append(data[i : i + cut])
        i += cut
    if i < len(data):
        pieces.append(data[i:])
    return pieces


@FAST
@given(script, st.lists(st.integers(1, 40), max_size=60), st.booleans())
def test_any_chunking_gives_the_same_events_and_output(
    data: bytes, cuts: list[int], eof: bool
) -> None:
    whole = run_dialogue(data, settings=GENEROUS, eof=eof)
    split = run_dialogue(
        data, settings=GENEROUS, split=lambda flight: splits(flight, cuts), eof=eof
    )
    assert joined_events(split.events) == joined_events(whole.events)
    assert split.output == whole.output
    assert split.conn.state is whole.conn.state


# A reply line is UTF-8 (Reply allows non-ASCII text, as SMTPUTF8 does) with
# no control character, nor a Unicode line separator, whatever the client sent.
REPLY_LINE = re.compile(r"[2-5][0-9][0-9][ -][^\x00-\x1f\x7f-\x9f\u2028\u2029]*")


def assert_well_formed(output: bytes) -> None:
    """Every reply line is well formed, and a multi-line reply keeps one code."""
    assert not output or output.endswith(b"\r\n"), output[-80:]
    code = ""
    for raw in output.split(b"\r\n")[:-1]:
        line = raw.decode("utf-8")
        assert REPLY_LINE.fullmatch(line), line
        assert not code or line[:3] == code, (code, line)
        code = line[:3] if line[3] == "-" else ""
    assert not code, "the last reply is unfinished"


@FAST
@given(st.binary(max_size=400), st.lists(st.integers(1, 50), max_size=20))
def test_arbitrary_bytes_are_answered_never_raised(data: bytes, cuts: list[int]) -> None:
    for prefix in (b"", b"EHLO c\r\n", b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\n"):
        dialogue = run_dialogue(
            prefix + data,
            settings=GENEROUS,
            split=lambda flight: splits(flight, cuts),
            eof=True,
        )
        assert_well_formed(dialogue.output)
        lines = dialogue.reply_lines()
        commands = sum(isinstance(event, Command) for event in dialogue.events)
        final_lines = sum(line[3:4] == b" " for line in lines)
        assert final_lines >= commands + 1  # the greeting, then one reply per command
        assert dialogue.conn.state is State.CLOSED


# Lines made of a verb, pieces of arguments with control characters among
# them, and a line ending (mostly CRLF), so that random input often reaches
# the grammar of every command, AUTH's and the SASL responses' included.
VERBS = [
    *(b"EHLO ", b"HELO ", b"MAIL FROM:", b"RCPT TO:", b"VRFY ", b"EXPN ", b"NOOP ", b"HELP "),
    *(b"AUTH PLAIN ", b"AUTH LOGIN", b"RSET", b"DATA", b"BDAT 3", b"QUIT", b"", b"."),
]
CONTROLS = [b"\x00", b"\x01", b"\t", b"\x1b", b"\x7f", "\u0085".encode(), "\u2028".encode()]
ARGUMENT_PIECES = [
    *(b"<", b">", b"@", b'"', b"\\", b"[IPv6:", b"[", b"]", b":", b",", b" ", b"="),
    *(b"SIZE=", b" SMTPUTF8", b" BODY=8BITMIME", b" LAST", b"a", b"example.org", b"*", b"YQ=="),
    *("é".encode(), b"\xff", b"\r\n.\r\n"),
]
ENDINGS = [b"\r\n", b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r", b""]
nasty_line = st.tuples(
    st.sampled_from(VERBS),
    st.lists(
        st.one_of(
            st.sampled_from(ARGUMENT_PIECES), st.sampled_from(CONTROLS), st.binary(max_size=3)
        ),
        max_size=8,
    ),
    st.sampled_from(ENDINGS),
).map(lambda parts: parts[0] + b"".join(parts[1]) + parts[2])
nasty = st.lists(nasty_line, max_size=15).map(b"".join)
NASTY_SETTINGS = [
    ConnectionSettings(
        hostname=HOSTNAME,
        error_budget=10_000,
        auth_mechanisms=("PLAIN", "LOGIN"),
        auth_requires_tls=False,
        bare_line_endings=mode,  # type: ignore[arg-type]
        smtputf8=utf8,
    )
    for mode, utf8 in (("normalise", True), ("reject", False))
]


@settings(max_examples=200, deadline=None)
@given(
    nasty,
    st.lists(st.integers(1, 30), max_size=40),
    st.sampled_from(NASTY_SETTINGS),
    st.booleans(),
)
def test_any_input_gets_well_formed_replies(
    data: bytes, cuts: list[int], settings_: ConnectionSettings, identified: bool
) -> None:
    # Nothing raises (the server engine documents no exception for its input),
    # and every reply is well formed: no client byte is echoed unprintable.
    prefix = b"EHLO c\r\n" if identified else b""
    dialogue = run_dialogue(
        prefix + data, settings=settings_, split=lambda flight: splits(flight, cuts), eof=True
    )
    assert_well_formed(dialogue.output)
    assert dialogue.conn.state is State.CLOSED


text_line = st.binary(max_size=120).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


@FAST
@given(st.lists(text_line, max_size=30), st.lists(st.integers(1, 64), max_size=40))
def test_dot_stuffing_round_trips(lines: list[bytes], cuts: list[int]) -> None:
    stuffed = b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)
    flights = [
        b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n",
        stuffed + b".\r\n",
    ]
    dialogue = run_dialogue(flights, split=lambda flight: splits(flight, cuts))
    (message,) = dialogue.app.messages
    assert message.content == b"".join(line + b"\r\n" for line in lines)


content_with_bare_endings = (
    st.lists(
        st.one_of(
            st.sampled_from([b"\r", b"\n", b".", b"\r\n", b"\n.\n", b"\r.\r", b"\n.\r\n"]),
            st.binary(max_size=8),
        ),
        max_size=40,
    )
    .map(b"".join)
    .filter(lambda c: b"\r\n.\r\n" not in c and not c.startswith(b".\r\n"))
    .filter(lambda c: not (c.startswith(b".\r") and c[2:3] == b"\n"))
)


@FAST
@given(
    content_with_bare_endings,
    st.sampled_from(["reject", "normalise"]),
    st.lists(st.integers(1, 30), max_size=40),
)
def test_no_bare_cr_or_lf_ends_data_early(content: bytes, mode: str, cuts: list[int]) -> None:
    settings_ = ConnectionSettings(hostname=HOSTNAME, bare_line_endings=mode)  # type: ignore[arg-type]
    flights = [
        b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n",
        content + b"\r\n.\r\nNOOP\r\n",
    ]
    dialogue = run_dialogue(flights, settings=settings_, split=lambda flight: splits(flight, cuts))
    events = joined_events(dialogue.events)
    ends = [i for i, e in enumerate(events) if isinstance(e, (DataEnd, DataAborted))]
    assert len(ends) == 1
    assert ends[0] == len(events) - 1  # nothing after it but the NOOP, which has no event
    assert dialogue.codes[-1] == 250  # NOOP, read as a command after the real terminator
    has_bare = (content + b"\r\n").count(b"\r\n") != (content + b"\r\n").count(b"\n") or (
        (content + b"\r\n").count(b"\r\n") != (content + b"\r\n").count(b"\r")
    )
    if mode == "reject" and has_bare:
        assert isinstance(events[-1], DataAborted)
    if mode == "normalise":
        assert isinstance(events[-1], DataEnd)
        data = b"".join(e.data for e in events if isinstance(e, DataChunk))
        assert data.count(b"\r") == data.count(b"\n") == data.count(b"\r\n")


# ------------------------------------------------------------- state machine


class EnvelopeMachine(RuleBasedStateMachine):
    """Drives the engine with a command at a time; a tiny model predicts the rest."""

    def __init__(self) -> None:
        super().__init__()
        self.dialogue = run_dialogue([], settings=GENEROUS)
        self.sender: str | None = None
        self.recipients = 0
        self.identified = False
        self.chunking = False
        self.messages = 0

    def send(self, data: bytes) -> list[int]:
        app = self.dialogue.app
        app.conn.receive_data(data)
        app.pump()
        app.finish_handshake()
        output = app.conn.data_to_send()
        return [int(line[:3]) for line in output.split(b"\r\n") if line[3:4] == b" "]

    def reset_envelope(self) -> None:
        self.sender = None
        self.recipients = 0
        self.chunking = False

    @rule(extended=st.booleans())
    def hello(self, extended: bool) -> None:
        assert self.send(b"EHLO c\r\n" if extended else b"HELO c\r\n") == [250]
        self.identified = True
        self.reset_envelope()

    @rule(name=st.sampled_from(["a@example.org", "", "x.y@[192.0.2.1]"]))
    def mail(self, name: str) -> None:
        codes = self.send(b"MAIL FROM:<%s>\r\n" % name.encode())
        if self.identified and self.sender is None:
            assert codes == [250]
            self.sender = name
        else:
            assert codes == [503]

    @rule(good=st.booleans())
    def rcpt(self, good: bool) -> None:
        codes = self.send(b"RCPT TO:<b@example.com>\r\n" if good else b"RCPT TO:<b@>\r\n")
        if self.sender is None or self.chunking:
            assert codes == [503]
        elif good:
            assert codes == [250]
            self.recipients += 1
        else:
            assert codes == [501]

    @rule(body=text_line)
    def data(self, body: bytes) -> None:
        codes = self.send(b"DATA\r\n")
        if self.sender is None or not self.recipients or self.chunking:
            assert codes == [503]
            return
        assert codes == [354]
        stuffed = b"." + body if body.startswith(b".") else body
        assert self.send(stuffed + b"\r\n.\r\n") == [250]
        self.messages += 1
        self.reset_envelope()

    @precondition(lambda self: self.identified)
    @rule(size=st.integers(0, 5), last=st.booleans())
    def bdat(self, size: int, last: bool) -> None:
        codes = self.send(b"BDAT %d%s\r\n" % (size, b" LAST" if last else b"") + b"x" * size)
        extended = self.dialogue.conn.extended
        if self.sender is None or not self.recipients or not extended:
            assert codes == [503]
            if self.recipients and not extended:
                self.reset_envelope()  # a refused chunk fails the transaction
            return
        assert codes == [250]
        if last:
            self.messages += 1
            self.reset_envelope()
        else:
            self.chunking = True

    @rule()
    def rset(self) -> None:
        assert self.send(b"RSET\r\n") == [250]
        self.reset_envelope()

    @rule()
    def noop(self) -> None:
        assert self.send(b"NOOP\r\n") == [250]

    @invariant()
    def envelope_matches(self) -> None:
        conn = self.dialogue.conn
        assert conn.recipients == self.recipients
        assert len(self.dialogue.app.messages) == self.messages
        if not self.identified:
            expected = State.CONNECTED
        elif self.sender is None:
            expected = State.READY
        elif self.chunking:
            expected = State.BDAT
        else:
            expected = State.RCPT if self.recipients else State.MAIL
        assert conn.state is expected
        if self.sender is not None and self.recipients:
            pending = self.dialogue.app
            assert pending._sender == self.sender


EnvelopeMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)
test_envelope_model = EnvelopeMachine.TestCase
