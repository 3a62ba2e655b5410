"""The accept path: spools, commit through a real SQLite store, bounded memory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

from mailgate.delivery import Acceptor, DeliverySettings, SpoolClosedError
from mailgate.delivery._accept import FREE_SPACE_LOOK_SECONDS, FREE_SPACE_MARGIN_OCTETS
from mailgate.stores import SQLiteStore
from mailgate.testing.stores import StepClock, make_envelope, make_message

MIB = 1024 * 1024


def acceptor(store: SQLiteStore, tmp_path: Path) -> Acceptor:
    return Acceptor(
        store, DeliverySettings(hostname="mx.test", spool_dir=tmp_path / "spool"), clock=StepClock()
    )


@pytest.mark.asyncio
async def test_trace_header_comes_first_and_size_counts_it(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "mail.db")
    try:
        sink = acceptor(store, tmp_path)
        spool = sink.begin(make_envelope())
        header_size = spool.size
        assert header_size > 0
        content = make_message()
        spool.write(content)
        assert spool.size == header_size + len(content)
        message_id = await sink.commit(spool)
        raw = await store.raw(message_id)
        assert raw is not None
        assert raw.startswith(
            b"Return-Path: <sender@client.test>\r\n"
            b"Received: from client.test ([192.0.2.7])\r\n\tby mx.test"
        )
        assert raw[header_size:] == content
        with pytest.raises(SpoolClosedError):
            spool.write(b"more")
        with pytest.raises(SpoolClosedError):
            await sink.commit(spool)
    finally:
        await store.aclose()


@pytest.mark.asyncio
async def test_discarded_spool_leaves_nothing(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "mail.db")
    try:
        sink = acceptor(store, tmp_path)
        spool = sink.begin(make_envelope())
        spool.write(b"x" * (300 * 1024))  # past the threshold: on disk now
        assert list((tmp_path / "spool").glob("*.spool"))
        spool.discard()
        spool.discard()
        assert list((tmp_path / "spool").glob("*.spool")) == []
        with pytest.raises(SpoolClosedError):
            await sink.commit(spool)
        assert (await store.list()).total == 0
    finally:
        await store.aclose()


@pytest.mark.asyncio
async def test_unparseable_message_is_still_stored(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "mail.db")
    try:
        sink = acceptor(store, tmp_path)
        spool = sink.begin(make_envelope())
        garbage = b"\x00\xff: \r\n\r\r\n\n--\x80=?x?y?z?=\r\n" * 50
        spool.write(garbage)
        message_id = await sink.commit(spool)
        raw = await store.raw(message_id)
        assert raw is not None
        assert raw.endswith(garbage)
    finally:
        await store.aclose()


@pytest.mark.asyncio
async def test_a_nodes_acceptor_names_the_node_on_each_envelope(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "mail.db")
    try:
        settings = DeliverySettings(hostname="mx.test", spool_dir=tmp_path / "spool", node="n1")
        sink = Acceptor(store, settings, clock=StepClock())
        spool = sink.begin(make_envelope())
        spool.write(make_message())
        stored = await store.get(await sink.commit(spool))
        assert stored is not None
        assert stored.envelope.node == "n1"
    finally:
        await store.aclose()


@pytest.fixture
def looks(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Each path ``os.statvfs`` is asked about from now on (it still answers)."""
    seen: list[object] = []
    real_statvfs = os.statvfs

    def statvfs(path: str | os.PathLike[str]) -> os.statvfs_result:
        seen.append(path)
        return real_statvfs(path)

    monkeypatch.setattr(os, "statvfs", statvfs)
    return seen


