"""Delivery status notification parameters (RFC 3461): xtext and the values of
``RET``, ``ENVID``, ``NOTIFY`` and ``ORCPT``.

Strategy.  One function per parameter value turns the text a client sent
into a typed value, or raises ``ValueError`` whose message is a fixed,
printable sentence fit for a ``501`` reply (nothing of the client's text is
echoed).  The same functions serve whoever reads the parameters back from a
stored envelope: the values are stored as the client gave them, so that they
can be relayed verbatim (RFC 3461 5.2.1), and decoded where they are shown.

Invariants.
- A decoded ``ENVID`` or original recipient never holds a control character
  (CR and LF among them): both end up as fields of a delivery report (RFC
  3464 2.2.1, 2.3.1), and one must never split a field in two.
- xtext (RFC 3461 4) encodes US-ASCII only; ``xtext_encode`` gives the one
  canonical form (``+XX`` exactly where a character may not stand as it is),
  so ``xtext_decode(xtext_encode(text)) == text`` for every ASCII ``text``.
- The ``utf-8`` address type (RFC 6533 3) has its own encoding, with
  ``\\x{HEX}`` escapes instead of ``+XX``; ``utf8_addr_encode`` writes its
  seven-bit form.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from mailgate.protocol._limits import MAX_ENVID_OCTETS

__all__ = [
    "Notify",
    "OriginalRecipient",
    "Ret",
    "parse_envid",
    "parse_notify",
    "parse_orcpt",
    "parse_ret",
    "utf8_addr_decode",
    "utf8_addr_encode",
    "xtext_decode",
    "xtext_encode",
]

# RFC 3461 4: xchar is "!" to "~" but "+" and "="; hexchar is "+" and two
# upper-case hexadecimal digits.
_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*\Z")
_HEXCHAR = re.compile(r"\+([0-9A-F]{2})")
# RFC 822 atom: the addr-type of ORCPT (RFC 3461 4.2).
_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+\Z")
# RFC 6533 3: QCHAR (printable ASCII but "+", "=" and "\"), raw UTF-8 (the
# unitext form, which only an SMTPUTF8 transaction carries), and
# EmbeddedUnicodeChar "\x{HEX}".
_UTF8_ADDR = re.compile(
    r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\x\{[0-9A-Fa-f]{1,6}\})+\Z"
)
_EMBEDDED = re.compile(r"\\x\{([0-9A-Fa-f]{1,6})\}")
_QCHAR = re.compile(r"[\x21-\x2a\x2c-\x3c\x3e-\x5b\x5d-\x7e]")
# C0 controls (tab included), DEL, C1 controls, and the Unicode line and
# paragraph separators some software splits lines at.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_MAX_CODE_POINT = 0x10FFFF
_SURROGATES = range(0xD800, 0xE000)


class Ret(enum.StrEnum):
    """``RET``: what of the message a failure report returns (RFC 3461 4.3)."""

    FULL = "FULL"
    HDRS = "HDRS"


class Notify(enum.Flag):
    """``NOTIFY``: which outcomes the sender wants reported (RFC 3461 4.1).

    ``NEVER`` is the empty set.  A recipient without ``NOTIFY`` is not
    ``NEVER``: the parameter is then absent (``None`` where it is held), and
    the reporting MTA behaves as if ``FAILURE`` (and perhaps ``DELAY``) had
    been asked for.
    """

    NEVER = 0
    SUCCESS = enum.auto()
    FAILURE = enum.auto()
    DELAY = enum.auto()


@dataclass(frozen=True, slots=True)
class OriginalRecipient:
    """A decoded ``ORCPT``: the address type, lower-cased, and the address.

    ``address`` holds no control character (``parse_orcpt`` refuses one).
    """

    addr_type: str
    address: str

    @property
    def is_utf8(self) -> bool:
        """Whether the address type is ``utf-8`` (RFC 6533 3)."""
        return self.addr_type == "utf-8"


def xtext_decode(text: str) -> str:
    """The text an xtext (RFC 3461 4) stands for.

    Raises ``ValueError`` when ``text`` is not xtext (a character outside
    ``!``..``~``, a bare ``+`` or ``=``, lower-case hex digits) or encodes a
    character outside US-ASCII.
    """
    if not _XTEXT.match(text):
        raise ValueError("Bad xtext (RFC 3461 4)")
    if "+" not in text:
        return text
    decoded = _HEXCHAR.sub(lambda match: chr(int(match.group(1), 16)), text)
    if not decoded.isascii():
        raise ValueError("xtext encodes US-ASCII only (RFC 3461 4)")
    return decoded


def xtext_encode(text: str) -> str:
    """``text`` as xtext (RFC 3461 4): ``+XX`` for ``+``, ``=``, space and controls.

    Raises ``ValueError`` for a character outside US-ASCII.
    """
    if not text.isascii():
        raise ValueError("xtext encodes US-ASCII only (RFC 3461 4)")
    return "".join(
        char if "!" <= char <= "~" and char not in "+=" else f"+{ord(char):02X}" for char in text
    )


def utf8_addr_decode(text: str) -> str:
    """The address a ``utf-8`` ORCPT value stands for (RFC 6533 3).

    Takes both ``utf-8-addr-xtext`` (seven bits, ``\\x{HEX}`` escapes) and
    ``utf-8-addr-unitext`` (raw UTF-8 as well).

    Raises ``ValueError`` when ``text`` is neither, or an escape names no
    Unicode scalar value.
    """
    if not _UTF8_ADDR.match(text):
        raise ValueError("Bad utf-8 address encoding (RFC 6533 3)")

    def one(match: re.Match[str]) -> str:
        code = int(match.group(1), 16)
        if code > _MAX_CODE_POINT or code in _SURROGATES:
            raise ValueError("Bad utf-8 address encoding (RFC 6533 3)")
        return chr(code)

    return _EMBEDDED.sub(one, text)


def utf8_addr_encode(address: str) -> str:
    """``address`` as ``utf-8-addr-xtext`` (RFC 6533 3): seven bits, ``\\x{HEX}`` escapes."""
    return "".join(char if _QCHAR.match(char) else f"\\x{{{ord(char):X}}}" for char in address)


def _require_no_control(text: str, what: str) -> None:
    if _CONTROL.search(text):
        raise ValueError(f"{what} holds a control character")


def parse_ret(value: str | None) -> Ret:
    """``RET=FULL`` or ``RET=HDRS``, in any case (RFC 3461 4.3).

    Raises ``ValueError`` for anything else.
    """
    if value is not None and value.isascii() and value.upper() in Ret.__members__:
        return Ret(value.upper())
    raise ValueError("RET must be FULL or HDRS (RFC 3461 4.3)")


def parse_envid(value: str | None) -> str:
    """The decoded ``ENVID=<xtext>`` (RFC 3461 4.4).

    Raises ``ValueError`` when it is missing, over ``MAX_ENVID_OCTETS`` as
    sent, not xtext, or holds a character that is not printable US-ASCII.
    """
    if value is None:
        raise ValueError("Syntax: ENVID=<xtext>")
    if len(value.encode("utf-8")) > MAX_ENVID_OCTETS:
        raise ValueError(f"ENVID is longer than {MAX_ENVID_OCTETS} octets (RFC 3461 4.4)")
    envid = xtext_decode(value)
    _require_no_control(envid, "ENVID")
    return envid


def parse_notify(value: str | None) -> Notify:
    """``NOTIFY=NEVER`` or a list of ``SUCCESS``, ``FAILURE``, ``DELAY`` (RFC 3461 4.1).

    Keywords are taken in any case; one named twice counts once.

    Raises ``ValueError`` for a missing value, an empty or unknown keyword,
    or ``NEVER`` together with another (4.1: NEVER MUST appear alone).
    """
    if not value:
        raise ValueError("Syntax: NOTIFY=NEVER or NOTIFY=SUCCESS,FAILURE,DELAY")
    words = value.split(",")
    notify = Notify.NEVER
    for word in words:
        upper = word.upper() if word.isascii() else ""
        if upper not in Notify.__members__:
            raise ValueError("Unknown NOTIFY keyword: use SUCCESS, FAILURE, DELAY or NEVER")
        if upper == "NEVER" and len(words) > 1:
            raise ValueError("NOTIFY=NEVER must stand alone (RFC 3461 4.1)")
        notify |= Notify[upper]
    return notify


def parse_orcpt(value: str | None, *, utf8: bool) -> OriginalRecipient:
    """``ORCPT=<addr-type>;<xtext>``, decoded (RFC 3461 4.2).

    ``utf8``: the transaction declared SMTPUTF8, without which the ``utf-8``
    address type (RFC 6533 3) is refused.  The address of any other type
    must be printable US-ASCII (RFC 3461 4.2); no address may hold a control
    character.

    Raises ``ValueError`` for a missing or empty part, a bad address type,
    bad xtext, ``utf-8`` without ``utf8``, or a forbidden character.
    """
    addr_type, semicolon, encoded = (value or "").partition(";")
    if not semicolon or not encoded or not _ATOM.match(addr_type):
        raise ValueError("Syntax: ORCPT=<addr-type>;<xtext> (RFC 3461 4.2)")
    addr_type = addr_type.lower()
    if addr_type == "utf-8":
        if not utf8:
            raise ValueError("ORCPT of type utf-8 needs SMTPUTF8 (RFC 6533 3)")
        address = utf8_addr_decode(encoded)
    else:
        address = xtext_decode(encoded)
    _require_no_control(address, "ORCPT")
    return OriginalRecipient(addr_type, address)
