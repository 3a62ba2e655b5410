"""Exit statuses and the one-line error report every command uses."""

from __future__ import annotations

import sys

__all__ = ["EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE", "fail"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2  # the argparse convention, for any bad flag or setting


def fail(message: str, status: int = EXIT_FAILURE) -> int:
    """Report ``message`` as ``mailgate: error: ...`` on stderr; return ``status``."""
    print(f"mailgate: error: {message}", file=sys.stderr, flush=True)
    return status
