"""Who may authenticate: ``ports.Authenticator`` implementations.

``UsersFile`` keeps users and their salted scrypt password hashes in one
file, which ``mailgate users`` edits and a running server reads again when it
changes; ``AcceptAnyAuthenticator`` lets anyone in, for development.
Passwords are checked on threads of their own (``PasswordChecks``), a
bounded number at once, and ``Throttle`` limits guessing per client address
for every service of the process.
"""

from __future__ import annotations

from mailgate.auth._checks import PasswordChecks
from mailgate.auth._throttle import Throttle, client_key
from mailgate.auth._users import (
    AcceptAnyAuthenticator,
    UsersFile,
    UsersFileError,
    hash_password,
    verify_password,
)

__all__ = [
    "AcceptAnyAuthenticator",
    "PasswordChecks",
    "Throttle",
    "UsersFile",
    "UsersFileError",
    "client_key",
    "hash_password",
    "verify_password",
]
