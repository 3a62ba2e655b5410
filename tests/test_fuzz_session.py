"""Fuzz target: the asyncio SMTP session, through a real listening server.

One ``MailgateServer`` (the real node: SMTP listeners, the SQLite store and
its commit service) serves every example, with STARTTLS, the submission
and smtps listeners, users to authenticate, local domains with mailboxes
and an alias, VRFY and EXPN on, and small limits.  Each example is one
session (see ``fuzz_strategies``: grammar-made or mutated) played over a
real TCP connection to a listener, twice: each flight sent whole, and cut
at random sizes.  A flight that ends with STARTTLS waits for the ``220``
and shakes hands (real TLS); on smtps the session starts with it.

Each time:

- every reply is well formed (``check_replies``): three digits, one code
  a reply, enhanced status codes of the reply's class, lines within 512
  octets;
- no internal error: no ``421 4.3.0`` (a session that failed), no ``451
  4.3.0`` (a store that failed), and nothing logged at ERROR or with a
  traceback by the server;
- no hang: after ``221`` the server closes the connection, and after the
  client's end of input it closes it too, within seconds; every read has
  a bound.

And between the two: the same replies (message ids aside) and the same
messages stored, octet for octet, when neither run was cut short by a
reset or had to guess, by silence, that STARTTLS was refused.

``make test`` runs a short derandomised pass; ``make fuzz`` runs it for
``MAILGATE_FUZZ_SECONDS``.
"""

from __future__ import annotations

import base64
import logging
import re
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import trustme
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
from mailgate.auth import UsersFile
from mailgate.config import Domain, Limits, Listen, Outbound, Settings
from mailgate.server._tls import server_context
from mailgate.testing import MailgateServer
from server_helpers import body_of

HOSTNAME = "mailgate.test"
READ_SECONDS = 10.0
"""The longest the server may keep the client waiting for anything."""
CLOSE_SECONDS = 5.0
"""How soon the connection must be closed after 221."""
QUIET_SECONDS = 0.15
"""Silence taken to mean the server has answered all it was sent (STARTTLS refused)."""
_STARTTLS_LAST = re.compile(rb"(?i)STARTTLS\r\n\Z")
_READY_FOR_TLS = b"220 2.0.0 Ready to start TLS\r\n"
_QUEUED = re.compile(rb"queued as (\S+)\r\n")
_FAILURES = (b"421 4.3.0", b"451 4.3.0")


class Captured(logging.Handler):
    """What the server logged that no session should make it log.

    Every record is formatted, as a log file would have it: a line that
    cannot be made from what a client sent is a failure too.
    """

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.bad: list[str] = []
        self.lines = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception as error:
            self.bad.append(f"{record.name}: cannot format {record.msg!r}: {error!r}")
            return
        self.lines += 1
        if record.levelno >= logging.ERROR or record.exc_info:
            self.bad.append(f"{record.name} {record.levelname}: {text}")


@dataclass
class FuzzServer:
    server: MailgateServer
    log: Captured
    client_context: ssl.SSLContext


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzServer]:
    directory = tmp_path_factory.mktemp("fuzz-session")
    ca = trustme.CA()
    cert = ca.issue_cert(HOSTNAME, "127.0.0.1")
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    users = UsersFile(directory / "users")
    users.set_password("alice", PASSWORD.decode(), log2_n=4)  # cheap scrypt: tests stay fast
    settings = Settings(
        domains=(
            Domain("example.org", mailboxes=("alice", "bob"), aliases={"team": ("alice", "bob")}),
            Domain("open.example"),
        ),
        vrfy="on",
        expn="on",
        submission=Listen("127.0.0.1", 0),
        smtps=Listen("127.0.0.1", 0),
        limits=Limits(
            max_message_size=20_000,
            max_recipients=5,
            auth_failure_delay=0.0,
            auth_block_after=1_000_000,
        ),
        # Mail relayed for a user goes nowhere: nothing listens on the discard port.
        outbound=Outbound(relay_host="127.0.0.1:9"),
    )
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    captured = Captured()
    watched = [logging.getLogger("mailgate"), logging.getLogger("asyncio")]
    for logger in watched:
        logger.addHandler(captured)
    # Every log line a session may write is written (the debug summary too), but
    # kept here: a long run would otherwise pile them up in pytest's capture.
    mailgate_log = watched[0]
    level, propagate = mailgate_log.level, mailgate_log.propagate
    mailgate_log.setLevel(logging.DEBUG)
    mailgate_log.propagate = False
    server = MailgateServer(
        data_dir=directory / "data",
        settings=settings,
        tls_context=server_context(cert_path, key_path),
        authenticator=users,
    )
    try:
        with server:
            yield FuzzServer(server, captured, client_context)
    finally:
        for logger in watched:
            logger.removeHandler(captured)
        mailgate_log.setLevel(level)
        mailgate_log.propagate = propagate


