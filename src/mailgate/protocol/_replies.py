"""SMTP replies as values: a code, an enhanced status code and text.

A reply never reaches the wire as a hand-written string.  ``Reply.to_bytes``
renders it per RFC 5321 4.2: every line carries the same code, continuation
lines use ``-``, and with ENHANCEDSTATUSCODES (RFC 2034 4) each line's text
starts with the ``class.subject.detail`` code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["Reply"]

_ENHANCED = re.compile(r"[245]\.\d{1,3}\.\d{1,3}\Z")
# LF separates lines; HT is text (RFC 5321 4.2: textstring); no other C0 or C1
# control character, nor the Unicode line separators, may reach the wire.
_FORBIDDEN_TEXT = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


@dataclass(frozen=True, slots=True, init=False)
class Reply:
    """One SMTP reply.

    ``text`` may hold several lines separated by ``\\n``; each becomes one
    line of a multi-line reply.  ``enhanced`` is ``None`` for the greeting
    and HELO/EHLO replies, which RFC 2034 4 exempts.  ``charged`` false marks a
    5xx the server gives for none of the client's doing (a failure made on
    purpose, for testing): it does not spend the client's error budget.

    Raises ``ValueError`` for a code outside 200-599, an enhanced code whose
    class differs from the code's (RFC 3463 2), or control characters in text
    (tab aside): the engine keeps them out of every event, so an application
    that echoes what the client sent never meets this.
    """

    code: int
    enhanced: str | None
    text: str
    charged: bool = field(default=True, kw_only=True)
    _wire: bytes = field(init=False, repr=False, compare=False)

    def __init__(self, code: int, enhanced: str | None, text: str, *, charged: bool = True) -> None:
        # Written out, not generated: see docs/design/performance.md, "Records made per message".
        object.__setattr__(self, "code", code)
        object.__setattr__(self, "enhanced", enhanced)
        object.__setattr__(self, "text", text)
        object.__setattr__(self, "charged", charged)
        if not 200 <= self.code <= 599:
            raise ValueError(f"reply code {self.code} is outside 200-599")
        if self.enhanced is not None and (
            not _ENHANCED.match(self.enhanced) or self.enhanced[0] != str(self.code)[0]
        ):
            raise ValueError(f"bad enhanced status code {self.enhanced!r} for {self.code}")
        if _FORBIDDEN_TEXT.search(self.text):
            raise ValueError("reply text holds a control character")
        # Rendered once: most replies are module constants sent again and again.
        lines = self.lines
        last = len(lines) - 1
        out = [f"{self.code}{' ' if i == last else '-'}{line}\r\n" for i, line in enumerate(lines)]
        object.__setattr__(self, "_wire", "".join(out).encode("utf-8"))

    @property
    def is_positive(self) -> bool:
        """A 2xx or 3xx reply."""
        return self.code < 400

    @property
    def lines(self) -> tuple[str, ...]:
        """The text lines of the reply, each with its enhanced code."""
        prefix = f"{self.enhanced} " if self.enhanced else ""
        return tuple(f"{prefix}{line}".rstrip() for line in self.text.split("\n"))

    def to_bytes(self) -> bytes:
        """The reply as it goes on the wire, CRLF-terminated."""
        return self._wire
