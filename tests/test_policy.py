"""The recipient policy: RCPT, VRFY and EXPN answers from the settings.

Local parts are matched in their dot-atom form, so a quoted local part that
is a dot-atom (``"alice"``) is the same mailbox (RFC 5321 2.4, 4.1.2), and
one that is not (``"a b"``) is never a configured mailbox or alias.
"""

from __future__ import annotations

import pytest

from mailgate.config import Domain, Settings
from mailgate.server import RecipientPolicy
from mailgate.server._policy import MAX_ALIAS_DEPTH

DOMAINS = (
    Domain("example.org", mailboxes=("alice", "Bob.Smith"), aliases={"team": ("alice", "x@y.z")}),
    Domain("open.example", aliases={"list": ("alice@example.org",)}),
)


def policy(**kwargs: object) -> RecipientPolicy:
    return RecipientPolicy(Settings(domains=DOMAINS, **kwargs))  # type: ignore[arg-type]


def code(reply: object) -> str:
    return f"{reply.code} {reply.enhanced}"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("alice@example.org", "250 2.1.5"),
        ('"alice"@example.org', "250 2.1.5"),
        ('"ALICE"@EXAMPLE.ORG', "250 2.1.5"),
        ('"al\\ice"@example.org', "250 2.1.5"),
        ('"bob.smith"@example.org', "250 2.1.5"),
        ('"team"@example.org', "250 2.1.5"),
        ('"postmaster"@example.org', "250 2.1.5"),
        ('"a b"@example.org', "550 5.1.1"),
        ('"|/bin/sh -c id"@example.org', "550 5.1.1"),
        ('"alice "@example.org', "550 5.1.1"),
        ('"al ice"@example.org', "550 5.1.1"),
        ('"mallory"@example.org', "550 5.1.1"),
        ('"alice@elsewhere.example"@example.org', "550 5.7.1"),
        ('"alice%elsewhere.example"@example.org', "550 5.7.1"),
        ('"u"@elsewhere.example', "550 5.7.1"),
        # A domain without mailboxes takes any local part, stored as written.
        ('"a b"@open.example', "250 2.1.5"),
        ('"|/bin/sh -c id"@open.example', "250 2.1.5"),
        ('"u"@open.example', "250 2.1.5"),
    ],
)
def test_quoted_local_parts(address: str, expected: str) -> None:
    assert code(policy().check_recipient(address)) == expected


def test_a_quoted_local_part_that_is_no_dot_atom_is_never_a_mailbox_when_relaying() -> None:
    # A trusted client may relay, but "a b" still names no local mailbox.
    assert code(policy().check_recipient('"a b"@example.org', may_relay=True)) == "550 5.1.1"
    assert code(policy().check_recipient('"alice"@example.org', may_relay=True)) == "250 2.1.5"


def test_catch_all_mode_takes_everything() -> None:
    catch_all = RecipientPolicy(Settings())
    for address in ('"a b"@x.example', '"|cmd"@y.example', "postmaster"):
        assert catch_all.check_recipient(address).code == 250


@pytest.mark.parametrize(
    ("argument", "reply"),
    [
        ("alice", b"250 2.1.5 <alice@example.org>\r\n"),
        ('"alice"', b"250 2.1.5 <alice@example.org>\r\n"),
        ('<"ALICE"@Example.org>', b"250 2.1.5 <ALICE@example.org>\r\n"),
        ('"al\\ice"@example.org', b"250 2.1.5 <alice@example.org>\r\n"),
        ("team@example.org", b"250 2.1.5 <team@example.org>\r\n"),
        ("postmaster@open.example", b"250 2.1.5 <postmaster@open.example>\r\n"),
        ('"a b"@example.org', b"550 5.1.1 No such user here\r\n"),
        ('"a b"', b"550 5.1.1 No such user here\r\n"),
        ("mallory@example.org", b"550 5.1.1 No such user here\r\n"),
        ("alice@elsewhere.example", b"550 5.1.1 No such user here\r\n"),
        # Where any local part is taken there is nobody to verify.
        ("anyone@open.example", b"252 2.5.0 "),
        ('"a b"@open.example', b"252 2.5.0 "),
    ],
)
def test_vrfy(argument: str, reply: bytes) -> None:
    assert policy(vrfy="on").vrfy(argument).to_bytes().startswith(reply)


