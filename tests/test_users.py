"""The users file: scrypt hashes, atomic rewrites, constant-cost checks."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mailgate.auth import (
    AcceptAnyAuthenticator,
    UsersFile,
    UsersFileError,
    hash_password,
    verify_password,
)

CHEAP = 4


def test_hash_round_trip() -> None:
    stored = hash_password("s3cret", log2_n=CHEAP)
    assert stored.startswith("$scrypt$ln=4,r=8,p=1$")
    assert verify_password("s3cret", stored)
    assert not verify_password("S3cret", stored)
    assert hash_password("s3cret", log2_n=CHEAP) != stored  # salted


@pytest.mark.parametrize(
    "stored", ["", "plain", "$scrypt$ln=99,r=8,p=1$AAAA$AAAA", "$bcrypt$whatever"]
)
def test_unusable_hashes_never_match(stored: str) -> None:
    assert not verify_password("anything", stored)


def test_add_change_delete(tmp_path: Path) -> None:
    users = UsersFile(tmp_path / "sub" / "users")
    assert users.names() == []
    users.set_password("bob", "one", log2_n=CHEAP)
    users.set_password("alice", "two", log2_n=CHEAP)
    assert users.names() == ["alice", "bob"]
    assert users.check("alice", "two")
    users.set_password("alice", "three", log2_n=CHEAP)
    assert not users.check("alice", "two")
    assert users.check("alice", "three")
    assert (tmp_path / "sub" / "users").stat().st_mode & 0o077 == 0
    assert users.delete("bob")
    assert not users.delete("bob")
    assert "bob" not in users
    # Another process sees the change: a fresh reader of the same file.
    assert UsersFile(tmp_path / "sub" / "users").names() == ["alice"]


def test_unknown_user(tmp_path: Path) -> None:
    users = UsersFile(tmp_path / "users")
    assert not users.check("nobody", "pw")
    assert not asyncio.run(users.authenticate("nobody", "pw"))


@pytest.mark.parametrize("name", ["", "a b", "x:y", "é"])
def test_invalid_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(UsersFileError, match="invalid user name"):
        UsersFile(tmp_path / "users").set_password(name, "pw", log2_n=CHEAP)


def test_empty_password(tmp_path: Path) -> None:
    with pytest.raises(UsersFileError, match="empty"):
        UsersFile(tmp_path / "users").set_password("a", "", log2_n=CHEAP)


def test_corrupt_file_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text("# users\n\nalice:nonsense\n")
    with pytest.raises(UsersFileError, match=r"users:3:"):
        UsersFile(path).names()


def test_accept_any() -> None:
    assert asyncio.run(AcceptAnyAuthenticator().authenticate("x", "y"))
