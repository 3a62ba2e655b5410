"""The ``mailgate`` command: the composition root that wires the layers together.

``main`` parses the command line, loads the settings (flags, ``MAILGATE_*``
variables, a TOML file) and runs a command.  The commands import the server
and the stores only when they run, so ``mailgate --version`` and a bad flag
answer at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mailgate.cli._main import main

if TYPE_CHECKING:
    from mailgate.cli._app import Mailgate

__all__ = ["Mailgate", "main"]


def __getattr__(name: str) -> Any:
    # ``Mailgate`` pulls in the server and stores: load it only when asked for.
    if name == "Mailgate":
        from mailgate.cli._app import Mailgate  # noqa: PLC0415

        return Mailgate
    raise AttributeError(name)
