"""Server side of the SASL mechanisms PLAIN (RFC 4616) and LOGIN, sans I/O.

The engine runs AUTH's exchange (RFC 4954 4) with a ``SaslServer``: it is
fed the client's responses, from the AUTH command or from a line of their
own, and answers with a challenge to send (base64-encoded by the engine in
a ``334``), the credentials to check, or a failure reply.  It never sees a
password store: checking credentials is the application's job, so that it
can be done in constant time and off the event loop.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

from mailgate.protocol._address import ArgumentError
from mailgate.protocol._replies import Reply

__all__ = [
    "MECHANISMS",
    "Challenge",
    "Credentials",
    "SaslFailure",
    "SaslServer",
    "decode_response",
]

MECHANISMS = ("PLAIN", "LOGIN")


@dataclass(frozen=True, slots=True)
class Challenge:
    """Send ``data`` to the client in a ``334`` reply."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Credentials:
    """The client has said who it is; check ``password`` for ``username``."""

    username: str
    password: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True)
class SaslFailure:
    """The exchange failed; send ``reply``."""

    reply: Reply


_MALFORMED = SaslFailure(Reply(501, "5.5.2", "Malformed authentication response"))
# RFC 4954 4: "*" cancels the exchange; the AUTH command fails with 501.
_CANCELLED = SaslFailure(Reply(501, "5.0.0", "Authentication cancelled"))


def decode_response(text: str) -> bytes:
    """Strict base64 (RFC 4954 4), as in a response line; ``""`` is empty.

    Raises ``ArgumentError`` (501 5.5.2) for anything else.
    """
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ArgumentError(Reply(501, "5.5.2", "Cannot decode response")) from None


def _text(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


class SaslServer:
    """One authentication exchange for ``mechanism`` (one of ``MECHANISMS``).

    Raises ``ValueError`` for a mechanism it does not know.
    """

    def __init__(self, mechanism: str) -> None:
        if mechanism not in MECHANISMS:
            raise ValueError(f"unsupported SASL mechanism {mechanism!r}")
        self.mechanism = mechanism
        self._username: str | None = None

    def start(self, initial_response: bytes | None) -> Challenge | Credentials | SaslFailure:
        """Begin, with the initial response from the AUTH command if any."""
        if initial_response is None:
            return Challenge(b"" if self.mechanism == "PLAIN" else b"Username:")
        return self.step(initial_response)

    def receive_line(self, text: str) -> Challenge | Credentials | SaslFailure:
        """Take one response line, surrounding blanks removed: ``*`` cancels."""
        if text == "*":
            return _CANCELLED
        try:
            response = decode_response(text)
        except ArgumentError as error:
            return SaslFailure(error.reply)
        return self.step(response)

    def step(self, response: bytes) -> Challenge | Credentials | SaslFailure:
        """Take one decoded client response."""
        if self.mechanism == "PLAIN":
            return self._plain(response)
        text = _text(response)
        if text is None or "\x00" in text:
            return _MALFORMED
        if self._username is None:
            self._username = text
            return Challenge(b"Password:")
        return Credentials(self._username, text)

    @staticmethod
    def _plain(response: bytes) -> Credentials | SaslFailure:
        # RFC 4616 2: message = [authzid] UTF8NUL authcid UTF8NUL passwd
        text = _text(response)
        if text is None:
            return _MALFORMED
        parts = text.split("\x00")
        if len(parts) != 3 or not parts[1]:
            return _MALFORMED
        authzid, authcid, password = parts
        if authzid and authzid != authcid:
            return SaslFailure(Reply(535, "5.7.8", "Authentication credentials invalid"))
        return Credentials(authcid, password)
