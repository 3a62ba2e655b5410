"""``mailgate queue``: the outbound queue, as Postfix's postqueue and postsuper show and change it.

Each command opens the store the settings name and works on it directly; a
running server's queue runner sees the change within a moment (it follows
the store's events) and acts on it: a retried or released recipient is
tried at once, a bounced one gets its report.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime

from mailgate.cli._exit import EXIT_OK, fail
from mailgate.cli._messages import with_store
from mailgate.config import Settings
from mailgate.model import MessageId, QueuedDelivery
from mailgate.ports import MessageStore, QueueStore
from mailgate.web import delivery_json, queue_action

__all__ = ["QUEUE_ACTIONS", "queue_command"]

QUEUE_ACTIONS = {
    "list": "list the recipients waiting for delivery",
    "show": "show every recipient of one message, delivered and bounced ones too",
    "retry": "try a message's waiting recipients now (or --all messages')",
    "hold": "hold a message: no delivery attempt until it is released",
    "release": "release a held message, to be tried now",
    "delete": "remove a message's waiting recipients from the queue, with no bounce",
    "bounce": "bounce a message's waiting recipients now, with a report to the sender",
}


def _when(moment: datetime | None) -> str:
    return "" if moment is None else moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _table(rows: Sequence[QueuedDelivery]) -> str:
    header = ("ID", "RECIPIENT", "STATE", "TRIES", "NEXT ATTEMPT", "LAST REPLY")
    lines = [header] + [
        (
            r.message_id,
            r.recipient,
            r.state.value,
            str(r.attempts),
            _when(r.next_attempt),
            " ".join(r.last_reply.split()),
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join([*(c.ljust(w) for c, w in zip(line, widths, strict=False)), line[-1]]).rstrip()
        for line in lines
    )


def queue_command(
    settings: Settings, action: str, message_id: str | None, *, all_: bool, as_json: bool
) -> int:
    """Run ``mailgate queue ACTION [ID]``; return the exit status."""

    async def run(opened: MessageStore) -> int:
        if not isinstance(opened, QueueStore):
            return fail(f"the store {settings.store_url} keeps no outbound queue")
        store: QueueStore = opened
        if action in {"list", "show"}:
            rows = await store.queued(
                MessageId(message_id) if message_id else None, pending_only=action == "list"
            )
            if action == "show" and not rows:
                return fail(f"no queued message with id {message_id!r}")
            if as_json:
                print(json.dumps([delivery_json(r) for r in rows], indent=2))
            elif rows:
                print(_table(rows))
            elif action == "list":
                print("The queue is empty.")
            return EXIT_OK
        target = None if action == "retry" and all_ else MessageId(message_id or "")
        count = await queue_action(store, action, target, datetime.now(UTC))
        if not count:
            what = "held " if action == "release" else "waiting "
            return fail(f"no {what}recipient of {message_id or 'any message'} to {action}")
        print(f"{action}: {count} recipient{'s' if count != 1 else ''}")
        return EXIT_OK

    return with_store(settings, run)
