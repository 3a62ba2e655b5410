"""The sans-I/O SMTP engine: bytes in, events and replies out.

Nothing here touches sockets, clocks, files or the event loop; the shells
in ``mailgate.server`` pump bytes through ``ServerConnection``, and the
outbound queue's through ``ClientConnection``.
"""

from __future__ import annotations

from mailgate.protocol._address import dot_atom_local_part
from mailgate.protocol._client import ClientConnection
from mailgate.protocol._client_events import (
    AnyClientEvent,
    AuthReply,
    ClientSettings,
    ContentRequest,
    Envelope,
    Greeting,
    HelloReply,
    MailReply,
    MessageRefused,
    MessageReply,
    QuitReply,
    RcptReply,
    Recipient,
    ResetReply,
    ServerClosing,
    StartTLSReply,
)
from mailgate.protocol._client_state import ClientState, TranscriptLine
from mailgate.protocol._dsn import (
    Notify,
    OriginalRecipient,
    Ret,
    parse_envid,
    parse_notify,
    parse_orcpt,
    parse_ret,
    utf8_addr_decode,
    utf8_addr_encode,
    xtext_decode,
    xtext_encode,
)
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
    "AnyClientEvent",
    "AnyCommand",
    "AnyEvent",
    "AuthCredentials",
    "AuthReply",
    "BdatChunk",
    "ClientConnection",
    "ClientSettings",
    "ClientState",
    "Command",
    "ConnectionClosed",
    "ConnectionSettings",
    "ContentRequest",
    "DataAborted",
    "DataChunk",
    "DataEnd",
    "DataStart",
    "Ehlo",
    "Envelope",
    "Event",
    "Expn",
    "Greeting",
    "HelloReply",
    "Helo",
    "LocalProtocolError",
    "MailFrom",
    "MailReply",
    "MailgateError",
    "MessageRefused",
    "MessageReply",
    "Notify",
    "OriginalRecipient",
    "QuitReply",
    "RcptReply",
    "RcptTo",
    "Recipient",
    "RemoteProtocolError",
    "Reply",
    "ResetReply",
    "Ret",
    "Rset",
    "ServerClosing",
    "ServerConnection",
    "StartTLS",
    "StartTLSReply",
    "State",
    "TranscriptLine",
    "Vrfy",
    "dot_atom_local_part",
    "parse_envid",
    "parse_notify",
    "parse_orcpt",
    "parse_ret",
    "utf8_addr_decode",
    "utf8_addr_encode",
    "xtext_decode",
    "xtext_encode",
]
