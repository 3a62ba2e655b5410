"""The engine's rules as tables: every (state, command) pair is allowed or refused, once.

The sets are small, so every pair is enumerated: first in the tables
themselves, then against a real ``ServerConnection`` driven into each state,
so that the tables cannot say one thing while the engine does another.
"""

from __future__ import annotations

import pytest

from mailgate.protocol import (
    NEED_DATA,
    AuthCredentials,
    BdatChunk,
    Command,
    ConnectionSettings,
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
from mailgate.protocol._offers import withheld
from mailgate.protocol._state import READING, REFUSALS, TRANSITIONS, Step, Verb
from protocol_helpers import HOSTNAME

# ------------------------------------------------------------- the tables


@pytest.mark.parametrize("state", list(State))
def test_every_command_is_allowed_or_refused_never_both(state: State) -> None:
    for verb in Verb:
        allowed = (state, verb) in TRANSITIONS
        refused = (state, verb) in REFUSALS
        if state in READING:
            assert allowed != refused, (state, verb)
        else:  # no command line is read in this state
            assert (allowed, refused) == (False, False), (state, verb)


def test_the_tables_hold_nothing_else() -> None:
    kinds = {kind for _, kind in TRANSITIONS}
    assert kinds == set(Verb) | set(Step)
    assert {state for state, _ in REFUSALS} <= READING
    # Nothing leaves CLOSED; every other state is reached from the greeting.
    assert not any(state is State.CLOSED for state, _ in TRANSITIONS)
    reached, frontier = {State.GREETING}, [State.GREETING]
    while frontier:
        state = frontier.pop()
        for (source, _), targets in TRANSITIONS.items():
            for target in targets:
                if source is state and target not in reached:
                    reached.add(target)
                    frontier.append(target)
    assert reached == set(State)


def test_a_last_chunk_may_come_wherever_a_chunk_may() -> None:
    chunks = {state for state, kind in TRANSITIONS if kind is Verb.BDAT}
    assert {state for state, kind in TRANSITIONS if kind is Step.BDAT_LAST} == chunks


def test_a_refusal_is_503_and_moves_nothing() -> None:
    # RFC 5321 4.1.4: a command out of sequence gets 503; the engine refuses
    # before its arguments are read, and the state stays as it was.
    assert {(reply.code, reply.enhanced) for reply in REFUSALS.values()} == {(503, "5.5.1")}


@pytest.mark.parametrize("extended", [False, True])
@pytest.mark.parametrize("tls_active", [False, True])
@pytest.mark.parametrize("authenticated", [False, True])
def test_only_extension_commands_are_withheld(
    extended: bool, tls_active: bool, authenticated: bool
) -> None:
    settings = ConnectionSettings(starttls=True, auth_mechanisms=("PLAIN",))
    refusals = withheld(
        settings, extended=extended, tls_active=tls_active, authenticated=authenticated
    )
    assert set(refusals) <= {Verb.BDAT, Verb.STARTTLS, Verb.AUTH}
    assert (Verb.STARTTLS in refusals) == (not extended or tls_active)
    assert (Verb.AUTH in refusals) == (not extended or authenticated or not tls_active)
    if extended and not authenticated and not tls_active:
        assert refusals[Verb.AUTH].code == 538  # RFC 4954 6
    assert all(reply.code in (503, 538) for reply in refusals.values())


# --------------------------------------------------- the engine, each pair

# Nothing is withheld from a session that said EHLO with these settings.
OPEN = ConnectionSettings(
    hostname=HOSTNAME, starttls=True, auth_mechanisms=("PLAIN", "LOGIN"), auth_requires_tls=False
)

COMMAND_LINES = {
    Verb.HELO: b"HELO c.example\r\n",
    Verb.EHLO: b"EHLO c.example\r\n",
    Verb.MAIL: b"MAIL FROM:<a@example.org>\r\n",
    Verb.RCPT: b"RCPT TO:<b@example.com>\r\n",
    Verb.DATA: b"DATA\r\n",
    Verb.BDAT: b"BDAT 1\r\nx",
    Verb.RSET: b"RSET\r\n",
    Verb.NOOP: b"NOOP\r\n",
    Verb.HELP: b"HELP\r\n",
    Verb.VRFY: b"VRFY b\r\n",
    Verb.EXPN: b"EXPN b\r\n",
    Verb.QUIT: b"QUIT\r\n",
    Verb.STARTTLS: b"STARTTLS\r\n",
    Verb.AUTH: b"AUTH LOGIN\r\n",
    Verb.UNRECOGNIZED: b"FROB\r\n",
    Verb.UNIMPLEMENTED: b"TURN\r\n",
}

# How to reach each state that reads commands, from the greeting.
ROUTES = {
    State.REFUSED: (Reply(554, "5.7.1", "No service"), b""),
    State.CONNECTED: (Reply(220, None, "hi"), b""),
    State.READY: (Reply(220, None, "hi"), COMMAND_LINES[Verb.EHLO]),
    State.MAIL: (Reply(220, None, "hi"), b"EHLO c\r\nMAIL FROM:<a@example.org>\r\n"),
    State.RCPT: (
        Reply(220, None, "hi"),
        b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n",
    ),
    State.BDAT: (
        Reply(220, None, "hi"),
        b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nBDAT 1\r\nx",
    ),
}


def accept(conn: ServerConnection, command: Command) -> Reply:
    """The positive reply to each command."""
    match command:
        case Ehlo():
            return conn.ehlo_reply("hi")
        case DataStart():
            return Reply(354, None, "go on")
        case StartTLS():
            return Reply(220, "2.0.0", "go on")
        case AuthCredentials():
            return Reply(235, "2.7.0", "welcome")
        case Helo() | MailFrom() | RcptTo() | DataEnd() | BdatChunk() | Rset() | Vrfy() | Expn():
            return Reply(250, "2.0.0", "OK")
        case _:
            raise AssertionError(command)


def pump(conn: ServerConnection, data: bytes) -> list[Command]:
    """Feed ``data``, accepting every command; the commands seen."""
    conn.receive_data(data)
    seen: list[Command] = []
    while (event := conn.next_event()) is not NEED_DATA:
        if isinstance(event, Command):
            seen.append(event)
            conn.send(accept(conn, event))
        if conn.state is State.CLOSED:
            break
    return seen


def session_in(state: State) -> ServerConnection:
    greeting, lines = ROUTES[state]
    conn = ServerConnection(OPEN)
    conn.send(greeting)
    pump(conn, lines)
    conn.data_to_send()
    assert conn.state is state
    return conn


@pytest.mark.parametrize("verb", list(Verb))
@pytest.mark.parametrize("state", sorted(READING, key=lambda state: state.value))
def test_the_engine_does_what_the_tables_say(state: State, verb: Verb) -> None:
    conn = session_in(state)
    commands = pump(conn, COMMAND_LINES[verb])
    output = conn.data_to_send()
    refusal = REFUSALS.get((state, verb))
    if refusal is not None:
        assert output == refusal.to_bytes()
        assert commands == []
        assert conn.state is state
    else:
        assert not output.startswith(b"503 ")
        assert conn.state is TRANSITIONS[state, verb][0]


def test_every_state_and_verb_is_tried() -> None:
    assert set(ROUTES) == READING
    assert set(COMMAND_LINES) == set(Verb)
