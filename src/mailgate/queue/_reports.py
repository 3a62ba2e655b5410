"""Delivery reports: bounces, delay notices and success notices (RFC 3464, RFC 6522).

Strategy.  ``build_report`` writes the whole report for one original
message, as bytes ready for the queue, from plain values: nothing here
reads a clock, the store or the network, so the same inputs always give the
same octets.  The report is a ``multipart/report`` (RFC 6522) of three
parts: a text for people, the ``message/delivery-status`` fields for
programs (RFC 3464 2), and the original (RFC 3461 4.3: whole when the
sender asked ``RET=FULL`` and it is not too big, else its header only).  An
SMTPUTF8 original gets the ``global`` types of RFC 6533, whose fields and
headers may hold UTF-8; its ``report-type`` is then
``global-delivery-status``, as it names the second part's type (RFC 6522
3).  ``should_report`` decides, per recipient, whether
a report is due at all (RFC 3461 4.1, 6.2).

Invariants.
- No value taken from input (a remote reply, an original recipient, an
  envelope id, a host name) carries CR, LF or another control character
  into a header or field: each is cleaned (``_clean``) and a multi-line
  reply is joined into one line, then folded at spaces.  Nothing from input
  can therefore add a field or end a header block.
- Header and field lines stay under the 998 octets of RFC 5322 2.1.1.
- The boundary occurs in none of the parts: it is lengthened until it does
  not.
- A report is never sent about a message from the null sender (RFC 3461
  6.2, RFC 5321 4.5.5): that is how reports about reports are avoided.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime

from mailgate.protocol import Notify, OriginalRecipient, Ret, utf8_addr_encode

__all__ = [
    "DEFAULT_MAX_RETURNED_OCTETS",
    "Action",
    "DeliveryReport",
    "OriginalMessage",
    "RecipientStatus",
    "build_report",
    "should_report",
]

DEFAULT_MAX_RETURNED_OCTETS = 50_000  # Postfix's bounce_size_limit
"""A larger original is returned as its header only, whatever RET says."""
MAX_DIAGNOSTIC_OCTETS = 2000  # our bound on a remote reply kept in a report
MAX_FIELD_OCTETS = 500  # our bound on a host name, address or envelope id in a field
_FOLD_WIDTH = 76  # RFC 5322 2.1.1: lines SHOULD be no longer than 78 characters
_MAX_WORD_OCTETS = 900  # RFC 5322 2.1.1: a line MUST be no longer than 998 octets
_CRLF = b"\r\n"

# RFC 3463 2: class "." subject "." detail.
_STATUS = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}\Z")
# C0 controls (tab included), DEL, C1 controls, and the Unicode line and
# paragraph separators some software splits lines at.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_ANY_LINE_END = re.compile(rb"\r\n|\r|\n")
_BLANK = re.compile(r"[ \t]+")
# RFC 2046 5.1.1 bcharsnospace, less the ones that need quoting care.
_NOT_BOUNDARY = re.compile(r"[^0-9A-Za-z'()+_,\-./:=?]")


class Action(enum.StrEnum):
    """What became of one recipient (RFC 3464 2.3.3)."""

    FAILED = "failed"
    DELAYED = "delayed"
    DELIVERED = "delivered"
    RELAYED = "relayed"
    """Handed on to a server that does not report itself (no DSN offered)."""
    EXPANDED = "expanded"
    """Delivered to an alias or list that sent it on to several recipients."""


# The class of status code each action goes with (RFC 3464 2.3.4).
_STATUS_CLASS = {
    Action.FAILED: "5",
    Action.DELAYED: "4",
    Action.DELIVERED: "2",
    Action.RELAYED: "2",
    Action.EXPANDED: "2",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class OriginalMessage:
    """The message a report is about: its envelope facts and its content.

    ``sender`` is the envelope's reverse-path (``""`` for ``<>``);
    ``envid`` the decoded ENVID and ``ret`` the RET the sender gave, if any
    (``protocol.parse_envid``, ``protocol.parse_ret``); ``smtputf8``
    whether it was sent with SMTPUTF8.  ``content`` is the message as
    stored, or with ``whole`` false only its first octets (a large message's,
    more than its header when it can be; then the header alone is returned);
    ``arrival_date`` when it was received.
    """

    sender: str
    content: bytes
    arrival_date: datetime
    envid: str | None = None
    ret: Ret | None = None
    smtputf8: bool = False
    whole: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class RecipientStatus:
    """One recipient's outcome, as a report states it (RFC 3464 2.3).

    ``status`` is an enhanced status code (``5.1.1``) of the class the
    action implies; ``diagnostic`` the remote server's reply (its lines
    separated by line breaks), written as ``diagnostic_type; reply``;
    ``remote_mta`` the host that gave it; ``original_recipient`` the
    decoded ORCPT (``protocol.parse_orcpt``).  ``will_retry_until`` is for
    ``delayed`` recipients.
    """

    final_recipient: str
    action: Action
    status: str
    original_recipient: OriginalRecipient | None = None
    remote_mta: str | None = None
    diagnostic: str | None = None
    diagnostic_type: str = "smtp"
    last_attempt: datetime | None = None
    will_retry_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """A report ready to queue: from ``<>`` to ``recipient``.

    ``smtputf8``: it must travel with SMTPUTF8 (its envelope or header
    holds UTF-8).  ``eight_bit``: its content holds octets over 127, so it
    needs ``BODY=8BITMIME`` (RFC 6152).
    """

    content: bytes
    recipient: str
    message_id: str
    smtputf8: bool
    eight_bit: bool


def should_report(action: Action, *, sender: str, notify: Notify | None) -> bool:
    """Whether the sender is to hear that a recipient reached ``action``.

    Never for a message from the null sender (RFC 3461 6.2, RFC 5321
    4.5.5); never for ``NOTIFY=NEVER``.  ``notify`` is ``None`` when the
    recipient came without NOTIFY: then only failures are reported (RFC
    3461 4.1 leaves delay notices to the MTA; we send them only on
    request).  Otherwise a failure needs FAILURE, a delay DELAY, and a
    delivery (``delivered``, ``relayed``, ``expanded``) SUCCESS.
    """
    if not sender:
        return False
    if notify is None:
        return action is Action.FAILED
    match action:
        case Action.FAILED:
            return Notify.FAILURE in notify
        case Action.DELAYED:
            return Notify.DELAY in notify
        case _:
            return Notify.SUCCESS in notify


def build_report(
    original: OriginalMessage,
    recipients: Sequence[RecipientStatus],
    *,
    reporting_mta: str,
    report_id: str,
    now: datetime,
    max_returned_octets: int = DEFAULT_MAX_RETURNED_OCTETS,
) -> DeliveryReport:
    """The report to ``original.sender`` about ``recipients`` (RFC 3464, RFC 6522).

    ``reporting_mta`` is this server's host name; ``report_id`` makes the
    report's Message-ID (``<report_id@reporting_mta>``) and its boundary;
    ``now`` is its Date.  The original is returned whole only under
    ``RET=FULL`` and when at most ``max_returned_octets``, else as its
    header (RFC 3461 4.3).

    Raises ``ValueError`` when there is no recipient, the sender is the
    null sender (no report is ever sent to ``<>``), or a status code is
    malformed or of a class its action does not go with.
    """
    if not recipients:
        raise ValueError("a report is about one recipient or more")
    if not original.sender:
        raise ValueError("no report is sent to the null sender (RFC 3461 6.2)")
    for recipient in recipients:
        if not _STATUS.match(recipient.status) or (
            recipient.status[0] != _STATUS_CLASS[recipient.action]
        ):
            raise ValueError(f"status {recipient.status!r} does not fit {recipient.action}")
    utf8 = original.smtputf8
    host = _clean(reporting_mta, MAX_FIELD_OCTETS) or "localhost"
    sender = _clean(original.sender, MAX_FIELD_OCTETS, utf8=utf8, spaces=True)
    message_id = f"<{_boundary_safe(report_id)}@{host}>"
    notice = _notice_part(host, recipients, utf8=utf8)
    status = _status_part(host, original, recipients, utf8=utf8)
    returned = _returned_part(original, max_returned_octets)
    boundary = _boundary(report_id, (notice, status, returned))
    report_type = "global-delivery-status" if utf8 else "delivery-status"
    header = [
        f"From: Mail Delivery System <MAILER-DAEMON@{host}>",
        f"To: <{sender}>",
        f"Subject: {_subject(recipients)}",
        f"Date: {format_datetime(now)}",
        f"Message-ID: {message_id}",
        "Auto-Submitted: auto-replied",  # RFC 3834 5
        "MIME-Version: 1.0",
        f"Content-Type: multipart/report; report-type={report_type};",
        f'\tboundary="{boundary}"',
    ]
    header_block = _lines(header)
    delimiter = b"--" + boundary.encode("ascii")
    content = b"".join(
        [
            header_block,
            _CRLF,
            b"This is a MIME-encapsulated message.\r\n\r\n",
            *(delimiter + _CRLF + part + _CRLF for part in (notice, status, returned)),
            delimiter + b"--" + _CRLF,
        ]
    )
    return DeliveryReport(
        content=content,
        recipient=original.sender,
        message_id=message_id,
        smtputf8=not (header_block.isascii() and original.sender.isascii()),
        eight_bit=not content.isascii(),
    )


# ---------------------------------------------------------------- the parts


def _subject(recipients: Sequence[RecipientStatus]) -> str:
    actions = {recipient.action for recipient in recipients}
    if Action.FAILED in actions:
        return "Undeliverable: mail returned to sender"
    if Action.DELAYED in actions:
        return "Delayed mail (still being retried)"
    return "Delivery report: mail delivered"


_OPENING = {
    Action.FAILED: "Your message could not be delivered to the recipients below.",
    Action.DELAYED: (
        "Your message has not been delivered yet to the recipients below.\n"
        "Nothing needs doing: delivery will be tried again."
    ),
    Action.DELIVERED: "Your message was delivered to the recipients below.",
    Action.RELAYED: (
        "Your message was passed on to the recipients' servers, which will not\n"
        "report on its delivery."
    ),
    Action.EXPANDED: "Your message was delivered to the lists or aliases below.",
}


def _notice_part(host: str, recipients: Sequence[RecipientStatus], *, utf8: bool) -> bytes:
    """The text for people (RFC 6522 3: the first part of the report)."""
    lines = [f"This is the mail system at {host}.", ""]
    for action in Action:
        chosen = [recipient for recipient in recipients if recipient.action is action]
        if not chosen:
            continue
        lines += [*_OPENING[action].split("\n"), ""]
        for recipient in chosen:
            lines += _notice_lines(recipient, utf8=utf8)
            lines.append("")
    lines.append("The delivery status for programs follows.")
    body = _lines(lines)
    headers = [
        "Content-Description: Notification",
        f"Content-Type: text/plain; charset={'utf-8' if utf8 else 'us-ascii'}",
        f"Content-Transfer-Encoding: {'7bit' if body.isascii() else '8bit'}",
    ]
    return _lines(headers) + _CRLF + body


def _notice_lines(recipient: RecipientStatus, *, utf8: bool) -> list[str]:
    address = _clean(recipient.final_recipient, MAX_FIELD_OCTETS, utf8=utf8, spaces=True)
    line = f"<{address}>"
    original = recipient.original_recipient
    if original is not None and original.address != recipient.final_recipient:
        line += f" (sent to <{_address(original, utf8=utf8)}>)"
    lines = [f"{line}: {recipient.action} ({recipient.status})"]
    if recipient.will_retry_until is not None:
        lines.append(
            f"    delivery will be tried until {format_datetime(recipient.will_retry_until)}"
        )
    if recipient.diagnostic:
        remote = recipient.remote_mta
        said = f"{_clean(remote, MAX_FIELD_OCTETS)} said:" if remote else "the reply:"
        lines.append(f"    {said}")
        budget = MAX_DIAGNOSTIC_OCTETS
        for reply_line in _LINE_BREAK.split(recipient.diagnostic):
            text = _clean(reply_line, min(budget, _MAX_WORD_OCTETS), utf8=utf8, spaces=True)
            budget -= len(text.encode("utf-8"))
            if text:
                lines.append(f"    {text}")
            if budget <= 0:
                break
    return lines


def _status_part(
    host: str,
    original: OriginalMessage,
    recipients: Sequence[RecipientStatus],
    *,
    utf8: bool,
) -> bytes:
    """The ``message/delivery-status`` fields (RFC 3464 2.2, 2.3)."""
    fields = [f"Reporting-MTA: dns; {host}"]
    if original.envid is not None:
        envid = _clean(original.envid, MAX_FIELD_OCTETS, utf8=utf8, spaces=True)
        fields.append(f"Original-Envelope-Id: {envid}")
    fields.append(f"Arrival-Date: {format_datetime(original.arrival_date)}")
    blocks = [_lines(fields)]
    for recipient in recipients:
        blocks.append(_lines(_recipient_fields(recipient, utf8=utf8)))
    body = _CRLF.join(blocks)
    kind = "global-delivery-status" if utf8 else "delivery-status"
    headers = [
        "Content-Description: Delivery report",
        f"Content-Type: message/{kind}",
        f"Content-Transfer-Encoding: {'7bit' if body.isascii() else '8bit'}",
    ]
    return _lines(headers) + _CRLF + body


def _recipient_fields(recipient: RecipientStatus, *, utf8: bool) -> list[str]:
    fields: list[str] = []
    original = recipient.original_recipient
    if original is not None:
        addr_type = _clean(original.addr_type, 32, utf8=False) or "unknown"
        fields.append(f"Original-Recipient: {addr_type}; {_address(original, utf8=utf8)}")
    final = recipient.final_recipient
    final_type = "utf-8" if not final.isascii() else "rfc822"
    final_text = _address(OriginalRecipient(final_type, final), utf8=utf8)
    fields += [
        f"Final-Recipient: {final_type}; {final_text}",
        f"Action: {recipient.action}",
        f"Status: {recipient.status}",
    ]
    if recipient.remote_mta:
        fields.append(f"Remote-MTA: dns; {_clean(recipient.remote_mta, MAX_FIELD_OCTETS)}")
    reply = " ".join(_LINE_BREAK.split(recipient.diagnostic or ""))
    text = _clean(reply, MAX_DIAGNOSTIC_OCTETS, utf8=utf8, spaces=True)
    if text:
        kind = _clean(recipient.diagnostic_type, 32) or "smtp"
        fields += _fold(f"Diagnostic-Code: {kind}; {text}")
    if recipient.last_attempt is not None:
        fields.append(f"Last-Attempt-Date: {format_datetime(recipient.last_attempt)}")
    if recipient.will_retry_until is not None:
        fields.append(f"Will-Retry-Until: {format_datetime(recipient.will_retry_until)}")
    return fields


def _address(recipient: OriginalRecipient, *, utf8: bool) -> str:
    """An address as a field holds it: UTF-8 only in a global report (RFC 6533 3).

    Elsewhere a ``utf-8`` address is written as ``utf-8-addr-xtext``, cut
    before an escape that would not fit.
    """
    if not recipient.is_utf8 or utf8:
        return _clean(recipient.address, MAX_FIELD_OCTETS, utf8=utf8, spaces=True)
    address = _clean(recipient.address, MAX_FIELD_OCTETS, utf8=True, spaces=True)
    encoded = utf8_addr_encode(address)[:MAX_FIELD_OCTETS]
    # A backslash never stands for itself in utf-8-addr-xtext: it starts an escape.
    start = encoded.rfind("\\")
    if start >= 0 and encoded.find("}", start) < 0:
        encoded = encoded[:start]
    return encoded


def _returned_part(original: OriginalMessage, max_octets: int) -> bytes:
    """The original, whole or its header only (RFC 3461 4.3, RFC 6522 3)."""
    content = _ANY_LINE_END.sub(_CRLF, original.content)
    if content and not content.endswith(_CRLF):
        content += _CRLF
    utf8 = original.smtputf8
    if original.ret is Ret.FULL and original.whole and len(content) <= max_octets:
        kind = "message/global" if utf8 else "message/rfc822"
        description = "Returned message"
        body = content
    else:
        kind = "message/global-headers" if utf8 else "text/rfc822-headers"
        description = "Returned message header"
        body = _header_of(content, max_octets)
    headers = [
        f"Content-Description: {description}",
        f"Content-Type: {kind}",
        f"Content-Transfer-Encoding: {'7bit' if body.isascii() else '8bit'}",
    ]
    return _lines(headers) + _CRLF + body


def _header_of(content: bytes, max_octets: int) -> bytes:
    """The header block of ``content`` (CRLF-ended lines), cut at a line to ``max_octets``."""
    if content.startswith(_CRLF):
        return b""  # a message without a header
    end = content.find(b"\r\n\r\n")
    header = content if end < 0 else content[: end + 2]
    if len(header) > max_octets:
        last = header.rfind(_CRLF, 0, max_octets)
        header = header[: last + 2] if last >= 0 else b""
    return header


# --------------------------------------------------------------- the text


def _clean(text: str, max_octets: int, *, utf8: bool = False, spaces: bool = False) -> str:
    """``text`` fit for a header or field: one printable line of at most ``max_octets``.

    Controls (CR and LF among them) become spaces, runs of blanks one space
    (or ``?`` when ``spaces`` is false, for values that are one word);
    characters over ASCII survive only when ``utf8``, else become ``?``.
    """
    text = _CONTROL.sub(" ", text)
    text = _BLANK.sub(" ", text).strip(" ")
    if not spaces:
        text = text.replace(" ", "?")
    if not utf8 and not text.isascii():
        text = "".join(char if char.isascii() else "?" for char in text)
    return _cut(text, max_octets)


def _cut(text: str, max_octets: int) -> str:
    """``text`` cut to at most ``max_octets`` of UTF-8, never inside a character."""
    encoded = text.encode("utf-8")
    if len(encoded) <= max_octets:
        return text
    return encoded[:max_octets].decode("utf-8", "ignore")


def _fold(line: str) -> list[str]:
    """A field line folded at spaces (RFC 5322 2.2.3): each line at most 998 octets."""
    words = [_cut(word, _MAX_WORD_OCTETS) for word in line.split(" ")]
    lines: list[str] = []
    current = ""
    for word in words:
        if current and len(current) + 1 + len(word) > _FOLD_WIDTH:
            lines.append(current)
            current = " " + word
        else:
            current = f"{current} {word}" if current else word
    lines.append(current)
    return lines


def _lines(lines: Sequence[str]) -> bytes:
    return "".join(line + "\r\n" for line in lines).encode("utf-8")


def _boundary_safe(text: str) -> str:
    return _NOT_BOUNDARY.sub("_", text)[:40] or "report"


def _boundary(report_id: str, parts: Sequence[bytes]) -> str:
    """A boundary found in none of ``parts`` (RFC 2046 5.1.1), at most 70 characters."""
    base = "=_report_" + _boundary_safe(report_id)
    boundary, counter = base, 0
    while any(boundary.encode("ascii") in part for part in parts):
        counter += 1
        boundary = f"{base}.{counter}"
    return boundary
