"""Chaos: SMTP commands failed on purpose, to test how an application copes (Mailpit's).

A ``ChaosTrigger`` is an SMTP reply code (400 to 599) and the chance, in
percent, that a command gets it instead of its real answer.  ``ChaosTriggers``
holds Mailpit's three: ``sender`` (``MAIL FROM``), ``recipient`` (each ``RCPT
TO``) and ``authentication`` (``AUTH``, where users are configured).  They are
written two ways, each with one encoder and one decoder: Mailpit's
``--chaos-triggers`` text, ``Sender:451:50,Recipient:550:10`` (``parse`` and
``text``; the serving process sends its SMTP workers the same), and Mailpit's
JSON, ``{"Sender": {"ErrorCode": 451, "Probability": 50}, ...}`` (``from_json``
and ``json``).  A trigger left out of either is its default: probability 0,
code 451 (535 for authentication).

``Chaos`` is what one process has in force, shared by its SMTP sessions and,
in the serving process, the web API that changes it.  Its ``armed`` is
``None`` while no trigger can fire, so a session with chaos off pays one
attribute check a command.  Nothing here rolls the dice or does I/O: the
SMTP server draws the numbers, and whoever must hear of a change (the SMTP
workers) follows it (``Chaos.follow``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from mailgate import MailgateError

__all__ = [
    "MAX_ERROR_CODE",
    "MIN_ERROR_CODE",
    "Chaos",
    "ChaosError",
    "ChaosTrigger",
    "ChaosTriggers",
]

MIN_ERROR_CODE = 400
MAX_ERROR_CODE = 599
"""The reply codes a trigger may give, as Mailpit allows: any 4xx or 5xx."""
_ALIASES = {"recipients": "recipient", "auth": "authentication"}  # as Mailpit's flag takes


class ChaosError(MailgateError):
    """Triggers written wrong; ``str()`` is one line saying which and why."""


@dataclass(frozen=True, slots=True)
class ChaosTrigger:
    """Fail a command with ``error_code`` ``probability`` times in 100.

    Raises ``ChaosError`` for a code outside 400-599 or a probability outside 0-100.
    """

    error_code: int
    probability: int = 0

    def __post_init__(self) -> None:
        if not MIN_ERROR_CODE <= self.error_code <= MAX_ERROR_CODE:
            raise ChaosError(f"error code must be between {MIN_ERROR_CODE} and {MAX_ERROR_CODE}")
        if not 0 <= self.probability <= 100:
            raise ChaosError("probability must be between 0 and 100")


_DEFAULT_CODES = {"sender": 451, "recipient": 451, "authentication": 535}
"""Each trigger's field in ``ChaosTriggers``, and its code unless one is given."""


