"""Who may authenticate: ``ports.Authenticator`` implementations.

``UsersFile`` keeps users and their salted scrypt password hashes in one
file, which ``mailgate users`` edits and a running server reads again when it
changes; ``AcceptAnyAuthenticator`` lets anyone in, for development.
"""

from __future__ import annotations

from mailgate.auth._users import (
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
