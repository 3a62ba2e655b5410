"""Who may send what to whom: the answers to MAIL and RCPT, VRFY and EXPN.

``MAIL`` is refused on a port that requires AUTH until the client has
authenticated (RFC 6409 4.3), and with ``452 4.3.1`` while the disk lacks
room for the message.

With chaos triggers armed (``mailgate.chaos``: ``--enable-chaos``, for testing
an application) ``MAIL``, each ``RCPT`` and ``AUTH`` (``server._auth``) may get
the trigger's code instead, as Mailpit answers: ``451 4.3.0 Chaos sender
error``, ``Chaos recipient error``, ``Chaos authentication error`` (``X.7.0``).
Such a refusal is the server's own doing: it spends none of the client's
error budget (``Reply.charged``), and is counted as ``chaos``.

With no domains configured mailgate is a catch-all: every recipient is
accepted and stored, nothing is delivered onward.  With domains, only those
are local; anything else is relaying, allowed only for authenticated users
and trusted networks (RFC 5321 7.1 and 7.9: never an open relay).  Local
parts that other mail systems read as routes (``user%remote``, bang paths,
a quoted ``"user@remote"``) are refused from everyone else, so no server
behind this one can be made into a relay through it.

Local parts are matched in their dot-atom form (``protocol.dot_atom_local_part``):
``"alice"@example.org`` is ``alice@example.org`` (RFC 5321 2.4, 4.1.2), with
the same case rules.  A quoted local part that is no dot-atom (``"a b"``,
``"|/bin/sh -c id"``) is never a configured mailbox or alias: at a domain
with mailboxes it gets ``550 5.1.1``; a domain without mailboxes accepts any
local part, so it is stored there under the address as written, but it
never matches an alias, and VRFY never confirms it.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import random

from mailgate.chaos import Chaos, ChaosTrigger
from mailgate.config import Domain, Settings
from mailgate.ports import MailSink
from mailgate.protocol import Reply, dot_atom_local_part

__all__ = ["MAX_ALIAS_DEPTH", "RecipientPolicy", "chaos_refusal"]

log = logging.getLogger("mailgate.smtp")

SENDER_OK = Reply(250, "2.1.0", "Sender OK")
_AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
_NO_ROOM = Reply(452, "4.3.1", "Insufficient system storage")  # RFC 3463 X.3.1
ACCEPTED = Reply(250, "2.1.5", "Recipient OK")
_RELAY_DENIED = Reply(550, "5.7.1", "Relaying denied")
_UNKNOWN_USER = Reply(550, "5.1.1", "No such user here")
_VRFY_NONCOMMITTAL = Reply(
    252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery"
)
_DISABLED = Reply(502, "5.5.1", "Command disabled")
_NO_LIST = Reply(550, "5.1.1", "No such mailing list")
MAX_ALIAS_DEPTH = 8
"""How deep aliases of aliases are followed."""


def _split(address: str) -> tuple[str, str]:
    local, _, domain = address.rpartition("@")
    return local, domain.lower()


def chaos_refusal(trigger: ChaosTrigger, stage: str) -> Reply | None:
    """The refusal ``trigger`` makes of a command at ``stage`` (``sender``...), if it
    fires this time: ``probability`` times in 100."""
    if random.randrange(100) >= trigger.probability:
        return None
    return _chaos_reply(trigger.error_code, stage)


@functools.cache  # at most 200 codes for each of 3 stages
def _chaos_reply(code: int, stage: str) -> Reply:
    detail = "7.0" if stage == "authentication" else "3.0"
    return Reply(code, f"{code // 100}.{detail}", f"Chaos {stage} error", charged=False)


def _is_mailbox(domain: Domain, local: str) -> bool:
    """Whether ``local`` (a dot-atom) is a configured mailbox or alias, or postmaster."""
    return local.casefold() == "postmaster" or (not domain.catch_all and domain.accepts(local))


class RecipientPolicy:
    """Decides MAIL, RCPT, VRFY and EXPN answers from the settings, and ``chaos``."""

    def __init__(self, settings: Settings, chaos: Chaos | None = None) -> None:
        self.chaos = chaos if chaos is not None else Chaos()
        """The chaos triggers in force (never armed unless the node enables chaos)."""
        self._domains: dict[str, Domain] = {d.name.lower(): d for d in settings.domains}
        self._vrfy = settings.vrfy
        self._expn = settings.expn
        self._networks = tuple(
            ipaddress.ip_network(cidr, strict=False) for cidr in settings.relay_networks
        )

    def trusts(self, client_address: str) -> bool:
        """Whether the client is in a ``--relay-network``."""
        if not self._networks:
            return False
        try:
            address = ipaddress.ip_address(client_address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._networks)

    @property
    def catch_all(self) -> bool:
        """Whether every recipient is accepted (no local domains configured)."""
        return not self._domains

    def is_local(self, address: str) -> bool:
        """Whether ``address`` belongs to a local domain (always, in catch-all mode)."""
        if self.catch_all or "@" not in address:
            return True
        return _split(address)[1] in self._domains

    def expand(self, address: str) -> tuple[str, ...]:
        """Who mail to an accepted ``address`` goes to: an alias's members, or itself.

        Members are expanded in turn (an alias of aliases), at most
        ``MAX_ALIAS_DEPTH`` deep and each alias once, so a loop ends; a member
        without a domain is at the alias's domain.  Each address appears once.
        """
        if self.catch_all or "@" not in address:
            return (address,)
        found: dict[str, None] = {}
        self._expand_into(address, found, depth=0, expanded=set())
        return tuple(found)

    def _expand_into(
        self, address: str, found: dict[str, None], *, depth: int, expanded: set[str]
    ) -> None:
        local, domain_name = _split(address)
        domain = self._domains.get(domain_name)
        key = dot_atom_local_part(local)
        targets = domain.alias_targets(key) if domain is not None and key is not None else None
        alias = f"{key}@{domain_name}".casefold()
        if targets is None or depth >= MAX_ALIAS_DEPTH or alias in expanded:
            found.setdefault(address)
            return
        expanded.add(alias)
        assert domain is not None
        for target in targets:
            member = target if "@" in target else f"{target}@{domain.name}"
            self._expand_into(member, found, depth=depth + 1, expanded=expanded)

    def check_sender(
        self, sink: MailSink, size: int | None, client: str, needs_auth: bool = False
    ) -> Reply:
        """The reply to ``MAIL FROM`` from ``client`` with ``SIZE=size``, if given.

        ``needs_auth`` is true on a port that requires AUTH before the client
        has authenticated; ``sink`` says whether the disk has room.
        """
        if needs_auth:
            return _AUTH_REQUIRED  # RFC 6409 4.3
        armed = self.chaos.armed
        if armed is not None and (refusal := chaos_refusal(armed.sender, "sender")):
            return refusal
        if not sink.has_room(size or 0):
            log.warning("refusing a sender from %s: too little free disk space", client)
            return _NO_ROOM
        return SENDER_OK

    def check_recipient(self, address: str, *, may_relay: bool = False) -> Reply:
        """The reply to ``RCPT TO:<address>``.

        ``may_relay`` is true for authenticated clients and trusted networks.
        """
        armed = self.chaos.armed
        if armed is not None and (refusal := chaos_refusal(armed.recipient, "recipient")):
            return refusal
        if self.catch_all or "@" not in address:  # bare "postmaster" (RFC 5321 4.5.1)
            return ACCEPTED
        local, domain_name = _split(address)
        domain = self._domains.get(domain_name)
        if domain is None:
            return ACCEPTED if may_relay else _RELAY_DENIED
        if not may_relay and any(mark in local for mark in "%!@"):
            return _RELAY_DENIED
        if domain.catch_all:
            return ACCEPTED
        key = dot_atom_local_part(local)
        if key is not None and (key.casefold() == "postmaster" or domain.accepts(key)):
            return ACCEPTED
        return _UNKNOWN_USER

    def vrfy(self, argument: str) -> Reply:
        """The reply to ``VRFY``: non-committal unless turned on (RFC 5321 3.5.3).

        Turned on, only a configured mailbox or alias (or postmaster) is
        confirmed, named in its dot-atom form at its configured domain; where
        any local part is accepted there is nobody to verify, and the answer
        is 252 again.
        """
        if self._vrfy == "off":
            return _DISABLED
        if self._vrfy == "252":
            return _VRFY_NONCOMMITTAL
        address = argument.strip().strip("<>")
        if "@" not in address:
            key = dot_atom_local_part(address)
            matches = [
                f"{key}@{d.name}"
                for d in self._domains.values()
                if key is not None and not d.catch_all and d.accepts(key)
            ]
            if len(matches) == 1:
                return Reply(250, "2.1.5", f"<{matches[0]}>")
            if len(matches) > 1:
                return Reply(
                    553,
                    "5.1.4",
                    "Ambiguous; possibilities are\n" + "\n".join(f"<{m}>" for m in matches),
                )
            return _VRFY_NONCOMMITTAL if self.catch_all else _UNKNOWN_USER
        local, domain_name = _split(address)
        domain = self._domains.get(domain_name)
        key = dot_atom_local_part(local)
        if domain is not None and key is not None and _is_mailbox(domain, key):
            return Reply(250, "2.1.5", f"<{key}@{domain.name}>")
        if self.catch_all or (domain is not None and domain.catch_all):
            return _VRFY_NONCOMMITTAL
        return _UNKNOWN_USER

    def expn(self, argument: str) -> Reply:
        """The reply to ``EXPN``: off by default (RFC 5321 7.3)."""
        if self._expn == "off":
            return _DISABLED
        name = argument.strip().strip("<>")
        local, domain_name = _split(name) if "@" in name else (name, "")
        key = dot_atom_local_part(local)
        if key is None:
            return _NO_LIST
        domains = (
            [self._domains[domain_name]]
            if domain_name in self._domains
            else []
            if domain_name
            else list(self._domains.values())
        )
        for domain in domains:
            targets = domain.alias_targets(key)
            if targets is not None:
                members = [t if "@" in t else f"{t}@{domain.name}" for t in targets]
                return Reply(250, "2.1.5", "\n".join(f"<{m}>" for m in members))
        return _NO_LIST
