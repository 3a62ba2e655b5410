"""Delivery for real, on a small internet on loopback: a DNS server answering for test domains
and receiving MTAs on 127.0.0.x (port 25 as root), driven by the queue runner and its courier.

The clock is injected so retries come due at once; everything else (DNS queries, TCP, TLS,
SMTP) is real.
"""

from __future__ import annotations

import dataclasses
import email
import email.policy
import random
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio

from loopback import DnsZone, ReceivingMTAs
from mailgate.delivery import Acceptor, DeliverySettings
from mailgate.model import DeliveryState, Envelope, MessageId
from mailgate.queue._courier import CourierSettings, SMTPCourier
from mailgate.queue._reporter import MailReporter
from mailgate.queue._routes import RouteSettings, Smarthost
from mailgate.queue._runner import QueueRunner, RunnerSettings
from mailgate.stores import SQLiteStore
from mailgate.testing.stores import make_message

START = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
LOCAL = "here.test"


@dataclasses.dataclass
class ManualClock:
    now_value: datetime = START

    def now(self) -> datetime:
        return self.now_value


@dataclasses.dataclass
class Net:
    """The store, the runner's parts, the DNS zone and a way to start MTAs."""

    store: SQLiteStore
    acceptor: Acceptor
    clock: ManualClock
    zone: DnsZone
    mtas: ReceivingMTAs
    tmp_path: Path
    courier: SMTPCourier | None = None
    couriers: list[SMTPCourier] = dataclasses.field(default_factory=list)
    mta_sts_port: int = 443

    def mta(self, domain: str, preference: int = 10, **options: object) -> object:
        """An MTA for ``domain`` at ``mx<preference>.<domain>``, published as its MX."""
        mta = self.mtas(hostname=f"mx{preference}.{domain}", **options)  # type: ignore[arg-type]
        name = f"mx{preference}.{domain}"
        self.zone.a(name, mta.host)
        exchanges = [(p, n) for p, n in self._mx.get(domain, [])] + [(preference, name)]
        self._mx[domain] = exchanges
        self.zone.mx(domain, *exchanges)
        return mta

    _mx: dict[str, list[tuple[int, str]]] = dataclasses.field(default_factory=dict)

    def runner(self, **courier: object) -> QueueRunner:
        options: dict[str, object] = {
            "hostname": "mx.here.test",
            "routes": RouteSettings(
                nameserver=self.zone.nameserver, smtp_port=self.mtas.port or 25, timeout=1.0
            ),
        }
        options.update(courier)
        self.courier = SMTPCourier(CourierSettings(**options))  # type: ignore[arg-type]
        self.couriers.append(self.courier)
        reporter = MailReporter(
            self.acceptor,
            hostname="mx.here.test",
            lifetime=timedelta(days=5),
            is_local=lambda a: a.endswith("@" + LOCAL),
            new_report_id=lambda: f"report{random.randrange(10**9)}",
        )
        return QueueRunner(
            self.store,
            self.courier,
            reporter,
            RunnerSettings(rng=random.Random(3), smarthost="smarthost" in courier),
            clock=self.clock,
        )

    async def send(
        self,
        *recipients: str,
        sender: str = "alice@here.test",
        content: bytes | None = None,
        mail_params: Mapping[str, str | None] | None = None,
        rcpt_params: Mapping[str, Mapping[str, str | None]] | None = None,
    ) -> MessageId:
        params = rcpt_params or {}
        envelope = Envelope(
            mail_from=sender,
            rcpt_to=recipients,
            received_at=self.clock.now(),
            mail_params=dict(mail_params or {}),
            rcpt_params=tuple(dict(params.get(r, {})) for r in recipients),
            outbound=recipients,
        )
        spool = self.acceptor.begin(envelope)
        spool.write(content or make_message("Onward", b"Hello over there.\r\n"))
        return await self.acceptor.commit(spool)

    async def run(self, runner: QueueRunner) -> None:
        await runner.run_once()
        await runner.drain()

    async def states(self, message: MessageId) -> dict[str, tuple[DeliveryState, str]]:
        rows = await self.store.queued(message, pending_only=False)
        return {r.recipient: (r.state, r.last_reply) for r in rows}

    async def reports(self) -> list[email.message.EmailMessage]:
        found = []
        for summary in (await self.store.list()).messages:
            stored = await self.store.get(summary.id)
            raw = await self.store.raw(summary.id)
            if stored is not None and raw is not None and stored.envelope.mail_from == "":
                message = email.message_from_bytes(raw, policy=email.policy.default)
                found.append(message)  # type: ignore[arg-type]
        return found


