"""Routes for outbound mail, against a real DNS server on loopback.

dnspython sends real queries to ``loopback.DnsZone``; nothing is mocked.
RFC 5321 5.1 (MX order, implicit MX), RFC 7505 (null MX), RFC 5321 4.1.3
(address literals), and how each DNS failure maps to a reply.
"""

from __future__ import annotations

import random
import smtplib
import socket
from collections.abc import Callable

import dns.asyncquery
import dns.message
import pytest

from loopback import DnsQuery, DnsZone, ReceivingMTAs, Refusal
from mailgate.protocol import Reply
from mailgate.queue._routes import (
    Route,
    RouteError,
    RouteHost,
    RouteKind,
    RouteResolver,
    RouteSettings,
    Smarthost,
)

ZoneFactory = Callable[[], DnsZone]


def resolver(
    zone: DnsZone, *, seed: int = 0, timeout: float = 2.0, **options: int
) -> RouteResolver:
    settings = RouteSettings(
        nameserver=zone.nameserver, timeout=timeout, rng=random.Random(seed), **options
    )
    return RouteResolver(settings)


async def failure(zone: DnsZone, domain: str, *, timeout: float = 2.0) -> RouteError:
    with pytest.raises(RouteError) as raised:
        await resolver(zone, timeout=timeout).resolve(domain)
    return raised.value


def names(route: Route) -> list[str]:
    return [host.name for host in route.hosts]


@pytest.fixture
def zone(dns_zone: ZoneFactory) -> DnsZone:
    return dns_zone()


# -- MX ------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_mx_hosts_come_in_preference_order_with_their_addresses(zone: DnsZone) -> None:
    zone.mx("example.test", (20, "mx2.example.test"), (10, "mx1.example.test"))
    zone.a("mx1.example.test", "127.0.0.2")
    zone.aaaa("mx1.example.test", "::1")
    zone.a("mx2.example.test", "127.0.0.3", "127.0.0.4", "127.0.0.3")

    route = await resolver(zone, smtp_port=2525).resolve("example.test")

    assert route == Route(
        "example.test",
        RouteKind.MX,
        (
            RouteHost("mx1.example.test", 10, ("127.0.0.2", "::1"), 2525),
            RouteHost("mx2.example.test", 20, ("127.0.0.3", "127.0.0.4"), 2525),
        ),
    )
    assert list(route.targets())[1:] == [
        (route.hosts[0], "::1"),
        (route.hosts[1], "127.0.0.3"),
        (route.hosts[1], "127.0.0.4"),
    ]
    assert zone.queried("example.test") == ["MX"]
    assert sorted(zone.queried("mx1.example.test")) == ["A", "AAAA"]


@pytest.mark.asyncio
async def test_ipv4_addresses_come_before_ipv6_ones(zone: DnsZone) -> None:
    zone.mx("example.test", (10, "mx.example.test"))
    zone.aaaa("mx.example.test", "2001:db8::1")
    zone.a("mx.example.test", "192.0.2.1")

    route = await resolver(zone).resolve("Example.TEST.")

    assert route.hosts[0].addresses == ("192.0.2.1", "2001:db8::1")


@pytest.mark.asyncio
async def test_equal_preferences_are_shuffled_by_the_injected_random(zone: DnsZone) -> None:
    zone.mx("example.test", (10, "a.example.test"), (10, "b.example.test"), (5, "first.test"))
    for host, address in [("a.example.test", "127.0.0.2"), ("b.example.test", "127.0.0.3")]:
        zone.a(host, address)
    zone.a("first.test", "127.0.0.4")

    orders = {
        tuple(names(await resolver(zone, seed=seed).resolve("example.test"))) for seed in range(20)
    }

    assert orders == {
        ("first.test", "a.example.test", "b.example.test"),
        ("first.test", "b.example.test", "a.example.test"),
    }
    # The seed alone decides: the same seed gives the same order every time.
    again = {tuple(names(await resolver(zone, seed=7).resolve("example.test"))) for _ in range(5)}
    assert len(again) == 1


