"""Shared pytest configuration.  Keep it small: fixtures live near their tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

# CI machines are slower and busier than a laptop; a deadline there only adds flakes.
settings.register_profile("ci", deadline=None, print_blob=True)
settings.register_profile("dev", max_examples=100)
settings.load_profile("ci" if os.environ.get("CI") == "true" else "dev")

# The loopback internet of delivery tests: DNS and receiving MTAs (see loopback.py).
from loopback import dns_zone, receiving_mta  # noqa: E402, F401
from process_helpers import Launcher  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    """Coverage follows the processes that run tests, not the servers the tests start.

    ``make test`` measures with coverage's subprocess patch, so that the worker
    processes of ``pytest -n`` are measured from their first import; the patch
    would also measure every ``mailgate serve`` a test starts, at twice the CPU.
    The workers, and a run with no workers, drop it before any test starts one.
    """
    workers = config.getoption("numprocesses", default=None)
    if hasattr(config, "workerinput") or not workers:
        os.environ.pop("COVERAGE_PROCESS_CONFIG", None)


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    """Starts ``mailgate serve`` as a user does (see process_helpers); kills what is left."""
    started = Launcher(tmp_path)
    try:
        yield started
    finally:
        started.close()
