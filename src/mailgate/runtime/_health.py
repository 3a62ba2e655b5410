"""What ``/readyz`` asks a node besides a read of its store: ``NodeHealth``.

A node's parts each know one thing: the store whether its own writer
commits, the commit service whether new mail is committed (whichever SMTP
process took it), and ``DiskRoom`` whether the data directory's file system
has room.  ``NodeHealth`` asks them all at each request; nothing is
remembered here, so the node is ready again as soon as every part is.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from mailgate.ports import HealthCheck, HealthReporter

__all__ = ["DiskRoom", "NodeHealth"]


def _size(octets: int) -> str:
    """``octets`` for a person: ``37.5 MB``, ``8.2 kB``, ``0 bytes``."""
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if octets >= scale:
            return f"{octets / scale:.1f} {unit}"
    return f"{octets} bytes"


class DiskRoom:
    """``disk``: whether ``directory``'s file system has ``floor`` octets free, as ``MAIL``
    asks before it answers ``250`` rather than ``452 4.3.1`` (``delivery.Acceptor.has_room``).
    """

    def __init__(self, directory: Path, floor: int) -> None:
        self.directory = directory
        self.floor = floor

    def health(self) -> list[HealthCheck]:
        """The ``disk`` check now (one ``statvfs``)."""
        try:
            free = shutil.disk_usage(self.directory).free
        except OSError as error:
            return [HealthCheck("disk", f"cannot tell the free space in {self.directory}: {error}")]
        if free >= self.floor:
            return [HealthCheck("disk")]
        return [
            HealthCheck(
                "disk",
                f"{_size(free)} free in {self.directory}, under the floor of"
                f" {_size(self.floor)}: MAIL gets 452 4.3.1",
            )
        ]


class NodeHealth:
    """The checks of every part, in the order given: a ``ports.HealthReporter``."""

    def __init__(self, parts: Sequence[HealthReporter]) -> None:
        self._parts = tuple(parts)

    def health(self) -> list[HealthCheck]:
        """Every part's checks now."""
        return [check for part in self._parts for check in part.health()]
