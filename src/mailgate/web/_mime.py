"""A stored message taken apart for display: its text, HTML, parts and headers.

The store keeps only the summary a listing needs; everything else is parsed
from the raw bytes on demand, with the standard library's ``email`` package
(in a worker thread, by the caller).  Part ids are the dotted path of a part
in the MIME tree, ``1`` for a message that is not multipart, ``1.2`` for
the second child of the first child: stable for the same bytes, which is
all a client needs to fetch a part again.

Nothing here raises on malformed mail: a part whose charset is unknown is
read as UTF-8 with replacement characters, a header that cannot be parsed
is shown as it is.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass, field
from email import policy
from email.message import Message
from email.parser import BytesParser
from email.utils import getaddresses

__all__ = ["Header", "ParsedMessage", "Part", "canonical_header_name", "parse_message"]

MAX_INLINE_DATA_URI_OCTETS = 2 * 1024 * 1024
"""Inline images larger than this are not embedded into the HTML view."""

_CID_REFERENCE = re.compile(r"""cid:([^"'\s)>]+)""", re.IGNORECASE)
_CHARSET_TOKEN = re.compile(r"[^A-Za-z0-9._:-]+")
_HEADER_WORD = re.compile(r"[A-Za-z0-9]+")


@dataclass(frozen=True, slots=True)
class Header:
    """One header field as it appears, its value unfolded and RFC 2047 decoded."""

    name: str
    value: str


@dataclass(frozen=True, slots=True)
class Part:
    """A leaf of the MIME tree that is not the message's text or HTML body."""

    part_id: str
    content_type: str
    filename: str
    content_id: str
    data: bytes
    inline: bool
    charset: str = ""

    @property
    def media_type(self) -> str:
        """The ``Content-Type`` to serve it with: its type, and its charset if it named one."""
        return f"{self.content_type}; charset={self.charset}" if self.charset else self.content_type

    def checksums(self) -> dict[str, str]:
        """The checksums Mailpit reports for an attachment."""
        return {
            "MD5": hashlib.md5(self.data, usedforsecurity=False).hexdigest(),
            "SHA1": hashlib.sha1(self.data, usedforsecurity=False).hexdigest(),
            "SHA256": hashlib.sha256(self.data).hexdigest(),
        }


@dataclass(slots=True)
class ParsedMessage:
    """What the message view shows."""

    headers: list[Header] = field(default_factory=list)
    text: str = ""
    html: str = ""
    parts: list[Part] = field(default_factory=list)

    def header(self, name: str) -> str:
        """The first value of the header ``name`` (any case), or ``""``."""
        key = name.lower()
        return next((h.value for h in self.headers if h.name.lower() == key), "")

    def header_values(self) -> dict[str, list[str]]:
        """Every header by its canonical name, names sorted, as Mailpit's API gives them."""
        found: dict[str, list[str]] = {}
        for h in self.headers:
            found.setdefault(canonical_header_name(h.name), []).append(h.value)
        return dict(sorted(found.items()))

    def part(self, part_id: str) -> Part | None:
        """The attachment or inline part with this id."""
        return next((p for p in self.parts if p.part_id == part_id), None)

    def html_with_inline_images(self) -> str:
        """The HTML body with ``cid:`` references replaced by ``data:`` URIs of their parts."""
        by_cid = {p.content_id.lower(): p for p in self.parts if p.content_id}

        def embed(match: re.Match[str]) -> str:
            part = by_cid.get(match[1].lower())
            if part is None or len(part.data) > MAX_INLINE_DATA_URI_OCTETS:
                return match[0]
            return f"data:{part.content_type};base64,{base64.b64encode(part.data).decode()}"

        return _CID_REFERENCE.sub(embed, self.html)

    def addresses(self, name: str) -> list[tuple[str, str]]:
        """``(display name, address)`` pairs of the address header ``name``."""
        values = [h.value for h in self.headers if h.name.lower() == name.lower()]
        return [(n, a) for n, a in getaddresses(values) if n or a]


def canonical_header_name(name: str) -> str:
    """``message-id`` as ``Message-Id``: the form Go's ``net/textproto`` (so Mailpit) uses."""
    return _HEADER_WORD.sub(lambda m: m[0].capitalize(), name.strip())


def _text_of(part: Message) -> str:
    payload = part.get_payload(decode=True)
    data = payload if isinstance(payload, bytes) else b""
    charset = part.get_content_charset() or "utf-8"
    try:
        return data.decode(charset, "replace")
    except LookupError:
        return data.decode("utf-8", "replace")


def _data_of(part: Message) -> bytes:
    if part.get_content_maintype() == "message":
        inner = part.get_payload()
        if isinstance(inner, list) and inner and isinstance(inner[0], Message):
            return inner[0].as_bytes(policy=policy.SMTP)
        if isinstance(inner, str):
            return inner.encode("utf-8", "surrogateescape")
        return b""
    payload = part.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""


def _header_text(value: object) -> str:
    return " ".join(str(value).split())


def _walk(message: ParsedMessage, part: Message, part_id: str) -> None:
    content_type = part.get_content_type()
    if part.is_multipart() and part.get_content_maintype() == "multipart":
        children = part.get_payload()
        if isinstance(children, list):
            for index, child in enumerate(children, start=1):
                if isinstance(child, Message):
                    child_id = f"{part_id}.{index}" if part_id else str(index)
                    _walk(message, child, child_id)
        return
    leaf_id = part_id or "1"
    disposition = (part.get_content_disposition() or "").lower()
    try:
        filename = part.get_filename() or ""
    except (ValueError, LookupError):
        filename = ""
    is_attachment = disposition == "attachment" or bool(filename and disposition != "inline")
    if not is_attachment and content_type == "text/plain" and not message.text:
        message.text = _text_of(part)
        return
    if not is_attachment and content_type == "text/html" and not message.html:
        message.html = _text_of(part)
        return
    content_id = _header_text(part.get("Content-ID", "")).strip().strip("<>")
    inline = not is_attachment and (disposition == "inline" or bool(content_id))
    charset = _CHARSET_TOKEN.sub("", part.get_content_charset() or "")
    message.parts.append(
        Part(leaf_id, content_type, filename, content_id, _data_of(part), inline, charset)
    )


def parse_message(raw: bytes) -> ParsedMessage:
    """Take a message apart; never raises on malformed mail."""
    parsed: Message = BytesParser(policy=policy.default).parsebytes(raw)
    message = ParsedMessage()
    for name, value in parsed.items():
        try:
            text = _header_text(value)
        except (ValueError, LookupError, IndexError):
            text = _header_text(parsed.get_all(name, [""])[0])
        message.headers.append(Header(name, text))
    try:
        _walk(message, parsed, "")
    except (ValueError, LookupError, IndexError, TypeError):
        message.parts = []  # a tree too broken to walk: the raw view still shows it all
    return message
