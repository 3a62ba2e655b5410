"""Parsers of the tagging settings: ``--tag``, ``--tags-disable``, as Mailpit spells them.

``--tag TAGS=QUERY`` (repeatable) is a rule of ``mailgate.tags``: tag names
separated by commas, then the inbox's search.  In the environment,
``MAILGATE_TAG`` holds rules separated by spaces, a rule with spaces in double
quotes, as Mailpit's ``MP_TAG`` does (``split_tag_rules``); in the TOML file,
``tags`` is a table of ``TAGS = "QUERY"`` or a list of ``"TAGS=QUERY"``.
``--tags-disable`` names the automatic sources to turn off, comma-separated:
``x-tags``, ``plus-addresses`` (and Mailpit's other spellings of them).
"""

from __future__ import annotations

import re

from mailgate.config._values import InvalidValue, _describe, _toml_key
from mailgate.tags import PLUS_ADDRESSES, X_TAGS, TagRule, TagRuleError, parse_tag_rule

__all__ = ["parse_tag_rules", "parse_tags_disable", "split_tag_rules"]

_SOURCES = {
    X_TAGS: X_TAGS,
    "xtags": X_TAGS,
    PLUS_ADDRESSES: PLUS_ADDRESSES,
    "plus-addressing": PLUS_ADDRESSES,
}
_RULE = re.compile(r'(?:"[^"]*"?|[^\s"]+)+')


def split_tag_rules(text: str) -> list[str]:
    """``MAILGATE_TAG``'s rules: separated by white space outside double quotes; a rule
    quoted whole loses its quotes, one quoted in part (a query's phrase) keeps them."""
    rules = []
    for match in _RULE.finditer(text):
        rule = match.group()
        if len(rule) > 1 and rule[0] == rule[-1] == '"' and rule.count('"') == 2:
            rule = rule[1:-1]
        rules.append(rule)
    return rules


def _rule(text: object, at: str = "") -> TagRule:
    if not isinstance(text, str):
        raise InvalidValue(f"expected a string TAGS=QUERY, got {_describe(text)}", at=at)
    try:
        return parse_tag_rule(text)
    except TagRuleError as error:
        raise InvalidValue(str(error), at=at) from None


def parse_tag_rules(value: object) -> tuple[TagRule, ...]:
    """Rules from flags or the environment (a list of ``TAGS=QUERY``), or from the TOML
    file: a table of ``TAGS = "QUERY"``, a list, or one rule."""
    if isinstance(value, dict):
        rules = []
        for tags, query in value.items():
            at = f".{_toml_key(tags)}"
            if not isinstance(query, str):
                raise InvalidValue("expected a search (a string)", at=at)
            rules.append(_rule(f"{tags}={query}", at))
        return tuple(rules)
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise InvalidValue(f"expected TAGS=QUERY rules, got {_describe(value)}")
    return tuple(_rule(item) for item in items)


def parse_tags_disable(value: object) -> frozenset[str]:
    """Sources of automatic tags to turn off: ``x-tags``, ``plus-addresses``, comma-separated
    or a list; none for ``""``."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise InvalidValue(f"expected x-tags or plus-addresses, got {_describe(value)}")
    disabled = set()
    for item in items:
        if not isinstance(item, str):
            raise InvalidValue(f"expected x-tags or plus-addresses, got {_describe(item)}")
        for name in item.split(","):
            key = name.strip().lower()
            if key and key not in _SOURCES:
                raise InvalidValue(f"{name.strip()!r} is not x-tags or plus-addresses")
            if key:
                disabled.add(_SOURCES[key])
    return frozenset(disabled)
