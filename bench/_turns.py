"""Two builds of mailgate measured in turns, each in a process of its own.

A build is a git revision (exported to a temporary directory) or a directory
holding ``src/mailgate``.  ``in_turns`` runs the calling script again with
``--child``, under each build's ``src`` first on ``PYTHONPATH``, in the order
A, B, B, A... so that a busy spell of a shared machine falls on both, and
yields what each child printed.  The scripts that use it (``accept_path.py``,
``pg_commit.py``) are run as files, so this module is imported from their
directory, the first on ``sys.path``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def source(build: str, work: Path, name: str) -> Path:
    """The ``src`` directory of ``build``: a directory as it is, or a git revision exported."""
    if (Path(build) / "src" / "mailgate").is_dir():
        return Path(build).resolve() / "src"
    target = work / name
    target.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", build, "src"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target / "src"


def in_turns(
    script: str, a: str, b: str, *, rounds: int, child: Sequence[str], work: Path
) -> Iterator[tuple[int, str, str]]:
    """``script a b --child CHILD...`` under build A and under build B, ``rounds`` times each:
    the round (from 1), ``"A"`` or ``"B"``, and what the child printed.

    Raises ``SystemExit`` (status 1, the child's error output) when a child fails.
    """
    sources = {"A": source(a, work, "a"), "B": source(b, work, "b")}
    for round_number in range(rounds):
        for name in ("A", "B") if round_number % 2 == 0 else ("B", "A"):
            env = {**os.environ, "PYTHONPATH": str(sources[name])}
            done = subprocess.run(
                [sys.executable, script, a, b, "--child", *child],
                env=env, capture_output=True, text=True, check=False,
            )  # fmt: skip
            if done.returncode != 0:
                raise SystemExit(f"{name} failed:\n{done.stderr}")
            yield round_number + 1, name, done.stdout
