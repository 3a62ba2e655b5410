"""One mail transaction as the session gathers it: sender, recipients, spool.

From ``MAIL`` to the end of the message the session adds what the client
says (recipients, an alias's members) and, when content begins, opens a
spool on the sink with the envelope built here.  Part of the per-message
path, compiled with the session.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime

from mailgate.model import Envelope, TLSInfo
from mailgate.ports import Spool
from mailgate.protocol import MailFrom, utf8_addr_encode, xtext_encode

__all__ = ["Transaction", "original_recipient", "protocol_name"]


def original_recipient(address: str) -> str:
    """An ``ORCPT`` value naming ``address`` (RFC 3461 4.2, RFC 6533 3 when not ASCII)."""
    if address.isascii():
        return "rfc822;" + xtext_encode(address)
    return "utf-8;" + utf8_addr_encode(address)


def protocol_name(*, extended: bool, smtputf8: bool, tls: bool, authenticated: bool) -> str:
    """The protocol a trace header names (RFC 3848, RFC 6531 4.3): ``ESMTPSA`` and kin."""
    protocol = "ESMTP" if extended else "SMTP"
    if smtputf8:
        protocol = "UTF8SMTP"
    if tls:
        protocol += "S"
    if authenticated:
        protocol += "A"
    return protocol


class Transaction:
    """The open transaction: its ``MAIL``, accepted recipients and their parameters."""

    __slots__ = ("content_started", "mail", "rcpt_params", "recipients", "spool")

    def __init__(self, mail: MailFrom) -> None:
        self.mail = mail
        self.recipients: list[str] = []
        self.rcpt_params: list[dict[str, str | None]] = []
        self.spool: Spool | None = None
        self.content_started = 0.0
        """When the spool was opened, in the event loop's time (server._deadlines)."""

    def add(self, address: str, members: Sequence[str], params: Mapping[str, str | None]) -> None:
        """Add an accepted ``RCPT``: ``members`` is who receives mail to ``address``.

        An address that is its own member is added as given, every time (a client
        may name one twice); an alias's members are added once each.  Each keeps
        the parameters as the client sent them (NOTIFY, ORCPT), to be relayed
        verbatim (RFC 3461 5.2.1); an alias's members that came without ORCPT get
        one naming ``address``, so that a report about them names the address the
        sender used (RFC 3461 4.2: an added ORCPT MUST hold the RCPT address).
        """
        if len(members) == 1 and members[0] == address:
            self.recipients.append(address)
            self.rcpt_params.append(dict(params))
            return
        member_params = dict(params)
        if "ORCPT" not in member_params:
            member_params["ORCPT"] = original_recipient(address)
        for member in members:
            if member not in self.recipients:
                self.recipients.append(member)
                self.rcpt_params.append(dict(member_params))

    def envelope(
        self,
        *,
        received_at: datetime,
        helo_name: str,
        client: tuple[str, int],
        protocol: str,
        auth_user: str | None,
        tls: TLSInfo | None,
        is_local: Callable[[str], bool],
    ) -> Envelope:
        """The envelope of the message, once content begins."""
        mail = self.mail
        return Envelope(
            mail_from=mail.address,
            rcpt_to=tuple(self.recipients),
            received_at=received_at,
            helo_name=helo_name,
            client_address=client[0],
            client_port=client[1],
            protocol=protocol,
            mail_params=dict(mail.params),
            rcpt_params=tuple(self.rcpt_params),
            auth_user=auth_user,
            tls=tls,
            outbound=tuple(r for r in self.recipients if not is_local(r)),
        )
