"""The search language of the inbox, as Mailpit speaks it, parsed into plain values.

A query is a list of terms that must all hold (there is no ``OR``).  A term
is a free word, a ``"quoted phrase"``, or ``field:value`` where the value
may be quoted too (``subject:"quarterly report"``).  A leading ``-`` or
``!`` negates a term.  Matching is case-insensitive substring matching, as
Mailpit does it, except ``tag:`` and ``message-id:``, which match whole
values.  A ``field:`` that is not part of the language is an ordinary word,
so ``http://example.com`` searches for that text.

| term | holds for a message whose |
|---|---|
| ``word``, ``"a phrase"`` | subject, addresses, message id or text snippet contains it |
| ``from:`` ``to:`` ``cc:`` ``bcc:`` ``reply-to:`` | that header's names or addresses contain it |
| ``addressed:`` | To, Cc, Bcc or Reply-To contains it |
| ``subject:`` | subject contains it |
| ``message-id:`` | Message-ID is it (angle brackets optional) |
| ``tag:`` | tags include it |
| ``is:read`` ``is:unread`` ``is:tagged`` | read flag, or having any tag |
| ``has:attachment`` (or ``has:attachments``) | attachment count is not zero |
| ``has:inline`` | inline part count (images the HTML shows) is not zero |
| ``before:DATE`` ``after:DATE`` | received time is before / at or after ``DATE`` |
| ``larger:SIZE`` ``smaller:SIZE`` | size is at least / below ``SIZE`` (``10K``, ``2MB``) |

A ``SIZE`` over ``MAX_SIZE_OCTETS`` is refused, as one that cannot be read is.

``DATE`` is ``YYYY-MM-DD`` (midnight in the caller's time zone) or an ISO
8601 time.  Parsing is pure: the caller gives the time zone, and
``matches`` evaluates a query against a ``MessageSummary`` so any store, or
a live event stream, can apply it.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from fractions import Fraction

from mailgate import MailgateError
from mailgate.model import Address, MessageSummary

__all__ = [
    "Bound",
    "BoundTerm",
    "Field",
    "Flag",
    "FlagTerm",
    "Query",
    "QueryError",
    "Term",
    "TextTerm",
    "field_text",
    "matches",
    "parse_query",
]

MAX_QUERY_CHARS = 2000
"""Longer queries are refused: a search box never needs more."""
MAX_SIZE_OCTETS = 2**63 - 1
"""The largest ``SIZE`` a term may name: what a store's 64-bit integer column can compare."""

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmg]?)i?b?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


class QueryError(MailgateError, ValueError):
    """A query that cannot be understood; the message says which term and why."""


class Field(enum.StrEnum):
    """Where a text term looks."""

    TEXT = "text"
    FROM = "from"
    TO = "to"
    CC = "cc"
    BCC = "bcc"
    REPLY_TO = "reply-to"
    ADDRESSED = "addressed"
    SUBJECT = "subject"
    MESSAGE_ID = "message-id"
    TAG = "tag"


class Flag(enum.StrEnum):
    """A yes-or-no property of a message."""

    READ = "read"
    UNREAD = "unread"
    TAGGED = "tagged"
    ATTACHMENT = "attachment"
    INLINE = "inline"


class Bound(enum.StrEnum):
    """A comparison against a received time or a size."""

    BEFORE = "before"
    AFTER = "after"
    LARGER = "larger"
    SMALLER = "smaller"


@dataclass(frozen=True, slots=True)
class TextTerm:
    """Text to find in a field; ``value`` is lower-case and never empty."""

    field: Field
    value: str
    negated: bool = False


@dataclass(frozen=True, slots=True)
class FlagTerm:
    """A flag a message must have (or, negated, must not have)."""

    flag: Flag
    negated: bool = False


@dataclass(frozen=True, slots=True)
class BoundTerm:
    """``received_at`` against ``when`` (BEFORE, AFTER) or ``size`` against ``octets``."""

    bound: Bound
    when: datetime | None = None
    octets: int = 0
    negated: bool = False


Term = TextTerm | FlagTerm | BoundTerm


@dataclass(frozen=True, slots=True)
class Query:
    """Terms that must all hold; no terms matches every message."""

    terms: tuple[Term, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.terms)


_TEXT_FIELDS = {f.value: f for f in Field if f is not Field.TEXT}
_FLAGS = {
    "is:read": Flag.READ,
    "is:unread": Flag.UNREAD,
    "is:tagged": Flag.TAGGED,
    "has:attachment": Flag.ATTACHMENT,
    "has:attachments": Flag.ATTACHMENT,
    "has:inline": Flag.INLINE,
}


def _tokens(text: str) -> list[tuple[str, bool]]:
    """Split on unquoted white space; each token with whether any of it was quoted.

    Quotes are removed; an unclosed quote runs to the end.
    """
    tokens: list[tuple[str, bool]] = []
    current: list[str] = []
    quoted = in_quotes = started = False
    for char in text:
        if char == '"':
            in_quotes = not in_quotes
            quoted = started = True
        elif char.isspace() and not in_quotes:
            if started:
                tokens.append(("".join(current), quoted))
            current, quoted, started = [], False, False
        else:
            current.append(char)
            started = True
    if started:
        tokens.append(("".join(current), quoted))
    return tokens


