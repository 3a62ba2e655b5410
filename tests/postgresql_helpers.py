"""A PostgreSQL database of its own for each test that needs one.

``fresh_database()`` creates ``mailgate_test_<random>`` on the server
``MAILGATE_TEST_POSTGRESQL`` names (``postgresql://postgres@127.0.0.1:5432``
by default), gives its URL, and drops it afterwards.  When the server cannot
be reached the test is skipped, saying why; under ``CI=true`` it fails
instead, so that CI never passes by skipping.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest

SERVER = os.environ.get("MAILGATE_TEST_POSTGRESQL", "postgresql://postgres@127.0.0.1:5432")
"""The server the test databases are made on, as a URL without a database."""


def _unreachable(error: psycopg.Error) -> None:
    reason = f"PostgreSQL cannot be reached at {SERVER}: {str(error).strip().splitlines()[0]}"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """The URL of a new, empty database, dropped (its connections ended) on exit."""
    name = f"mailgate_test_{uuid.uuid4().hex[:16]}"
    try:
        admin = psycopg.connect(f"{SERVER}/postgres", autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as error:
        _unreachable(error)
        raise  # not reached: skip and fail raise
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"{SERVER}/{name}"
        finally:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