@pytest.mark.asyncio
async def test_mx_hosts_are_limited_and_hosts_without_addresses_do_not_count(
    zone: DnsZone,
) -> None:
    zone.mx("example.test", *((n, f"mx{n}.example.test") for n in range(1, 9)))
    for n in range(1, 9):
        if n != 2:  # mx2 has no address at all; mx3 none of its own
            zone.a(f"mx{n}.example.test", f"127.0.0.{n if n != 3 else 1}")
    zone.txt("mx2.example.test", "exists, but has no address")

    route = await resolver(zone, max_mx_hosts=3).resolve("example.test")

    assert names(route) == ["mx1.example.test", "mx4.example.test", "mx5.example.test"]


@pytest.mark.asyncio
async def test_an_mx_host_without_addresses_is_skipped(zone: DnsZone) -> None:
    zone.mx(
        "example.test",
        (10, "gone.example.test"),
        (20, "empty.example.test"),
        (30, "failing.example.test"),
        (40, "mx.example.test"),
    )
    zone.txt("empty.example.test", "a name without addresses")
    zone.a("failing.example.test", "127.0.0.9")
    zone.fail("failing.example.test")
    zone.a("mx.example.test", "127.0.0.2")

    route = await resolver(zone).resolve("example.test")

    assert route.hosts == (RouteHost("mx.example.test", 40, ("127.0.0.2",), 25),)


@pytest.mark.asyncio
async def test_mx_hosts_reached_through_a_cname_resolve(zone: DnsZone) -> None:
    zone.cname("example.test", "real.test")
    zone.mx("real.test", (10, "alias.real.test"))
    zone.cname("alias.real.test", "mx.real.test")
    zone.a("mx.real.test", "127.0.0.2")

    route = await resolver(zone).resolve("example.test")

    assert route.hosts == (RouteHost("alias.real.test", 10, ("127.0.0.2",), 25),)


# -- implicit MX, null MX ------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_no_mx_records_means_the_domain_itself_at_preference_0(zone: DnsZone) -> None:
    zone.a("example.test", "127.0.0.5")
    zone.aaaa("example.test", "::1")

    route = await resolver(zone).resolve("example.test")

    assert route.kind is RouteKind.IMPLICIT_MX
    assert route.hosts == (RouteHost("example.test", 0, ("127.0.0.5", "::1"), 25),)
    assert zone.queried("example.test")[0] == "MX"


@pytest.mark.asyncio
async def test_no_mx_and_no_address_is_temporary(zone: DnsZone) -> None:
    zone.txt("example.test", "v=spf1 -all")

    error = await failure(zone, "example.test")

    assert error.reply == Reply(451, "4.4.4", "no mail host of example.test has an address")
    assert error.temporary


@pytest.mark.asyncio
@pytest.mark.parametrize("preference", [0, 10])
async def test_a_null_mx_is_a_permanent_556(zone: DnsZone, preference: int) -> None:
    zone.mx("example.test", (preference, "."))
    zone.a("example.test", "127.0.0.2")  # RFC 7505 3: the address is not a mail host

    error = await failure(zone, "example.test")

    assert (error.reply.code, error.reply.enhanced) == (556, "5.1.10")
    assert "example.test" in error.reply.text
    assert error.permanent
    assert zone.queried("example.test") == ["MX"]


# -- DNS failures --------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_domain_that_does_not_exist_is_permanent(zone: DnsZone) -> None:
    zone.a("other.test", "127.0.0.2")

    error = await failure(zone, "nowhere.test")

    assert error.reply == Reply(550, "5.1.2", "domain nowhere.test does not exist")
    assert error.permanent
    assert not error.temporary


@pytest.mark.asyncio
async def test_servfail_is_temporary(zone: DnsZone) -> None:
    zone.mx("example.test", (10, "mx.example.test"))
    zone.fail("example.test")

    error = await failure(zone, "example.test")

    assert (error.reply.code, error.reply.enhanced) == (451, "4.4.3")
    assert "example.test" in error.reply.text
    assert error.temporary

    zone.heal("example.test")
    zone.a("mx.example.test", "127.0.0.2")
    assert names(await resolver(zone).resolve("example.test")) == ["mx.example.test"]


