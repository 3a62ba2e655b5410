"""Parsing of MAIL/RCPT arguments: paths (RFC 5321 4.1.2) and ESMTP parameters.

Strategy: one regular expression per grammar production, composed the way
the ABNF composes them, so the code reads against the RFC.  With SMTPUTF8
(RFC 6531 3.3) ``atext`` and domain labels also admit non-ASCII UTF-8 (never
a C1 control character).  What a regular expression cannot say is checked
after the match: an address literal's tag and address (4.1.3), and lengths.
The functions return plain strings; they raise ``ArgumentError`` carrying
the reply the engine should give.

Lengths (4.5.3.1).  A local part over 64 octets, a domain over 255 or a
label over 63 is refused, with a reply naming which.  The 256 octets of a
whole path are a size every server MUST receive, not a cap: a domain of up
to 255 octets must be received too (4.5.3.1.2), and ``<u@`` with one of 253
octets is already 257.  So a path is never refused for its total length;
its parts are, and the command line limit bounds the rest.

Source routes (4.1.1.3, Appendix C) are accepted and dropped, address
literals in them included (RFC 821 allowed ``@[192.0.2.1]``).

``dot_atom_local_part`` gives the form a local part is matched in: a quoted
string names the same mailbox as its content when that is a dot-atom (2.4,
4.1.2), so ``"u"@example.org`` is ``u@example.org``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailgate.protocol._limits import (
    MAX_DOMAIN_OCTETS,
    MAX_LABEL_OCTETS,
    MAX_LOCAL_PART_OCTETS,
)
from mailgate.protocol._replies import Reply

__all__ = [
    "ArgumentError",
    "ParsedPath",
    "dot_atom_local_part",
    "parse_params",
    "parse_path",
    "shown_in_reply",
]

# Non-ASCII starts at U+00A0: the C1 controls U+0080-U+009F are never text.
_ATEXT = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]"
_ATEXT_UTF8 = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\u00a0-\U0010ffff]"
_QCONTENT = r"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])"
_QCONTENT_UTF8 = r"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u00a0-\U0010ffff]|\\[\x20-\x7e])"
_LET_DIG = r"[A-Za-z0-9]"
_LDH = r"[A-Za-z0-9-]"
_LET_DIG_UTF8 = r"[A-Za-z0-9\u00a0-\U0010ffff]"
_LDH_UTF8 = r"[A-Za-z0-9\-\u00a0-\U0010ffff]"


def _subdomain(let_dig: str, ldh: str) -> str:
    return rf"{let_dig}(?:{ldh}*{let_dig})?"


_IPV4 = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?:\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}"
_GENERAL_LITERAL = r"[A-Za-z0-9-]*[A-Za-z0-9]:[\x21-\x5a\x5e-\x7e]+"
_DCONTENT = r"[\x21-\x5a\x5e-\x7e]"


def _compile(utf8: bool) -> re.Pattern[str]:
    atext, qcontent = (_ATEXT_UTF8, _QCONTENT_UTF8) if utf8 else (_ATEXT, _QCONTENT)
    let_dig, ldh = (_LET_DIG_UTF8, _LDH_UTF8) if utf8 else (_LET_DIG, _LDH)
    sub = _subdomain(let_dig, ldh)
    domain = rf"{sub}(?:\.{sub})*"
    # A mailbox's literal is read loosely and judged afterwards (_literal_error),
    # so that the reply can say what is wrong with it; a route's is only read.
    literal = rf"\[{_DCONTENT}*\]"
    route_literal = rf"\[(?:{_IPV4}|{_GENERAL_LITERAL})\]"
    local = rf"(?:{atext}+(?:\.{atext}+)*|\"{qcontent}*\")"
    mailbox = rf"(?P<local>{local})@(?P<domain>{domain}|{literal})"
    at_domain = rf"@(?:{domain}|{route_literal})"
    adl = rf"{at_domain}(?:,{at_domain})*"
    path = rf"<(?:(?P<route>{adl}):)?{mailbox}>"
    return re.compile(path + r"\Z")


_PATH_ASCII = _compile(utf8=False)
_PATH_UTF8 = _compile(utf8=True)
_IPV4_RE = re.compile(_IPV4 + r"\Z")
_HEX_GROUP = re.compile(r"[0-9A-Fa-f]{1,4}\Z")
_DOT_ATOM = re.compile(rf"{_ATEXT_UTF8}+(?:\.{_ATEXT_UTF8}+)*\Z")
_QUOTED_PAIR = re.compile(r"\\([\x20-\x7e])")
_PARAM_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")
_PARAM_VALUE_ASCII = re.compile(r"[\x21-\x3c\x3e-\x7e]+\Z")
_PARAM_VALUE_UTF8 = re.compile(r"[\x21-\x3c\x3e-\x7e\u00a0-\U0010ffff]+\Z")


class ArgumentError(Exception):
    """An unacceptable command argument (path, parameter...); ``reply`` says why."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.text)
        self.reply = reply


