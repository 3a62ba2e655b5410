"""Helpers for the protocol tests: a reference application, feedings, transcripts.

Transcript format (``tests/transcripts/*.smtp``)
------------------------------------------------
One step per line; the first three characters say what it is::

    # a comment (so is a blank line)
    C: EHLO client.example          client sends the text, then CRLF
    C~ DATA\\r\\nbare\\n.\\n          client sends the text with escapes
                                    (\\r \\n \\t \\\\ \\xHH) and nothing added
    S: 250-SIZE ...                 one server reply line; "..." matches any
                                    run of characters (ids, host names)
    S~ 250 2\\.0\\.0 .* queued as \\d+  one server reply line, a full regex

Consecutive ``C`` lines form one *flight*: the client sends them in one
go without waiting (PIPELINING, RFC 2920).  The ``S`` lines after a flight
are every reply line the server sends to it, in order, and no more.  The
first steps are the ``S`` lines of the greeting.  A transcript
ending without ``QUIT`` is fine.

``load_transcript(path)`` returns the steps as ``(kind, data)`` pairs,
``kind`` one of ``"C"`` (``data`` the exact octets to send), ``"S"`` (a
``...`` pattern) or ``"S~"`` (a regex); ``reply_line_matches(kind, data,
line)`` checks one reply line against an ``S`` step.  Both are meant to be
reused by tests that play a transcript against a live server.

Feedings
--------
``run_dialogue`` plays client flights against a ``ServerConnection`` with
the ``ReferenceApp`` and records events and output.  ``feedings`` yields
the three ways every case is fed: whole, byte by byte, and random splits.
``assert_feeding_invariant`` runs a dialogue under all of them and checks
that events (with adjacent ``DataChunk``s joined) and output are identical.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mailgate.protocol import (
    NEED_DATA,
    AuthCredentials,
    BdatChunk,
    Command,
    ConnectionClosed,
    ConnectionSettings,
    DataAborted,
    DataChunk,
    DataEnd,
    DataStart,
    Ehlo,
    Event,
    Expn,
    Helo,
    MailFrom,
    RcptTo,
    Reply,
    Rset,
    ServerConnection,
    StartTLS,
    State,
    Vrfy,
)

TRANSCRIPTS = Path(__file__).parent / "transcripts"
HOSTNAME = "mx.test"
PASSWORD = "secret"

Split = Callable[[bytes], list[bytes]]
Policy = Callable[[Command], Reply | None]


# ---------------------------------------------------------------- transcripts

_ESCAPES = re.compile(rb"\\(x[0-9A-Fa-f]{2}|[rnt\\])")


def _unescape(text: str) -> bytes:
    def one(match: re.Match[bytes]) -> bytes:
        code = match.group(1)
        simple = {b"r": b"\r", b"n": b"\n", b"t": b"\t", b"\\": b"\\"}
        return simple[code] if code in simple else bytes([int(code[1:], 16)])

    return _ESCAPES.sub(one, text.encode("utf-8"))


def load_transcript(path: Path | str) -> list[tuple[str, bytes]]:
    """Read a transcript: ``("C", octets)``, ``("S", pattern)``, ``("S~", regex)``.

    Raises ``ValueError`` naming the line for anything else.
    """
    steps: list[tuple[str, bytes]] = []
    for number, line in enumerate(Path(path).read_text("utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        kind, text = line[:2], line[3:] if len(line) > 2 else ""
        if kind == "C:":
            steps.append(("C", text.encode("utf-8") + b"\r\n"))
        elif kind == "C~":
            steps.append(("C", _unescape(text)))
        elif kind == "S:":
            steps.append(("S", text.encode("utf-8")))
        elif kind == "S~":
            steps.append(("S~", text.encode("utf-8")))
        else:
            raise ValueError(f"{path}:{number}: a step starts with C:, C~, S: or S~")
    return steps


def reply_line_matches(kind: str, pattern: bytes, line: bytes) -> bool:
    """Whether one reply line (CRLF removed) matches an ``S`` or ``S~`` step."""
    if kind == "S~":
        return re.fullmatch(pattern, line) is not None
    parts = [re.escape(part) for part in pattern.split(b"...")]
    return re.fullmatch(b".*".join(parts), line, re.DOTALL) is not None


def transcript_flights(
    steps: Sequence[tuple[str, bytes]],
) -> list[tuple[bytes, list[tuple[str, bytes]]]]:
    """Group steps into (client octets, expected reply steps) pairs.

    The first pair has empty client octets: the greeting.

    Raises ``ValueError`` when the steps do not begin with the greeting.
    """
    if not steps or steps[0][0] == "C":
        raise ValueError("a transcript begins with the server's greeting")
    flights: list[tuple[bytes, list[tuple[str, bytes]]]] = []
    sent = b""
    expected: list[tuple[str, bytes]] = []
    for kind, data in steps:
        if kind == "C":
            if expected:
                flights.append((sent, expected))
                sent, expected = b"", []
            sent += data
        else:
            expected.append((kind, data))
    flights.append((sent, expected))
    return flights


# ------------------------------------------------------------ reference app


@dataclass
class Message:
    """What the reference application received in one transaction."""

    sender: str
    recipients: list[str]
    content: bytes


@dataclass
class ReferenceApp:
    """Accepts everything; for tests only.

    ``policy`` may answer a command first (return a ``Reply``), to test
    refusals.  STARTTLS is accepted and the handshake completes when the
    feeding says so (``finish_handshake``), so octets sent after it in the
    same flight are, as on a real socket, never seen in plaintext.
    """

    conn: ServerConnection
    policy: Policy | None = None
    messages: list[Message] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    closed: bool = False
    handshake_pending: bool = False
    _sender: str | None = None
    _recipients: list[str] = field(default_factory=list)
    _content: bytearray = field(default_factory=bytearray)

    def greet(self) -> None:
        self.conn.send(Reply(220, None, f"{HOSTNAME} ESMTP mailgate ready"))

    def pump(self) -> None:
        """Handle events until the engine needs data or the session ends."""
        conn = self.conn
        while not self.closed:
            event = conn.next_event()
            if event is NEED_DATA:
                return
            assert isinstance(event, Event)
            self.events.append(event)
            if isinstance(event, ConnectionClosed):
                self.closed = True
                return
            if isinstance(event, DataChunk):
                self._content += event.data
            elif isinstance(event, DataAborted):
                self._end_transaction()
            else:
                assert isinstance(event, Command)
                reply = self.policy(event) if self.policy else None
                conn.send(reply if reply is not None else self._answer(event))
                if isinstance(event, (DataEnd, BdatChunk)) and conn.state is State.READY:
                    self._end_transaction()

    def finish_handshake(self) -> None:
        if self.handshake_pending and self.conn.state is State.TLS_HANDSHAKE:
            self.handshake_pending = False
            self.conn.tls_established()
            self.pump()

    def _end_transaction(self) -> None:
        self._sender = None
        self._recipients = []
        self._content = bytearray()

    def _answer(self, event: Command) -> Reply:
        conn = self.conn
        if isinstance(event, Ehlo):
            return conn.ehlo_reply(f"{HOSTNAME} Hello {event.name}")
        if isinstance(event, Helo):
            return Reply(250, None, HOSTNAME)
        if isinstance(event, MailFrom):
            self._end_transaction()
            self._sender = event.address
            return Reply(250, "2.1.0", "Sender OK")
        if isinstance(event, RcptTo):
            self._recipients.append(event.address)
            return Reply(250, "2.1.5", "Recipient OK")
        if isinstance(event, DataStart):
            return Reply(354, None, "End data with <CR><LF>.<CR><LF>")
        if isinstance(event, DataEnd):
            return self._store()
        if isinstance(event, BdatChunk):
            if event.last:
                return self._store()
            return Reply(250, "2.0.0", f"{event.size} octets received")
        if isinstance(event, Rset):
            self._end_transaction()
            return Reply(250, "2.0.0", "Reset")
        if isinstance(event, Vrfy):
            return Reply(252, "2.5.0", "Cannot VRFY user, but will accept message")
        if isinstance(event, Expn):
            return Reply(550, "5.5.1", "EXPN not available")
        if isinstance(event, StartTLS):
            self.handshake_pending = True
            return Reply(220, "2.0.0", "Ready to start TLS")
        assert isinstance(event, AuthCredentials)
        if event.password == PASSWORD:
            return Reply(235, "2.7.0", "Authentication successful")
        return Reply(535, "5.7.8", "Authentication credentials invalid")

    def _store(self) -> Reply:
        assert self._sender is not None
        self.messages.append(Message(self._sender, self._recipients, bytes(self._content)))
        self._end_transaction()
        return Reply(250, "2.0.0", f"OK: queued as {len(self.messages)}")


# ---------------------------------------------------------------- feedings


def whole(data: bytes) -> list[bytes]:
    return [data]


def byte_by_byte(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def random_splits(seed: int) -> Split:
    def split(data: bytes) -> list[bytes]:
        rng = random.Random(seed)
        pieces, i = [], 0
        while i < len(data):
            n = rng.randint(1, 17)
            pieces.append(data[i : i + n])
            i += n
        return pieces

    split.__name__ = f"random_splits_{seed}"
    return split


def feedings() -> Iterator[Split]:
    """Whole, byte by byte, and three random splittings."""
    yield whole
    yield byte_by_byte
    for seed in (1, 2, 3):
        yield random_splits(seed)


@dataclass
class Dialogue:
    """The record of one played dialogue."""

    app: ReferenceApp
    replies: list[bytes]
    """The server's output after the greeting and after each flight."""

    @property
    def conn(self) -> ServerConnection:
        return self.app.conn

    @property
    def events(self) -> list[Event]:
        return self.app.events

    @property
    def output(self) -> bytes:
        return b"".join(self.replies)

    @property
    def codes(self) -> list[int]:
        """The reply codes sent, one per reply (continuation lines skipped)."""
        return [int(line[:3]) for line in self.output.split(b"\r\n") if line[3:4] == b" "]

    def reply_lines(self) -> list[bytes]:
        return self.output.split(b"\r\n")[:-1]


