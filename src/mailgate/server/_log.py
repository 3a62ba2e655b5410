"""What the SMTP service logs: one line per message, per refusal, per connection.

An event's facts travel as ``LogFields`` in the record's ``fields``
attribute (``logger.info("%s", fields, extra={"fields": fields})``): the
message text is the fields rendered as ``key=value`` words, in the order
operators know from Postfix (``id=... from=<...> to=<...> size=...
client=[...]``), and a JSON formatter can emit the same fields as keys.  The
text is rendered only when a handler formats the record.

Whatever a client chose (its HELO name, the addresses it gave) is cleaned
before it is logged: control characters and other unprintable characters
are escaped and the length is bounded, so a client cannot end a log line,
forge one, or fill the log with one field.

``RefusalLog`` writes at most one line per client address per interval for
connections refused at the door (``421``, too many connections), with a
count of those it kept quiet about, so a flood cannot flood the log too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from mailgate.protocol import Reply
from mailgate.server._counters import SMTPCounters, refusal_reason

__all__ = [
    "MAX_LOGGED_VALUE_CHARS",
    "REFUSAL_LOG_INTERVAL_SECONDS",
    "LogFields",
    "RefusalLog",
    "SessionLog",
    "clean",
    "refusal_in",
    "why_closed",
]

log = logging.getLogger("mailgate.smtp")

MAX_LOGGED_VALUE_CHARS = 256
"""Longest client-chosen value written to the log (an address may have 254 octets,
RFC 5321 4.5.3.1.3, and an SMTPUTF8 one a few more); longer values are cut."""
REFUSAL_LOG_INTERVAL_SECONDS = 60.0
"""At most one line per client address in this time for refused connections."""
MAX_LOGGED_RECIPIENTS = 100
"""Recipients named in a message's log line; ``nrcpt=`` counts them all when there are more."""
MAX_REFUSAL_ADDRESSES = 1024
"""Client addresses whose refused connections are counted apart; the rest share one count."""

_OTHER_ADDRESSES = "other"


def clean(text: str, limit: int = MAX_LOGGED_VALUE_CHARS) -> str:
    """``text`` safe for one log line: unprintable characters escaped, at most ``limit`` long.

    CR, LF, other control characters, Unicode separators and format
    characters (a right-to-left override) become ``\\xNN``, ``\\uNNNN`` or
    ``\\UNNNNNNNN``; a text longer than ``limit``, escapes included, is cut
    and ends with ``...``.
    """
    if len(text) <= limit and text.isprintable():
        return text  # what nearly every client sends
    head = text[:limit]
    if not head.isprintable():
        head = "".join(c if c.isprintable() else _escape(c) for c in head)
    if len(head) > limit or len(text) > limit:
        return head[:limit] + "..."
    return head


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _word(key: str, value: object) -> str:
    if key == "to" and isinstance(value, list):
        return "to=<" + ">,<".join(value) + ">"
    if key == "from":
        return f"from=<{value}>"
    if key == "client":
        return f"client=[{value}]"
    text = value if isinstance(value, str) else str(value)
    if not text or " " in text or '"' in text:
        quoted = text.replace('"', '\\"')
        return f'{key}="{quoted}"'
    return f"{key}={text}"


class LogFields(dict[str, object]):
    """The facts of one log event, in the order they are written.

    ``str()`` gives the text form, ``key=value`` words: addresses in angle
    brackets (``<>`` for the null sender), ``to`` a comma-separated list,
    the client address in square brackets, an empty value or one with a
    space or a double quote in double quotes (``\\"`` for a quote).  Values
    a client chose must be ``clean`` already.
    """

    __slots__ = ()

    def __str__(self) -> str:
        return " ".join([_word(key, value) for key, value in self.items()])


class _Cancellable(Protocol):
    def cancel(self) -> None: ...


CallLater = Callable[[float, Callable[[], None]], _Cancellable]
"""``loop.call_later`` without its extra arguments: run a callback after a delay."""


def _loop_call_later(delay: float, callback: Callable[[], None]) -> _Cancellable:
    return asyncio.get_running_loop().call_later(delay, callback)


class _Refused:
    __slots__ = ("count", "handle", "reply")

    def __init__(self, reply: str) -> None:
        self.reply = reply
        self.count = 0
        self.handle: _Cancellable | None = None