@dataclass(frozen=True, slots=True, init=False)
class ParsedPath:
    """A path with its source route dropped (RFC 5321 3.6.1: SHOULD ignore)."""

    address: str
    route: str = ""

    def __init__(self, address: str, route: str = "") -> None:
        # Written out, not generated: see docs/design/performance.md, "Records made per message".
        object.__setattr__(self, "address", address)
        object.__setattr__(self, "route", route)


def _valid_ipv6(text: str) -> bool:
    """RFC 5321 4.1.3 IPv6-addr: full, compressed, and either with an IPv4 tail.

    ``::`` stands for at least two zero groups, so at most 6 groups (an IPv4
    tail counting as 2) may stand beside it; without it there are exactly 8.
    """
    head, compressed, tail = text.partition("::")
    if "::" in tail:
        return False
    front = head.split(":") if head else []
    back = tail.split(":") if tail else []
    last = back if compressed else front
    width = 0
    if last and "." in last[-1]:
        if not _IPV4_RE.match(last.pop()):
            return False
        width = 2
    groups = front + back
    if not all(_HEX_GROUP.match(group) for group in groups):
        return False
    width += len(groups)
    return width <= 6 if compressed else width == 8


def _literal_error(literal: str) -> str | None:
    """What is wrong with an address literal (RFC 5321 4.1.3), or ``None``.

    Only IPv4 and the ``IPv6:`` tag are registered; an IPv6 address
    without its tag is an error, not a general literal tagged ``2001``.
    """
    if _IPV4_RE.match(literal):
        return None
    tag, colon, address = literal.partition(":")
    if colon and tag.upper() == "IPV6":
        return None if _valid_ipv6(address) else "Bad IPv6 address literal"
    if _valid_ipv6(literal):
        return "An IPv6 address literal needs its IPv6: tag (RFC 5321 4.1.3)"
    return "Bad address literal (RFC 5321 4.1.3)"


def _label_octets(label: str) -> int:
    # A non-ASCII label counts as the A-label DNS holds (RFC 5890 2.3.2.1).
    return len(label) if label.isascii() else len("xn--") + len(label.encode("punycode"))


def _domain_error(domain: str) -> str | None:
    """Which length of a domain name is over its limit (RFC 5321 4.5.3.1.2), or ``None``."""
    lengths = [_label_octets(label) for label in domain.split(".")]
    if sum(lengths) + len(lengths) - 1 > MAX_DOMAIN_OCTETS:
        return f"Domain too long (over {MAX_DOMAIN_OCTETS} octets)"
    if max(lengths) > MAX_LABEL_OCTETS:
        return f"Domain label too long (over {MAX_LABEL_OCTETS} octets)"
    return None


