"""The summary a listing shows, parsed from a message as it is stored.

Strategy: one forward pass over the message, a line at a time, that never
holds more than a bounded amount of it.  Header blocks (of the message and
of each MIME part) are read up to ``MAX_HEADER_OCTETS``; bodies are only
scanned for the boundary lines of the open multiparts, except the first
text/plain and text/html parts, whose first ``SNIPPET_RAW_OCTETS`` are kept
to make the snippet.  Lines are read at most ``MAX_LINE_OCTETS`` at a time,
so even a binary body without line ends stays bounded.

Blind copies: a client sends a Bcc recipient in the envelope only, and strips
the header (RFC 5322 3.6.3), so the summary's ``bcc`` adds to any ``Bcc``
header the envelope's recipients that ``To``, ``Cc`` and ``Bcc`` do not
name, as Mailpit shows them.  A recipient is named as the client named it:
the address its ``ORCPT`` holds when it has one (RFC 3461 4.2), so an
alias's members, which the session gives the alias's address as ``ORCPT``,
show as the alias (and as nothing when the alias is in ``To``); otherwise
the ``RCPT`` address.  The stored bytes are never changed.

Tags: asked to (``header_tags``), ``summarize`` gives the summary the tags its
``X-Tags`` headers list, comma-separated, each cleaned as Mailpit cleans a tag
(``mailgate.tags.clean_tag``); the accept path adds the others and keeps each
once (``_tags``).  The header is read in the same pass as the others: a message
without it costs nothing more.

Nothing here raises on bad input: a header that cannot be parsed leaves its
summary field empty, and the caller falls back to an empty summary should
anything unforeseen escape.  Parsing is deliberately simpler than the
``email`` package's (which holds the whole message) and tolerant: garbage
header lines are skipped, a missing closing boundary ends at end of input.
"""

from __future__ import annotations

import binascii
import functools
import html
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from email.utils import getaddresses
from typing import BinaryIO

from mailgate.model import Address, Envelope, MessageId, MessageSummary, parse_date
from mailgate.protocol import parse_orcpt
from mailgate.tags import clean_tag

__all__ = ["summarize"]

SNIPPET_CHARS = 250
SNIPPET_RAW_OCTETS = {"text/plain": 8 * 1024, "text/html": 64 * 1024}
MAX_HEADER_OCTETS = 256 * 1024
MAX_LINE_OCTETS = 64 * 1024
MAX_MULTIPART_DEPTH = 32
MAX_MESSAGE_ID_CHARS = 998  # RFC 5322 2.1.1

_TOP_FIELDS = frozenset(
    {
        b"from",
        b"to",
        b"cc",
        b"bcc",
        b"reply-to",
        b"subject",
        b"date",
        b"message-id",
        b"content-type",
        b"content-transfer-encoding",
        b"content-disposition",
        b"content-id",
        b"x-tags",
    }
)
_PART_FIELDS = frozenset(
    {b"content-type", b"content-transfer-encoding", b"content-disposition", b"content-id"}
)
_PARAM = re.compile(r';\s*([^\s=;]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"?|([^;\s]*))')
_QUOTED_PAIR = re.compile(r"\\(.)")
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]+")
_HTML_HIDDEN = re.compile(r"<(style|script|head)\b.*?(</\1\s*>|\Z)", re.IGNORECASE | re.DOTALL)
_HTML_TAG = re.compile(r"<[^>]*>?")
# The everyday address forms, parsed without the email package's general (and slow) parser:
# "addr@example.com" and "Display Name <addr@example.com>", in a list without quotes,
# comments or groups.
_SIMPLE_ADDRESS = re.compile(r"\s*(?:([^<>@]*?)\s*<([^<>\s]+)>|([^<>\s]+@[^<>\s]+))\s*")
_NOT_SIMPLE = re.compile(r'["()\\:;]')

ReadLine = Callable[[int], bytes]