@pytest.mark.asyncio
async def test_a_query_never_answered_times_out_as_temporary(zone: DnsZone) -> None:
    zone.mx("example.test", (10, "mx.example.test"))
    zone.drop("example.test")

    error = await failure(zone, "example.test", timeout=0.3)

    assert (error.reply.code, error.reply.enhanced) == (451, "4.4.3")
    assert error.temporary
    assert zone.queried("example.test")  # asked, never answered


@pytest.mark.asyncio
async def test_no_address_for_any_mx_host_is_temporary(zone: DnsZone) -> None:
    zone.mx("example.test", (10, "gone.example.test"), (20, "slow.example.test"))
    zone.drop("slow.example.test")

    error = await failure(zone, "example.test", timeout=0.3)

    assert error.reply == Reply(451, "4.4.4", "no mail host of example.test has an address")


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "domain",
    [
        "",
        ".",
        "a..b.test",
        "x" * 64 + ".test",
        "[127.0.0.1",
        "[::1]",
        "[IPv6:nope]",
        "[tag:1.2.3.4]",
        "[999.0.0.1]",
    ],
)
async def test_what_is_no_domain_is_permanent(zone: DnsZone, domain: str) -> None:
    error = await failure(zone, domain)

    assert (error.reply.code, error.reply.enhanced) == (550, "5.1.2")
    assert zone.queries == []


# -- address literals and IDNA -------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("literal", "address"),
    [("[127.0.0.2]", "127.0.0.2"), ("[IPv6:::1]", "::1"), ("[ipv6:2001:DB8:0::1]", "2001:db8::1")],
)
async def test_an_address_literal_routes_directly(
    zone: DnsZone, literal: str, address: str
) -> None:
    route = await resolver(zone, smtp_port=2525).resolve(literal)

    assert route == Route(
        literal, RouteKind.ADDRESS_LITERAL, (RouteHost(literal, 0, (address,), 2525),)
    )
    assert zone.queries == []


@pytest.mark.asyncio
async def test_an_internationalised_domain_is_looked_up_by_its_a_label(zone: DnsZone) -> None:
    zone.mx("xn--bcher-kva.test", (10, "xn--mx-2ka.xn--bcher-kva.test"))
    zone.a("xn--mx-2ka.xn--bcher-kva.test", "127.0.0.2")

    route = await resolver(zone).resolve("Bücher.test")

    assert route.domain == "Bücher.test"
    assert route.hosts == (RouteHost("xn--mx-2ka.xn--bcher-kva.test", 10, ("127.0.0.2",), 25),)
    assert zone.queried("xn--bcher-kva.test") == ["MX"]

    error = await failure(zone, "nicht-da.bücher.test")
    assert error.reply.text == "domain nicht-da.xn--bcher-kva.test does not exist"


# -- smarthost -----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_smarthost_is_resolved_by_address_records_alone(zone: DnsZone) -> None:
    zone.mx("relay.test", (10, "elsewhere.test"))
    zone.a("relay.test", "127.0.0.7")
    zone.aaaa("relay.test", "::1")

    route = await resolver(zone).resolve_smarthost(Smarthost.parse("relay.test:587"))

    assert route == Route(
        "relay.test", RouteKind.SMARTHOST, (RouteHost("relay.test", 0, ("127.0.0.7", "::1"), 587),)
    )
    assert sorted(q.rtype for q in zone.queries) == ["A", "AAAA"]


@pytest.mark.asyncio
async def test_a_smarthost_address_needs_no_dns(zone: DnsZone) -> None:
    route = await resolver(zone).resolve_smarthost(Smarthost.parse("[::1]:2525"))

    assert route.hosts == (RouteHost("::1", 0, ("::1",), 2525),)
    assert zone.queries == []


