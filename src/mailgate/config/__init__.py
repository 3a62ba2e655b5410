"""Settings: one typed, frozen tree, loaded from flags, environment and TOML.

``load_settings`` merges the sources (flags win, then ``MAILGATE_*``
variables, then the TOML file, then defaults) and checks every value.  The
table ``OPTIONS`` names each setting in every source; the command line
builds its flags from it.  This package does no I/O besides reading the TOML
file it is given.
"""

from __future__ import annotations

from mailgate.config._load import ConfigError, load_settings
from mailgate.config._options import OPTIONS, Option
from mailgate.config._settings import (
    CATCH_ALL_MAX_MESSAGES,
    MAX_WORKERS,
    TLS,
    Domain,
    Limits,
    Listen,
    Outbound,
    Retention,
    Settings,
)

__all__ = [
    "CATCH_ALL_MAX_MESSAGES",
    "MAX_WORKERS",
    "OPTIONS",
    "TLS",
    "ConfigError",
    "Domain",
    "Limits",
    "Listen",
    "Option",
    "Outbound",
    "Retention",
    "Settings",
    "load_settings",
]
