"""Fuzz target: the sans-I/O server engine, fed grammar-made and mutated sessions.

Each example is one session (see ``fuzz_strategies``), played three times
against a ``ServerConnection`` by an application (``Driver``) that answers
each command as a hypothesis-chosen list of verdicts says (accept, refuse
for now, refuse for good, 421): fed whole, byte by byte, and at random
splits.  Across the three the events (with adjacent content joined), the
replies after each flight, the messages and the final state must agree.
Within each:

- nothing raises out of the engine, and every reply is well formed
  (``check_replies``);
- no hang: ``next_event`` returns a bounded number of events for the octets
  fed, and the whole example runs under an alarm;
- the application sees only commands in sequence (a tiny model of the
  session says which may come), free of control characters, and the
  engine's state is the model's after every reply;
- content is delivered only after ``354``, or inside a BDAT chunk of an
  open transaction, and adds up to ``DataEnd.size`` and ``BdatChunk.total``;
  DATA content holds only CRLF line endings and no line over the limit;
- fed byte by byte, DATA ends exactly when the octets since the DATA line
  first hold ``<CRLF>.<CRLF>``, on that very octet, never sooner or later;
- once ``220`` answers STARTTLS nothing is read until the handshake, and
  nothing pipelined behind STARTTLS is left to read after it;
- after a flight that ends with CRLF no input is left unread, and after the
  end of input the session is closed.

``make test`` runs a short derandomised pass; ``make fuzz`` runs it for
``MAILGATE_FUZZ_SECONDS``.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType

from hypothesis import example, given, note
from hypothesis import strategies as st

from fuzz_strategies import (
    COMPLETE_SESSIONS,
    CRLF,
    PASSWORD,
    Counter,
    Flights,
    Mutation,
    check_replies,
    cut_sizes,
    fuzz_settings,
    mutate,
    mutations,
    run_fuzz,
    sessions,
    splits,
)
from mailgate.protocol import (
    NEED_DATA,
    AnyEvent,
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
from protocol_helpers import joined_events

HOSTNAME = "mx.test"
ALARM_SECONDS = 20.0
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_TERMINATOR = b"\r\n.\r\n"

connection_settings = st.builds(
    ConnectionSettings,
    hostname=st.just(HOSTNAME),
    max_message_size=st.sampled_from([25 * 1024 * 1024, 0, 100, 3000]),
    max_recipients=st.sampled_from([1000, 1, 3]),
    max_command_line=st.sampled_from([512, 1000]),
    max_text_line=st.sampled_from([1000, 1500]),
    error_budget=st.sampled_from([10_000, 10_000, 10_000, 20, 3, 1]),
    bare_line_endings=st.sampled_from(["normalise", "reject"]),
    smtputf8=st.booleans(),
    starttls=st.sampled_from([True, True, False]),
    tls_active=st.sampled_from([False, False, True]),
    auth_mechanisms=st.sampled_from([("PLAIN", "LOGIN"), (), ("PLAIN",), ("LOGIN",)]),
    auth_requires_tls=st.booleans(),
)
verdicts = st.lists(st.sampled_from(["ok", "ok", "ok", "temporary", "permanent", "close"]))


class Hang(Exception):
    """The engine did not come back in time."""


@contextmanager
def alarm(seconds: float) -> Iterator[None]:
    def ring(signum: int, frame: FrameType | None) -> None:
        raise Hang(f"the engine did not come back within {seconds} s")

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Driver:
    """An application on the engine that checks, event by event, what it is handed."""

    settings: ConnectionSettings
    verdicts: Sequence[str]
    byte_by_byte: bool = False
    conn: ServerConnection = field(init=False)
    events: list[AnyEvent] = field(default_factory=list)
    replies: list[bytes] = field(default_factory=list)
    messages: list[bytes] = field(default_factory=list)
    fed: bytearray = field(default_factory=bytearray)
    closed: bool = False
    closed_by_reply: bool = False
    # The model: what the replies sent so far allow next.
    greeted: bool = False
    identified: bool = False
    extended: bool = False
    tls: bool = False
    authenticated: bool = False
    mail: bool = False
    recipients: int = 0
    chunking: bool = False
    in_data: bool = False
    data_from: int = 0
    handshake: bool = False
    content: bytearray = field(default_factory=bytearray)
    chunk: int = 0
    commands: int = 0

    def __post_init__(self) -> None:
        self.conn = ServerConnection(self.settings)
        self.tls = self.settings.tls_active

    # --------------------------------------------------------------- feeding

    def play(self, flights: Flights, greeting: int, cuts: Sequence[int], eof: bool) -> None:
        self.conn.send(Reply(greeting, None, f"{HOSTNAME} ESMTP ready"))
        self.greeted = greeting == 220
        self.replies.append(self.conn.data_to_send())
        for flight in flights:
            if self.byte_by_byte:
                pieces = [flight[i : i + 1] for i in range(len(flight))]
            else:
                pieces = splits(flight, cuts)
            for piece in pieces:
                if self.closed:
                    break
                self.fed += piece
                self.conn.receive_data(piece)
                self.pump(len(piece))
            if self.handshake and not self.closed:
                self.finish_handshake()
            if flight.endswith(CRLF) and not self.closed:
                assert not self.conn.has_buffered_input, "input left unread after a whole line"
            self.replies.append(self.conn.data_to_send())
        if eof and not self.closed:
            self.conn.receive_eof()
            self.pump(0)
            assert self.closed, "the end of input did not close the session"
            self.replies.append(self.conn.data_to_send())

    def pump(self, octets: int) -> None:
        ended = False
        for _ in range(2 * octets + 5):
            if self.closed:
                break
            event = self.conn.next_event()
            if event is NEED_DATA:
                self.check_state(waiting=True)
                break
            self.events.append(event)
            # Counted before the event moves the model: did it end DATA?
            ended = ended or (isinstance(event, (DataEnd, DataAborted)) and self.in_data)
            self.handle(event)
        else:
            raise AssertionError(
                f"next_event gave over {2 * octets + 5} events for {octets} octets"
            )
        if self.byte_by_byte and octets and (self.in_data or ended):
            self.check_terminator(ended)

    def check_terminator(self, ended: bool) -> None:
        # Checked at every octet, so the first <CRLF>.<CRLF> since the DATA line (whose
        # own CRLF may be its first two octets) is the one the fed octets end with now.
        fed = self.fed
        complete = fed.endswith(_TERMINATOR) and len(fed) - len(_TERMINATOR) >= self.data_from - 2
        assert ended == complete, f"DATA ended={ended} after {bytes(fed[-40:])!r}"

    def finish_handshake(self) -> None:
        assert self.conn.state is State.TLS_HANDSHAKE
        self.conn.tls_established()
        self.handshake = False
        # RFC 3207 4.2: what was pipelined behind STARTTLS is gone.
        assert not self.conn.has_buffered_input, "plaintext kept across STARTTLS"
        assert self.conn.next_event() is NEED_DATA
        self.tls, self.identified, self.extended, self.authenticated = True, False, False, False
        self.check_state(waiting=True)

    # ---------------------------------------------------------------- checks

    def expected_state(self) -> State:
        if self.closed or self.closed_by_reply:
            return State.CLOSED
        if self.conn.errors >= self.settings.error_budget:  # 421 after the last 5xx
            return State.CLOSED
        if self.handshake:
            return State.TLS_HANDSHAKE
        if self.in_data:
            return State.DATA
        if self.chunking:
            return State.BDAT
        if self.mail:
            return State.RCPT if self.recipients else State.MAIL
        if self.identified:
            return State.READY
        return State.CONNECTED if self.greeted else State.REFUSED

    def check_state(self, *, waiting: bool = False) -> None:
        expected = self.expected_state()
        state = self.conn.state
        # Between lines of a SASL exchange the model sees no more than READY.
        if not (waiting and state is State.AUTH and expected is State.READY):
            assert state is expected, f"engine in {state}, model in {expected}"
        if state is not State.CLOSED:
            assert self.conn.recipients == self.recipients

    def check_in_sequence(self, event: AnyEvent) -> None:
        open_ = self.mail and self.recipients > 0
        assert not self.handshake, f"{event} read during the TLS handshake"
        match event:
            case DataChunk():
                assert self.in_data or open_, "content outside a transaction"
            case DataEnd():
                assert self.in_data
                assert event.size == len(self.content)
            case DataAborted():
                assert self.in_data or open_, "abort outside a transaction"
            case BdatChunk():
                assert open_
                assert self.extended
                assert not self.in_data
                assert event.total == len(self.content)
                assert event.size == self.chunk
            case MailFrom():
                assert self.identified
                assert not self.mail
                assert self.extended or not event.params
                self.check_text(event.address, *event.params, *map(str, event.params.values()))
            case RcptTo():
                assert self.mail
                assert not self.chunking
                assert self.extended or not event.params
                self.check_text(event.address, *event.params, *map(str, event.params.values()))
            case DataStart():
                assert open_
                assert not self.chunking
            case Helo() | Ehlo():
                assert self.greeted
                self.check_text(event.name)
            case Vrfy() | Expn():
                assert self.greeted
                self.check_text(event.argument)
            case Rset():
                assert self.greeted
            case StartTLS():
                assert self.settings.starttls
                assert self.extended
                assert not self.tls
                assert not self.mail
            case AuthCredentials():
                assert self.settings.auth_mechanisms
                assert self.extended
                assert not self.authenticated
                assert not self.mail
                assert self.tls or not self.settings.auth_requires_tls
            case ConnectionClosed():
                pass

    @staticmethod
    def check_text(*texts: str) -> None:
        for text in texts:
            assert not _CONTROL.search(text), f"control character reached the application: {text!r}"

    # ------------------------------------------------------------- replying

    def handle(self, event: AnyEvent) -> None:
        self.check_in_sequence(event)
        match event:
            case ConnectionClosed():
                self.closed = True
            case DataChunk():
                self.content += event.data
                self.chunk += len(event.data)
            case DataAborted():
                self.end_transaction()
            case _:
                assert isinstance(event, Command)
                reply = self.answer(event)
                self.conn.send(reply)
                self.after(event, reply)
                self.check_state()

    def verdict(self) -> str:
        verdict = self.verdicts[self.commands] if self.commands < len(self.verdicts) else "ok"
        self.commands += 1
        return verdict

    def answer(self, event: Command) -> Reply:
        verdict = self.verdict()
        if verdict == "close":
            return Reply(421, "4.3.2", f"{HOSTNAME} Shutting down")
        if isinstance(event, AuthCredentials) and event.password != PASSWORD.decode():
            return Reply(535, "5.7.8", "Authentication credentials invalid")
        if verdict == "temporary":
            return Reply(451, "4.3.0", "Try again later")
        if verdict == "permanent":
            return Reply(554, "5.7.1", "Refused")
        match event:
            case Ehlo():
                return self.conn.ehlo_reply(f"{HOSTNAME} Hello {event.name[:100]}")
            case Helo():
                return Reply(250, None, HOSTNAME)
            case MailFrom():
                return Reply(250, "2.1.0", f"<{event.address[:100]}> Sender OK")
            case RcptTo():
                return Reply(250, "2.1.5", f"<{event.address[:100]}> Recipient OK")
            case DataStart():
                return Reply(354, None, "End data with <CR><LF>.<CR><LF>")
            case DataEnd():
                return Reply(250, "2.0.0", "Queued")
            case BdatChunk():
                return Reply(250, "2.0.0", f"{event.size} octets received")
            case StartTLS():
                return Reply(220, "2.0.0", "Ready to start TLS")
            case AuthCredentials():
                return Reply(235, "2.7.0", "Authentication successful")
            case Vrfy() | Expn():
                return Reply(252, "2.5.0", f"Cannot VRFY {event.argument[:100]}")
            case _:
                return Reply(250, "2.0.0", "Flushed")

    def after(self, event: Command, reply: Reply) -> None:
        """Move the model as the reply to ``event`` moves the session."""
        if reply.code == 421:
            self.end_transaction()
            self.closed_by_reply = True
            return
        good = reply.code < 300
        match event:
            case Ehlo() | Helo() if good:
                self.end_transaction()
                self.identified, self.extended = True, isinstance(event, Ehlo)
            case MailFrom() if good:
                self.mail = True
            case RcptTo() if good:
                self.recipients += 1
            case DataStart() if reply.code == 354:
                self.in_data, self.data_from = True, len(self.fed)
                self.check_content_empty()
            case DataEnd():
                self.store(good, data=True)
            case BdatChunk():
                if event.last or not good:
                    self.store(good and event.last, data=False)
                else:
                    self.chunking = True
                self.chunk = 0
            case Rset() if good:
                self.end_transaction()
            case StartTLS() if reply.code == 220:
                self.handshake = True
            case AuthCredentials() if reply.code == 235:
                self.authenticated = True

    def check_content_empty(self) -> None:
        assert not self.content, "content delivered before 354"

    def store(self, good: bool, *, data: bool) -> None:
        content = bytes(self.content)
        if data:
            # Only CRLF ends a stored line, and none is over the limit (RFC 5321 4.5.3.1.6).
            assert content.count(b"\r") == content.count(b"\n") == content.count(CRLF)
            assert not content or content.endswith(CRLF)
            longest = max((len(line) for line in content.split(CRLF)), default=0)
            assert longest <= self.settings.max_text_line - 2
        limit = self.settings.max_message_size
        assert not limit or len(content) <= limit
        if good:
            self.messages.append(content)
        self.end_transaction()

    def end_transaction(self) -> None:
        self.mail, self.recipients, self.chunking, self.in_data = False, 0, False, False
        self.content = bytearray()
        self.chunk = 0


def play(
    flights: Flights,
    settings: ConnectionSettings,
    answers: Sequence[str],
    greeting: int,
    cuts: Sequence[int],
    eof: bool,
    *,
    byte_by_byte: bool = False,
) -> Driver:
    driver = Driver(settings, answers, byte_by_byte=byte_by_byte)
    driver.play(flights, greeting, cuts, eof)
    check_replies(b"".join(driver.replies), hostname=HOSTNAME)
    if driver.closed_by_reply:
        assert driver.closed, "a 421 from the application did not close the session"
    return driver


counter = Counter()


TLS_AND_AUTH = ConnectionSettings(
    hostname=HOSTNAME, starttls=True, auth_mechanisms=("PLAIN", "LOGIN"), auth_requires_tls=False
)


@fuzz_settings(examples=250)
@example(COMPLETE_SESSIONS[0], [], TLS_AND_AUTH, [], 220, [3], False)
@example(COMPLETE_SESSIONS[1], [], TLS_AND_AUTH, [], 220, [7], True)
@example(COMPLETE_SESSIONS[2], [], TLS_AND_AUTH, [], 220, [5], True)
@given(
    sessions(),
    mutations,
    connection_settings,
    verdicts,
    st.sampled_from([220, 220, 220, 220, 554]),
    cut_sizes,
    st.booleans(),
)
def check_engine(
    flights: Flights,
    changes: list[Mutation],
    settings: ConnectionSettings,
    answers: list[str],
    greeting: int,
    cuts: list[int],
    eof: bool,
) -> None:
    counter()
    flights = mutate(flights, changes) if changes else flights
    note(f"flights = {flights!r}")
    with alarm(ALARM_SECONDS):
        whole = play(flights, settings, answers, greeting, [], eof)
        ways = {
            "byte by byte": play(flights, settings, answers, greeting, [], eof, byte_by_byte=True),
            f"split at {cuts}": play(flights, settings, answers, greeting, cuts, eof),
        }
    for name, other in ways.items():
        assert joined_events(other.events) == joined_events(whole.events), name
        assert other.replies == whole.replies, name
        assert other.messages == whole.messages, name
        assert other.conn.state is whole.conn.state, name


def test_engine_fuzz() -> None:
    run_fuzz("engine", check_engine, counter)