@pytest.mark.asyncio
async def test_every_smarthost_failure_is_temporary(zone: DnsZone) -> None:
    zone.a("failing.test", "127.0.0.2")
    zone.fail("failing.test")
    routes = resolver(zone)

    for host, enhanced in [("missing.test", "4.4.4"), ("failing.test", "4.4.3")]:
        with pytest.raises(RouteError) as raised:
            await routes.resolve_smarthost(Smarthost(host, 25))
        assert (raised.value.reply.code, raised.value.reply.enhanced) == (451, enhanced)
        assert host in raised.value.reply.text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("relay.test", Smarthost("relay.test", 25)),
        ("relay.test:587", Smarthost("relay.test", 587)),
        ("[relay.test]:2525", Smarthost("relay.test", 2525)),
        ("192.0.2.1:25", Smarthost("192.0.2.1", 25)),
        ("[2001:db8::1]", Smarthost("2001:db8::1", 25)),
    ],
)
def test_smarthost_parses_host_and_port(text: str, expected: Smarthost) -> None:
    assert Smarthost.parse(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", ":25", "relay.test:", "relay.test:0", "relay.test:65536", "2001:db8::1", "[::1", "[::1]x"],
)
def test_smarthost_refuses_what_is_not_host_port(text: str) -> None:
    with pytest.raises(ValueError):
        Smarthost.parse(text)


@pytest.mark.parametrize(
    "options",
    [
        {"nameserver": "dns.test:53"},
        {"nameserver": "127.0.0.1:x"},
        {"timeout": 0},
        {"smtp_port": 0},
        {"max_mx_hosts": 0},
    ],
)
def test_settings_refuse_nonsense(options: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        RouteSettings(**options)  # type: ignore[arg-type]


# -- the receiving MTAs ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_receiving_mta_takes_mail_at_the_address_the_mx_names(
    zone: DnsZone, receiving_mta: ReceivingMTAs
) -> None:
    mta = receiving_mta(
        hostname="mx.example.test", replies={"b@example.test": "450 4.2.1 Try later"}
    )
    zone.mx("example.test", (10, "mx.example.test"))
    zone.a("mx.example.test", mta.host)

    route = await resolver(zone, smtp_port=receiving_mta.port).resolve("example.test")
    [(host, address)] = route.targets()
    with smtplib.SMTP(address, host.port, local_hostname="client.test", timeout=10) as client:
        refused = client.sendmail(
            "sender@client.test",
            ["a@example.test", "b@example.test"],
            b"Subject: hello\r\n\r\nhi\r\n",
            rcpt_options=["NOTIFY=FAILURE"],
        )

    assert mta.host.startswith("127.0.0.")
    assert mta.host != "127.0.0.1"
    if receiving_mta.port != 25:
        assert mta.port == receiving_mta.port  # not root: one free port for every MTA
    assert refused == {"b@example.test": (450, b"4.2.1 Try later")}
    [message] = mta.messages
    assert message.sender == "sender@client.test"
    assert message.recipients == ("a@example.test",)
    assert message.rcpt_options == {"a@example.test": ("NOTIFY=FAILURE",)}
    assert message.content.startswith(b"Subject: hello\r\n")
    assert message.peer == "127.0.0.1"
    assert not message.tls


def test_a_receiving_mta_can_greet_with_421(receiving_mta: ReceivingMTAs) -> None:
    mta = receiving_mta(greeting="421 4.3.2 Not now")

    with pytest.raises(smtplib.SMTPConnectError) as raised:
        smtplib.SMTP(mta.host, mta.port, local_hostname="client.test", timeout=10)

    assert (raised.value.smtp_code, raised.value.smtp_error) == (421, b"4.3.2 Not now")


def test_a_receiving_mta_can_refuse_a_message_after_data(receiving_mta: ReceivingMTAs) -> None:
    mta = receiving_mta(data_reply="554 5.7.1 Not this one")

    with (
        smtplib.SMTP(mta.host, mta.port, local_hostname="client.test", timeout=10) as client,
        pytest.raises(smtplib.SMTPDataError) as raised,
    ):
        client.sendmail("a@client.test", ["b@example.test"], b"Subject: x\r\n\r\nx\r\n")

    assert raised.value.smtp_code == 554
    assert mta.messages == []
    assert mta.refusals == [Refusal("DATA", "", "554 5.7.1 Not this one")]


def test_a_receiving_mta_can_refuse_connections(receiving_mta: ReceivingMTAs) -> None:
    refusing = receiving_mta(refuse=True)
    stopped = receiving_mta()
    with smtplib.SMTP(stopped.host, stopped.port, local_hostname="client.test", timeout=10):
        pass
    stopped.stop()

    for mta in (refusing, stopped):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((mta.host, mta.port), timeout=10)
    assert refusing.host != stopped.host
    assert refusing.port == stopped.port == receiving_mta.port


def test_a_receiving_mta_offers_starttls_auth_and_dsn(receiving_mta: ReceivingMTAs) -> None:
    mta = receiving_mta(hostname="mx.example.test", tls=True, auth={"user": "secret"})

    with smtplib.SMTP(mta.host, mta.port, local_hostname="client.test", timeout=10) as client:
        client.ehlo()
        assert client.has_extn("starttls")
        assert client.has_extn("dsn")
        assert not client.has_extn("auth")  # not before TLS
        client.starttls(context=receiving_mta.client_context())
        client.ehlo()
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.login("user", "wrong")
        client.login("user", "secret")
        client.sendmail(
            "",
            ["a@example.test"],
            b"Subject: report\r\n\r\nx\r\n",
            mail_options=["RET=HDRS", "ENVID=Id+2B1"],
            rcpt_options=["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;A@example.test"],
        )

    [message] = mta.messages
    assert message.sender == ""
    assert message.mail_options[-2:] == ("RET=HDRS", "ENVID=Id+2B1")
    assert message.rcpt_options == {
        "a@example.test": ("NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;A@example.test")
    }
    assert message.tls
    assert message.login == "user"


def test_a_receiving_mta_can_require_starttls(receiving_mta: ReceivingMTAs) -> None:
    mta = receiving_mta(tls=True, require_tls=True)

    with smtplib.SMTP(mta.host, mta.port, local_hostname="client.test", timeout=10) as client:
        with pytest.raises(smtplib.SMTPSenderRefused) as raised:
            client.sendmail("a@client.test", ["b@example.test"], b"x\r\n")
        assert raised.value.smtp_code == 530
        client.starttls(context=receiving_mta.client_context())
        client.sendmail("a@client.test", ["b@example.test"], b"x\r\n")

    assert [message.recipients for message in mta.messages] == [("b@example.test",)]


def test_without_root_the_mtas_share_one_free_port() -> None:
    mtas = ReceivingMTAs(port=0)  # what a developer who is not root gets
    try:
        first, second, refusing = mtas(), mtas(), mtas(refuse=True)
        for mta in (first, second):
            with smtplib.SMTP(mta.host, mta.port, local_hostname="c.test", timeout=10) as client:
                client.sendmail("a@client.test", [f"b@{mta.host}"], b"x\r\n")
    finally:
        mtas.close()

    assert mtas.port not in (0, 25)
    assert {first.port, second.port, refusing.port} == {mtas.port}
    assert len({first.host, second.host, refusing.host}) == 3
    assert [len(first.messages), len(second.messages)] == [1, 1]


# -- the loopback DNS server ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_the_zone_answers_over_tcp_too(zone: DnsZone) -> None:
    zone.mx("example.test", (10, "mx.example.test"))
    query = dns.message.make_query("example.test", "MX")

    response = await dns.asyncquery.tcp(query, "127.0.0.1", timeout=5, port=zone.port)

    assert [str(rdata) for rdata in response.answer[0]] == ["10 mx.example.test."]
    assert zone.queries == [DnsQuery("example.test", "MX", "tcp")]
