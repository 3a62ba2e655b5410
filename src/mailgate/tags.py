"""Tags: the names Mailpit allows, and the rules that tag new mail as it is accepted.

A tag name is 1 to ``MAX_TAG_CHARS`` characters among ASCII letters and digits,
space, ``-``, ``_``, ``.`` and ``@``, as in Mailpit.  ``clean_tag`` makes a tag
of any text the way Mailpit does: every other character becomes a space, runs of
spaces become one, the ends are trimmed and the rest is cut at ``MAX_TAG_CHARS``;
what is left may be nothing (no tag).  Tags a message brings (its ``X-Tags``
header, the ``+tag`` of its recipients' addresses) are cleaned so; a tag name
in the configuration must already be clean, or the configuration is refused.

``AutoTags`` says where new mail's tags come from: the message (``X-Tags``, plus
addresses, each of which Mailpit's ``--tags-disable`` names turn off), the AUTH
user's name (Mailpit's ``--tags-username``), and ``TagRule`` values, Mailpit's
``--tag TAGS=QUERY`` filters: a message the query matches gets the tags.  A
rule's query is the inbox's search language (``mailgate.query``), evaluated
with ``query.matches`` on the summary the accept path has just parsed, so no
store is asked, and a rule means what the same search in the inbox means:
every term is known when mail arrives except ``is:read`` and ``is:unread``
(a new message is always unread: a rule on them would tag all mail or none),
which a rule refuses.  ``tag:`` and ``is:tagged`` see the tags the message
brought and the user's name, not those other rules give, so the order of
rules never matters.  Dates without a zone are UTC.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailgate import MailgateError
from mailgate.query import Flag, FlagTerm, Query, QueryError, parse_query

__all__ = [
    "AUTO_TAG_SOURCES",
    "MAX_TAG_CHARS",
    "PLUS_ADDRESSES",
    "X_TAGS",
    "AutoTags",
    "TagRule",
    "TagRuleError",
    "clean_tag",
    "is_tag_name",
    "parse_tag_rule",
]

MAX_TAG_CHARS = 100
"""The longest tag, in characters (Mailpit's limit; they are all ASCII)."""
X_TAGS = "x-tags"
"""The source of tags in a message's ``X-Tags`` header (comma-separated)."""
PLUS_ADDRESSES = "plus-addresses"
"""The source of tags in recipients' addresses: ``user+tag@example.com`` gives ``tag``."""
AUTO_TAG_SOURCES = (X_TAGS, PLUS_ADDRESSES)
"""The sources that ``AutoTags.disabled`` may name, as Mailpit's ``--tags-disable`` does."""

_NOT_TAG_CHARS = re.compile(r"[^a-zA-Z0-9 _.@-]")
_SPACES = re.compile(r" {2,}")
_EXAMPLE = "TAGS=QUERY, e.g. billing=subject:invoice"
_UNKNOWABLE = {Flag.READ: "is:read", Flag.UNREAD: "is:unread"}


class TagRuleError(MailgateError, ValueError):
    """A tag rule that cannot be used; the message says what is wrong, in one line."""


def clean_tag(text: str) -> str:
    """``text`` as a tag name, as Mailpit cleans one; ``""`` when nothing of it is left."""
    cleaned = _SPACES.sub(" ", _NOT_TAG_CHARS.sub(" ", text)).strip(" ")
    return cleaned[:MAX_TAG_CHARS].rstrip(" ") if len(cleaned) > MAX_TAG_CHARS else cleaned


def is_tag_name(text: str) -> bool:
    """Whether ``text`` is a tag name as it stands: cleaning would leave it unchanged."""
    return bool(text) and clean_tag(text) == text


@dataclass(frozen=True, slots=True)
class TagRule:
    """A new message that ``query`` matches gets ``tags``; ``text`` is the rule as written."""

    tags: tuple[str, ...]
    query: Query
    text: str


def parse_tag_rule(text: str) -> TagRule:
    """A rule from ``TAGS=QUERY``: tag names separated by commas, ``=``, a search.

    Tags hold no ``=``, so the first one ends them and the query may hold more.
    Raises ``TagRuleError`` for text without ``=``, a name that is not a clean
    tag name (``is_tag_name``), a query ``query.parse_query`` refuses, an empty
    query, or one with ``is:read`` or ``is:unread``.
    """
    names, equals, search = text.partition("=")
    if not equals:
        raise TagRuleError(f"{text!r} is not {_EXAMPLE}")
    tags: dict[str, None] = {}
    for written in names.split(","):
        name = written.strip()
        if not is_tag_name(name):
            raise TagRuleError(
                f"{name!r} is not a tag name: 1 to {MAX_TAG_CHARS} letters, digits, spaces,"
                f" '-', '_', '.' or '@' ({_EXAMPLE})"
            )
        tags.setdefault(name)
    try:
        query = parse_query(search)
    except QueryError as error:
        raise TagRuleError(f"{search.strip()!r}: {error}") from None
    if not query:
        raise TagRuleError(f"{text!r} has no search after '=' ({_EXAMPLE})")
    for term in query.terms:
        if isinstance(term, FlagTerm) and term.flag in _UNKNOWABLE:
            raise TagRuleError(
                f"{_UNKNOWABLE[term.flag]} cannot be told when mail arrives: it is always unread"
            )
    return TagRule(tuple(tags), query, text.strip())


@dataclass(frozen=True, slots=True)
class AutoTags:
    """Where the tags of new mail come from, as it is accepted.

    ``disabled`` names sources of ``AUTO_TAG_SOURCES`` that are off (both are on
    by default, as in Mailpit); ``username`` tags mail with the name its client
    authenticated as; ``rules`` tag the mail their queries match.
    """

    rules: tuple[TagRule, ...] = ()
    disabled: frozenset[str] = frozenset()
    username: bool = False

    @property
    def x_tags(self) -> bool:
        """Whether tags are taken from the ``X-Tags`` header."""
        return X_TAGS not in self.disabled

    @property
    def plus_addresses(self) -> bool:
        """Whether tags are taken from recipients' plus addresses."""
        return PLUS_ADDRESSES not in self.disabled

    @property
    def enabled(self) -> bool:
        """Whether new mail may get any tag at all."""
        return self.x_tags or self.plus_addresses or self.username or bool(self.rules)
