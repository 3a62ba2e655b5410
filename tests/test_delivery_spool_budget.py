"""The spool budget: what all of an acceptor's spools hold in memory together.

Real spools from a real acceptor, committed to a real SQLite store.  Past
the budget a spool goes to a file at once, a new one with its trace header;
the budget comes back when a spool rolls over, is discarded, or is released
after its commit; and the message stored is the same either way.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest
import pytest_asyncio

from mailgate.config import ConfigError, Limits, load_settings
from mailgate.delivery import Acceptor, DeliverySettings, MemoryThresholdSpool
from mailgate.stores import SQLiteStore
from mailgate.testing.stores import StepClock, make_envelope, make_message

KIB = 1024
MIB = 1024 * KIB
BUDGET = 64 * KIB
HEADER = b"Subject: budget\r\n\r\n"
"""What a test writes first: the header ends, so every later octet reaches the spool as written."""


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    opened = SQLiteStore(tmp_path / "mail.db")
    try:
        yield opened
    finally:
        await opened.aclose()


def acceptor(
    store: SQLiteStore, tmp_path: Path, *, budget: int = BUDGET, threshold: int = 256 * KIB
) -> Acceptor:
    settings = DeliverySettings(
        hostname="mx.test",
        spool_dir=tmp_path / "spool",
        memory_threshold=threshold,
        spool_memory=budget,
    )
    return Acceptor(store, settings, clock=StepClock())


def begin(sink: Acceptor) -> MemoryThresholdSpool:
    spool = sink.begin(make_envelope())
    assert isinstance(spool, MemoryThresholdSpool)
    spool.write(HEADER)
    return spool


def spool_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "spool").glob("*.spool"))


@pytest.mark.asyncio
async def test_spools_past_the_budget_go_to_a_file_at_once(
    store: SQLiteStore, tmp_path: Path
) -> None:
    sink = acceptor(store, tmp_path)
    budget = sink.spool_budget
    first = begin(sink)
    opened = first.size  # the trace header and HEADER
    assert (budget.limit, budget.held) == (BUDGET, opened)
    first.write(b"a" * (BUDGET - 2 * opened))  # room left for one more opened spool
    second = begin(sink)
    assert second.size == opened
    assert (first.path, second.path, budget.free) == (None, None, 0)
    assert spool_files(tmp_path) == []
    third = sink.begin(make_envelope())  # no room even for its trace header: a file now
    assert isinstance(third, MemoryThresholdSpool)
    assert third.path is not None
    assert third.content is None
    assert budget.free == 0
    second.write(b"b")  # one octet past the budget: to a file, what it held and all
    assert second.path is not None
    assert budget.held == BUDGET - opened
    assert len(spool_files(tmp_path)) == 2
    first.write(b"c" * opened)  # a spool in memory grows into the room given back
    assert (first.path, budget.free) == (None, 0)
    for spool in (first, second, third):
        spool.discard()
    assert budget.held == 0
    assert spool_files(tmp_path) == []


@pytest.mark.asyncio
async def test_the_budget_comes_back_on_roll_over_discard_and_commit(
    store: SQLiteStore, tmp_path: Path
) -> None:
    sink = acceptor(store, tmp_path, threshold=16 * KIB)
    budget = sink.spool_budget
    rolled, discarded, committed = begin(sink), begin(sink), begin(sink)
    for spool in (rolled, discarded, committed):
        spool.write(b"x" * (8 * KIB))
    assert budget.held == rolled.size + discarded.size + committed.size
    rolled.write(b"x" * (8 * KIB))  # past one spool's threshold: to its file
    assert rolled.path is not None
    assert budget.held == discarded.size + committed.size
    discarded.discard()
    assert budget.held == committed.size
    await sink.commit(committed)
    assert budget.held == 0
    rolled.discard()
    discarded.discard()  # again: nothing more comes back
    assert (budget.held, budget.free) == (0, BUDGET)
    assert spool_files(tmp_path) == []


@pytest.mark.asyncio
async def test_a_spool_that_cannot_reach_its_file_gives_its_share_back(
    store: SQLiteStore, tmp_path: Path
) -> None:
    sink = acceptor(store, tmp_path)
    spool = begin(sink)
    assert sink.spool_budget.held == spool.size
    shutil.rmtree(tmp_path / "spool")  # nowhere to roll over to
    spool.write(b"x" * BUDGET)
    assert isinstance(spool.failure, FileNotFoundError)
    assert sink.spool_budget.held == 0
    spool.discard()
    assert sink.spool_budget.held == 0


@pytest.mark.asyncio
async def test_a_message_is_stored_the_same_in_memory_or_on_file(
    store: SQLiteStore, tmp_path: Path
) -> None:
    sink = acceptor(store, tmp_path)
    message = make_message("same", b"line of the body\r\n" * 1500)  # some 27 KiB
    halves = (message[: len(message) // 2], message[len(message) // 2 :])

    in_memory = sink.begin(make_envelope())
    for half in halves:
        in_memory.write(half)
    assert in_memory.path is None
    # The budget runs out between the halves: this one rolls over part-way.
    holder = begin(sink)
    part_way = sink.begin(make_envelope())
    part_way.write(halves[0])
    assert part_way.path is None
    holder.write(b"h" * (sink.spool_budget.free - 1))
    part_way.write(halves[1])
    assert part_way.path is not None
    # None of it left: this one is on file from its trace header on.
    holder.write(b"h" * sink.spool_budget.free)
    on_file = sink.begin(make_envelope())
    assert on_file.path is not None
    for half in halves:
        on_file.write(half)

    [size] = {spool.size for spool in (in_memory, part_way, on_file)}
    for spool in (in_memory, part_way, on_file):
        raw = await store.raw(await sink.commit(spool))
        assert raw is not None
        assert raw.startswith(b"Return-Path: <sender@client.test>\r\nReceived: ")
        assert raw.endswith(b"\r\n" + message)
        assert len(raw) == size
    holder.discard()
    assert sink.spool_budget.held == 0
    assert spool_files(tmp_path) == []


@pytest.mark.asyncio
async def test_a_budget_of_0_has_no_limit(store: SQLiteStore, tmp_path: Path) -> None:
    sink = acceptor(store, tmp_path, budget=0)
    spools = [begin(sink) for _ in range(40)]
    for spool in spools:
        spool.write(b"x" * (200 * KIB))
    assert all(spool.path is None for spool in spools)
    assert sink.spool_budget.held == sum(spool.size for spool in spools) > 100 * BUDGET
    for spool in spools:
        spool.discard()
    assert sink.spool_budget.held == 0


# -- the setting -------------------------------------------------------------------------------


def test_the_default_is_64_mib_a_process_in_settings_and_acceptor(tmp_path: Path) -> None:
    assert Limits().spool_memory == 64 * MIB
    delivery = DeliverySettings(hostname="mx.test", spool_dir=tmp_path)
    assert delivery.spool_memory == Limits().spool_memory


def test_spool_memory_from_each_source(tmp_path: Path) -> None:
    config = tmp_path / "mailgate.toml"
    config.write_text('[limits]\nspool_memory = "1G"\n', encoding="utf-8")

    def spool_memory(
        argv: Mapping[str, object] | None = None,
        env: Mapping[str, str] | None = None,
        toml: Path | None = None,
    ) -> int:
        settings = load_settings(argv_values=argv or {}, environ=env or {}, config_file=toml)
        return settings.limits.spool_memory

    assert spool_memory(toml=config) == 1024 * MIB
    assert spool_memory(toml=config, env={"MAILGATE_SPOOL_MEMORY": "32M"}) == 32 * MIB
    assert spool_memory(toml=config, argv={"spool_memory": "512K"}) == 512 * KIB
    assert spool_memory(argv={"spool_memory": "0"}) == 0
    with pytest.raises(ConfigError) as caught:
        spool_memory(argv={"spool_memory": "lots"})
    assert str(caught.value) == (
        "--spool-memory: 'lots' is not a size: give octets, or a number with K, M or G (e.g. 25M)"
    )
