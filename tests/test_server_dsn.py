"""DSN parameters (RFC 3461) through a live server into the stored envelope.

The envelope keeps every parameter as the client sent it (xtext and all),
per recipient, so that the queue can relay them verbatim (RFC 3461 5.2.1)
and decode them where a report shows them.
"""

from __future__ import annotations

import smtplib

import pytest

from mailgate.config import Domain, Settings
from mailgate.model import Envelope
from mailgate.protocol import Notify, Ret, parse_envid, parse_notify, parse_orcpt, parse_ret
from mailgate.server._transaction import original_recipient
from mailgate.testing import MailgateServer

MESSAGE = b"Subject: dsn\r\n\r\nbody\r\n"


def stored_envelope(server: MailgateServer) -> Envelope:
    (summary,) = server.messages()
    stored = server.get(summary.id)
    assert stored is not None
    return stored.envelope


def test_dsn_parameters_reach_the_stored_envelope() -> None:
    with MailgateServer() as server:
        with smtplib.SMTP(server.host, server.port) as client:
            client.ehlo("client.example")
            assert client.has_extn("dsn")
            refused = client.sendmail(
                "alice@example.org",
                ["bob@example.net", "carol@example.net"],
                MESSAGE,
                mail_options=["RET=HDRS", "ENVID=abc+2Bdef"],
                rcpt_options=["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;bob@example.net"],
            )
            assert refused == {}
        envelope = stored_envelope(server)
    assert envelope.mail_params == {"SIZE": str(len(MESSAGE)), "RET": "HDRS", "ENVID": "abc+2Bdef"}
    assert parse_ret(envelope.mail_params["RET"]) is Ret.HDRS
    assert parse_envid(envelope.mail_params["ENVID"]) == "abc+def"
    expected = {"NOTIFY": "SUCCESS,FAILURE", "ORCPT": "rfc822;bob@example.net"}
    assert envelope.rcpt_to == ("bob@example.net", "carol@example.net")
    assert [dict(params) for params in envelope.rcpt_params] == [expected, expected]
    assert parse_notify(expected["NOTIFY"]) == Notify.SUCCESS | Notify.FAILURE


def test_each_recipient_keeps_its_own_parameters() -> None:
    with MailgateServer() as server:
        with smtplib.SMTP(server.host, server.port) as client:
            client.ehlo("client.example")
            client.mail("alice@example.org")
            client.rcpt("bob@example.net", ["NOTIFY=NEVER"])
            client.rcpt("carol@example.net")
            client.rcpt("dave@example.net", ["ORCPT=rfc822;d+2Bx@example.net", "NOTIFY=DELAY"])
            code, _ = client.data(MESSAGE)
            assert code == 250
        envelope = stored_envelope(server)
    assert [dict(params) for params in envelope.rcpt_params] == [
        {"NOTIFY": "NEVER"},
        {},
        {"ORCPT": "rfc822;d+2Bx@example.net", "NOTIFY": "DELAY"},
    ]


@pytest.mark.parametrize(
    ("options", "orcpt"),
    [
        ([], "rfc822;team@example.net"),
        (["ORCPT=rfc822;list+2Bx@example.net"], "rfc822;list+2Bx@example.net"),
    ],
)
def test_an_alias_passes_its_parameters_to_every_member(options: list[str], orcpt: str) -> None:
    domain = Domain("example.net", mailboxes=("bob", "carol"), aliases={"team": ("bob", "carol")})
    with MailgateServer(settings=Settings(domains=(domain,))) as server:
        with smtplib.SMTP(server.host, server.port) as client:
            client.ehlo("client.example")
            refused = client.sendmail(
                "alice@example.org",
                ["team@example.net"],
                MESSAGE,
                rcpt_options=["NOTIFY=FAILURE,DELAY", *options],
            )
            assert refused == {}
        envelope = stored_envelope(server)
    assert envelope.rcpt_to == ("bob@example.net", "carol@example.net")
    expected = {"NOTIFY": "FAILURE,DELAY", "ORCPT": orcpt}
    assert [dict(params) for params in envelope.rcpt_params] == [expected, expected]
    original = parse_orcpt(orcpt, utf8=False)
    assert original.address in ("team@example.net", "list+x@example.net")


def test_a_malformed_dsn_parameter_is_refused_and_nothing_stored() -> None:
    with MailgateServer() as server:
        with smtplib.SMTP(server.host, server.port) as client:
            client.ehlo("client.example")
            code, text = client.mail("alice@example.org", ["RET=NONE"])
            assert (code, text) == (501, b"5.5.4 RET must be FULL or HDRS (RFC 3461 4.3)")
            assert client.mail("alice@example.org")[0] == 250
            code, text = client.rcpt("bob@example.net", ["ORCPT=rfc822;a+0D+0AX:+20y"])
            assert (code, text) == (501, b"5.5.4 ORCPT holds a control character")
            code, text = client.rcpt("bob@example.net", ["NOTIFY=NEVER,SUCCESS"])
            assert code == 501
            client.rset()
        assert server.messages() == []


@pytest.mark.parametrize(
    ("address", "orcpt"),
    [
        ("team@example.net", "rfc822;team@example.net"),
        ("a+b=c@example.net", "rfc822;a+2Bb+3Dc@example.net"),
        ("jörg@bücher.example", "utf-8;j\\x{F6}rg@b\\x{FC}cher.example"),
    ],
)
def test_the_orcpt_added_for_an_alias_names_it(address: str, orcpt: str) -> None:
    assert original_recipient(address) == orcpt
    assert parse_orcpt(orcpt, utf8=True).address == address
