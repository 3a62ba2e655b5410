"""Where every child process of a node starts: ``python -m mailgate.runtime KIND``.

``worker NUMBER`` is SMTP worker NUMBER (``_workers.run_worker``);
``commit-service`` is the commit service
(``_commit_service.run_commit_service``).  Both are started by the serving
process (``_supervisor``), which writes what they need on their stdin; they
are not for running by hand.  Each kind imports only what it runs.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import NoReturn

from mailgate.runtime._process import COMMIT_SERVICE, WORKER


def main(arguments: Sequence[str]) -> NoReturn:
    """Run the child process ``arguments`` name; exit with its status."""
    if len(arguments) == 2 and arguments[0] == WORKER and arguments[1].isdigit():
        from mailgate.runtime._workers import run_worker  # noqa: PLC0415

        run_worker(int(arguments[1]))
    elif list(arguments) == [COMMIT_SERVICE]:
        from mailgate.runtime._commit_service import run_commit_service  # noqa: PLC0415

        run_commit_service()
    else:
        sys.exit(
            f"usage: python -m mailgate.runtime {WORKER} NUMBER | {COMMIT_SERVICE}"
            " (started by mailgate serve, with its settings on stdin)"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