class RefusalLog:
    """Log connections refused at the door, at most one line per address per interval.

    The first refusal of an address is logged at once; the ones that follow
    within ``interval`` seconds are only counted, and logged as one line
    (``suppressed=N``) when the interval ends, or at ``flush``.  Time is the
    event loop's, through ``call_later`` (tests give their own).  At most
    ``max_addresses`` addresses are counted apart; refusals of further ones
    share a count logged as ``client=[other]``, so the counts take bounded
    memory however many addresses a flood comes from.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval: float = REFUSAL_LOG_INTERVAL_SECONDS,
        max_addresses: int = MAX_REFUSAL_ADDRESSES,
        call_later: CallLater = _loop_call_later,
    ) -> None:
        self._log = logger
        self._interval = interval
        self._max_addresses = max_addresses
        self._call_later = call_later
        self._refused: dict[str, _Refused] = {}

    def refused(self, address: str, reply: str) -> None:
        """A connection from ``address`` was refused with ``reply`` (``421 4.7.0 ...``)."""
        entry = self._refused.get(address)
        if entry is None and len(self._refused) >= self._max_addresses:
            address = _OTHER_ADDRESSES
            entry = self._refused.get(address)
        if entry is not None:
            entry.count += 1
            entry.reply = reply
            return
        entry = self._refused[address] = _Refused(reply)
        self._write(address, reply, 0)
        entry.handle = self._call_later(self._interval, lambda: self._interval_over(address))

    def _interval_over(self, address: str) -> None:
        entry = self._refused[address]
        if not entry.count:
            del self._refused[address]
            return
        self._write(address, entry.reply, entry.count)
        entry.count = 0
        entry.handle = self._call_later(self._interval, lambda: self._interval_over(address))

    def flush(self) -> None:
        """Log every count not yet logged, and forget them all (the server is stopping)."""
        refused, self._refused = self._refused, {}
        for address, entry in refused.items():
            if entry.handle is not None:
                entry.handle.cancel()
            if entry.count:
                self._write(address, entry.reply, entry.count)

    def _write(self, address: str, reply: str, suppressed: int) -> None:
        fields = LogFields(client=address, reply=reply)
        if suppressed:
            fields["suppressed"] = suppressed
            interval = self._interval
            fields["interval"] = int(interval) if interval.is_integer() else interval
        self._log.warning("connection refused %s", fields, extra={"fields": fields})


def why_closed(replies: bytes) -> str:
    """How the engine ended a session, told by its last replies: QUIT, 421 or EOF."""
    if replies.startswith(b"221 ") or b"\n221 " in replies:
        return "QUIT"
    if replies.startswith(b"421") or b"\n421" in replies:
        return "421"  # its error budget was spent, or BDAT was unreadable
    return "EOF"


def refusal_in(replies: bytes, reason: str) -> str | None:
    """The line of ``replies`` that refused a message for ``reason`` (``DataAborted``)."""
    wanted = reason.encode("utf-8", "replace")
    for line in reversed(replies.split(b"\r\n")):
        if line[3:4] == b" " and line[:3].isdigit() and line.endswith(wanted):
            return line.decode("utf-8", "replace")
    return None


class SessionLog:
    """What one session logs: a line per message and per refusal (info), a summary (debug).

    The session counts into it as it goes (``commands``, ``messages``, and
    ``end``: how the connection ended); refusals count themselves, here and,
    by reason, in the process's ``counters``.
    """

    __slots__ = ("_counters", "_started", "commands", "end", "messages", "refusals")

    def __init__(self, started: float, counters: SMTPCounters) -> None:
        self._started = started
        self._counters = counters
        self.commands = 0
        self.messages = 0
        self.refusals = 0
        self.end = ""

    def refused(
        self,
        reply: Reply | str,
        sender: str,
        recipients: Sequence[str],
        client: str,
        helo: str,
    ) -> None:
        """Count a refusal; log it at info with ``reply`` (a ``Reply``, or its first line)."""
        self.refusals += 1
        self._counters.refusals[refusal_reason(reply)] += 1
        if not log.isEnabledFor(logging.INFO):
            return
        fields = _client_fields(_address_fields(LogFields(), sender, recipients), client, helo)
        fields["reply"] = reply if isinstance(reply, str) else f"{reply.code} {reply.lines[0]}"
        log.info("refused %s", fields, extra={"fields": fields})

    def accepted(
        self,
        message_id: str,
        sender: str,
        recipients: Sequence[str],
        size: int,
        *,
        client: str,
        helo: str,
        proto: str,
        tls: str | None,
        auth: str | None,
    ) -> None:
        """Log a stored message at info: the line operators know from Postfix."""
        fields = _address_fields(LogFields(id=message_id), sender, recipients)
        fields["size"] = size
        _client_fields(fields, client, helo)
        fields["proto"] = proto
        if tls is not None:
            fields["tls"] = tls
        if auth is not None:
            fields["auth"] = clean(auth)
        log.info("%s", fields, extra={"fields": fields})

    def summary(self, client: str, helo: str, errors: int, exc: BaseException | None) -> None:
        """Log the connection's summary at debug, as it closes."""
        end = self.end or ("error" if exc is not None else "closed")
        fields = _client_fields(LogFields(), client, helo)
        fields["duration"] = round(asyncio.get_running_loop().time() - self._started, 3)
        fields["commands"] = self.commands + (end == "QUIT")
        fields["messages"] = self.messages
        fields["refused"] = self.refusals
        fields["errors"] = errors
        fields["end"] = end
        log.debug("disconnect %s", fields, extra={"fields": fields})


def _address_fields(fields: LogFields, sender: str, recipients: Sequence[str]) -> LogFields:
    """Add ``from`` and ``to`` (when there are recipients), cleaned, to ``fields``."""
    fields["from"] = clean(sender)
    if recipients:
        fields["to"] = [clean(r) for r in recipients[:MAX_LOGGED_RECIPIENTS]]
        if len(recipients) > MAX_LOGGED_RECIPIENTS:
            fields["nrcpt"] = len(recipients)
    return fields


def _client_fields(fields: LogFields, client: str, helo: str) -> LogFields:
    """Add ``client`` and ``helo`` (when given), cleaned, to ``fields``."""
    fields["client"] = client
    if helo:
        fields["helo"] = clean(helo)
    return fields
