"""A failing store says so: ``mailgate serve`` over a damaged SQLite database or a full disk.

The database is damaged as a disk fault would: pages of the file are
overwritten with garbage.  With the server running, the test checkpoints the
write-ahead log (so the pages live in the database file), overwrites the
root page of a b-tree a commit writes to (the index of message ids, the table
of small bodies, the change log), then commits a change of its own, so that
every connection of the server drops its cached pages at its next
transaction and reads the garbage, as it would after a fault of the disk.
The next message gets ``451``, ``/readyz`` answers ``503`` naming the
``commits`` check and the error, no message that got ``250`` is missing, and
once the pages are put back mail flows and ``/readyz`` answers ``200`` by
itself.  A full disk (a small tmpfs) turns the ``disk`` check, and frees it.

Each test prints what it measured (``-s`` shows it): how long ``/readyz``
took to say so after the first ``451``.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import smtplib
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from process_helpers import TIMEOUT, Launcher, Serving, inbox, mailgate, until
from test_server_storage import small_disk  # noqa: F401 - a fixture

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="real processes")

TARGETS = {
    "index": "sqlite_autoindex_messages_1",
    "bodies": "bodies",
    "changes": "changes",
}
"""What a test damages: the b-tree of message ids, of small bodies, of the change log."""


def send(port: int, subject: str) -> str:
    """Send one message (declaring no SIZE); the reply to its end of data, as ``250`` or
    ``451 4.3.0 ...``."""
    with smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT) as client:
        client.ehlo()
        assert client.mail("a@example.org")[0] == 250
        assert client.rcpt("b@example.net")[0] == 250
        code, text = client.data(f"Subject: {subject}\r\n\r\nbody\r\n".encode())
    return "250" if code == 250 else f"{code} {text.decode()}"


def readyz(served: Serving) -> httpx.Response:
    return httpx.get(f"{served.http_url}readyz", timeout=TIMEOUT)


def listed_subjects(served: Serving) -> set[str]:
    return {m["Subject"] for m in inbox(served)}


class Pages:
    """Pages of a live database, overwritten with garbage and put back."""

    def __init__(self, database: Path, name: str) -> None:
        self.database = database
        self._connection = sqlite3.connect(database, isolation_level=None)
        (self.root,) = self._connection.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = ?", (name,)
        ).fetchone()
        (self.size,) = self._connection.execute("PRAGMA page_size").fetchone()
        self._saved = b""

    def _checkpoint(self) -> None:
        """Every page in the database file, the write-ahead log empty."""
        until(
            lambda: self._connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0,
            "the write-ahead log is checkpointed",
        )

    def _write(self, data: bytes) -> bytes:
        with self.database.open("r+b") as file:
            file.seek((self.root - 1) * self.size)
            before = file.read(self.size)
            file.seek((self.root - 1) * self.size)
            file.write(data)
        # A commit of this connection's: every other connection drops its cached pages at
        # its next transaction, and reads the file again.
        self._connection.execute("UPDATE counts SET total = total")
        return before

    def damage(self) -> None:
        self._checkpoint()
        self._saved = self._write(random.Random(self.root).randbytes(self.size))

    def repair(self) -> None:
        self._write(self._saved)

    def close(self) -> None:
        self._connection.close()


def serve(launcher: Launcher, data: Path, *argv: str) -> Serving:
    return launcher.serve(
        "--smtp", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data", str(data), *argv
    )  # fmt: skip


def refused_start(data: Path) -> tuple[int, str]:
    """``mailgate serve`` over a store it refuses: its status and what it printed."""
    done = mailgate(
        "serve", "--smtp", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data", str(data),
        cwd=data.parent,
    )  # fmt: skip
    assert done.stdout == "", done.stdout  # no ready line
    return done.returncode, done.stderr


@pytest.mark.parametrize(
    ("target", "workers"),
    [("index", "1"), ("bodies", "1"), ("changes", "1"), ("bodies", "2")],
)
def test_a_store_damaged_under_a_running_server_fails_readyz_at_the_first_failed_commit(
    launcher: Launcher, tmp_path: Path, target: str, workers: str
) -> None:
    data = tmp_path / "data"
    served = serve(launcher, data, "--workers", workers)
    acknowledged = {f"before {n}" for n in range(20)}
    assert {send(served.port, subject) for subject in acknowledged} == {"250"}
    assert readyz(served).status_code == 200
    pages = Pages(data / "mail.db", TARGETS[target])
    try:
        pages.damage()
        refused = send(served.port, "refused")
        first_451 = time.monotonic()
        assert refused.startswith("451 4.3.0"), refused
        unready = until(lambda: (r := readyz(served)).status_code == 503 and r, "/readyz says")
        detected_s = time.monotonic() - first_451
        body = unready.json()
        assert (body["status"], body["failed"]) == ("not ready", "commits"), body
        assert "database disk image is malformed" in body["error"], body
        assert body["checks"]["commits"] == body["error"]
        print(f"\n{target}, {workers} SMTP processes: /readyz said 503 {detected_s:.3f} s after")
        assert "database disk image is malformed" in served.stop_cleanly()
        # Started again over the damaged file: refused, in one line naming what is damaged.
        status, said = refused_start(data)
        assert status == 1
        [line] = said.splitlines()
        assert line.startswith(f"mailgate: error: message store {data / 'mail.db'} is damaged:")
        assert f" {TARGETS[target]}" in line, line
        # Put back: it starts, takes mail, is ready, and lost no acknowledged message.
        pages.repair()
    finally:
        pages.close()
    served = serve(launcher, data, "--workers", workers)
    assert readyz(served).status_code == 200
    assert send(served.port, "after") == "250"
    listed = listed_subjects(served)
    assert acknowledged | {"after"} <= listed, acknowledged - listed
    served.stop_cleanly()


def damage_offline(database: Path, name: str) -> None:
    """Overwrite the root page of ``name`` with garbage, the server stopped."""
    with contextlib.closing(sqlite3.connect(database)) as connection:
        (root,) = connection.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = ?", (name,)
        ).fetchone()
        (size,) = connection.execute("PRAGMA page_size").fetchone()
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with database.open("r+b") as file:
        file.seek((root - 1) * size)
        file.write(random.Random(root).randbytes(size))


def unlist_offline(database: Path, name: str) -> None:
    """Take ``name`` out of the schema, its pages left behind (``PRAGMA writable_schema``)."""
    with contextlib.closing(sqlite3.connect(database, isolation_level=None)) as connection:
        connection.execute("PRAGMA writable_schema = ON")
        connection.execute("DELETE FROM sqlite_master WHERE name = ?", (name,))
        (version,) = connection.execute("PRAGMA schema_version").fetchone()
        connection.execute(f"PRAGMA schema_version = {version + 1}")


@pytest.mark.parametrize(
    ("damage", "name", "said"),
    [
        (damage_offline, "sqlite_autoindex_messages_1", "index sqlite_autoindex_messages_1 of"
         " table messages (Page {root}: btreeInitPage() returns error code 11)"),
        (damage_offline, "bodies", "table bodies"),
        (damage_offline, "changes", "table changes"),
        (damage_offline, "deliveries_due", "index deliveries_due of table deliveries"),
        (unlist_offline, "bodies", "table bodies is missing"),
        (unlist_offline, "changes", "table changes is missing"),
    ],
)  # fmt: skip
def test_a_store_damaged_while_stopped_is_refused_at_start_in_one_line(
    launcher: Launcher, tmp_path: Path, damage: Callable[[Path, str], None], name: str, said: str
) -> None:
    data = tmp_path / "data"
    served = serve(launcher, data)
    assert {send(served.port, f"before {n}") for n in range(20)} == {"250"}
    served.stop_cleanly()
    database = data / "mail.db"
    with contextlib.closing(sqlite3.connect(database)) as connection:
        (root,) = connection.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = ?", (name,)
        ).fetchone()
    damage(database, name)
    status, stderr = refused_start(data)
    assert status == 1
    [line] = stderr.splitlines()
    assert line.startswith(f"mailgate: error: message store {database} is damaged: "), line
    assert said.format(root=root) in line, line
    assert line.endswith("restore it from a backup, or recover its mail with sqlite3's .recover")


def test_pages_no_table_uses_are_logged_and_the_server_starts(
    launcher: Launcher, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    served = serve(launcher, data)
    assert send(served.port, "before") == "250"
    served.stop_cleanly()
    unlist_offline(data / "mail.db", "tags_by_tag")  # an index: the store does without
    served = serve(launcher, data)
    assert readyz(served).status_code == 200
    assert send(served.port, "after") == "250"
    log = served.stop_cleanly()
    assert re.search(r"ERROR mailgate: \S+mail\.db has 1 pages that no table uses", log), log


def fill(ballast: Path, leave: int = 0) -> None:
    """Fill the file system with ``ballast``, then give ``leave`` octets back."""
    with ballast.open("wb") as file, contextlib.suppress(OSError):
        while True:
            file.write(b"\0" * 65536)
            file.flush()
    if leave:
        os.truncate(ballast, ballast.stat().st_size - leave)


def test_a_full_disk_fails_readyz_until_space_is_freed(
    launcher: Launcher,
    small_disk: Path,  # noqa: F811 - the fixture imported above
) -> None:
    served = serve(launcher, small_disk / "data", "--min-free-space", "8K")
    assert send(served.port, "before") == "250"
    assert readyz(served).status_code == 200
    ballast = small_disk / "ballast"
    # Under the floor: MAIL gets 452, and /readyz says why.
    fill(ballast)
    unready = readyz(served)
    assert unready.status_code == 503
    body = unready.json()
    assert (body["failed"], body["checks"]["commits"]) == ("disk", "ok"), body
    assert re.fullmatch(
        rf"\d+ bytes free in {small_disk}/data/spool, under the floor of 8\.2 kB:"
        r" MAIL gets 452 4\.3\.1",
        body["error"],
    ), body
    with smtplib.SMTP("127.0.0.1", served.port, timeout=TIMEOUT) as client:
        client.ehlo()
        assert client.mail("a@example.org")[0] == 452
    ballast.unlink()
    assert readyz(served).status_code == 200
    # Over the floor, but too little room for the message a commit writes.  The room left
    # is four times the floor: the store may take a little meanwhile (its journal).
    fill(ballast, leave=32 * 1024)
    assert readyz(served).status_code == 200, readyz(served).json()
    big = "x" * 76 + "\r\n"
    refused = send(served.port, "too big for the room left\r\n\r\n" + big * 1150)
    # 452 4.3.1 when what the commit wrote before it failed took the room left under the floor.
    assert refused.startswith(("451 4.3.0", "452 4.3.1")), refused
    unready = readyz(served)
    assert unready.status_code == 503
    body = unready.json()
    assert body["failed"] == "commits", body
    assert "database or disk is full" in body["error"], body
    print(f"\nfull disk: {refused}; /readyz {body['checks']}")
    # Room again: the next commit goes through, and /readyz is 200 by itself.
    ballast.unlink()
    assert send(served.port, "after") == "250"
    assert readyz(served).status_code == 200
    assert listed_subjects(served) == {"before", "after"}
    served.stop_cleanly()


_DISK_FULL = """
CREATE FUNCTION mailgate_test_fault() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'disk_full',
        MESSAGE = 'could not extend file "base/1/2": No space left on device';
