"""The users file: who may authenticate, with salted scrypt password hashes.

One user per line, ``name:$scrypt$ln=15,r=8,p=1$SALT$HASH`` (base64), so
the cost can rise later without breaking stored hashes.  The file is
rewritten atomically (temporary file, fsync, rename) and read again when
it changes on disk, so ``mailgate users add`` takes effect in a running
server.  Checking a password costs the same whether or not the user
exists, and runs on the password-checking threads (``_checks``), off the
event loop and off its default executor.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
import re
import secrets
import tempfile
from pathlib import Path

from mailgate.auth._checks import SHARED_CHECKS, PasswordChecks
from mailgate.ports import StoreError

__all__ = [
    "AcceptAnyAuthenticator",
    "UsersFile",
    "UsersFileError",
    "hash_password",
    "verify_password",
]

DEFAULT_LOG2_N = 15  # scrypt cost: 2**15 iterations, 32 MiB of memory
_BLOCK_SIZE = 8
_PARALLELISM = 1
_SALT_OCTETS = 16
_KEY_OCTETS = 32
_NAME = re.compile(r"[A-Za-z0-9._@+\-]{1,128}\Z")
_HASH = re.compile(
    r"\$scrypt\$ln=(\d{1,2}),r=(\d{1,2}),p=(\d{1,2})\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)\Z"
)


class UsersFileError(StoreError):
    """A users file could not be read or written, or a name is not valid.

    A ``StoreError`` (of a store of users) because ``mailgate serve`` reports
    those at start-up in one line.
    """


def _scrypt(password: str, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    n = 1 << log2_n
    return hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        maxmem=256 * n * r + 1024 * 1024,
        dklen=_KEY_OCTETS,
    )


def hash_password(password: str, *, log2_n: int = DEFAULT_LOG2_N) -> str:
    """A salted scrypt hash of ``password`` in the users-file format."""
    salt = secrets.token_bytes(_SALT_OCTETS)
    key = _scrypt(password, salt, log2_n, _BLOCK_SIZE, _PARALLELISM)
    b64 = base64.b64encode
    return (
        f"$scrypt$ln={log2_n},r={_BLOCK_SIZE},p={_PARALLELISM}"
        f"${b64(salt).decode()}${b64(key).decode()}"
    )


@functools.cache
def _dummy_hash() -> str:
    # Checked against for unknown users, so they cost as much as known ones.
    return hash_password("not a password")


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored``, compared in constant time."""
    match = _HASH.match(stored)
    if match is None:
        return False
    log2_n, r, p = (int(g) for g in match.group(1, 2, 3))
    if not (1 <= log2_n <= 20 and 1 <= r <= 32 and 1 <= p <= 16):
        return False
    salt = base64.b64decode(match.group(4))
    expected = base64.b64decode(match.group(5))
    return hmac.compare_digest(_scrypt(password, salt, log2_n, r, p), expected)


class UsersFile:
    """Users and their password hashes in one file (an ``Authenticator``).

    Passwords are checked on ``checks`` (by default the process's shared
    ``PasswordChecks``).
    """

    def __init__(self, path: Path, *, checks: PasswordChecks | None = None) -> None:
        self.path = path
        self._checks = checks or SHARED_CHECKS
        self._users: dict[str, str] = {}
        self._stamp: tuple[int, int] | None = None

    def _reload(self) -> dict[str, str]:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._users, self._stamp = {}, None
            return self._users
        except OSError as error:
            raise UsersFileError(f"cannot read users file {self.path}: {error.strerror}") from error
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return self._users
        users: dict[str, str] = {}
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise UsersFileError(f"cannot read users file {self.path}: {error}") from error
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, stored = line.partition(":")
            if not sep or not _NAME.match(name) or not _HASH.match(stored):
                raise UsersFileError(f"{self.path}:{number}: not a 'name:$scrypt$...' line")
            users[name] = stored
        self._users, self._stamp = users, stamp
        return users

    def names(self) -> list[str]:
        """The users, sorted."""
        return sorted(self._reload())

    def __contains__(self, name: object) -> bool:
        return name in self._reload()

    def set_password(self, name: str, password: str, *, log2_n: int = DEFAULT_LOG2_N) -> None:
        """Add a user, or change their password.

        Raises ``UsersFileError`` for an invalid name or an empty password.
        """
        if not _NAME.match(name):
            raise UsersFileError(f"invalid user name {name!r}: use letters, digits and ._@+-")
        if not password:
            raise UsersFileError("the password is empty")
        users = dict(self._reload())
        users[name] = hash_password(password, log2_n=log2_n)
        self._write(users)

    def delete(self, name: str) -> bool:
        """Remove a user; return whether they existed."""
        users = dict(self._reload())
        if users.pop(name, None) is None:
            return False
        self._write(users)
        return True

    def _write(self, users: dict[str, str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(f"{name}:{stored}\n" for name, stored in sorted(users.items()))
        fd, tmp = tempfile.mkstemp(prefix=".users-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self._stamp = None

    def check(self, name: str, password: str) -> bool:
        """Whether the password is right; as slow for unknown users as for known."""
        stored = self._reload().get(name)
        if stored is None:
            verify_password(password, _dummy_hash())
            return False
        return verify_password(password, stored)

    async def authenticate(self, username: str, password: str) -> bool:
        """``check``, on a password-checking thread.

        Raises ``AuthenticatorBusyError`` when too many checks are in hand.
        """
        return await self._checks.run(self.check, username, password)


class AcceptAnyAuthenticator:
    """For development only: every user name and password is accepted."""

    async def authenticate(self, username: str, password: str) -> bool:
        """Always ``True``."""
        return True