class Wire:
    """A client connection, plaintext or TLS (through memory BIOs, so it can half-close)."""

    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=READ_SECONDS)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.context = context
        self.tls: ssl.SSLObject | None = None
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.received = bytearray()
        self.eof = False
        self.reset = False

    def send(self, data: bytes) -> bool:
        """Send ``data``; False once the server is gone."""
        if self.eof or self.reset:
            return False
        try:
            if self.tls is not None:
                self.tls.write(data)
                data = self.outgoing.read()
            self.sock.sendall(data)
        except (OSError, ssl.SSLError):
            self.reset = True
            return False
        return True

    def _receive(self, timeout: float) -> bool:
        """Read once (at most ``timeout`` seconds); False when nothing came."""
        self.sock.settimeout(timeout)
        try:
            raw = self.sock.recv(65536)
        except TimeoutError:
            return False
        except OSError:
            self.reset = self.eof = True
            return True
        if self.tls is None:
            self.received += raw
            self.eof = not raw
            return True
        if raw:
            self.incoming.write(raw)
        else:
            self.incoming.write_eof()
        self.eof = not raw
        try:
            while chunk := self.tls.read(65536):
                self.received += chunk
        except ssl.SSLWantReadError:
            pass
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            self.eof = True
        except ssl.SSLError:
            self.reset = self.eof = True
        return True

    def read_until(self, done: bytes, *, quiet: float | None = None) -> bool:
        """Read until ``done`` is in the output, the end, or (given ``quiet``) silence.

        Returns False on silence.  Raises ``AssertionError`` if the server
        says nothing for ``READ_SECONDS``.
        """
        while done not in self.received and not self.eof:
            if not self._receive(quiet or READ_SECONDS):
                if quiet is not None:
                    return False
                raise AssertionError(f"no reply for {READ_SECONDS} s: {self.tail()}")
        return True

    def read_to_end(self, seconds: float) -> None:
        """Read until the server closes; raises ``AssertionError`` if it does not in time."""
        deadline = time.monotonic() + seconds
        while not self.eof:
            left = deadline - time.monotonic()
            if left <= 0 or not self._receive(left):
                raise AssertionError(f"not closed within {seconds} s: {self.tail()}")

    def starttls(self) -> bool:
        """The client's side of the handshake; False if it failed (the server closed)."""
        self.tls = tls = self.context.wrap_bio(
            self.incoming, self.outgoing, server_hostname=HOSTNAME
        )
        try:
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    self.sock.sendall(self.outgoing.read())
                    self.sock.settimeout(READ_SECONDS)
                    raw = self.sock.recv(65536)
                    if not raw:
                        raise ConnectionError("closed during the handshake") from None
                    self.incoming.write(raw)
            self.sock.sendall(self.outgoing.read())
        except (OSError, ssl.SSLError):
            self.tls = None  # read on in plaintext: whatever comes, until the end
            self.reset = True
            return False
        return True

    def half_close(self) -> None:
        if self.tls is not None and not self.reset:
            try:
                self.tls.unwrap()
            except ssl.SSLWantReadError:
                pass  # close_notify is written; the server's comes later
            except ssl.SSLError:
                self.reset = True
            self.send_raw(self.outgoing.read())
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.reset = True

    def send_raw(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError:
            self.reset = True

    def tail(self) -> str:
        return repr(bytes(self.received[-300:]))

    def close(self) -> None:
        self.sock.close()


@dataclass
class Played:
    output: bytes
    reset: bool
    guessed: bool
    """A STARTTLS wait ended in silence: timing may have decided the rest."""

    @property
    def clean(self) -> bool:
        """Whether the run saw all the server said, and took no guess."""
        return not (self.reset or self.guessed)


def play(
    fuzz: FuzzServer, listener: str, flights: Flights, cuts: list[int], wait_for_close: bool
) -> Played:
    """Play one session; check what every session must do alone."""
    fuzz.log.bad.clear()
    wire = Wire(fuzz.server.port_of(listener), fuzz.client_context)
    guessed = False
    try:
        if listener == "smtps":
            assert wire.starttls(), "the smtps handshake failed"
        wire.read_until(CRLF)
        assert wire.received.startswith(b"220 "), wire.tail()
        for flight in flights:
            for piece in splits(flight, cuts):
                if not wire.send(piece):
                    break
            if wire.tls is None and _STARTTLS_LAST.search(flight) and not wire.eof:
                mark = len(wire.received)
                if wire.read_until(_READY_FOR_TLS, quiet=QUIET_SECONDS):
                    if _READY_FOR_TLS in wire.received[mark:] and not wire.eof:
                        wire.starttls()
                else:
                    guessed = True
        if wait_for_close and flights[-1].endswith(b"QUIT\r\n"):
            wire.read_until(b"\r\n221 ", quiet=QUIET_SECONDS)
        if b"\r\n221 " in wire.received:
            # RFC 5321 4.1.1.10: the server closes the connection after 221.
            wire.read_to_end(CLOSE_SECONDS)
        if not wire.eof:
            # Whatever state the session is in, the end of input ends it (once what
            # came before it is done: a message may be being stored).
            wire.half_close()
            wire.read_to_end(READ_SECONDS)
    finally:
        wire.close()
    output = bytes(wire.received)
    if wire.tls is None and _READY_FOR_TLS in output:
        # The client did not take up the 220: what follows is the server's TLS.
        output = output[: output.index(_READY_FOR_TLS) + len(_READY_FOR_TLS)]
    replies = check_replies(output, hostname=HOSTNAME)
    for code, lines in replies:
        line = b"%d %s" % (code, lines[0].encode())
        assert not line.startswith(_FAILURES), f"an internal error: {line!r}"
    # The session's own log lines come from the server's thread, before its close.
    assert not fuzz.log.bad, fuzz.log.bad
    return Played(output, wire.reset, guessed)


def stored_bodies(fuzz: FuzzServer, output: bytes) -> list[bytes]:
    bodies = []
    for message_id in _QUEUED.findall(output):
        raw = fuzz.server.raw(message_id.decode())
        assert raw is not None, f"{message_id!r} was acknowledged but is not stored"
        bodies.append(body_of(raw))
    return bodies


counter = Counter()


def test_session_fuzz(fuzz_server: FuzzServer) -> None:
    @fuzz_settings(examples=100)
    @example(COMPLETE_SESSIONS[0], [], "smtp", [3], True)
    @example(COMPLETE_SESSIONS[1], [], "submission", [7], False)
    @example(COMPLETE_SESSIONS[1][1:], [], "smtps", [5], True)
    @example(COMPLETE_SESSIONS[2], [], "smtps", [11], False)
    @given(
        sessions(),
        mutations,
        st.sampled_from(["smtp", "smtp", "smtp", "smtps", "submission"]),
        cut_sizes,
        st.booleans(),
    )
    def check_session(
        flights: Flights,
        changes: list[Mutation],
        listener: str,
        cuts: list[int],
        wait_for_close: bool,
    ) -> None:
        counter()
        flights = mutate(flights, changes) if changes else flights
        note(f"listener = {listener!r}, flights = {flights!r}")
        whole = play(fuzz_server, listener, flights, [], wait_for_close)
        split = play(fuzz_server, listener, flights, cuts, wait_for_close)
        if not (whole.clean and split.clean):
            return
        assert _QUEUED.sub(b"queued as ID\r\n", split.output) == _QUEUED.sub(
            b"queued as ID\r\n", whole.output
        ), "replies differ when the session is split"
        assert stored_bodies(fuzz_server, split.output) == stored_bodies(
            fuzz_server, whole.output
        ), "messages differ when the session is split"

    run_fuzz("session", check_session, counter)


def test_the_fuzz_client_speaks_tls_and_sees_the_close(fuzz_server: FuzzServer) -> None:
    # The harness itself: a session with STARTTLS, AUTH and a message, fed whole and
    # byte by byte, gets the same replies, and the message is stored as sent.
    login = base64.b64encode(b"\0alice\0" + PASSWORD)
    flights = [
        b"EHLO c.example\r\nSTARTTLS\r\n",
        b"EHLO c.example\r\nAUTH PLAIN " + login + b"\r\nMAIL FROM:<a@example.org>\r\n"
        b"RCPT TO:<x@remote.example>\r\nDATA\r\nSubject: hi\r\n\r\n..dot\r\n.\r\nQUIT\r\n",
    ]
    whole = play(fuzz_server, "smtp", flights, [], True)
    split = play(fuzz_server, "smtp", flights, [1], False)
    assert whole.clean
    assert split.clean
    codes = [int(line[:3]) for line in whole.output.split(CRLF) if line[3:4] == b" "]
    assert codes == [220, 250, 220, 250, 235, 250, 250, 354, 250, 221]
    assert _QUEUED.sub(b"", whole.output) == _QUEUED.sub(b"", split.output)
    bodies = stored_bodies(fuzz_server, whole.output) + stored_bodies(fuzz_server, split.output)
    assert bodies == [b"Subject: hi\r\n\r\n.dot\r\n"] * 2


def test_the_fuzz_client_fails_on_a_server_that_never_closes() -> None:
    # A listener that answers the greeting and then says nothing, and never closes:
    # the harness must report the hang, not wait for it.
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        client = Wire(listener.getsockname()[1], ssl.create_default_context())
        peer, _ = listener.accept()
        peer.sendall(b"220 hi\r\n")
        client.read_until(CRLF)
        client.half_close()
        with pytest.raises(AssertionError, match="not closed within"):
            client.read_to_end(0.3)
        client.close()
        peer.close()
    finally:
        listener.close()
