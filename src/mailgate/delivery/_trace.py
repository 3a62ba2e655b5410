"""The ``Received:`` trace header prepended to every message (RFC 5321 4.4).

Everything here comes from the client, so every value is cleaned before it
goes into the header: control characters (CR, LF and NUL among them) and the
characters that would end a comment or an address early are replaced with
``?``, and each value is cut to the length the protocol allows, so no folded
line reaches the 998-octet limit of RFC 5322 2.1.1.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from datetime import datetime
from email.utils import format_datetime

from mailgate.model import Envelope, MessageId

__all__ = ["received_header"]

MAX_DOMAIN_OCTETS = 255  # RFC 5321 4.5.3.1.2
MAX_PATH_OCTETS = 256  # RFC 5321 4.5.3.1.3
MAX_TLS_NAME_OCTETS = 100  # our own bound on a TLS version or cipher name
DEFAULT_PROTOCOL = "ESMTP"

# Atom characters of RFC 5322 3.2.3, which the "with" clause must be (RFC 5321 4.4).
_PROTOCOL = re.compile(r"[A-Za-z0-9]{1,32}")
# Characters that would end a comment, an address or the clause early.
_SPECIALS = frozenset("()<>;\\")
_UNSAFE_ASCII = re.compile(r'[()<>;\\ "]')
_UNSAFE_ASCII_PATH = re.compile(r"[()<>;\\]")


def _is_safe(char: str, spaces: bool, utf8: bool) -> bool:
    if char in _SPECIALS:
        return False
    if char in ' "':
        return spaces
    return "\x21" <= char <= "\x7e" or (utf8 and char.isprintable())


def _clean(text: str, max_octets: int, *, spaces: bool = False, utf8: bool = False) -> str:
    """``text`` with every character unsafe in the header replaced by ``?``, then cut.

    Printable ASCII is kept but for the specials (and space unless
    ``spaces``); other printable characters only when ``utf8`` (RFC 6532
    headers of an SMTPUTF8 message).  Controls, CR, LF and NUL never pass.
    """
    if (
        text.isascii()
        and text.isprintable()
        and not (_UNSAFE_ASCII_PATH if spaces else _UNSAFE_ASCII).search(text)
    ):
        cleaned = text  # the common case, decided without looking at each character in Python
    else:
        cleaned = "".join(char if _is_safe(char, spaces, utf8) else "?" for char in text)
    encoded = cleaned.encode("utf-8")
    if len(encoded) <= max_octets:
        return cleaned
    return encoded[:max_octets].decode("utf-8", "ignore")


@functools.lru_cache(maxsize=64)
def _date_text(when: datetime) -> str:
    """The RFC 5322 date of ``when``: messages of the same second share it."""
    return format_datetime(when)


@functools.lru_cache(maxsize=1024)
def _address_literal(address: str) -> str:
    """``[192.0.2.1]`` or ``[IPv6:2001:db8::1]`` (RFC 5321 4.1.3)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "[" + _clean(address, MAX_DOMAIN_OCTETS) + "]"
    if ip.version == 6:
        return f"[IPv6:{ip.compressed}]"
    return f"[{ip}]"


def received_header(
    envelope: Envelope, message_id: MessageId, *, hostname: str, when: datetime
) -> bytes:
    """The trace header for a message received at ``when``, CRLF-terminated and folded.

    ``for`` names the recipient only when there is exactly one, so a copy
    does not disclose the other (possibly Bcc) recipients.
    """
    protocol = envelope.protocol if _PROTOCOL.fullmatch(envelope.protocol) else DEFAULT_PROTOCOL
    utf8 = protocol.upper().startswith("UTF8")
    helo = _clean(envelope.helo_name, MAX_DOMAIN_OCTETS, utf8=utf8) or "unknown"
    tcp_info = _address_literal(envelope.client_address) if envelope.client_address else ""
    if envelope.client_hostname:
        rdns = _clean(envelope.client_hostname, MAX_DOMAIN_OCTETS)
        tcp_info = f"{rdns} {tcp_info}" if tcp_info else rdns
    lines = [f"Received: from {helo}" + (f" ({tcp_info})" if tcp_info else "")]
    if envelope.tls is not None:
        version = _clean(envelope.tls.version, MAX_TLS_NAME_OCTETS)
        cipher = _clean(envelope.tls.cipher, MAX_TLS_NAME_OCTETS)
        lines.append(f"\t(using {version} with cipher {cipher})")
    by = _clean(hostname, MAX_DOMAIN_OCTETS) or "localhost"
    lines.append(f"\tby {by} (mailgate) with {protocol} id {message_id}")
    date = _date_text(when.replace(microsecond=0))
    if len(envelope.rcpt_to) == 1:
        rcpt = _clean(envelope.rcpt_to[0], MAX_PATH_OCTETS, spaces=True, utf8=utf8)
        lines.append(f"\tfor <{rcpt}>; {date}")
    else:
        lines[-1] += ";"
        lines.append(f"\t{date}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")
