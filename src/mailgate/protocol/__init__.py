"""The sans-I/O SMTP engine: bytes in, events and replies out.

Nothing here touches sockets, clocks, files or the event loop; the shells
in ``mailgate.server`` pump bytes through ``ServerConnection``.
"""

from __future__ import annotations

from mailgate.protocol._address import dot_atom_local_part
from mailgate.protocol._errors import LocalProtocolError, MailgateError, RemoteProtocolError
from mailgate.protocol._events import (
    AnyCommand,
    AnyEvent,
    AuthCredentials,
    BdatChunk,
    Command,
    ConnectionClosed,
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
    Rset,
    StartTLS,
    Vrfy,
)
from mailgate.protocol._limits import (
    DEFAULT_ERROR_BUDGET,
    DEFAULT_MAX_MESSAGE_OCTETS,
    DEFAULT_MAX_RECIPIENTS,
    MAX_DOMAIN_OCTETS,
    MAX_LOCAL_PART_OCTETS,
    MAX_TEXT_LINE_OCTETS,
    MIN_RECIPIENTS,
)
from mailgate.protocol._replies import Reply
from mailgate.protocol._sasl import MECHANISMS
from mailgate.protocol._server import NEED_DATA, ServerConnection
from mailgate.protocol._settings import ConnectionSettings
from mailgate.protocol._state import State

__all__ = [
    "DEFAULT_ERROR_BUDGET",
    "DEFAULT_MAX_MESSAGE_OCTETS",
    "DEFAULT_MAX_RECIPIENTS",
    "MAX_DOMAIN_OCTETS",
    "MAX_LOCAL_PART_OCTETS",
    "MAX_TEXT_LINE_OCTETS",
    "MECHANISMS",
    "MIN_RECIPIENTS",
    "NEED_DATA",
    "AnyCommand",
    "AnyEvent",
    "AuthCredentials",
    "BdatChunk",
    "Command",
    "ConnectionClosed",
    "ConnectionSettings",
    "DataAborted",
    "DataChunk",
    "DataEnd",
    "DataStart",
    "Ehlo",
    "Event",
    "Expn",
    "Helo",
    "LocalProtocolError",
    "MailFrom",
    "MailgateError",
    "RcptTo",
    "RemoteProtocolError",
    "Reply",
    "Rset",
    "ServerConnection",
    "StartTLS",
    "State",
    "Vrfy",
    "dot_atom_local_part",
]