@pytest_asyncio.fixture
async def net(
    tmp_path: Path, dns_zone: Callable[[], DnsZone], receiving_mta: ReceivingMTAs
) -> AsyncIterator[Net]:
    store = SQLiteStore(tmp_path / "mail.db")
    clock = ManualClock()
    acceptor = Acceptor(
        store, DeliverySettings(hostname="mx.here.test", spool_dir=tmp_path / "spool"), clock=clock
    )
    subject = Net(store, acceptor, clock, dns_zone(), receiving_mta, tmp_path)
    try:
        yield subject
    finally:
        for courier in subject.couriers:
            await courier.aclose()
        acceptor.close()
        await store.aclose()


@pytest.mark.asyncio
async def test_one_transaction_per_domain_to_the_first_mx(net: Net) -> None:
    mx = net.mta("far.test")
    message = await net.send("a@far.test", "b@far.test")
    await net.run(net.runner())
    assert [(m.sender, m.recipients) for m in mx.messages] == [  # type: ignore[attr-defined]
        ("alice@here.test", ("a@far.test", "b@far.test"))
    ]
    content = mx.messages[0].content  # type: ignore[attr-defined]
    assert b"Return-Path" not in content
    assert b"Received: from " in content
    assert b"Hello over there." in content
    states = await net.states(message)
    assert {s for s, _ in states.values()} == {DeliveryState.DELIVERED}
    assert all(reply.startswith("250") for _, reply in states.values())
    rows = await net.store.queued(message, pending_only=False)
    assert rows[0].relay == f"mx10.far.test[{mx.host}]:{net.mtas.port}"  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_a_dead_first_mx_falls_back_to_the_second(net: Net) -> None:
    dead = net.mta("far.test", 10, refuse=True)
    alive = net.mta("far.test", 20)
    message = await net.send("a@far.test")
    await net.run(net.runner())
    assert len(alive.messages) == 1  # type: ignore[attr-defined]
    assert (await net.states(message))["a@far.test"][0] is DeliveryState.DELIVERED
    assert dead is not alive


@pytest.mark.asyncio
async def test_a_421_greeting_is_skipped_and_defers_when_it_is_the_only_mx(net: Net) -> None:
    net.mta("busy.test", greeting="421 4.3.2 Not now")
    message = await net.send("a@busy.test")
    await net.run(net.runner())
    state, reply = (await net.states(message))["a@busy.test"]
    assert state is DeliveryState.DEFERRED
    assert reply.startswith("421")


@pytest.mark.asyncio
async def test_implicit_mx_when_a_domain_has_only_an_address(net: Net) -> None:
    mta = net.mtas(hostname="bare.test")
    net.zone.a("bare.test", mta.host)
    message = await net.send("a@bare.test")
    await net.run(net.runner())
    assert len(mta.messages) == 1
    assert (await net.states(message))["a@bare.test"][0] is DeliveryState.DELIVERED


@pytest.mark.asyncio
async def test_null_mx_and_nxdomain_bounce_at_once_with_one_report_each(net: Net) -> None:
    net.zone.mx("nomail.test", (0, "."))
    first = await net.send("a@nomail.test")
    second = await net.send("b@nowhere.test")
    await net.run(net.runner())
    state, reply = (await net.states(first))["a@nomail.test"]
    assert (state, reply[:10]) == (DeliveryState.BOUNCED, "556 5.1.10")
    state, reply = (await net.states(second))["b@nowhere.test"]
    assert (state, reply[:9]) == (DeliveryState.BOUNCED, "550 5.1.2")
    reports = await net.reports()
    assert len(reports) == 2
    assert {str(r["To"]) for r in reports} == {"alice@here.test"}


