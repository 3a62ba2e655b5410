"""The ``mailgate`` command: argument parsing and the commands.

``main`` parses the command line, loads the settings (flags, ``MAILGATE_*``
variables, a TOML file) and runs a command: ``serve`` runs a node
(``mailgate.runtime``), ``messages`` and ``users`` open the store and the
users file.  The commands import the server and the stores only when they
run, so ``mailgate --version`` and a bad flag answer at once.
"""

from __future__ import annotations

from mailgate.cli._main import main

__all__ = ["main"]
