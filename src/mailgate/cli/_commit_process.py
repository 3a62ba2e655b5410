"""The serving process's side of ``_committer``: start, watch and stop the commit process.

With an SQLite store, ``mailgate serve`` commits new mail in a process of its
own, which every SMTP process (the serving process and its workers) reaches
over a Unix socket in a new directory only this user can enter.  A commit
process that dies is started again like a worker; meanwhile, and until they
reach it again, the SMTP processes commit on their own writer threads.
It stops last, after every SMTP process has finished its transactions.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from mailgate.cli._workers import Children
from mailgate.config import Settings

__all__ = ["CommitProcess"]

_CHILD = "from mailgate.cli._committer import main; main()"


class CommitProcess(Children):
    """The commit process of the store ``settings`` name, listening at ``socket_path``."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(1, settings.limits.shutdown_grace)
        self.settings = settings
        self._directory = Path(tempfile.mkdtemp(prefix="mailgate-"))  # mode 0700
        self.socket_path = str(self._directory / "commit.sock")

    def _child(self, number: int) -> tuple[str, object, str]:
        return _CHILD, (self.settings, self.socket_path), "the commit process"

    async def aclose(self) -> None:
        """Stop the process, then remove its socket's directory."""
        try:
            await super().aclose()
        finally:
            shutil.rmtree(self._directory, ignore_errors=True)