def run_dialogue(
    flights: Sequence[bytes] | bytes,
    *,
    settings: ConnectionSettings | None = None,
    split: Split = whole,
    policy: Policy | None = None,
    eof: bool = False,
) -> Dialogue:
    """Greet, then feed each flight (split by ``split``), pumping after each piece."""
    if isinstance(flights, bytes):
        flights = [flights]
    conn = ServerConnection(settings or ConnectionSettings(hostname=HOSTNAME))
    app = ReferenceApp(conn, policy)
    app.greet()
    replies = [conn.data_to_send()]
    for flight in flights:
        for piece in split(flight):
            if app.closed:
                break
            conn.receive_data(piece)
            app.pump()
        app.finish_handshake()
        replies.append(conn.data_to_send())
    if eof and not app.closed:
        conn.receive_eof()
        app.pump()
        replies.append(conn.data_to_send())
    return Dialogue(app, replies)


def joined_events(events: Sequence[Event]) -> list[Event]:
    """Events with adjacent ``DataChunk``s joined into one."""
    out: list[Event] = []
    for event in events:
        if isinstance(event, DataChunk) and out and isinstance(out[-1], DataChunk):
            out[-1] = DataChunk(out[-1].data + event.data)
        elif not (isinstance(event, DataChunk) and not event.data):
            out.append(event)
    return out