def _text(raw: bytes | bytearray) -> str:
    """Header bytes as text: UTF-8 (RFC 6532) if they are, else Latin-1."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return text.replace("\r", "").replace("\n", "").strip()


def _printable(text: str) -> str:
    return text if text.isprintable() else _CONTROLS.sub(" ", text)


def _read_headers(readline: ReadLine, wanted: frozenset[bytes]) -> dict[bytes, list[str]]:
    """Read one header block through its blank line; return the wanted fields, unfolded."""
    found: dict[bytes, list[bytearray]] = {}
    current: bytearray | None = None
    total = 0
    at_line_start = True
    while line := readline(MAX_LINE_OCTETS):
        starts_line, at_line_start = at_line_start, line.endswith(b"\n")
        if starts_line and line in (b"\r\n", b"\n"):
            break
        total += len(line)
        if total > MAX_HEADER_OCTETS:
            current = None
        elif not starts_line or line[0] in b" \t":  # the rest of a long line, or folding
            if current is not None:
                current += line
        else:
            name, colon, value = line.partition(b":")
            current = None
            if colon:
                key = name.strip().lower()
                if key in wanted:
                    current = bytearray(value)
                    found.setdefault(key, []).append(current)
    return {key: [_text(value) for value in values] for key, values in found.items()}


@dataclass(frozen=True, slots=True, init=False)
class _Part:
    """What a MIME part's headers say about it (RFC 2045, RFC 2183)."""

    content_type: str
    params: dict[str, str]
    encoding: str
    attachment: bool
    inline: bool
    """Shown within the body, unless it is the body: ``inline`` or with a ``Content-ID``."""

    def __init__(
        self,
        content_type: str,
        params: dict[str, str],
        encoding: str,
        attachment: bool,
        inline: bool,
    ) -> None:
        # Written out, not generated: see docs/design/performance.md, "Records made per message".
        object.__setattr__(self, "content_type", content_type)
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "encoding", encoding)
        object.__setattr__(self, "attachment", attachment)
        object.__setattr__(self, "inline", inline)

    @classmethod
    def from_headers(cls, headers: dict[bytes, list[str]]) -> _Part:
        content_type, params = _parse_params(_first(headers, b"content-type"))
        if "/" not in content_type:
            content_type = "text/plain"  # RFC 2045 5.2
        disposition, disposition_params = _parse_params(_first(headers, b"content-disposition"))
        named = any(k.startswith("filename") for k in disposition_params) or any(
            k.startswith("name") for k in params
        )
        attachment = disposition == "attachment" or (named and disposition != "inline")
        encoding = _first(headers, b"content-transfer-encoding").strip().lower()
        inline = not attachment and (
            disposition == "inline" or bool(_first(headers, b"content-id").strip("<> "))
        )
        return cls(content_type, params, encoding, attachment, inline)


def _first(headers: dict[bytes, list[str]], name: bytes) -> str:
    values = headers.get(name)
    return values[0] if values else ""


def _parse_params(value: str) -> tuple[str, dict[str, str]]:
    """``text/plain; charset="utf-8"`` as ``("text/plain", {"charset": "utf-8"})``."""
    main, semicolon, rest = value.partition(";")
    params: dict[str, str] = {}
    if semicolon:
        for match in _PARAM.finditer(";" + rest):
            quoted, token = match[2], match[3]
            found = _QUOTED_PAIR.sub(r"\1", quoted) if quoted is not None else token
            params.setdefault(match[1].lower(), found)
    return main.strip().lower(), params


