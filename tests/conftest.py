"""Shared pytest configuration.  Keep it small: fixtures live near their tests."""

from __future__ import annotations

import os

from hypothesis import settings

# CI machines are slower and busier than a laptop; a deadline there only adds flakes.
settings.register_profile("ci", deadline=None, print_blob=True)
settings.register_profile("dev", max_examples=100)
settings.load_profile("ci" if os.environ.get("CI") == "true" else "dev")

# The loopback internet of delivery tests: DNS and receiving MTAs (see loopback.py).
from loopback import dns_zone, receiving_mta  # noqa: E402, F401