@pytest.mark.asyncio
async def test_servfail_defers_then_the_next_attempt_delivers(net: Net) -> None:
    mx = net.mta("flaky.test")
    net.zone.fail("flaky.test")
    message = await net.send("a@flaky.test")
    runner = net.runner()
    await net.run(runner)
    state, reply = (await net.states(message))["a@flaky.test"]
    assert (state, reply[:9]) == (DeliveryState.DEFERRED, "451 4.4.3")
    net.zone.heal("flaky.test")
    net.clock.now_value += timedelta(minutes=2)
    await net.run(runner)
    assert (await net.states(message))["a@flaky.test"][0] is DeliveryState.DELIVERED
    assert len(mx.messages) == 1  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_250_450_550_per_recipient_and_one_bounce_naming_only_the_550(net: Net) -> None:
    mx = net.mta(
        "mixed.test",
        replies={"busy@mixed.test": "450 4.2.1 Mailbox busy", "gone@mixed.test": "550 5.1.1 No"},
    )
    message = await net.send("ok@mixed.test", "busy@mixed.test", "gone@mixed.test")
    runner = net.runner()
    await net.run(runner)
    states = await net.states(message)
    assert {r: s for r, (s, _) in states.items()} == {
        "ok@mixed.test": DeliveryState.DELIVERED,
        "busy@mixed.test": DeliveryState.DEFERRED,
        "gone@mixed.test": DeliveryState.BOUNCED,
    }
    assert [m.recipients for m in mx.messages] == [("ok@mixed.test",)]  # type: ignore[attr-defined]
    (report,) = await net.reports()
    text = report.as_string()
    assert "gone@mixed.test" in text
    assert "busy@mixed.test" not in text
    assert "ok@mixed.test" not in text
    # The next attempt tries only the deferred recipient.
    net.clock.now_value += timedelta(minutes=2)
    await net.run(runner)
    refused = [r.argument for r in mx.refusals]  # type: ignore[attr-defined]
    assert sorted(refused) == ["busy@mixed.test", "busy@mixed.test", "gone@mixed.test"]
    rows = {r.recipient: r for r in await net.store.queued(message, pending_only=False)}
    assert (rows["busy@mixed.test"].attempts, rows["gone@mixed.test"].attempts) == (2, 1)


@pytest.mark.asyncio
async def test_a_5xx_after_data_bounces_every_recipient_of_the_transaction(net: Net) -> None:
    net.mta("strict.test", data_reply="554 5.7.1 Content refused")
    message = await net.send("a@strict.test", "b@strict.test")
    await net.run(net.runner())
    states = await net.states(message)
    assert {s for s, _ in states.values()} == {DeliveryState.BOUNCED}
    assert all(r.startswith("554 5.7.1") for _, r in states.values())
    (report,) = await net.reports()
    assert "a@strict.test" in report.as_string()
    assert "b@strict.test" in report.as_string()


@pytest.mark.asyncio
async def test_starttls_may_takes_any_certificate_and_verify_checks_it(net: Net) -> None:
    mx = net.mta("tls.test", tls=True)
    await net.send("a@tls.test")
    await net.run(net.runner())
    assert [m.tls for m in mx.messages] == [True]  # type: ignore[attr-defined]
    ca_file = net.tmp_path / "ca.pem"
    net.mtas.ca.cert_pem.write_to_path(str(ca_file))
    await net.send("b@tls.test")
    await net.run(net.runner(tls="verify", ca_file=ca_file))
    assert [m.tls for m in mx.messages] == [True, True]  # type: ignore[attr-defined]
    other_ca = net.tmp_path / "other.pem"
    import trustme  # noqa: PLC0415

    trustme.CA().cert_pem.write_to_path(str(other_ca))
    refused = await net.send("c@tls.test")
    await net.run(net.runner(tls="verify", ca_file=other_ca))
    state, reply = (await net.states(refused))["c@tls.test"]
    assert (state, reply[:9]) == (DeliveryState.DEFERRED, "454 4.7.0")
    assert len(mx.messages) == 2  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_a_smarthost_with_auth_over_starttls_takes_everything(net: Net) -> None:
    relay = net.mtas(hostname="relay.here.test", tls=True, auth={"me": "secret"})
    net.zone.a("relay.here.test", relay.host)
    message = await net.send("a@one.test", "b@two.test")
    runner = net.runner(
        smarthost=Smarthost("relay.here.test", net.mtas.port or 25),
        smarthost_auth=("me", "secret"),
    )
    await net.run(runner)
    assert [(m.recipients, m.tls, m.login) for m in relay.messages] == [
        (("a@one.test", "b@two.test"), True, "me")
    ]
    assert {s for s, _ in (await net.states(message)).values()} == {DeliveryState.DELIVERED}


