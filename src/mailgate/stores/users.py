"""Moved to ``mailgate.auth``: the users file is an authenticator, not a message store.

Kept until the command line imports it from there.
"""

from __future__ import annotations

from mailgate.auth import (
    AcceptAnyAuthenticator,
    UsersFile,
    UsersFileError,
    hash_password,
    verify_password,
)

__all__ = [
    "AcceptAnyAuthenticator",
    "UsersFile",
    "UsersFileError",
    "hash_password",
    "verify_password",
]