def _parse_when(value: str, tz: tzinfo) -> datetime:
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise QueryError(f"not a date: {value!r} (use YYYY-MM-DD)") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=tz)


def _parse_size(value: str) -> int:
    match = _SIZE.fullmatch(value.strip())
    if match is None:
        raise QueryError(f"not a size: {value!r} (use a number of octets, 10K or 2MB)")
    octets = int(Fraction(match[1]) * _SIZE_UNITS[match[2].lower()])  # exact, however long
    if octets > MAX_SIZE_OCTETS:
        raise QueryError(f"size too large: {value!r} (at most {MAX_SIZE_OCTETS} octets)")
    return octets


def _term(token: str, quoted: bool, tz: tzinfo) -> Term | None:
    negated = False
    if len(token) > 1 and token[0] in "-!":
        negated, token = True, token[1:]
    lowered = token.lower()
    if not quoted and lowered in _FLAGS:
        return FlagTerm(_FLAGS[lowered], negated)
    name, colon, value = lowered.partition(":")
    original = token.partition(":")[2]
    if colon and value:
        if name in _TEXT_FIELDS:
            field = _TEXT_FIELDS[name]
            if field is Field.MESSAGE_ID:
                value = value.strip().removeprefix("<").removesuffix(">")
            return TextTerm(field, value, negated) if value else None
        if name in ("before", "after"):
            return BoundTerm(Bound(name), when=_parse_when(original, tz), negated=negated)
        if name in ("larger", "smaller"):
            return BoundTerm(Bound(name), octets=_parse_size(value), negated=negated)
        if name in ("is", "has") and not quoted:
            raise QueryError(f"unknown search term {token!r}")
    return TextTerm(Field.TEXT, lowered, negated) if lowered else None


def parse_query(text: str, *, tz: tzinfo = UTC) -> Query:
    """Parse a search; ``tz`` is the zone of dates written without one.

    Raises ``QueryError`` for a date or size that cannot be read, an unknown
    ``is:`` or ``has:`` term, or a query over ``MAX_QUERY_CHARS``.
    """
    if len(text) > MAX_QUERY_CHARS:
        raise QueryError(f"search is longer than {MAX_QUERY_CHARS} characters")
    terms = (_term(token, quoted, tz) for token, quoted in _tokens(text))
    return Query(tuple(term for term in terms if term is not None))


# -- evaluation ------------------------------------------------------------------------------


def _names(addresses: tuple[Address, ...]) -> str:
    # Names and addresses in a row, space-separated: what a store can index.
    return " ".join([f"{a.name} {a.address}" for a in addresses])


def _people(addresses: tuple[Address, ...]) -> str:
    return _names(addresses).lower()


def field_text(summary: MessageSummary, field: Field) -> str:
    """The lower-case text a substring term of ``field`` searches in."""
    if field is Field.TEXT:  # first, and lowered once: every new message's index text
        sender = summary.sender
        recipients = summary.to + summary.cc + summary.bcc + summary.reply_to
        return "\n".join(
            (
                summary.subject,
                _names((sender,)) if sender else "",
                _names(recipients),
                summary.message_id,
                summary.snippet,
            )
        ).lower()
    match field:
        case Field.FROM:
            return _people((summary.sender,) if summary.sender else ())
        case Field.TO:
            return _people(summary.to)
        case Field.CC:
            return _people(summary.cc)
        case Field.BCC:
            return _people(summary.bcc)
        case Field.REPLY_TO:
            return _people(summary.reply_to)
        case Field.ADDRESSED:
            return _people(summary.to + summary.cc + summary.bcc + summary.reply_to)
        case Field.SUBJECT:
            return summary.subject.lower()
        case Field.MESSAGE_ID:
            return summary.message_id.lower()
        case Field.TAG:
            return "\n".join(summary.tags).lower()


def _holds(term: Term, summary: MessageSummary) -> bool:
    match term:
        case TextTerm(field=Field.TAG, value=value):
            return any(tag.lower() == value for tag in summary.tags)
        case TextTerm(field=Field.MESSAGE_ID, value=value):
            return summary.message_id.lower() == value
        case TextTerm(field=field, value=value):
            return value in field_text(summary, field)
        case FlagTerm(flag=Flag.READ):
            return summary.read
        case FlagTerm(flag=Flag.UNREAD):
            return not summary.read
        case FlagTerm(flag=Flag.TAGGED):
            return bool(summary.tags)
        case FlagTerm(flag=Flag.ATTACHMENT):
            return summary.attachments > 0
        case FlagTerm(flag=Flag.INLINE):
            return summary.inline > 0
        case BoundTerm(bound=Bound.BEFORE, when=when):
            return when is not None and summary.received_at < when
        case BoundTerm(bound=Bound.AFTER, when=when):
            return when is not None and summary.received_at >= when
        case BoundTerm(bound=Bound.LARGER, octets=octets):
            return summary.size >= octets
        case BoundTerm(bound=Bound.SMALLER, octets=octets):
            return summary.size < octets
    return False  # pragma: no cover - the cases above are exhaustive


def matches(query: Query, summary: MessageSummary) -> bool:
    """Whether every term of ``query`` holds for the message ``summary`` describes."""
    return all(_holds(term, summary) != term.negated for term in query.terms)