@pytest.mark.asyncio
async def test_dsn_parameters_travel_to_the_next_hop(net: Net) -> None:
    mx = net.mta("dsn.test")
    await net.send(
        "a@dsn.test",
        mail_params={"RET": "HDRS", "ENVID": "QQ314159"},
        rcpt_params={"a@dsn.test": {"NOTIFY": "SUCCESS,FAILURE", "ORCPT": "rfc822;a+2Bx@dsn.test"}},
    )
    await net.run(net.runner())
    (received,) = mx.messages  # type: ignore[attr-defined]
    assert "RET=HDRS" in received.mail_options
    assert "ENVID=QQ314159" in received.mail_options
    assert set(received.rcpt_options["a@dsn.test"]) >= {
        "NOTIFY=SUCCESS,FAILURE",
        "ORCPT=rfc822;a+2Bx@dsn.test",
    }
    # The next hop offers DSN, so it reports success itself: ours says "delivered" only if
    # asked; with NOTIFY=SUCCESS the sender hears of it.
    (report,) = await net.reports()
    assert "Action: delivered" in report.as_string()


@pytest.mark.asyncio
async def test_two_messages_to_one_host_share_one_connection(net: Net) -> None:
    mx = net.mta("busy.example")
    runner = net.runner()
    for n in range(3):
        await net.send(f"u{n}@busy.example")
        await net.run(runner)
    assert len(mx.messages) == 3  # type: ignore[attr-defined]
    assert net.courier is not None
    assert net.courier.connections == 1


@pytest.mark.asyncio
async def test_8bit_or_utf8_mail_to_a_peer_without_the_extension_bounces(net: Net) -> None:
    """RFC 6152 and RFC 6531: never sent; the recipients bounce with 554 5.6.3 / 553 5.6.7."""
    import asyncio  # noqa: PLC0415

    seen: list[bytes] = []

    async def plain_smtp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 old.test ESMTP\r\n")
        while line := await reader.readline():
            seen.append(line)
            verb = line[:4].upper()
            if verb == b"EHLO":
                writer.write(b"250 old.test\r\n")  # no 8BITMIME, no SMTPUTF8
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                break
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(plain_smtp, "127.0.26.9", net.mtas.port or 25)
    try:
        net.zone.mx("old.test", (10, "mx.old.test"))
        net.zone.a("mx.old.test", "127.0.26.9")
        eight_bit = await net.send(
            "a@old.test", content=b"Subject: coffee\r\n\r\nCaf\xc3\xa9 au lait.\r\n"
        )
        utf8 = await net.send("b@old.test", content=b"Subject: caf\xc3\xa9\r\n\r\nCoffee.\r\n")
        await net.run(net.runner())
        state, reply = (await net.states(eight_bit))["a@old.test"]
        assert (state, reply[:9]) == (DeliveryState.BOUNCED, "554 5.6.3")
        state, reply = (await net.states(utf8))["b@old.test"]
        assert (state, reply[:9]) == (DeliveryState.BOUNCED, "553 5.6.7")
        assert not any(line.startswith(b"MAIL") for line in seen)  # nothing was sent
        assert len(await net.reports()) == 2
    finally:
        server.close()
        await server.wait_closed()


# -- MTA-STS (RFC 8461) -------------------------------------------------------------------------

POLICY_HOST = "127.0.26.20"


