"""What a session offers: its EHLO keywords, and the extension commands it withholds.

Strategy.  Beyond its state, a session has three facts that decide which
extensions it offers: whether it began with EHLO (RFC 1869: a HELO session
gets none), whether TLS is up (RFC 3207 4.2: STARTTLS is offered no more;
RFC 4954 6: AUTH may wait for it), and whether it has authenticated (RFC
4954 4: AUTH only once).  ``keywords`` lists what EHLO announces;
``withheld`` gives each extension command that may not come now, with its
refusal.  The engine asks again whenever one of the facts changes and
consults ``withheld`` for the commands that the tables of ``_state`` allow.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from mailgate.protocol._replies import Reply
from mailgate.protocol._settings import ConnectionSettings
from mailgate.protocol._state import Verb, out_of_sequence

__all__ = ["auth_offered", "keywords", "withheld"]

_EHLO_FIRST = out_of_sequence("Send EHLO first")
_NO_EXTENSIONS: Final[Mapping[Verb, Reply]] = {
    Verb.BDAT: _EHLO_FIRST,
    Verb.STARTTLS: _EHLO_FIRST,
    Verb.AUTH: _EHLO_FIRST,
}
_TLS_ACTIVE = out_of_sequence("TLS already active")
_AUTHENTICATED = out_of_sequence("Already authenticated")
_ENCRYPTION_REQUIRED = Reply(  # RFC 4954 6
    538, "5.7.11", "Encryption required for requested authentication mechanism"
)


def auth_offered(settings: ConnectionSettings, *, tls_active: bool) -> bool:
    """Whether AUTH is announced (and the MAIL parameter AUTH= taken)."""
    return bool(settings.auth_mechanisms) and (tls_active or not settings.auth_requires_tls)


def keywords(settings: ConnectionSettings, *, tls_active: bool) -> tuple[str, ...]:
    """The EHLO keywords, in the order announced."""
    size = settings.max_message_size
    offered = [
        f"SIZE {size}" if size else "SIZE",
        "8BITMIME",
        "PIPELINING",
        "CHUNKING",
        "ENHANCEDSTATUSCODES",
        "DSN",  # RFC 3461 4
    ]
    if settings.smtputf8:
        offered.append("SMTPUTF8")
    # RFC 3207 4.2: never offered again once TLS is up.
    if settings.starttls and not tls_active:
        offered.append("STARTTLS")
    if auth_offered(settings, tls_active=tls_active):
        offered.append("AUTH " + " ".join(settings.auth_mechanisms))
    offered.append("HELP")
    return tuple(offered)


def withheld(
    settings: ConnectionSettings, *, extended: bool, tls_active: bool, authenticated: bool
) -> Mapping[Verb, Reply]:
    """The extension commands a session may not send now, each with its refusal.

    (STARTTLS and AUTH when the settings do not offer them at all are
    ``Verb.UNIMPLEMENTED``, and get 502, before this is asked.)
    """
    if not extended:
        return _NO_EXTENSIONS
    refusals: dict[Verb, Reply] = {}
    if tls_active:
        refusals[Verb.STARTTLS] = _TLS_ACTIVE
    if authenticated:
        refusals[Verb.AUTH] = _AUTHENTICATED
    elif not auth_offered(settings, tls_active=tls_active):
        refusals[Verb.AUTH] = _ENCRYPTION_REQUIRED
    return refusals