def assert_feeding_invariant(
    flights: Sequence[bytes] | bytes,
    *,
    settings: ConnectionSettings | None = None,
    policy: Policy | None = None,
    eof: bool = False,
) -> Dialogue:
    """Play the dialogue under every feeding; all must agree.  Returns the whole one."""
    reference: Dialogue | None = None
    for split in feedings():
        dialogue = run_dialogue(flights, settings=settings, split=split, policy=policy, eof=eof)
        if reference is None:
            reference = dialogue
            continue
        name = getattr(split, "__name__", "split")
        assert joined_events(dialogue.events) == joined_events(reference.events), name
        assert dialogue.replies == reference.replies, name
        assert dialogue.conn.state is reference.conn.state, name
        assert dialogue.app.messages == reference.app.messages, name
    assert reference is not None
    return reference


def play_transcript(
    path: Path | str,
    *,
    settings: ConnectionSettings | None = None,
    split: Split = whole,
) -> Dialogue:
    """Play a transcript against the engine and the reference app; assert every reply.

    Raises ``AssertionError`` naming the first reply line that differs.
    """
    flights = transcript_flights(load_transcript(path))
    dialogue = run_dialogue([sent for sent, _ in flights[1:]], settings=settings, split=split)
    for index, ((sent, expected), output) in enumerate(zip(flights, dialogue.replies, strict=True)):
        lines = output.split(b"\r\n")[:-1]
        where = f"{Path(path).name}, flight {index} ({sent[:40]!r})"
        assert len(lines) == len(expected), f"{where}: expected {expected}, got {lines}"
        for (kind, pattern), line in zip(expected, lines, strict=True):
            assert reply_line_matches(kind, pattern, line), f"{where}: {pattern!r} != {line!r}"
    return dialogue