END $$
"""


def test_failing_commits_on_postgresql_fail_readyz_until_one_succeeds(
    launcher: Launcher, tmp_path: Path
) -> None:
    psycopg = pytest.importorskip("psycopg", reason="PostgreSQL stores need psycopg")
    from postgresql_helpers import fresh_database  # noqa: PLC0415 - needs psycopg

    with fresh_database() as store:
        served = serve(launcher, tmp_path / "data", "--store", store)
        assert send(served.port, "before") == "250"
        assert readyz(served).status_code == 200
        # The database's disk fills up: it answers reads, and refuses every write.
        with psycopg.connect(store, autocommit=True) as database:
            database.execute(_DISK_FULL)
            database.execute(
                "CREATE TRIGGER fault BEFORE INSERT ON contents"
                " FOR EACH ROW EXECUTE FUNCTION mailgate_test_fault()"
            )
            refused = send(served.port, "refused")
            assert refused == "452 4.3.1 Insufficient system storage", refused
            unready = readyz(served)
            assert unready.status_code == 503
            body = unready.json()
            assert (body["failed"], body["checks"]["store"]) == ("commits", "ok"), body
            assert "No space left on device" in body["error"], body
            database.execute("DROP TRIGGER fault ON contents")
        assert send(served.port, "after") == "250"
        assert readyz(served).status_code == 200
        assert listed_subjects(served) == {"before", "after"}
        served.stop_cleanly()