@dataclass(frozen=True, slots=True)
class ChaosTriggers:
    """Mailpit's three triggers; see the module's docstring."""

    sender: ChaosTrigger = ChaosTrigger(_DEFAULT_CODES["sender"])
    recipient: ChaosTrigger = ChaosTrigger(_DEFAULT_CODES["recipient"])
    authentication: ChaosTrigger = ChaosTrigger(_DEFAULT_CODES["authentication"])

    @property
    def armed(self) -> bool:
        """Whether any trigger can fire."""
        return any(t.probability for t in (self.sender, self.recipient, self.authentication))

    def _triggers(self) -> dict[str, ChaosTrigger]:
        """Each trigger by its name in Mailpit's text and JSON."""
        return {
            "Sender": self.sender,
            "Recipient": self.recipient,
            "Authentication": self.authentication,
        }

    def text(self) -> str:
        """Mailpit's ``--chaos-triggers`` text, every trigger named: ``Sender:451:0,...``."""
        return ",".join(
            f"{name}:{t.error_code}:{t.probability}" for name, t in self._triggers().items()
        )

    def json(self) -> dict[str, dict[str, int]]:
        """Mailpit's JSON: ``{"Sender": {"ErrorCode": 451, "Probability": 0}, ...}``."""
        return {
            name: {"ErrorCode": t.error_code, "Probability": t.probability}
            for name, t in self._triggers().items()
        }

    @classmethod
    def parse(cls, text: str) -> ChaosTriggers:
        """Triggers from Mailpit's ``--chaos-triggers`` text: comma-separated
        ``TRIGGER:CODE:PROBABILITY``, the trigger's name in any case.

        Raises ``ChaosError`` naming the part that is wrong.
        """
        chosen: dict[str, ChaosTrigger] = {}
        parts = [part.strip() for part in text.split(",")]
        if not any(parts):
            raise ChaosError("no trigger given: TRIGGER:CODE:PROBABILITY, e.g. Sender:451:50")
        for part in parts:
            fields = part.split(":")
            if len(fields) != 3 or not all(f.strip().isdecimal() for f in fields[1:]):
                raise ChaosError(
                    f"{part!r} is not TRIGGER:CODE:PROBABILITY (e.g. Recipient:550:10)"
                )
            key = _key(fields[0])
            try:
                chosen[key] = ChaosTrigger(int(fields[1]), int(fields[2]))
            except ChaosError as error:
                raise ChaosError(f"{part!r}: {error}") from None
        return cls(**chosen)

    @classmethod
    def from_json(cls, value: object) -> ChaosTriggers:
        """Triggers from Mailpit's JSON (names in any case, as Go's decoder takes them); a
        trigger left out, ``null``, or with no ``ErrorCode`` (or 0) has its default code.

        Raises ``ChaosError`` naming the field that is wrong.
        """
        if not isinstance(value, Mapping):
            raise ChaosError(
                'the body must be a JSON object such as {"Sender": {"ErrorCode": 451,'
                ' "Probability": 50}}'
            )
        chosen: dict[str, ChaosTrigger] = {}
        for name, fields in value.items():
            key = _key(str(name))
            if fields is not None:
                chosen[key] = _trigger_from_json(key, fields)
        return cls(**chosen)


def _key(name: str) -> str:
    """The field of ``ChaosTriggers`` a trigger's name means; raises ``ChaosError``."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _DEFAULT_CODES:
        raise ChaosError(f"unknown trigger {name.strip()!r}: Sender, Recipient or Authentication")
    return key


def _trigger_from_json(key: str, fields: object) -> ChaosTrigger:
    name = key.capitalize()
    if not isinstance(fields, Mapping):
        raise ChaosError(f'{name} must be an object: {{"ErrorCode": 451, "Probability": 50}}')
    numbers = {"errorcode": 0, "probability": 0}
    for field, number in fields.items():
        lowered = str(field).lower()
        if lowered not in numbers:
            raise ChaosError(f"{name}.{field}: unknown field (ErrorCode or Probability)")
        if isinstance(number, bool) or not isinstance(number, int):
            raise ChaosError(f"{name}.{field} must be a whole number")
        numbers[lowered] = number
    code = numbers["errorcode"] or _DEFAULT_CODES[key]
    try:
        return ChaosTrigger(code, numbers["probability"])
    except ChaosError as error:
        raise ChaosError(f"{name}: {error}") from None


Follower = Callable[["ChaosTriggers"], Awaitable[None]]
"""Told of each change by ``Chaos.change``, which waits for it."""


class Chaos:
    """The triggers in force in one process; see the module's docstring."""

    __slots__ = ("_followers", "armed", "triggers")

    def __init__(self, triggers: ChaosTriggers | None = None) -> None:
        self.triggers = ChaosTriggers()
        """The triggers in force."""
        self.armed: ChaosTriggers | None = None
        """``triggers`` while one of them can fire, else ``None``: what a session checks."""
        self._followers: list[Follower] = []
        if triggers is not None:
            self.set(triggers)

    def set(self, triggers: ChaosTriggers) -> None:
        """Put ``triggers`` in force in this process."""
        self.triggers = triggers
        self.armed = triggers if triggers.armed else None

    def follow(self, follower: Follower) -> None:
        """Have ``follower`` told of every ``change``."""
        self._followers.append(follower)

    async def change(self, triggers: ChaosTriggers) -> None:
        """Put ``triggers`` in force here, then tell each follower, waiting for each."""
        self.set(triggers)
        for follower in self._followers:
            await follower(triggers)
