"""Retention as a user runs it: ``mailgate serve --max-messages`` and ``--max-age`` prune the
oldest messages, their body files and search entries, tell the live inbox, count them in
``/api/v1/info``, and spare mail still queued for delivery; the defaults (5,000 in catch-all
mode, nothing pruned for real domains) and the settings' errors."""

from __future__ import annotations

import json
import re
import smtplib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from config_helpers import error_of, load
from loopback import DnsZone, ReceivingMTAs, mta_for, relay_flags
from mailgate.config import CATCH_ALL_MAX_MESSAGES
from postgresql_helpers import fresh_database
from process_helpers import TIMEOUT, Launcher, Serving, inbox, mailgate, mailgate_queue, until

INLINE_LIMIT_OCTETS = 96 * 1024
"""Content past this is kept in a body file by the SQLite store (MAX_INLINE_CONTENT_OCTETS)."""
PRUNED = re.compile(r"retention: pruned (\d+) messages?,")


def message(subject: str, size: int = 0) -> bytes:
    """A message of about ``size`` octets more than its few headers."""
    filler = b"".join(b"%08d filler line of a large message\r\n" % n for n in range(size // 40))
    head = f"From: a@example.com\r\nTo: b@example.org\r\nSubject: {subject}\r\n\r\nHi.\r\n"
    return head.encode() + filler


def send_all(
    served: Serving, contents: list[bytes], to: str = "b@example.org", sender: str = "a@example.com"
) -> list[str]:
    """Send each message on one connection; the ids the ``250`` replies name."""
    ids = []
    with smtplib.SMTP("127.0.0.1", served.port, timeout=TIMEOUT) as client:
        client.ehlo()
        for content in contents:
            assert client.mail(sender)[0] == 250
            assert client.rcpt(to)[0] == 250
            code, text = client.data(content)
            assert code == 250, text
            ids.append(text.decode().rsplit(" ", 1)[-1])
    return ids


def listed(served: Serving) -> list[str]:
    return [m["ID"] for m in inbox(served)]


def pruned_in_log(served: Serving) -> int:
    return sum(int(count) for count in PRUNED.findall(served.stderr()))


def events(served: Serving) -> Iterator[dict[str, Any]]:
    """The ``/api/v1/events`` stream from its ``ready`` event on (which it waits for)."""
    with (
        httpx.Client(base_url=served.http_url, timeout=TIMEOUT) as http,
        http.stream("GET", "/api/v1/events") as stream,
    ):
        lines = stream.iter_lines()
        for line in lines:
            if line.startswith("data: "):
                yield json.loads(line.removeprefix("data: "))


@pytest.mark.parametrize("workers", ["1", "2"])
def test_max_messages_keeps_the_newest_and_the_inbox_sees_the_rest_go(
    launcher: Launcher, tmp_path: Path, workers: str
) -> None:
    """With SMTP workers the serving process alone prunes, told of their mail by the store."""
    data = tmp_path / "data"
    served = launcher.serve(
        "--smtp", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data", str(data),
        "--max-messages", "50", "--workers", workers,
    )  # fmt: skip
    stream = events(served)
    assert next(stream)["type"] == "ready"
    # Every third message is large enough for a body file of its own.
    contents = [
        message(f"m{n}", INLINE_LIMIT_OCTETS + 1024 if n % 3 == 0 else 0) for n in range(120)
    ]
    ids = send_all(served, contents)
    kept, gone = ids[70:], ids[:70]
    until(lambda: listed(served) == kept[::-1], "the API lists exactly the newest 50")
    bodies = data / "mail.db-bodies"
    # The kept large ones only: a pruned message's body file goes just after the
    # transaction that deleted its row committed, so a moment after the listing changed.
    large_kept = {f"{ids[n]}.eml" for n in range(72, 120, 3)}
    until(
        lambda: {path.name for path in bodies.iterdir()} == large_kept,
        "only the kept messages' body files are left",
    )
    deleted: set[str] = set()
    for event in stream:
        if event["type"] == "deleted":
            deleted.update(event["ids"])
        if deleted >= set(gone):
            break
    stream.close()
    assert deleted == set(gone)
    info = httpx.get(f"{served.http_url}api/v1/info", timeout=TIMEOUT).json()
    assert (info["Messages"], info["RuntimeStats"]["MessagesDeleted"]) == (50, 70)
    search = httpx.get(f"{served.http_url}api/v1/search?query=subject:m1", timeout=TIMEOUT).json()
    assert {m["Subject"] for m in search["messages"]} == {
        f"m{n}" for n in range(70, 120) if str(n).startswith("1")
    }
    log = served.stop_cleanly()
    assert "retention: keeping the newest 50 messages; older ones are deleted" in log
    assert pruned_in_log(served) == 70


def test_max_age_prunes_what_is_older(launcher: Launcher, tmp_path: Path) -> None:
    served = launcher.serve(
        "--smtp", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data", str(tmp_path / "data"),
        "--max-age", "3s",
    )  # fmt: skip
    first = send_all(served, [message(f"early {n}") for n in range(5)])
    assert sorted(listed(served)) == sorted(first)  # not three seconds old yet
    until(lambda: not listed(served), "the first messages are three seconds old and gone")
    later = send_all(served, [message("late")])
    assert listed(served) == later
    log = served.stop_cleanly()
    assert "retention: keeping the newest 5000 messages, none older than 3s" in log
    assert pruned_in_log(served) >= 5


def test_catch_all_keeps_5000_by_default_and_a_mail_server_everything(
    launcher: Launcher, tmp_path: Path
) -> None:
    catch_all = launcher.serve(
        "--smtp", "127.0.0.1:0", "--no-http", "--data", str(tmp_path / "catch-all")
    )  # fmt: skip
    log = catch_all.stop_cleanly()
    assert f"retention: keeping the newest {CATCH_ALL_MAX_MESSAGES} messages;" in log
    server = launcher.serve(
        "--smtp", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data", str(tmp_path / "mx"),
        "--domain", "here.test",
    )  # fmt: skip
    ids = send_all(server, [message(f"m{n}") for n in range(3)], to="bob@here.test")
    assert sorted(listed(server)) == sorted(ids)
    log = server.stop_cleanly()
    assert "retention" not in log


def test_the_settings_of_retention(tmp_path: Path) -> None:
    assert load({}, {}, "", tmp_path).messages_kept == 5000
    assert load({"domain": ["here.test"]}, {}, "", tmp_path).messages_kept == 0
    assert load({"max_messages": "0"}, {}, "", tmp_path).messages_kept == 0
    chosen = load(
        {"domain": ["here.test"], "max_messages": "20"},
        {"MAILGATE_MAX_MESSAGES": "30", "MAILGATE_MAX_AGE": "12h"},
        '[retention]\nmax_messages = 40\nmax_age = "7d"\n',
        tmp_path,
    )
    assert (chosen.messages_kept, chosen.retention.max_age) == (20, 12 * 3600)
    from_file = load({}, {}, '[retention]\nmax_messages = 40\nmax_age = "7d"\n', tmp_path)
    assert (from_file.messages_kept, from_file.retention.max_age) == (40, 7 * 86400)


@pytest.mark.parametrize(
    ("argv", "environ", "toml", "error"),
    [
        ({"max_messages": "-1"}, {}, "", "--max-messages: '-1' is not a whole number"),
        ({"max_messages": "lots"}, {}, "", "--max-messages: 'lots' is not a whole number"),
        ({}, {"MAILGATE_MAX_AGE": "a week"}, "", "MAILGATE_MAX_AGE: 'a week' is not a duration"),
        ({}, {}, "[retention]\nmax_age = -5\n", "retention.max_age in "),
        ({}, {}, "[retention]\nmax_message = 5\n", "did you mean max_messages?"),
    ],
)
def test_a_wrong_retention_setting_is_one_line_naming_its_key(
    argv: dict[str, object], environ: dict[str, str], toml: str, error: str, tmp_path: Path
) -> None:
    assert error in error_of(argv, environ, toml, tmp_path)


def test_the_command_line_names_the_wrong_key(tmp_path: Path) -> None:
    done = mailgate("serve", "--max-age", "soon", "--data", str(tmp_path / "d"), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "mailgate: error: --max-age: 'soon' is not a duration: give seconds, or use s, m, h or d"
    ]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="DNS on 127.0.0.0/8 addresses")
def test_mail_still_queued_for_delivery_is_not_pruned(
    launcher: Launcher,
    tmp_path: Path,
    dns_zone: Callable[[], DnsZone],
    receiving_mta: ReceivingMTAs,
) -> None:
    zone = dns_zone()
    mta_for(zone, receiving_mta, "busy.test", replies={"dan@busy.test": "450 4.2.1 Busy"})
    served = launcher.serve(
        "--smtp", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data", str(tmp_path / "data"),
        *relay_flags(zone, receiving_mta), "--max-messages", "3",
    )  # fmt: skip

    alice = "alice@here.test"
    (onward,) = send_all(served, [message("onward")], to="dan@busy.test", sender=alice)
    until(
        lambda: [r for r in mailgate_queue(tmp_path, "list", "--json") if r["State"] == "deferred"],
        "the recipient is deferred",
    )
    local = send_all(served, [message(f"local {n}") for n in range(6)], to="bob@here.test")
    until(lambda: listed(served) == [*local[:2:-1], onward], "the newest 3 and the queued one")
    until(lambda: pruned_in_log(served) == 3, "the log counts the 3 pruned")
    assert mailgate_queue(tmp_path, "bounce", onward) == "bounce: 1 recipient\n"
    # The bounce report to alice is new mail; the message it reports on is done, and goes.

    def without_onward() -> list[str] | None:
        ids = listed(served)
        return ids if onward not in ids else None

    newest = until(without_onward, "the reported message goes")
    assert len(newest) == 3
    assert newest[1:] == local[:2:-1][:2]
    report = httpx.get(f"{served.http_url}api/v1/message/{newest[0]}", timeout=TIMEOUT).json()
    assert report["From"]["Address"].startswith("MAILER-DAEMON")
    served.stop_cleanly()


NODE = ("--smtp", "127.0.0.1:0", "--http", "127.0.0.1:0", "--max-messages", "20")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="real processes")
def test_two_nodes_on_one_postgresql_prune_each_message_once(
    launcher: Launcher, tmp_path: Path
) -> None:
    with fresh_database() as store:
        nodes = [
            launcher.serve(*NODE, "--data", str(tmp_path / name), "--store", store)
            for name in ("a", "b")
        ]
        sent = [send_all(served, [message(f"{n}") for n in range(30)]) for served in nodes]
        # Ids of two nodes sort by time: the 20 newest are the last ones sent, B's.
        until(lambda: listed(nodes[0]) == sent[1][:9:-1], "A lists the 20 newest")
        assert listed(nodes[1]) == sent[1][:9:-1]
        until(lambda: sum(pruned_in_log(served) for served in nodes) == 40, "40 pruned")
        for served in nodes:
            served.stop_cleanly()
        assert sum(pruned_in_log(served) for served in nodes) == 40
