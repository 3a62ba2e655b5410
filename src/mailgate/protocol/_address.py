"""Parsing of MAIL/RCPT arguments: paths (RFC 5321 4.1.2) and ESMTP parameters.

Strategy: one regular expression per grammar production, composed the way
the ABNF composes them, so the code reads against the RFC.  With SMTPUTF8
(RFC 6531 3.3) ``atext`` and domain labels also admit non-ASCII UTF-8.
The functions return plain strings; they raise ``PathError`` carrying the
reply the engine should give.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailgate.protocol._limits import (
    MAX_DOMAIN_OCTETS,
    MAX_LOCAL_PART_OCTETS,
    MAX_PATH_OCTETS,
)
from mailgate.protocol._replies import Reply

__all__ = ["ParsedPath", "PathError", "parse_params", "parse_path"]

_ATEXT = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]"
_ATEXT_UTF8 = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\u0080-\U0010ffff]"
_QCONTENT = r"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])"
_QCONTENT_UTF8 = r"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])"
_LET_DIG = r"[A-Za-z0-9]"
_LDH = r"[A-Za-z0-9-]"
_LET_DIG_UTF8 = r"[A-Za-z0-9\u0080-\U0010ffff]"
_LDH_UTF8 = r"[A-Za-z0-9\-\u0080-\U0010ffff]"


def _subdomain(let_dig: str, ldh: str) -> str:
    return rf"{let_dig}(?:{ldh}*{let_dig})?"


_IPV4 = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?:\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}"
_GENERAL_LITERAL = r"[A-Za-z0-9-]*[A-Za-z0-9]:[\x21-\x5a\x5e-\x7e]+"


def _compile(utf8: bool) -> tuple[re.Pattern[str], re.Pattern[str]]:
    atext, qcontent = (_ATEXT_UTF8, _QCONTENT_UTF8) if utf8 else (_ATEXT, _QCONTENT)
    let_dig, ldh = (_LET_DIG_UTF8, _LDH_UTF8) if utf8 else (_LET_DIG, _LDH)
    sub = _subdomain(let_dig, ldh)
    domain = rf"{sub}(?:\.{sub})*"
    literal = rf"\[(?:{_IPV4}|IPv6:[0-9A-Fa-f:.]+|{_GENERAL_LITERAL})\]"
    local = rf"(?:{atext}+(?:\.{atext}+)*|\"{qcontent}*\")"
    mailbox = rf"(?P<local>{local})@(?P<domain>{domain}|{literal})"
    adl = rf"@{domain}(?:,@{domain})*"
    path = rf"<(?:(?P<route>{adl}):)?{mailbox}>"
    return re.compile(path + r"\Z"), re.compile(domain + r"\Z")


_PATH_ASCII, _DOMAIN_ASCII = _compile(utf8=False)
_PATH_UTF8, _DOMAIN_UTF8 = _compile(utf8=True)
_IPV6_LITERAL = re.compile(r"\[IPv6:(?P<addr>[0-9A-Fa-f:.]+)\]\Z")
_PARAM_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")
_PARAM_VALUE_ASCII = re.compile(r"[\x21-\x3c\x3e-\x7e]+\Z")
_PARAM_VALUE_UTF8 = re.compile(r"[\x21-\x3c\x3e-\x7e\u0080-\U0010ffff]+\Z")


class PathError(Exception):
    """An unacceptable path or parameter list; ``reply`` says why."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.text)
        self.reply = reply


def _syntax(text: str) -> PathError:
    return PathError(Reply(501, "5.1.3", text))


@dataclass(frozen=True, slots=True)
class ParsedPath:
    """A path with its source route dropped (RFC 5321 3.6.1: SHOULD ignore)."""

    address: str
    route: str = ""


def _valid_ipv6(text: str) -> bool:
    # RFC 5321 4.1.3 IPv6-addr: at most 8 groups, one "::", optional IPv4 tail.
    if text.count("::") > 1:
        return False
    groups = text.split(":")
    tail_v4 = "." in groups[-1]
    if tail_v4 and not re.fullmatch(_IPV4, groups[-1]):
        return False
    hexes = groups[:-1] if tail_v4 else groups
    width = len(hexes) + (2 if tail_v4 else 0)
    if "::" in text:
        non_empty = [g for g in hexes if g]
        return width - (len(hexes) - len(non_empty)) <= 7 and all(len(g) <= 4 for g in non_empty)
    return width == 8 and all(1 <= len(g) <= 4 for g in hexes)


def parse_path(
    text: str,
    *,
    allow_null: bool,
    allow_postmaster: bool,
    utf8: bool,
    non_ascii_reply: Reply,
) -> ParsedPath:
    """Parse the argument after ``FROM:`` or ``TO:``.

    Accepts an unbracketed mailbox (``MAIL FROM:a@b``), which many clients
    still send.  Returns the mailbox as written, without brackets or route.

    Raises ``PathError`` with 501 for bad syntax, 553 (or ``non_ascii_reply``)
    for non-ASCII without SMTPUTF8 (RFC 6531 3.5).
    """
    if not text.startswith("<"):
        text = f"<{text}>"
    if len(text.encode("utf-8")) > MAX_PATH_OCTETS:
        raise PathError(Reply(501, "5.1.3", "Path too long"))
    if text == "<>":
        if allow_null:
            return ParsedPath("")
        raise _syntax("Null path not allowed here")
    inner = text[1:-1] if text.endswith(">") else text
    if allow_postmaster and inner.lower() == "postmaster":
        return ParsedPath(inner)
    if not text.isascii() and not utf8:
        raise PathError(non_ascii_reply)
    match = (_PATH_UTF8 if utf8 else _PATH_ASCII).match(text)
    if match is None:
        raise _syntax("Bad address syntax")
    local, domain = match.group("local"), match.group("domain")
    if len(local.encode("utf-8")) > MAX_LOCAL_PART_OCTETS:
        raise PathError(Reply(501, "5.1.3", "Local part too long"))
    if len(domain.encode("utf-8")) > MAX_DOMAIN_OCTETS:
        raise PathError(Reply(501, "5.1.3", "Domain too long"))
    v6 = _IPV6_LITERAL.match(domain)
    if v6 is not None and not _valid_ipv6(v6.group("addr")):
        raise _syntax("Bad IPv6 address literal")
    return ParsedPath(f"{local}@{domain}", match.group("route") or "")


def parse_params(words: list[str], *, utf8: bool) -> dict[str, str | None]:
    """Parse ``esmtp-param`` words (RFC 5321 4.1.2) into an upper-cased dict.

    Raises ``PathError`` (501) for malformed or repeated parameters.
    """
    params: dict[str, str | None] = {}
    value_re = _PARAM_VALUE_UTF8 if utf8 else _PARAM_VALUE_ASCII
    for word in words:
        key, eq, value = word.partition("=")
        if not _PARAM_KEYWORD.match(key) or (eq and not value_re.match(value)):
            raise PathError(Reply(501, "5.5.4", f"Bad parameter syntax: {word[:40]}"))
        upper = key.upper()
        if upper in params:
            raise PathError(Reply(501, "5.5.4", f"Parameter {upper} given twice"))
        params[upper] = value if eq else None
    return params


def is_valid_domain(text: str, *, utf8: bool) -> bool:
    """Whether ``text`` is a Domain per RFC 5321 4.1.2."""
    return (_DOMAIN_UTF8 if utf8 else _DOMAIN_ASCII).match(text) is not None
