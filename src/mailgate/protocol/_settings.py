"""The engine's options, gathered in one keyword-only settings object."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mailgate.protocol._limits import (
    DEFAULT_ERROR_BUDGET,
    DEFAULT_MAX_MESSAGE_OCTETS,
    DEFAULT_MAX_RECIPIENTS,
    MAX_COMMAND_LINE_OCTETS,
    MAX_TEXT_LINE_OCTETS,
)
from mailgate.protocol._sasl import MECHANISMS

__all__ = ["ConnectionSettings"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionSettings:
    """What one ``ServerConnection`` offers and enforces.

    ``max_message_size`` of 0 means no limit (SIZE is then advertised
    without a value, RFC 1870 4).  ``bare_line_endings`` decides what a bare
    CR or LF inside DATA gets: ``"normalise"`` (the default) reads it as
    CRLF and stores CRLF, ``"reject"`` refuses the message after its
    terminator.  Neither ever ends DATA.  ``error_budget``: how many 5xx
    replies a session may earn before it is closed with 421.
    ``auth_mechanisms``: the SASL mechanisms AUTH offers, from ``MECHANISMS``
    (the engine runs the exchange); none means no AUTH.
    """

    hostname: str = "localhost"
    max_message_size: int = DEFAULT_MAX_MESSAGE_OCTETS
    max_recipients: int = DEFAULT_MAX_RECIPIENTS
    max_command_line: int = MAX_COMMAND_LINE_OCTETS
    max_text_line: int = MAX_TEXT_LINE_OCTETS
    error_budget: int = DEFAULT_ERROR_BUDGET
    bare_line_endings: Literal["reject", "normalise"] = "normalise"
    smtputf8: bool = True
    starttls: bool = False
    tls_active: bool = False
    auth_mechanisms: tuple[str, ...] = ()
    auth_requires_tls: bool = True

    def __post_init__(self) -> None:
        if self.max_command_line < MAX_COMMAND_LINE_OCTETS:
            raise ValueError(f"max_command_line must be >= {MAX_COMMAND_LINE_OCTETS}")
        if self.max_text_line < MAX_TEXT_LINE_OCTETS:
            raise ValueError(f"max_text_line must be >= {MAX_TEXT_LINE_OCTETS}")
        if self.max_message_size < 0 or self.max_recipients < 1 or self.error_budget < 1:
            raise ValueError("limits must be positive")
        if not set(self.auth_mechanisms) <= set(MECHANISMS):
            raise ValueError(f"auth_mechanisms must be among {', '.join(MECHANISMS)}")