class _BodyScan:
    """Walks the MIME tree in one pass: counts attachments and inline parts, keeps snippet
    sources (the first text/plain and text/html parts, the bodies)."""

    def __init__(self, readline: ReadLine, read: ReadLine) -> None:
        self._readline = readline
        self._read = read
        self.attachments = 0
        self.inline = 0
        self.kept: dict[str, tuple[_Part, bytearray]] = {}

    def run(self, part: _Part) -> None:
        # Each entry: (delimiter line, close-delimiter line) of an open multipart.
        boundaries: list[tuple[bytes, bytes]] = []
        readline = self._readline
        while True:
            keep = self._open(part, boundaries)
            limit = SNIPPET_RAW_OCTETS.get(part.content_type, 0)
            at_line_start = True
            next_part = False
            if not boundaries:
                # A single part: nothing but its start can matter, read in one go.
                if keep is not None:
                    keep += self._read(limit)
                return
            while line := readline(MAX_LINE_OCTETS):
                starts_line, at_line_start = at_line_start, line.endswith(b"\n")
                if starts_line and boundaries and line.startswith(b"--"):
                    found = _match_boundary(line.rstrip(), boundaries)
                    if found is not None:
                        depth, closing = found
                        # A delimiter ends the parts nested in this one; a close ends it too.
                        del boundaries[depth if closing else depth + 1 :]
                        keep = None
                        if not closing:
                            next_part = True
                            break
                        if not boundaries:
                            return  # the outermost multipart closed: only its epilogue is left
                        continue
                if keep is not None:
                    keep += line
                    if len(keep) >= limit:
                        keep = None
            if not next_part:
                return
            part = _Part.from_headers(_read_headers(readline, _PART_FIELDS))

    def _open(self, part: _Part, boundaries: list[tuple[bytes, bytes]]) -> bytearray | None:
        """Start on a part whose headers were read; return where to keep its body, if anywhere."""
        if part.content_type.startswith("multipart/"):
            boundary = part.params.get("boundary", "")
            if boundary and len(boundaries) < MAX_MULTIPART_DEPTH:
                delimiter = b"--" + boundary.encode("utf-8", "replace").rstrip()
                boundaries.append((delimiter, delimiter + b"--"))
            return None
        if part.attachment:
            self.attachments += 1
            return None
        if part.content_type in SNIPPET_RAW_OCTETS and part.content_type not in self.kept:
            kept = bytearray()
            self.kept[part.content_type] = (part, kept)
            return kept
        if part.inline:
            self.inline += 1
        return None

    def snippet(self) -> str:
        for content_type in ("text/plain", "text/html"):
            if content_type in self.kept:
                part, raw = self.kept[content_type]
                text = _decode_body(part, bytes(raw))
                if content_type == "text/html":
                    text = html.unescape(_HTML_TAG.sub(" ", _HTML_HIDDEN.sub(" ", text)))
                return _printable(" ".join(text.split())[:SNIPPET_CHARS])
        return ""


def _match_boundary(line: bytes, boundaries: list[tuple[bytes, bytes]]) -> tuple[int, bool] | None:
    """Which open multipart this line delimits, innermost first, and whether it closes it."""
    for depth in range(len(boundaries) - 1, -1, -1):
        delimiter, close = boundaries[depth]
        if line == delimiter:
            return depth, False
        if line == close:
            return depth, True
    return None


def _decode_body(part: _Part, raw: bytes) -> str:
    """The start of a text part as text, its transfer encoding and charset undone."""
    if part.encoding == "base64":
        squeezed = b"".join(raw.split())
        try:
            raw = binascii.a2b_base64(squeezed[: len(squeezed) - len(squeezed) % 4])
        except binascii.Error:
            raw = b""
    elif part.encoding == "quoted-printable":
        raw = binascii.a2b_qp(raw)
    charset = part.params.get("charset", "utf-8") or "utf-8"
    try:
        text = raw.decode(charset, "replace")
    except LookupError:
        text = raw.decode("utf-8", "replace")
    return text


def _decode_words(value: str) -> str:
    """Undo RFC 2047 encoded words; leave the text as it is if they are malformed."""
    if "=?" in value:
        try:
            value = str(make_header(decode_header(value)))
        except (HeaderParseError, LookupError, UnicodeError, ValueError):
            pass
    return _printable(value)


def _address_pairs(values: list[str]) -> list[tuple[str, str]]:
    """(display name, address) pairs of address header values, fast when they are simple."""
    text = ", ".join(values)
    if not _NOT_SIMPLE.search(text):
        pairs = []
        for item in text.split(","):
            match = _SIMPLE_ADDRESS.fullmatch(item)
            if match is None:
                if item.strip():
                    break
                continue
            display, bracketed, bare = match.groups()
            pairs.append((display, bracketed) if bare is None else ("", bare))
        else:
            return pairs
    return [(display, address) for display, address in getaddresses(values) if display or address]


