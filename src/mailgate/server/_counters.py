"""What the SMTP service counts: ``SMTPCounters``, plain integers in the process.

Each SMTP process has one ``SMTPCounters`` (``SMTPServer.counters``), which
its sessions reach through their ``SessionContext``.  Counting is an integer
increment on an attribute or on a dict whose keys are all there from the
start: no lock (a process's sessions share one event loop), no call into a
metrics library, nothing written anywhere.  Whoever exposes the counts
(``mailgate.runtime``, for ``/metrics``) reads them when asked; they only
ever grow while the process lives.

Nothing here is on the per-message path: a message accepted is counted by
the sink (``delivery.Acceptor.counts``); these count connections, refusals,
TLS handshakes, AUTH outcomes and deadline cut-offs.
"""

from __future__ import annotations

from mailgate.protocol import Reply

__all__ = [
    "AUTH_RESULTS",
    "CONNECTION_REFUSALS",
    "CUT_OFF_REASONS",
    "REFUSAL_REASONS",
    "SMTPCounters",
    "refusal_reason",
]

CONNECTION_REFUSALS = ("too_many", "per_address", "shutting_down")
"""Why a connection was refused at the door (``421 4.7.0``, or ``421 4.3.2``)."""
REFUSAL_REASONS = (
    "relay_denied",
    "unknown_user",
    "auth_required",
    "too_big",
    "bad_content",
    "loop",
    "no_room",
    "store_failure",
    "chaos",
    "other",
)
"""Why a command or a message was refused, as its reply's enhanced status code tells
(``refusal_reason``); ``chaos``: by a chaos trigger, on purpose."""
AUTH_RESULTS = ("ok", "failed", "blocked", "throttled", "unavailable")
"""How an AUTH exchange ended: right credentials; wrong ones; the client's address is
blocked for failing too often; a check refused for coming too soon after a failure (or
too many at once); the credentials could not be checked (the authenticator failed or
was busy)."""
CUT_OFF_REASONS = ("idle", "slow_transfer", "session_too_long", "evicted")
"""Why a session was cut off with ``421 4.4.2`` (``server._deadlines``): no progress
within the idle timeout, content slower than ``--min-data-rate``, older than
``--max-session-time``, or stalled when a newcomer needed its slot."""

_REASON_BY_STATUS = {
    "5.7.1": "relay_denied",  # RFC 3463 X.7.1: delivery not authorized
    "5.1.1": "unknown_user",  # X.1.1: bad destination mailbox
    "5.7.0": "auth_required",  # RFC 6409 4.3 (530 5.7.0)
    "5.3.4": "too_big",  # X.3.4: message too big for system
    "5.6.0": "bad_content",  # X.6.0: a bare CR or LF, with --bare-line-endings reject
    "5.4.6": "loop",  # X.4.6: routing loop detected (RFC 5321 6.3)
    "4.3.1": "no_room",  # X.3.1: mail system full
    "4.3.0": "store_failure",  # X.3.0: the store could not take it
}


def refusal_reason(reply: Reply | str) -> str:
    """Which of ``REFUSAL_REASONS`` a refusal is: ``reply`` is a ``Reply``, or its first
    line (``552 5.3.4 Message size exceeds the fixed maximum``)."""
    if isinstance(reply, Reply):
        if not reply.charged:  # none of the client's doing: only chaos refuses so
            return "chaos"
        return _REASON_BY_STATUS.get(reply.enhanced or "", "other")
    return _REASON_BY_STATUS.get(reply[4:].partition(" ")[0], "other")


class SMTPCounters:
    """One SMTP process's counts since it started; see the module's docstring.

    ``admitted`` counts connections greeted; ``connections_refused`` those
    refused at the door, by ``CONNECTION_REFUSALS``; ``refusals`` commands and
    messages refused, by ``REFUSAL_REASONS`` (a refused ``RCPT`` counts once);
    ``tls_handshakes`` ``ok`` and ``failed`` ones (a handshake that times out,
    or that the connection's end cuts short, has failed); ``tls_versions`` the
    sessions whose handshake succeeded, by protocol version (``TLSv1.3``);
    ``auth`` AUTH exchanges by ``AUTH_RESULTS``; ``cut_offs`` sessions cut off,
    by ``CUT_OFF_REASONS``.
    """

    __slots__ = (
        "admitted",
        "auth",
        "connections_refused",
        "cut_offs",
        "refusals",
        "tls_handshakes",
        "tls_versions",
    )

    def __init__(self) -> None:
        self.admitted = 0
        self.connections_refused = dict.fromkeys(CONNECTION_REFUSALS, 0)
        self.refusals = dict.fromkeys(REFUSAL_REASONS, 0)
        self.tls_handshakes = {"ok": 0, "failed": 0}
        self.tls_versions: dict[str, int] = {}
        self.auth = dict.fromkeys(AUTH_RESULTS, 0)
        self.cut_offs = dict.fromkeys(CUT_OFF_REASONS, 0)

    def tls_succeeded(self, version: str) -> None:
        """A TLS handshake succeeded with protocol ``version``."""
        self.tls_handshakes["ok"] += 1
        self.tls_versions[version] = self.tls_versions.get(version, 0) + 1
