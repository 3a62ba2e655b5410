"""``mailgate users``: add, list, delete users and change their passwords."""

from __future__ import annotations

import getpass
import sys

from mailgate.auth import UsersFile, UsersFileError
from mailgate.cli._exit import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, fail
from mailgate.config import Settings

__all__ = ["users_command"]


def _read_password(*, confirm: bool) -> str | None:
    """From the terminal (asked twice), or one line of standard input."""
    if not sys.stdin.isatty():
        line = sys.stdin.readline()
        return line.rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if confirm and getpass.getpass("Again: ") != first:
        return None
    return first


def users_command(settings: Settings, action: str, name: str | None) -> int:
    """Run ``users list|add|passwd|delete``; return the exit status."""
    if settings.users is None:
        return fail("users: give the users file with --users FILE (or MAILGATE_USERS)", EXIT_USAGE)
    users = UsersFile(settings.users)
    try:
        if action == "list":
            for user in users.names():
                print(user)
            return EXIT_OK
        assert name is not None
        if action == "delete":
            if not users.delete(name):
                return fail(f"users: no user {name!r} in {settings.users}")
            print(f"deleted {name}")
            return EXIT_OK
        exists = name in users
        if action == "add" and exists:
            return fail(f"users: {name!r} exists; use 'mailgate users passwd {name}'")
        if action == "passwd" and not exists:
            return fail(f"users: no user {name!r} in {settings.users}")
        password = _read_password(confirm=True)
        if password is None:
            return fail("users: the passwords differ")
        users.set_password(name, password)
    except UsersFileError as error:
        return fail(str(error))
    except OSError as error:
        return fail(f"users: {settings.users}: {error.strerror}", EXIT_FAILURE)
    print(f"{'added' if action == 'add' else 'changed the password of'} {name}")
    return EXIT_OK