@pytest_asyncio.fixture
async def policy_server(net: Net) -> AsyncIterator[Callable[[str, str], None]]:
    """An HTTPS server for mta-sts.<domain> on 127.0.26.20; call it with (domain, policy)."""
    import asyncio  # noqa: PLC0415
    import ssl  # noqa: PLC0415

    policies: dict[str, str] = {}
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)

    def publish(domain: str, policy: str) -> None:
        policies[f"mta-sts.{domain}"] = policy
        net.mtas.ca.issue_cert(*policies).configure_cert(context)
        net.zone.a(f"mta-sts.{domain}", POLICY_HOST)
        net.zone.txt(f"_mta-sts.{domain}", "v=STSv1; id=20261206T000000;")

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        host = next(
            line.split(b":", 1)[1].strip().decode()
            for line in request.split(b"\r\n")
            if line.lower().startswith(b"host:")
        )
        body = policies.get(host, "").encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\nConnection: close\r\n\r\n"
            + body
        )
        await writer.drain()
        writer.close()

    port = 443 if (net.mtas.port or 25) == 25 else 0
    server = await asyncio.start_server(serve, POLICY_HOST, port, ssl=context)
    net.mta_sts_port = server.sockets[0].getsockname()[1]
    try:
        yield publish
    finally:
        server.close()
        await server.wait_closed()


def sts_policy(mode: str, *mx: str) -> str:
    return (
        "version: STSv1\r\nmode: "
        + mode
        + "\r\n"
        + "".join(f"mx: {m}\r\n" for m in mx)
        + ("max_age: 86400\r\n")
    )


@pytest.mark.asyncio
async def test_mta_sts_enforce_delivers_over_verified_tls_to_a_named_host(
    net: Net, policy_server: Callable[[str, str], None]
) -> None:
    mx = net.mta("sts.test", tls=True)
    policy_server("sts.test", sts_policy("enforce", "*.sts.test"))
    ca_file = net.tmp_path / "ca.pem"
    net.mtas.ca.cert_pem.write_to_path(str(ca_file))
    message = await net.send("a@sts.test")
    await net.run(net.runner(ca_file=ca_file, mta_sts_port=net.mta_sts_port))
    assert [m.tls for m in mx.messages] == [True]  # type: ignore[attr-defined]
    assert (await net.states(message))["a@sts.test"][0] is DeliveryState.DELIVERED


@pytest.mark.asyncio
async def test_mta_sts_enforce_never_falls_back_to_plaintext_or_an_unnamed_host(
    net: Net, policy_server: Callable[[str, str], None]
) -> None:
    plain = net.mta("plain.test")  # no STARTTLS
    policy_server("plain.test", sts_policy("enforce", "mx10.plain.test"))
    other = net.mta("other.test", tls=True)
    policy_server("other.test", sts_policy("enforce", "mx.elsewhere.test"))
    ca_file = net.tmp_path / "ca.pem"
    net.mtas.ca.cert_pem.write_to_path(str(ca_file))
    first = await net.send("a@plain.test")
    second = await net.send("b@other.test")
    await net.run(net.runner(ca_file=ca_file, mta_sts_port=net.mta_sts_port))
    state, reply = (await net.states(first))["a@plain.test"]
    assert (state, reply[:9]) == (DeliveryState.DEFERRED, "454 4.7.0")
    state, reply = (await net.states(second))["b@other.test"]
    assert (state, reply[:9]) == (DeliveryState.DEFERRED, "451 4.7.5")
    assert plain.messages == other.messages == []  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_mta_sts_testing_mode_only_logs(
    net: Net, policy_server: Callable[[str, str], None]
) -> None:
    mx = net.mta("trial.test")  # no STARTTLS, and not the host the policy names
    policy_server("trial.test", sts_policy("testing", "mx.elsewhere.test"))
    message = await net.send("a@trial.test")
    await net.run(net.runner(mta_sts_port=net.mta_sts_port))
    assert len(mx.messages) == 1  # type: ignore[attr-defined]
    assert (await net.states(message))["a@trial.test"][0] is DeliveryState.DELIVERED
