"""``mailgate messages``: list stored messages, or print one."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

from mailgate.cli._exit import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, fail
from mailgate.config import Settings
from mailgate.model import Address, MessageId, MessageSummary
from mailgate.ports import MessageStore, StoreError
from mailgate.stores import StoreURLError, open_store

__all__ = ["list_messages", "show_message", "with_store"]

_COLUMNS = ("ID", "DATE", "FROM", "TO", "SUBJECT", "SIZE")
_WIDEST = {"FROM": 30, "TO": 30, "SUBJECT": 50}


def list_messages(settings: Settings, *, limit: int, count: bool) -> int:
    """Print the newest ``limit`` messages as a table, or with ``count`` how many there are."""

    async def run(store: MessageStore) -> int:
        page = await store.list(limit=0 if count else limit)
        if count:
            print(page.total)
        elif page.messages:
            print(_table([await _with_envelope(store, s) for s in page.messages]))
        return EXIT_OK

    return with_store(settings, run)


def show_message(settings: Settings, message_id: str, *, raw: bool) -> int:
    """Print one message's headers and text, or with ``raw`` its exact stored bytes, streamed
    from the store a part at a time (a 50 MB message is never whole in the process)."""

    async def run(store: MessageStore) -> int:
        if raw:
            return await _write_raw(store, MessageId(message_id))
        content = await store.raw(MessageId(message_id))
        if content is None:
            return fail(f"no message with id {message_id!r}")
        sys.stdout.write(_readable(content))
        sys.stdout.flush()
        return EXIT_OK

    return with_store(settings, run)


async def _write_raw(store: MessageStore, message_id: MessageId) -> int:
    stream = await store.stream_raw(message_id)
    if stream is None:
        return fail(f"no message with id {message_id!r}")
    output = sys.stdout.buffer
    try:
        async with contextlib.aclosing(stream):
            async for part in stream:
                output.write(part)
    except StoreError as error:  # deleted while it was written, or the store went away
        output.flush()
        return fail(str(error))
    output.flush()
    return EXIT_OK


def with_store(settings: Settings, command: Callable[[MessageStore], Awaitable[int]]) -> int:
    """Open the store the settings name, run ``command`` on it, close it; its exit status."""

    async def run() -> int:
        try:
            store = await open_store(settings.store_url)
        except StoreURLError as error:
            return fail(str(error), EXIT_USAGE)
        except StoreError as error:
            return fail(str(error), EXIT_FAILURE)
        try:
            return await command(store)
        finally:
            await store.aclose()

    return asyncio.run(run())


async def _with_envelope(store: MessageStore, summary: MessageSummary) -> MessageSummary:
    """Fill a missing From or To from the envelope, which every message has."""
    if summary.sender is not None and summary.to:
        return summary
    stored = await store.get(summary.id)
    if stored is None:  # deleted meanwhile
        return summary
    envelope = stored.envelope
    return dataclasses.replace(
        summary,
        sender=summary.sender or Address("", envelope.mail_from or "<>"),
        to=summary.to or tuple(Address("", rcpt) for rcpt in envelope.rcpt_to),
    )


def _table(messages: list[MessageSummary]) -> str:
    rows = [_COLUMNS, *(_row(summary) for summary in messages)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
        lines.append("  ".join([*cells, row[-1].rjust(widths[-1])]).rstrip())
    return "\n".join(lines)


def _row(summary: MessageSummary) -> tuple[str, str, str, str, str, str]:
    return (
        summary.id,
        _date(summary.received_at),
        _clip(_address(summary.sender), _WIDEST["FROM"]),
        _clip(", ".join(_address(a) for a in summary.to), _WIDEST["TO"]),
        _clip(" ".join(summary.subject.split()), _WIDEST["SUBJECT"]),
        _size(summary.size),
    )


def _date(when: datetime) -> str:
    return when.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _address(address: Address | None) -> str:
    return address.address if address is not None else ""


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _size(octets: int) -> str:
    for unit, scale in (("G", 1024**3), ("M", 1024**2), ("K", 1024)):
        if octets >= scale:
            return f"{octets / scale:.1f}{unit}"
    return f"{octets}B"


def _readable(content: bytes) -> str:
    """The headers, decoded, then the text body (plain preferred, else HTML)."""
    message = BytesParser(policy=policy.default).parsebytes(content)
    assert isinstance(message, EmailMessage)
    # Unfolded, one line each (a folded trace header keeps its tabs otherwise).
    headers = "".join(
        f"{name}: {' '.join(str(value).split())}\n" for name, value in message.items()
    )
    body = message.get_body(preferencelist=("plain", "html"))
    if body is None:
        text = "(no text part; see --raw)\n"
    else:
        try:
            text = body.get_content()
        except (LookupError, UnicodeError):  # an unknown or lying charset
            payload = body.get_payload(decode=True)
            text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    text = text.replace("\r\n", "\n")
    return f"{headers}\n{text}" if text.endswith("\n") else f"{headers}\n{text}\n"
