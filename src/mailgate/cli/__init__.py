"""The ``mailgate`` command: the composition root that wires the layers together.

``main`` parses the command line, loads the settings (flags, ``MAILGATE_*``
variables, a TOML file) and runs a command.  The commands import the server
and the stores only when they run, so ``mailgate --version`` and a bad flag
answer at once.
"""

from __future__ import annotations

from mailgate.cli._main import main

__all__ = ["main"]