def _addresses(headers: dict[bytes, list[str]], name: bytes) -> tuple[Address, ...]:
    values = headers.get(name)
    if not values:
        return ()
    return tuple(
        Address(name=_decode_words(display), address=_printable(address))
        for display, address in _address_pairs(values)
    )


def _date(headers: dict[bytes, list[str]]) -> datetime | None:
    value = _first(headers, b"date")
    return _parse_date(value) if value else None


@functools.lru_cache(maxsize=256)
def _parse_date(value: str) -> datetime | None:
    """A Date header's time; messages received together often carry the same one."""
    return parse_date(value)


_MAILBOX_ADDRESS_TYPES = frozenset({"rfc822", "utf-8"})  # RFC 3461 4.2, RFC 6533 3


def _as_given(recipient: str, params: Mapping[str, str | None]) -> str:
    """The address the client named for an envelope recipient: its ORCPT's, if a mailbox."""
    value = params.get("ORCPT")
    if value:
        try:
            original = parse_orcpt(value, utf8=True)
        except ValueError:
            return recipient
        if original.addr_type in _MAILBOX_ADDRESS_TYPES and original.address:
            return original.address
    return recipient


def _blind_copies(
    envelope: Envelope, visible: tuple[Address, ...], bcc: tuple[Address, ...]
) -> tuple[Address, ...]:
    """``bcc`` (the header's), then the envelope's recipients that neither it nor
    ``visible`` (To and Cc) names."""
    named = {a.address.casefold() for a in visible + bcc}
    added: list[Address] = []
    params = envelope.rcpt_params
    for index, recipient in enumerate(envelope.rcpt_to):
        given = _printable(_as_given(recipient, params[index] if index < len(params) else {}))
        if given and given.casefold() not in named:
            named.add(given.casefold())
            added.append(Address(name="", address=given))
    return bcc + tuple(added) if added else bcc


def _header_tags(values: list[str]) -> tuple[str, ...]:
    """The tags ``X-Tags`` values list, cleaned, in order; duplicates left to the caller."""
    found = (clean_tag(item) for value in values for item in _decode_words(value).split(","))
    return tuple(tag for tag in found if tag)


def summarize(
    reader: BinaryIO,
    *,
    message_id: MessageId,
    received_at: datetime,
    size: int,
    envelope: Envelope | None = None,
    header_tags: bool = False,
) -> MessageSummary:
    """Read the message from ``reader`` and summarize it; never raises on bad input.

    With ``envelope``, its recipients that no ``To``, ``Cc`` or ``Bcc``
    header names are added to ``bcc`` (see the module's docstring).  With
    ``header_tags``, ``tags`` are those of its ``X-Tags`` headers.

    Raises only what reading ``reader`` raises (``OSError``).
    """
    readline: ReadLine = reader.readline
    headers = _read_headers(readline, _TOP_FIELDS)
    scan = _BodyScan(readline, reader.read)
    scan.run(_Part.from_headers(headers))
    senders = _addresses(headers, b"from")
    to = _addresses(headers, b"to")
    cc = _addresses(headers, b"cc")
    bcc = _addresses(headers, b"bcc")
    if envelope is not None:
        bcc = _blind_copies(envelope, to + cc, bcc)
    tags: tuple[str, ...] = ()
    if header_tags:
        values = headers.get(b"x-tags")
        if values:
            tags = _header_tags(values)
    return MessageSummary(
        id=message_id,
        received_at=received_at,
        size=size,
        sender=senders[0] if senders else None,
        to=to,
        cc=cc,
        bcc=bcc,
        reply_to=_addresses(headers, b"reply-to"),
        subject=_decode_words(_first(headers, b"subject")),
        date=_date(headers),
        message_id=_printable(_first(headers, b"message-id").strip().strip("<>"))[
            :MAX_MESSAGE_ID_CHARS
        ],
        attachments=scan.attachments,
        snippet=scan.snippet(),
        tags=tags,
        inline=scan.inline,
    )
