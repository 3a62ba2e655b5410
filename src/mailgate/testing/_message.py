"""A stored message as a test reads it: its fields parsed, its links found.

``Message`` is made of what the store keeps (the summary and the envelope)
and of the web inbox's own MIME parsing (``mailgate.web.parse_message``), so
a test sees what the inbox and the Mailpit API show: ``bcc`` holds the
``Bcc`` header and the envelope's recipients no header names, ``text`` and
``html`` the first plain-text and HTML bodies (their lines ending in ``\n``,
as the sender wrote them before SMTP made them CRLF), ``attachments`` the
other parts, and ``inline`` the parts the HTML shows (images named by
``Content-ID``).

``links`` are the ``http`` and ``https`` links of the text body, then those
of the HTML body (``href`` of ``<a>`` and ``<area>``, and URLs in its text,
entities decoded), each once, in the order they first appear: what a test
follows to confirm an address or reset a password.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from html.parser import HTMLParser

from mailgate.model import Address, Envelope, MessageId, StoredMessage
from mailgate.web import Header, Part, parse_message

__all__ = ["Headers", "Message", "find_links", "message_from"]

_URL = re.compile(r"https?://[^\s<>\"'`{}|\\^\[\]]+", re.IGNORECASE)
_TRAILING = ".,;:!?'\""
_LINK_TAGS = frozenset({"a", "area"})
_NOT_TEXT = frozenset({"script", "style"})


class Headers(Mapping[str, str]):
    """Header fields by name, in any case: ``headers["subject"]`` is the first value.

    ``get_all(name)`` gives every value of a name in order (``Received``,
    say); iterating gives each name once, as it first appears; ``fields``
    every field in order.  Values are unfolded and RFC 2047 decoded.
    """

    __slots__ = ("_by_name", "fields")

    def __init__(self, fields: Sequence[Header]) -> None:
        self.fields: tuple[Header, ...] = tuple(fields)
        self._by_name: dict[str, list[Header]] = {}
        for header in self.fields:
            self._by_name.setdefault(header.name.lower(), []).append(header)

    def __getitem__(self, name: str) -> str:
        """The first value of ``name``; raises ``KeyError`` when the message has none."""
        found = self._by_name.get(name.lower())
        if not found:
            raise KeyError(name)
        return found[0].value

    def __iter__(self) -> Iterator[str]:
        return (fields[0].name for fields in self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, in order; ``[]`` when there is none."""
        return [header.value for header in self._by_name.get(name.lower(), ())]

    def __repr__(self) -> str:
        return f"Headers({[(f.name, f.value) for f in self.fields]!r})"


def _trim(url: str) -> str:
    """A URL found in prose, without the punctuation that ends its sentence."""
    while True:
        url = url.rstrip(_TRAILING)
        if url.endswith(")") and url.count("(") < url.count(")"):
            url = url[:-1]
            continue
        return url


class _LinkParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _NOT_TEXT:
            self._hidden += 1
        elif tag in _LINK_TAGS:
            for name, value in attrs:
                href = (value or "").strip()
                if name == "href" and _URL.match(href):
                    self.found.append(href)

    def handle_endtag(self, tag: str) -> None:
        if tag in _NOT_TEXT and self._hidden:
            self._hidden -= 1

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.found.extend(_trim(url) for url in _URL.findall(data))


def find_links(text: str, html: str = "") -> tuple[str, ...]:
    """The ``http`` and ``https`` links of a text body, then of an HTML body, each once."""
    found = [_trim(url) for url in _URL.findall(text)]
    if html:
        parser = _LinkParser()
        parser.feed(html)
        parser.close()
        found += parser.found
    return tuple(dict.fromkeys(url for url in found if url))


@dataclass(frozen=True, slots=True)
class Message:
    """One stored message, parsed: what ``MailgateServer.wait_for`` returns.

    Addresses are ``model.Address`` values (``.name``, ``.address``);
    ``from_`` is ``None`` for a message without ``From``.  ``attachments``
    and ``inline`` are ``mailgate.web.Part`` values (``.filename``,
    ``.content_type``, ``.data``, ``.part_id`` for the API's
    ``/api/v1/message/{id}/part/{part_id}``).  ``raw`` is the stored bytes,
    trace header included; ``read`` and ``tags`` are as they were when the
    message was read from the store.
    """

    id: MessageId
    message_id: str
    subject: str
    from_: Address | None
    to: tuple[Address, ...]
    cc: tuple[Address, ...]
    bcc: tuple[Address, ...]
    reply_to: tuple[Address, ...]
    text: str
    html: str
    headers: Headers = field(repr=False)
    attachments: tuple[Part, ...]
    inline: tuple[Part, ...]
    links: tuple[str, ...]
    raw: bytes = field(repr=False)
    tags: tuple[str, ...]
    read: bool
    received_at: datetime
    envelope: Envelope


def message_from(stored: StoredMessage, raw: bytes) -> Message:
    """Parse a stored message; never raises on malformed mail (see ``web.parse_message``)."""
    summary = stored.summary
    parsed = parse_message(raw)
    return Message(
        id=summary.id,
        message_id=summary.message_id,
        subject=summary.subject,
        from_=summary.sender,
        to=summary.to,
        cc=summary.cc,
        bcc=summary.bcc,
        reply_to=summary.reply_to,
        text=parsed.text.replace("\r\n", "\n"),
        html=parsed.html.replace("\r\n", "\n"),
        headers=Headers(parsed.headers),
        attachments=tuple(p for p in parsed.parts if not p.inline),
        inline=tuple(p for p in parsed.parts if p.inline),
        links=find_links(parsed.text, parsed.html),
        raw=raw,
        tags=summary.tags,
        read=summary.read,
        received_at=summary.received_at,
        envelope=stored.envelope,
    )
