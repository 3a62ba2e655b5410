"""Server side of the SASL mechanisms PLAIN (RFC 4616) and LOGIN, sans I/O.

A ``SaslServer`` is fed the client's decoded responses and answers with a
challenge to send (base64-encoded by the shell in a ``334``), the
credentials to check, or a failure reply.  It never sees a password store:
checking credentials is the application's job, so that it can be done in
constant time and off the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailgate.protocol._replies import Reply

__all__ = ["MECHANISMS", "Challenge", "Credentials", "SaslFailure", "SaslServer"]

MECHANISMS = ("PLAIN", "LOGIN")


@dataclass(frozen=True, slots=True)
class Challenge:
    """Send ``data`` to the client in a ``334`` reply."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Credentials:
    """The client has said who it is; check ``password`` for ``username``."""

    username: str
    password: str = ""


@dataclass(frozen=True, slots=True)
class SaslFailure:
    """The exchange failed; send ``reply``."""

    reply: Reply


_MALFORMED = SaslFailure(Reply(501, "5.5.2", "Malformed authentication response"))


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

    def step(self, response: bytes) -> Challenge | Credentials | SaslFailure:
        """Take one client response."""
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
