"""``mailgate queue``: list, show, retry, hold, release, delete and bounce, as an operator types
them, against a store holding queued mail."""

from __future__ import annotations

import asyncio
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mailgate.cli import main
from mailgate.delivery import Acceptor, DeliverySettings
from mailgate.model import DeliveryOutcome, DeliveryState, Envelope, MessageId
from mailgate.stores import SQLiteStore
from mailgate.testing.stores import make_message

NOW = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _no_mailgate_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in [n for n in os.environ if n.startswith("MAILGATE_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def queue_two(data: Path) -> tuple[MessageId, MessageId]:
    """Two relayed messages: one to two recipients (one deferred with a reply), one to one."""

    async def go() -> tuple[MessageId, MessageId]:
        data.mkdir()
        store = SQLiteStore(data / "mail.db")
        acceptor = Acceptor(store, DeliverySettings(hostname="mx.test", spool_dir=data / "spool"))
        ids = []
        try:
            for recipients in (("a@far.test", "b@far.test"), ("c@else.test",)):
                envelope = Envelope(
                    mail_from="me@here.test",
                    rcpt_to=recipients,
                    received_at=NOW,
                    outbound=recipients,
                )
                spool = acceptor.begin(envelope)
                spool.write(make_message())
                ids.append(await acceptor.commit(spool))
            claimed = await store.claim("runner", now=NOW, lease=timedelta(minutes=2), limit=1)
            assert {r.recipient for r in claimed} == {"a@far.test", "b@far.test"}
            await store.record(
                "runner",
                [
                    DeliveryOutcome(
                        ids[0],
                        "b@far.test",
                        DeliveryState.DEFERRED,
                        NOW,
                        "450 4.2.1 Mailbox busy",
                        "mx.far.test[127.0.0.2]:25",
                        NOW.replace(year=2030),
                    )
                ],
            )
            await store.release_claims("runner")
        finally:
            acceptor.close()
            await store.aclose()
        return ids[0], ids[1]

    return asyncio.run(go())


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_list_and_show_as_a_table_and_as_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = queue_two(tmp_path / "box")
    status, out, _ = run(capsys, "queue", "list", "--data", str(tmp_path / "box"))
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split() == [
        "ID",
        "RECIPIENT",
        "STATE",
        "TRIES",
        "NEXT",
        "ATTEMPT",
        "LAST",
        "REPLY",
    ]
    assert len(lines) == 4
    busy = next(line for line in lines if "b@far.test" in line)
    assert busy.startswith(first)
    assert "deferred" in busy
    assert busy.endswith("450 4.2.1 Mailbox busy")
    status, out, _ = run(capsys, "queue", "list", "--json", "--data", str(tmp_path / "box"))
    rows = json.loads(out)
    assert {(r["MessageID"], r["Recipient"], r["State"]) for r in rows} == {
        (first, "a@far.test", "queued"),
        (first, "b@far.test", "deferred"),
        (second, "c@else.test", "queued"),
    }
    deferred = next(r for r in rows if r["Recipient"] == "b@far.test")
    assert deferred["Attempts"] == 1
    assert deferred["NextAttempt"].startswith("2030-12-01T08:00:00")
    assert deferred["LastReply"] == "450 4.2.1 Mailbox busy"
    assert deferred["Relay"] == "mx.far.test[127.0.0.2]:25"
    status, out, _ = run(capsys, "queue", "show", second, "--data", str(tmp_path / "box"))
    assert status == 0
    assert "c@else.test" in out
    assert "a@far.test" not in out


def test_hold_release_retry_delete_and_bounce(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = queue_two(tmp_path / "box")
    data = ("--data", str(tmp_path / "box"))

    def states() -> dict[str, str]:
        _, out, _ = run(capsys, "queue", "show", first, "--json", *data)
        return {r["Recipient"]: r["State"] for r in json.loads(out)}

    assert run(capsys, "queue", "hold", first, *data)[:2] == (0, "hold: 2 recipients\n")
    assert states() == {"a@far.test": "held", "b@far.test": "held"}
    status, _, err = run(capsys, "queue", "hold", first, *data)
    assert (status, err) == (1, f"mailgate: error: no waiting recipient of {first} to hold\n")
    assert run(capsys, "queue", "release", first, *data)[:2] == (0, "release: 2 recipients\n")
    assert states() == {"a@far.test": "queued", "b@far.test": "deferred"}
    assert run(capsys, "queue", "retry", "--all", *data)[:2] == (0, "retry: 3 recipients\n")
    _, out, _ = run(capsys, "queue", "list", "--json", *data)
    assert all(datetime.fromisoformat(r["NextAttempt"]).year < 2030 for r in json.loads(out))
    assert run(capsys, "queue", "bounce", first, *data)[:2] == (0, "bounce: 2 recipients\n")
    assert run(capsys, "queue", "delete", second, *data)[:2] == (0, "delete: 1 recipient\n")
    _, out, _ = run(capsys, "queue", "list", *data)
    assert second not in out
    status, _, err = run(capsys, "queue", "show", "01NOSUCHMESSAGE00000000000", *data)
    assert status == 1
    assert "no queued message" in err


def test_queue_needs_an_action_and_an_id(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "queue")
    assert status == 2
    assert "ACTION" in err
    status, _, err = run(capsys, "queue", "retry")
    assert status == 2
    assert "one of the arguments ID --all is required" in err