def test_vrfy_in_catch_all_mode_is_noncommittal() -> None:
    catch_all = RecipientPolicy(Settings(vrfy="on"))
    for argument in ("alice", "alice@example.org", '"a b"@x.example', "<>"):
        assert catch_all.vrfy(argument).code == 252


def test_vrfy_ambiguous() -> None:
    both = RecipientPolicy(
        Settings(domains=(Domain("a.example", ("u",)), Domain("b.example", ("u",))), vrfy="on")
    )
    assert both.vrfy('"u"').to_bytes() == (
        b"553-5.1.4 Ambiguous; possibilities are\r\n"
        b"553-5.1.4 <u@a.example>\r\n553 5.1.4 <u@b.example>\r\n"
    )


@pytest.mark.parametrize(
    ("argument", "members"),
    [
        ("team", [b"alice@example.org", b"x@y.z"]),
        ('"team"', [b"alice@example.org", b"x@y.z"]),
        ('<"TEAM"@example.org>', [b"alice@example.org", b"x@y.z"]),
        ('"list"@open.example', [b"alice@example.org"]),
        ("list@OPEN.example", [b"alice@example.org"]),
        ('"te am"', None),
        ('"list "@open.example', None),
        ("team@open.example", None),
        ("team@elsewhere.example", None),
    ],
)
def test_expn(argument: str, members: list[bytes] | None) -> None:
    reply = policy(expn="on").expn(argument)
    if members is None:
        assert reply.to_bytes() == b"550 5.1.1 No such mailing list\r\n"
    else:
        assert [
            line.split(b" ")[-1].strip(b"<>\r") for line in reply.to_bytes().split(b"\n")[:-1]
        ] == members


def test_vrfy_and_expn_off_and_noncommittal() -> None:
    assert policy(vrfy="off").vrfy("alice").code == 502
    assert policy().vrfy("alice").code == 252
    assert policy().expn("team").code == 502


def test_an_alias_expands_to_its_members_each_once() -> None:
    settings = Settings(
        domains=(
            Domain(
                "example.org",
                ("alice", "bob"),
                {
                    "team": ("alice", "Bob", "friend@example.net"),
                    "all": ("team", "alice", "bob@example.org"),
                    "loop": ("loop", "alice"),
                },
            ),
        )
    )
    rules = RecipientPolicy(settings)
    assert rules.expand("alice@example.org") == ("alice@example.org",)
    assert rules.expand("remote@example.net") == ("remote@example.net",)
    assert rules.expand("TEAM@example.org") == (
        "alice@example.org",
        "Bob@example.org",
        "friend@example.net",
    )
    assert rules.expand('"all"@example.org') == (
        "alice@example.org",
        "Bob@example.org",
        "friend@example.net",
        "bob@example.org",
    )
    # An alias that names itself ends: its other members still receive the message.
    assert rules.expand("loop@example.org") == ("loop@example.org", "alice@example.org")


def test_aliases_deeper_than_the_limit_stop_at_the_limit() -> None:
    chain = {f"a{n}": (f"a{n + 1}",) for n in range(MAX_ALIAS_DEPTH + 2)}
    rules = RecipientPolicy(Settings(domains=(Domain("example.org", (), chain),)))
    assert rules.expand("a0@example.org") == (f"a{MAX_ALIAS_DEPTH}@example.org",)


def test_nothing_is_expanded_in_catch_all_mode() -> None:
    assert RecipientPolicy(Settings()).expand("team@example.org") == ("team@example.org",)
