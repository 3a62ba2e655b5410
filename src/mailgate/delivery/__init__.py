"""Delivery: the accept path, the one writer of new mail.

The SMTP shell gives an envelope to ``Acceptor.begin``, streams the message
into the ``Spool`` it returns, and awaits ``Acceptor.commit``, which returns
the message id once the store has made the message durable.
"""

from __future__ import annotations

from mailgate.delivery._accept import (
    COMMIT_SECONDS_BUCKETS,
    MAX_RECEIVED_FIELDS,
    Acceptor,
    CommitTimes,
    DeliverySettings,
    ReceivedMessage,
    SystemClock,
)
from mailgate.delivery._ids import id_timestamp, new_message_id
from mailgate.delivery._spool import MemoryThresholdSpool, SpoolBudget, SpoolClosedError
from mailgate.delivery._summary import summarize
from mailgate.delivery._trace import received_header

__all__ = [
    "COMMIT_SECONDS_BUCKETS",
    "MAX_RECEIVED_FIELDS",
    "Acceptor",
    "CommitTimes",
    "DeliverySettings",
    "MemoryThresholdSpool",
    "ReceivedMessage",
    "SpoolBudget",
    "SpoolClosedError",
    "SystemClock",
    "id_timestamp",
    "new_message_id",
    "received_header",
    "summarize",
]
