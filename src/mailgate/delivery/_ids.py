"""Message ids: 26 characters of Crockford base32, sortable by time.

The layout is that of a ULID: a 48-bit count of milliseconds since the Unix
epoch, then 80 random bits.  Ids sort by time, as strings and as numbers.
Within one process, ids of the same millisecond sort in the order they were
made (the random part of the previous one, plus one, as monotonic ULIDs
do); ids of one millisecond from different processes sort at random.
"""

from __future__ import annotations

import os
import random
import threading
from datetime import UTC, datetime

from mailgate.model import MessageId

__all__ = ["id_timestamp", "new_message_id"]

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32, no I L O U
_DECODE = {c: i for i, c in enumerate(_ALPHABET)}
ID_CHARS = 26
TIMESTAMP_BITS = 48
RANDOM_BITS = 80
# 26 characters carry 130 bits: the 128 of the id behind two zero bits.  They are written
# two at a time, 10 bits for each pair, from a table of all 1,024 pairs.
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]
_PAIR_SHIFTS = range(120, -1, -10)

# Ids need to be unique, not secret: a generator seeded from the system's randomness (and
# seeded again in a forked child) is much faster than reading it for every message.
_random = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _random.seed(os.urandom(32)))


_RANDOM_LIMIT = 1 << RANDOM_BITS
_last = [0]  # the last id made, as a number
_last_lock = threading.Lock()


def new_message_id(now: datetime) -> MessageId:
    """A fresh id whose timestamp is ``now`` (a timezone-aware datetime)."""
    millis = int(now.timestamp() * 1000) & ((1 << TIMESTAMP_BITS) - 1)
    with _last_lock:
        last = _last[0]
        if last >> RANDOM_BITS == millis and (last + 1) % _RANDOM_LIMIT:
            value = last + 1
        else:
            value = (millis << RANDOM_BITS) | _random.getrandbits(RANDOM_BITS)
        _last[0] = value
    pairs = _PAIRS
    return MessageId("".join([pairs[(value >> shift) & 0x3FF] for shift in _PAIR_SHIFTS]))


def id_timestamp(message_id: str) -> datetime:
    """The time encoded in an id, to the millisecond.

    Raises ``ValueError`` when ``message_id`` is not a well-formed id.
    """
    if len(message_id) != ID_CHARS:
        raise ValueError(f"a message id has {ID_CHARS} characters: {message_id!r}")
    value = 0
    for char in message_id[:10]:  # 50 bits: two zero bits, then the 48 of the time
        value = (value << 5) | _DECODE[char.upper()]
    return datetime.fromtimestamp(value / 1000, UTC)