def parse_path(
    text: str,
    *,
    allow_null: bool,
    allow_postmaster: bool,
    utf8: bool,
    non_ascii_reply: Reply,
    enhanced: str,
) -> ParsedPath:
    """Parse the argument after ``FROM:`` or ``TO:``.

    Accepts an unbracketed mailbox (``MAIL FROM:a@b``), which many clients
    still send.  Returns the mailbox as written, without brackets or route.
    ``enhanced`` is the code for bad syntax: 5.1.7 for a sender, 5.1.3 for
    a recipient (RFC 3463 3.2).

    Raises ``ArgumentError`` with 501 for bad syntax, a bad address literal,
    or a local part, domain or label over its length (the text says which);
    ``non_ascii_reply`` for non-ASCII without SMTPUTF8 (RFC 6531 3.5).
    """
    if not text:
        raise ArgumentError(Reply(501, enhanced, "Missing address"))
    if not text.startswith("<"):
        text = f"<{text}>"
    if text == "<>":
        if allow_null:
            return ParsedPath("")
        raise ArgumentError(Reply(501, enhanced, "Null path not allowed here"))
    # RFC 5321 4.1.1.3: "Postmaster" without a domain, in any case.
    if allow_postmaster and text[1:-1].lower() == "postmaster":
        return ParsedPath(text[1:-1])
    if not text.isascii() and not utf8:
        raise ArgumentError(non_ascii_reply)
    match = (_PATH_UTF8 if utf8 else _PATH_ASCII).match(text)
    if match is None:
        raise ArgumentError(Reply(501, enhanced, "Bad address syntax"))
    local, domain = match.group("local"), match.group("domain")
    if len(local.encode("utf-8")) > MAX_LOCAL_PART_OCTETS:
        error: str | None = f"Local part too long (over {MAX_LOCAL_PART_OCTETS} octets)"
    elif domain.startswith("["):
        error = _literal_error(domain[1:-1])
    else:
        error = _domain_error(domain)
    if error is not None:
        raise ArgumentError(Reply(501, enhanced, error))
    return ParsedPath(f"{local}@{domain}", match.group("route") or "")


def dot_atom_local_part(local: str) -> str | None:
    """The dot-atom form of a local part, the form mailboxes are matched in.

    A dot-atom comes back as it is.  A quoted string whose content (each
    quoted-pair ``\\x`` read as ``x``) is a dot-atom comes back unquoted:
    RFC 5321 2.4 and 4.1.2 make ``"u"`` and ``u`` the same mailbox, and
    ``"a\\b"`` is ``ab``.  Anything else, ``"a b"`` or
    ``"|/bin/sh -c id"`` say, gives ``None``: it can name no mailbox that
    a dot-atom names.  Case is left alone, for the caller's matching rules.
    """
    if len(local) >= 2 and local[0] == local[-1] == '"':
        local = _QUOTED_PAIR.sub(r"\1", local[1:-1])
    return local if _DOT_ATOM.match(local) else None


def shown_in_reply(word: str) -> str:
    """A client's word as a reply may repeat it: printable ASCII, and at most 40 characters.

    A command line may be over 1000 octets (SIZE, DSN and AUTH= lengthen MAIL's
    and RCPT's), a reply line at most 512 (RFC 5321 4.5.3.1.5).
    """
    return word[:40].encode("ascii", "replace").decode("ascii")


def parse_params(words: list[str], *, utf8: bool) -> dict[str, str | None]:
    """Parse ``esmtp-param`` words (RFC 5321 4.1.2) into an upper-cased dict.

    Raises ``ArgumentError`` (501) for malformed or repeated parameters.
    """
    params: dict[str, str | None] = {}
    value_re = _PARAM_VALUE_UTF8 if utf8 else _PARAM_VALUE_ASCII
    for word in words:
        key, eq, value = word.partition("=")
        if not _PARAM_KEYWORD.match(key) or (eq and not value_re.match(value)):
            # Echoed as printable ASCII only: a reply never carries what it cannot show.
            shown = shown_in_reply(word)
            raise ArgumentError(Reply(501, "5.5.4", f"Bad parameter syntax: {shown}"))
        upper = key.upper()
        if upper in params:
            shown = shown_in_reply(upper)
            raise ArgumentError(Reply(501, "5.5.4", f"Parameter {shown} given twice"))
        params[upper] = value if eq else None
    return params
