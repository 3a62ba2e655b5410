"""The guessing throttle and the password-checking threads, alone: an injected clock, no sockets."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path

import pytest

from mailgate.auth import PasswordChecks, Throttle, UsersFile, client_key, hash_password
from mailgate.ports import AuthAdmission, AuthenticatorBusyError


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def throttle(clock: FakeClock, **options: float) -> Throttle:
    settings: dict[str, float] = {"base_delay": 1.0, "block_after": 10, "block_time": 600.0}
    settings.update(options)
    return Throttle(
        base_delay=settings["base_delay"],
        block_after=int(settings["block_after"]),
        block_time=settings["block_time"],
        max_entries=int(settings.get("max_entries", 10_000)),
        clock=clock,
    )


def fail(t: Throttle, clock: FakeClock, client: str = "192.0.2.1", user: str = "alice") -> float:
    """One admitted, failed check; the clock moves to when it is answered."""
    assert t.admit(client) == AuthAdmission(True)
    failure = t.failed(client, user, "smtp")
    clock.now += failure.delay
    return failure.delay


def test_the_delay_doubles_from_the_first_to_sixteen_times(clock: FakeClock) -> None:
    t = throttle(clock, block_after=100)
    assert [fail(t, clock) for _ in range(7)] == [1, 2, 4, 8, 16, 16, 16]


def test_no_check_starts_before_a_failure_is_answered(clock: FakeClock) -> None:
    t = throttle(clock)
    fail(t, clock)
    assert t.admit("192.0.2.1") == AuthAdmission(True)
    failure = t.failed("192.0.2.1", "alice", "smtp")
    assert failure.delay == 2
    # A parallel connection asks meanwhile: refused unchecked, told when to come back.
    clock.now += 0.5
    assert t.admit("192.0.2.1") == AuthAdmission(False, 1.5)
    clock.now += 1.5
    assert t.admit("192.0.2.1").allowed


def test_parallel_checks_from_one_address_are_bounded(clock: FakeClock) -> None:
    t = throttle(clock)
    assert t.admit("192.0.2.1").allowed
    assert t.admit("192.0.2.1").allowed
    refused = t.admit("192.0.2.1")
    assert not refused.allowed
    assert not refused.blocked
    assert t.admit("192.0.2.2").allowed  # another address is not held up
    t.succeeded("192.0.2.1")
    assert t.admit("192.0.2.1").allowed


def test_failures_block_the_address_then_expire(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    t = throttle(clock, block_after=3, block_time=60)
    caplog.set_level(logging.WARNING, logger="mailgate.auth")
    delays = [fail(t, clock, user="bob\r\nforged") for _ in range(3)]
    assert delays == [1, 2, 4]
    admission = t.admit("192.0.2.1")
    assert admission.blocked
    assert not admission.allowed
    assert admission.retry_after == pytest.approx(60)
    assert [r.getMessage() for r in caplog.records] == [
        "auth failed user=bob??forged client=[192.0.2.1] failures=1 service=smtp",
        "auth failed user=bob??forged client=[192.0.2.1] failures=2 service=smtp",
        "auth failed user=bob??forged client=[192.0.2.1] failures=3 service=smtp",
        "auth blocked client=[192.0.2.1] for 60s",
    ]
    assert caplog.records[-1].__dict__["fields"] == {"client": "192.0.2.1", "seconds": 60}
    clock.now += 60
    assert t.admit("192.0.2.1") == AuthAdmission(True)  # forgotten: a fresh start
    assert t.failed("192.0.2.1", "bob", "http").failures == 1


def test_checks_in_flight_count_towards_the_block(clock: FakeClock) -> None:
    t = throttle(clock, block_after=3)
    fail(t, clock)
    fail(t, clock)
    assert t.admit("192.0.2.1").allowed
    # Were this one to fail too, the address would be blocked: no other starts meanwhile.
    assert not t.admit("192.0.2.1").allowed
    t.withdrawn("192.0.2.1")
    assert t.admit("192.0.2.1").allowed


def test_a_success_clears_no_record(clock: FakeClock) -> None:
    t = throttle(clock, block_after=3)
    fail(t, clock, "192.0.2.1")
    fail(t, clock, "192.0.2.1")
    assert t.admit("198.51.100.7").allowed
    t.succeeded("198.51.100.7")  # someone else logs in
    assert t.admit("192.0.2.1").allowed
    t.succeeded("192.0.2.1")  # an attacker with an account of their own
    assert fail(t, clock, "192.0.2.1") == 4
    assert t.admit("192.0.2.1").blocked
    assert t.admit("198.51.100.7").allowed


def test_failures_are_forgotten_after_the_block_time(clock: FakeClock) -> None:
    t = throttle(clock, block_time=100)
    fail(t, clock)
    fail(t, clock)
    clock.now += 100
    assert fail(t, clock) == 1
    assert len(t) == 1
    t.admit("192.0.2.9")
    t.succeeded("192.0.2.9")
    assert len(t) == 1  # an address with no failures is not kept


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::ffff", "2001:db8:1:2::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("", ""),
    ],
)
def test_client_keys(address: str, key: str) -> None:
    assert client_key(address) == key


def test_an_ipv6_64_counts_as_one_client(clock: FakeClock) -> None:
    t = throttle(clock, block_after=3)
    for host in ("2001:db8::1", "2001:db8::2", "2001:db8::3"):
        fail(t, clock, host)
    assert t.admit("2001:db8::ffff:1").blocked
    assert t.admit("2001:db8:0:1::1").allowed  # the next /64


def test_the_tables_are_bounded(clock: FakeClock) -> None:
    t = throttle(clock, max_entries=100)
    for n in range(1000):
        client = f"10.0.{n // 256}.{n % 256}"
        assert t.admit(client).allowed
        t.failed(client, f"user{n}", "smtp")
    assert len(t) == 100
    assert len(t._users) == 100


def test_one_user_guessed_from_many_addresses_is_slowed_but_never_blocked(
    clock: FakeClock,
) -> None:
    t = throttle(clock, block_after=3)
    delays = [fail(t, clock, f"10.0.0.{n}", "alice") for n in range(1, 8)]
    assert delays == [1, 2, 4, 8, 16, 16, 16]
    assert t.admit("10.0.0.100").allowed
    t.succeeded("10.0.0.100")  # the real alice, from her own address, gets in at once


def test_no_delay_when_the_first_is_zero(clock: FakeClock) -> None:
    t = throttle(clock, base_delay=0, block_after=3)
    assert [fail(t, clock) for _ in range(3)] == [0, 0, 0]
    assert t.admit("192.0.2.1").blocked


# -- the password-checking threads --------------------------------------------------------


@pytest.mark.asyncio
async def test_checks_beyond_the_threads_and_queue_are_refused() -> None:
    checks = PasswordChecks(threads=2, waiting=1)
    release = threading.Event()
    threads: set[str] = set()

    def slow(username: str, password: str) -> bool:
        threads.add(threading.current_thread().name)
        return release.wait(10)

    running = [asyncio.ensure_future(checks.run(slow, "u", "p")) for _ in range(3)]
    await asyncio.sleep(0)
    assert checks.in_hand == 3
    with pytest.raises(AuthenticatorBusyError):
        await checks.run(slow, "u", "p")
    # The loop's default executor is free meanwhile: a store read is not held up.
    assert await asyncio.to_thread(lambda: "read") == "read"
    release.set()
    assert await asyncio.gather(*running) == [True, True, True]
    assert checks.in_hand == 0
    assert threads
    assert all(name.startswith("auth-check") for name in threads)
    assert await checks.run(slow, "u", "p")


@pytest.mark.asyncio
async def test_the_users_file_checks_on_its_threads(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text(f"alice:{hash_password('pw', log2_n=4)}\n")
    seen: list[str] = []

    class Recording(UsersFile):
        def check(self, name: str, password: str) -> bool:
            seen.append(threading.current_thread().name)
            return super().check(name, password)

    users = Recording(path, checks=PasswordChecks(threads=1, waiting=0))
    assert await users.authenticate("alice", "pw")
    assert not await users.authenticate("alice", "wrong")
    assert seen
    assert all(name.startswith("auth-check") for name in seen)


def test_an_unknown_user_costs_a_check_too(tmp_path: Path) -> None:
    users = UsersFile(tmp_path / "users")
    users.set_password("alice", "pw")  # the default cost, as the unknown user's check has
    users.check("alice", "warm-up")
    users.check("nobody", "warm-up")
    known, unknown = [], []
    for _ in range(3):
        start = time.perf_counter()
        users.check("alice", "wrong")
        known.append(time.perf_counter() - start)
        start = time.perf_counter()
        users.check("nobody", "wrong")
        unknown.append(time.perf_counter() - start)
    assert min(unknown) > min(known) / 3  # the same scrypt work; the machine is shared