@pytest.mark.asyncio
async def test_a_look_at_plenty_of_free_space_stands_for_a_moment(
    tmp_path: Path, looks: list[object]
) -> None:
    free = shutil.disk_usage(tmp_path).free
    if free < 4 * FREE_SPACE_MARGIN_OCTETS:
        pytest.skip(f"{free} octets free in {tmp_path}: too near the margin to tell")
    store = SQLiteStore(tmp_path / "mail.db")
    try:
        settings = DeliverySettings(
            hostname="mx.test", spool_dir=tmp_path / "spool", min_free_space=1024
        )
        sink = Acceptor(store, settings)
        looks.clear()  # the store's own, as it opened
        assert sink.has_room(10_000)
        assert sink.has_room(20_000)
        assert sink.has_room()
        assert len(looks) == 1
        # Asked for nearly all there is, or more: within the margin, so it looks every time.
        assert sink.has_room(free - FREE_SPACE_MARGIN_OCTETS // 2)
        assert not sink.has_room(free * 2)
        assert not sink.has_room(free * 2)
        assert len(looks) == 4
        # The look goes stale: the next call looks again, even with plenty of room.
        time.sleep(FREE_SPACE_LOOK_SECONDS + 0.05)
        assert sink.has_room(10_000)
        assert len(looks) == 5
    finally:
        await store.aclose()


@pytest.mark.asyncio
async def test_near_the_floor_every_sender_looks(tmp_path: Path, looks: list[object]) -> None:
    free = shutil.disk_usage(tmp_path).free
    store = SQLiteStore(tmp_path / "mail.db")
    try:
        # The floor leaves less than the margin above it: no look is taken as read.
        floor = max(free - FREE_SPACE_MARGIN_OCTETS // 2, 1)
        settings = DeliverySettings(
            hostname="mx.test", spool_dir=tmp_path / "spool", min_free_space=floor
        )
        sink = Acceptor(store, settings)
        looks.clear()
        for _ in range(3):
            sink.has_room(1)
        assert len(looks) == 3
    finally:
        await store.aclose()


@pytest.mark.asyncio
async def test_50_mb_message_never_sits_in_memory(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "mail.db")
    try:
        sink = acceptor(store, tmp_path)
        head = (
            b"From: a@client.test\r\nSubject: big\r\nContent-Type: multipart/mixed; boundary=b\r\n"
            b"\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
            b"--b\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Disposition: attachment; filename=big.bin\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n"
        )
        chunk = (
            b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAx\r\n" * 800
        )
        chunks = 50 * MIB // len(chunk) + 1
        tail = b"--b--\r\n"
        tracemalloc.start()
        try:
            spool = sink.begin(make_envelope())
            spool.write(head)
            for _ in range(chunks):
                spool.write(chunk)
            spool.write(tail)
            size = spool.size
            message_id = await sink.commit(spool)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert size > 50 * MIB
        assert peak < 4 * MIB, f"peak {peak / MIB:.1f} MiB"
        stored = await store.get(message_id)
        assert stored is not None
        assert (stored.summary.size, stored.summary.attachments) == (size, 1)
        assert stored.summary.snippet == "see attached"
        assert list((tmp_path / "spool").glob("*.spool")) == []
        body_file = store.bodies / f"{message_id}.eml"
        assert body_file.stat().st_size == size
        with body_file.open("rb") as reader:
            reader.seek(size - len(tail))
            assert reader.read() == tail
    finally:
        await store.aclose()


@pytest.mark.asyncio
async def test_spool_files_a_crash_left_are_swept_when_no_one_else_receives(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    (spool_dir / "01LEFTBYACRASH0000000000000.spool").write_bytes(b"half a message")
    (spool_dir / "notes.txt").write_bytes(b"not ours")
    store = SQLiteStore(tmp_path / "mail.db")
    try:
        first = acceptor(store, tmp_path)
        assert sorted(p.name for p in spool_dir.iterdir()) == [".lock", "notes.txt"]
        assert "removed 1 spool files an earlier process left" in caplog.text
        # While `first` receives, another acceptor (another process) must not touch its files.
        spool = first.begin(make_envelope())
        spool.write(b"x" * (300 * 1024))  # past the memory threshold: now a file
        in_flight = {p.name for p in spool_dir.glob("*.spool")}
        assert len(in_flight) == 1
        second = acceptor(store, tmp_path)
        assert {p.name for p in spool_dir.glob("*.spool")} == in_flight
        message_id = await first.commit(spool)
        assert await store.get(message_id) is not None
        second.close()
        # Once no acceptor holds the directory, the next one sweeps it again.
        (spool_dir / "01LEFTBYACRASH1111111111111.spool").write_bytes(b"")
        first.close()
        first.close()  # harmless twice
        third = acceptor(store, tmp_path)
        assert list(spool_dir.glob("*.spool")) == []
        third.close()
    finally:
        await store.aclose()


@pytest.mark.asyncio
async def test_an_acceptor_started_beside_others_removes_the_files_of_gone_processes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool_dir = tmp_path / "spool"
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    store = SQLiteStore(tmp_path / "mail.db")
    try:
        first = acceptor(store, tmp_path)
        spool = first.begin(make_envelope())
        spool.write(b"x" * (300 * 1024))  # past the memory threshold: now a file
        (receiving,) = (p.name for p in spool_dir.glob("*.spool"))
        assert receiving.endswith(f".{os.getpid()}.spool")
        left = {
            "dead": f"01DEADWORKER00000000000000.{exited.pid}.spool",
            "older release": "01OLDERRELEASE000000000000.spool",
            "no process id": f"01NOTAPID00000000000000000.{'9' * 40}.spool",
        }
        for name in left.values():
            (spool_dir / name).write_bytes(b"half a message")
        # Another process starts while `first` receives: it removes only the dead one's file.
        second = acceptor(store, tmp_path)
        assert {p.name for p in spool_dir.glob("*.spool")} == {
            receiving,
            left["older release"],
            left["no process id"],
        }
        assert "removed 1 spool files an earlier process left" in caplog.text
        message_id = await first.commit(spool)
        assert await store.get(message_id) is not None
        second.close()
        first.close()
    finally:
        await store.aclose()
