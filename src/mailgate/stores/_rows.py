"""What every store keeps of a message the same way: its envelope and its addresses as JSON.

Both stores keep the envelope as a JSON object (SQLite as text, PostgreSQL
as ``jsonb``) and header addresses as ``[name, address]`` pairs; this is the
one mapping between those and the model.  Part of the per-message path,
compiled with it (``setup.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from mailgate.model import Address, Envelope, TLSInfo

__all__ = ["address_pairs", "addresses_from_pairs", "envelope_data", "envelope_from_data"]


def address_pairs(addresses: Sequence[Address]) -> list[list[str]]:
    """Addresses as ``[[name, address], ...]``."""
    return [[a.name, a.address] for a in addresses]


def addresses_from_pairs(pairs: Sequence[Sequence[str]]) -> tuple[Address, ...]:
    """The addresses ``address_pairs`` gave."""
    return tuple(Address(name, address) for name, address in pairs)


def envelope_data(envelope: Envelope) -> dict[str, object]:
    """The envelope as the JSON object a store keeps; ``node`` only when known."""
    data: dict[str, object] = {
        "mail_from": envelope.mail_from,
        "rcpt_to": list(envelope.rcpt_to),
        "received_at": envelope.received_at.isoformat(),
        "helo_name": envelope.helo_name,
        "client_address": envelope.client_address,
        "client_hostname": envelope.client_hostname,
        "client_port": envelope.client_port,
        "protocol": envelope.protocol,
        "mail_params": dict(envelope.mail_params),
        "rcpt_params": [dict(p) for p in envelope.rcpt_params],
        "auth_user": envelope.auth_user,
        "tls": [envelope.tls.version, envelope.tls.cipher] if envelope.tls else None,
        "outbound": list(envelope.outbound),
    }
    if envelope.node:
        data["node"] = envelope.node
    return data


def envelope_from_data(data: Mapping[str, Any]) -> Envelope:
    """The envelope ``envelope_data`` gave."""
    tls = data["tls"]
    return Envelope(
        mail_from=data["mail_from"],
        rcpt_to=tuple(data["rcpt_to"]),
        received_at=datetime.fromisoformat(data["received_at"]),
        helo_name=data["helo_name"],
        client_address=data["client_address"],
        client_hostname=data["client_hostname"],
        client_port=data["client_port"],
        protocol=data["protocol"],
        mail_params=data["mail_params"],
        rcpt_params=tuple(data["rcpt_params"]),
        auth_user=data["auth_user"],
        tls=TLSInfo(tls[0], tls[1]) if tls else None,
        outbound=tuple(data["outbound"]),
        node=data.get("node", ""),
    )
