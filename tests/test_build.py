"""Which build is under test: pure Python (editable) or the compiled wheel.

``make test`` runs the suite twice: on the editable install, whose modules must
all be the sources under ``src/`` (a compiled module there would shadow every
later edit), then with ``MAILGATE_EXPECT_COMPILED=1`` on the wheel built by
``setup.py``, whose hot path must really be compiled.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import mailgate

HOT = [
    "mailgate.model",
    "mailgate.protocol._server",
    "mailgate.protocol._commands",
    "mailgate.server._log",
    "mailgate.server._session",
    "mailgate.delivery._accept",
    "mailgate.delivery._summary",
]

EXPECT_COMPILED = os.environ.get("MAILGATE_EXPECT_COMPILED") == "1"


@pytest.mark.parametrize("name", HOT)
def test_the_hot_path_is_the_build_under_test(name: str) -> None:
    path = Path(importlib.import_module(name).__file__ or "")
    if EXPECT_COMPILED:
        assert path.suffix == ".so", f"{name} is not compiled: {path}"
    else:
        assert path.suffix == ".py", f"{name} is not its source: {path}"
        assert not list(path.parent.glob(f"{path.stem}.*.so")), "a compiled module beside it"


def test_version_names_the_build() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mailgate", "--version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    build = "compiled" if EXPECT_COMPILED else "pure Python"
    assert done.stdout.strip() == f"mailgate {mailgate.__version__} ({build})"
