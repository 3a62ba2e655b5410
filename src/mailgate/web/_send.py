"""Mailpit's ``POST /api/v1/send``: a message built from JSON, accepted as SMTP mail is.

The JSON is Mailpit's: ``From`` (``{"Email", "Name"}``), ``To``, ``Cc``
and ``ReplyTo`` (lists of those), ``Bcc`` (addresses), ``Subject``,
``Text``, ``HTML``, ``Attachments`` (``{"Content": base64, "Filename",
"ContentType", "ContentID"}``), ``Headers`` and ``Tags``.  The message goes
through the accept path (``ports.MailSink``), so it is stored, and queued
for delivery when recipients are not local, exactly as if it had come in
over SMTP; the answer is ``{"ID": ...}``.  Sending to a recipient that is
not local needs the same permission as a release: the API behind a
password, or catch-all mode on loopback.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email.headerregistry import Address as HeaderAddress
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mailgate.model import Envelope
from mailgate.ports import TaggableStore
from mailgate.web._context import BadRequest, Inbox, body_fields, json_error

__all__ = ["send_message"]

MAX_SEND_RECIPIENTS = 100
_ADDRESS = re.compile(r"[^\s<>()@,;:\\\"\x00-\x1f\x7f]{1,64}@[A-Za-z0-9.\-]{1,253}\Z")
_HEADER_NAME = re.compile(r"[!-9;-~]{1,76}\Z")  # RFC 5322 2.2: printable ASCII but ':'
_RESERVED = frozenset({"from", "to", "cc", "bcc", "subject", "date", "message-id", "mime-version",
                       "content-type", "content-transfer-encoding", "reply-to"})  # fmt: skip


def _address(value: object, field: str) -> tuple[str, str]:
    if isinstance(value, str):
        email, name = value, ""
    elif isinstance(value, Mapping):
        email, name = value.get("Email", value.get("email", "")), value.get("Name", "")
    else:
        raise BadRequest(f"{field} must be an address")
    if not isinstance(email, str) or not _ADDRESS.match(email.strip()):
        raise BadRequest(f"{field}: {email!r} is not an email address")
    if not isinstance(name, str) or any(c in name for c in "\r\n"):
        raise BadRequest(f"{field}: a name must be one line of text")
    return email.strip(), name.strip()


def _addresses(fields: Mapping[str, Any], key: str) -> list[tuple[str, str]]:
    value = fields.get(key.lower())
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadRequest(f"{key} must be a list")
    return [_address(item, key) for item in value]


def _text(fields: Mapping[str, Any], key: str) -> str:
    value = fields.get(key.lower(), "")
    if not isinstance(value, str):
        raise BadRequest(f"{key} must be a string")
    return value


def _header(pairs: Sequence[tuple[str, str]]) -> list[HeaderAddress]:
    return [HeaderAddress(display_name=name, addr_spec=email) for email, name in pairs]


def build_message(fields: Mapping[str, Any], hostname: str) -> tuple[EmailMessage, str, list[str]]:
    """The message, its sender and its recipients; raises ``BadRequest``."""
    if "from" not in fields:
        raise BadRequest("From is required")
    sender = _address(fields["from"], "From")
    to, cc = _addresses(fields, "To"), _addresses(fields, "Cc")
    bcc = _addresses(fields, "Bcc")
    recipients = list(dict.fromkeys(email for email, _ in to + cc + bcc))
    if not recipients:
        raise BadRequest("name a recipient in To, Cc or Bcc")
    if len(recipients) > MAX_SEND_RECIPIENTS:
        raise BadRequest(f"more than {MAX_SEND_RECIPIENTS} recipients")
    subject = _text(fields, "Subject")
    if any(c in subject for c in "\r\n"):
        raise BadRequest("Subject must be one line")
    message = EmailMessage()
    message["From"] = _header([sender])
    if to:
        message["To"] = _header(to)
    if cc:
        message["Cc"] = _header(cc)
    if reply_to := _addresses(fields, "ReplyTo"):
        message["Reply-To"] = _header(reply_to)
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = make_msgid(domain=hostname)
    headers = fields.get("headers") or {}
    if not isinstance(headers, Mapping):
        raise BadRequest("Headers must be an object")
    for name, value in headers.items():
        if not _HEADER_NAME.match(name) or name.lower() in _RESERVED:
            raise BadRequest(f"Headers: {name!r} cannot be set")
        if not isinstance(value, str) or any(c in value for c in "\r\n"):
            raise BadRequest(f"Headers: the value of {name} must be one line")
        message[name] = value
    text, html = _text(fields, "Text"), _text(fields, "HTML")
    message.set_content(text or ("" if html else "\n"))
    if html:
        message.add_alternative(html, subtype="html")
    for index, attachment in enumerate(fields.get("attachments") or []):
        _attach(message, attachment, index)
    return message, sender[0], recipients


def _attach(message: EmailMessage, attachment: object, index: int) -> None:
    if not isinstance(attachment, Mapping):
        raise BadRequest(f"Attachments[{index}] must be an object")
    filename = attachment.get("Filename", "")
    if not isinstance(filename, str) or not filename or any(c in filename for c in "\r\n"):
        raise BadRequest(f"Attachments[{index}]: Filename is required, one line")
    try:
        content = base64.b64decode(str(attachment.get("Content", "")), validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"Attachments[{index}]: Content must be base64") from None
    kind = str(attachment.get("ContentType") or "application/octet-stream")
    main, slash, sub = kind.partition("/")
    if not slash or not main or not sub or any(c in kind for c in "\r\n;"):
        raise BadRequest(f"Attachments[{index}]: {kind!r} is not a content type")
    content_id = attachment.get("ContentID")
    if content_id:
        if not isinstance(content_id, str) or any(c in content_id for c in "\r\n<>"):
            raise BadRequest(f"Attachments[{index}]: ContentID must be one line")
        message.add_attachment(
            content, maintype=main, subtype=sub, filename=filename, disposition="inline",
            cid=f"<{content_id}>",
        )  # fmt: skip
    else:
        message.add_attachment(content, maintype=main, subtype=sub, filename=filename)


async def send_message(inbox: Inbox, request: Request) -> Response:
    """``POST /api/v1/send`` (Mailpit's shape); answers ``{"ID": id}``."""
    sink = inbox.sink
    if sink is None:
        return json_error(501, "this server does not accept mail over HTTP")
    fields = await body_fields(request)
    message, sender, recipients = build_message(fields, inbox.settings.hostname)
    tags = fields.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise BadRequest("Tags must be a list of strings")
    outbound = tuple(r for r in recipients if not inbox.is_local(r))
    if outbound and not inbox.settings.release_allowed:
        return json_error(
            403, "sending to other domains over HTTP needs --http-auth (the API must be protected)"
        )
    content = bytes(message).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    client = request.client
    envelope = Envelope(
        mail_from=sender,
        rcpt_to=tuple(recipients),
        received_at=datetime.now(UTC),
        helo_name=inbox.settings.hostname,
        client_address=client.host if client else "",
        client_port=client.port if client else 0,
        protocol="HTTP",
        mail_params={"BODY": "8BITMIME"} if not content.isascii() else {},
        outbound=outbound,
    )
    if not sink.has_room(len(content)):
        return json_error(507, "not enough disk space for the message now")
    spool = sink.begin(envelope)
    try:
        spool.write(content)
    except BaseException:
        spool.discard()
        raise
    message_id = await sink.commit(spool)
    if tags and isinstance(inbox.store, TaggableStore):
        await inbox.store.set_tags([message_id], tags)
    return JSONResponse({"ID": message_id})
