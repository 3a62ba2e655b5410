"""Mailpit's chaos triggers: SMTP commands failed on purpose, to test an application.

The triggers' two written forms (Mailpit's ``--chaos-triggers`` text and its
JSON); a real server whose triggers are set in its own process: MAIL, RCPT
and AUTH get the trigger's code, logged and counted as refusals, and none of
it spends the client's error budget; ``/api/v1/chaos`` over a real store,
with chaos enabled and without.
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
import trustme

from mailgate.auth import UsersFile
from mailgate.chaos import Chaos, ChaosError, ChaosTrigger, ChaosTriggers
from mailgate.config import Limits, Settings
from mailgate.server import server_context
from mailgate.stores import open_store
from mailgate.testing import MailgateServer
from mailgate.web import create_app

PASSWORD = "correct horse battery staple"
CHEAP = 4  # scrypt cost for tests: 2**4
TIMEOUT = 30.0

# ------------------------------------------------------------- the triggers, written


def test_the_defaults_are_mailpits_and_fire_never() -> None:
    triggers = ChaosTriggers()
    assert triggers.json() == {
        "Sender": {"ErrorCode": 451, "Probability": 0},
        "Recipient": {"ErrorCode": 451, "Probability": 0},
        "Authentication": {"ErrorCode": 535, "Probability": 0},
    }
    assert triggers.text() == "Sender:451:0,Recipient:451:0,Authentication:535:0"
    assert not triggers.armed
    assert Chaos().armed is None


def test_mailpits_text_in_any_case_with_its_aliases() -> None:
    triggers = ChaosTriggers.parse(" sender:550:50 , Recipients:452:100,auth:454:5")
    assert triggers == ChaosTriggers(
        sender=ChaosTrigger(550, 50),
        recipient=ChaosTrigger(452, 100),
        authentication=ChaosTrigger(454, 5),
    )
    assert triggers.armed
    assert ChaosTriggers.parse(triggers.text()) == triggers  # what a worker is sent
    left_out = ChaosTriggers.parse("Recipient:550:10")
    assert (left_out.sender, left_out.authentication) == (ChaosTrigger(451), ChaosTrigger(535))


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "no trigger given"),
        ("Sender:451", "'Sender:451' is not TRIGGER:CODE:PROBABILITY"),
        ("Sender:451:50%", "'Sender:451:50%' is not TRIGGER:CODE:PROBABILITY"),
        ("Sender:4xx:50", "is not TRIGGER:CODE:PROBABILITY"),
        ("Helo:451:50", "unknown trigger 'Helo': Sender, Recipient or Authentication"),
        ("Sender:250:50", "'Sender:250:50': error code must be between 400 and 599"),
        ("Sender:600:50", "error code must be between 400 and 599"),
        ("Sender:451:101", "'Sender:451:101': probability must be between 0 and 100"),
    ],
)
def test_text_that_is_wrong_says_which_part(text: str, problem: str) -> None:
    with pytest.raises(ChaosError) as raised:
        ChaosTriggers.parse(text)
    assert problem in str(raised.value)


def test_mailpits_json_as_gos_decoder_reads_it() -> None:
    body = {"sender": {"errorcode": 550, "PROBABILITY": 100}, "Recipient": None}
    assert ChaosTriggers.from_json(body) == ChaosTriggers(sender=ChaosTrigger(550, 100))
    # No ErrorCode (or 0): the trigger's default code; {} resets every trigger.
    assert ChaosTriggers.from_json({"Authentication": {"Probability": 5}}) == ChaosTriggers(
        authentication=ChaosTrigger(535, 5)
    )
    assert ChaosTriggers.from_json({}) == ChaosTriggers()
    assert ChaosTriggers.from_json({"Recipients": {"Probability": 1}}).recipient.probability == 1
    armed = ChaosTriggers.parse("Sender:421:1,Recipient:599:100,Authentication:400:0")
    assert ChaosTriggers.from_json(armed.json()) == armed


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ([], "the body must be a JSON object"),
        ({"Sender": 451}, "Sender must be an object"),
        ({"Sender": {"ErrorCode": "451"}}, "Sender.ErrorCode must be a whole number"),
        ({"Sender": {"Probability": 50.5}}, "Sender.Probability must be a whole number"),
        ({"Sender": {"Probability": True}}, "Sender.Probability must be a whole number"),
        ({"Sender": {"Code": 451}}, "Sender.Code: unknown field (ErrorCode or Probability)"),
        ({"Data": {}}, "unknown trigger 'Data'"),
        ({"Recipient": {"ErrorCode": 399}}, "Recipient: error code must be between 400 and 599"),
        ({"Authentication": {"Probability": -1}}, "probability must be between 0 and 100"),
    ],
)
def test_json_that_is_wrong_says_which_field(body: object, problem: str) -> None:
    with pytest.raises(ChaosError) as raised:
        ChaosTriggers.from_json(body)
    assert problem in str(raised.value)


@pytest.mark.asyncio
async def test_a_change_reaches_its_followers_before_it_returns() -> None:
    chaos = Chaos(ChaosTriggers.parse("Sender:451:100"))
    assert chaos.armed is chaos.triggers
    heard: list[ChaosTriggers] = []

    async def follower(triggers: ChaosTriggers) -> None:
        heard.append(triggers)

    chaos.follow(follower)
    await chaos.change(ChaosTriggers())
    assert heard == [ChaosTriggers()]
    assert chaos.armed is None


# ------------------------------------------------------- a server, its triggers set in it


@pytest.fixture
def server() -> Iterator[MailgateServer]:
    with MailgateServer(limits=Limits(error_budget=3)) as running:
        yield running


def arm(server: MailgateServer, text: str) -> None:
    """Set the triggers of ``server``'s SMTP sessions, as the API of its node does."""
    assert server.server is not None
    server.server.policy.chaos.set(ChaosTriggers.parse(text))


def connect(server: MailgateServer) -> smtplib.SMTP:
    client = smtplib.SMTP(server.host, server.port, timeout=TIMEOUT)
    client.ehlo("client.test")
    return client


def test_a_sender_trigger_fails_mail_and_spends_no_error_budget(
    server: MailgateServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "mailgate.smtp")
    arm(server, "Sender:550:100")
    with connect(server) as client:
        for _ in range(10):  # far past the error budget of 3
            assert client.mail("app@example.com") == (550, b"5.3.0 Chaos sender error")
        assert client.noop()[0] == 250  # still connected: nothing was the client's fault
        arm(server, "Sender:550:0")
        client.sendmail("app@example.com", ["user@example.org"], b"Subject: through\r\n\r\nhi\r\n")
    server.wait_for("subject:through", timeout=TIMEOUT)
    refusals = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused ")]
    assert len(refusals) == 10
    assert 'reply="550 5.3.0 Chaos sender error"' in refusals[0]
    assert "from=<app@example.com>" in refusals[0]
    assert server.server is not None
    assert server.server.counters.refusals["chaos"] == 10


def test_a_recipient_trigger_fails_each_rcpt(server: MailgateServer) -> None:
    arm(server, "Recipient:451:100")
    with connect(server) as client:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            client.sendmail("app@example.com", ["a@example.org", "b@example.org"], b"\r\nhi\r\n")
        assert refused.value.recipients == {
            "a@example.org": (451, b"4.3.0 Chaos recipient error"),
            "b@example.org": (451, b"4.3.0 Chaos recipient error"),
        }
        client.rset()
        arm(server, "Recipient:550:100")
        for _ in range(5):
            client.mail("app@example.com")
            assert client.rcpt("c@example.org") == (550, b"5.3.0 Chaos recipient error")
            client.rset()
        assert client.noop()[0] == 250
    assert server.messages() == []


def test_a_421_trigger_closes_the_connection_as_421_says(server: MailgateServer) -> None:
    arm(server, "Sender:421:100")
    with connect(server) as client:
        assert client.mail("app@example.com") == (421, b"4.3.0 Chaos sender error")
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.noop()


def test_probability_zero_never_fires_and_fifty_fires_some(server: MailgateServer) -> None:
    arm(server, "Sender:451:0,Recipient:550:0,Authentication:535:0")
    with connect(server) as client:
        for n in range(100):
            assert client.mail("app@example.com")[0] == 250, n
            assert client.rcpt("user@example.org")[0] == 250, n
            client.rset()
    arm(server, "Sender:451:50")
    codes = []
    with connect(server) as client:
        for _ in range(200):
            codes.append(client.mail("app@example.com")[0])
            client.rset()
    # 200 draws at one in two: fewer than 50 of either answer has odds below 1 in 10**12.
    assert 50 < codes.count(451) < 150
    assert codes.count(451) + codes.count(250) == 200


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    cert = trustme.CA().issue_cert("localhost", "127.0.0.1")
    directory = tmp_path_factory.mktemp("tls")
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    return cert_path, key_path


def client_tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def test_an_authentication_trigger_fails_auth_and_counts_no_failure(
    tmp_path: Path, tls_files: tuple[Path, Path]
) -> None:
    users = UsersFile(tmp_path / "users")
    users.set_password("alice", PASSWORD, log2_n=CHEAP)
    # Three failed passwords would end the session: ten chaos refusals must not.
    settings = Settings(limits=Limits(max_auth_failures=3, auth_failure_delay=0))
    with MailgateServer(
        settings=settings, tls_context=server_context(*tls_files), authenticator=users
    ) as server:
        arm(server, "Authentication:454:100")
        with connect(server) as client:
            client.starttls(context=client_tls())
            client.ehlo("client.test")
            for _ in range(10):
                with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
                    client.login("alice", PASSWORD)
                assert refused.value.args == (454, b"4.7.0 Chaos authentication error")
            arm(server, "Authentication:535:0")
            assert client.login("alice", PASSWORD)[0] == 235
        assert server.server is not None
        counters = server.server.counters
        assert counters.auth["failed"] == 0
        assert counters.auth["ok"] == 1
        assert counters.refusals["chaos"] >= 10


# ---------------------------------------------------------------- /api/v1/chaos


@pytest_asyncio.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """Two apps over one store: with chaos enabled (its followers record), and without."""
    store = await open_store(f"sqlite://{tmp_path}/mail.db")
    chaos = Chaos()
    enabled = httpx.ASGITransport(app=create_app(store, chaos=chaos))
    disabled = httpx.ASGITransport(app=create_app(store))
    try:
        async with (
            httpx.AsyncClient(transport=enabled, base_url="http://inbox.test") as on,
            httpx.AsyncClient(transport=disabled, base_url="http://inbox.test") as off,
        ):
            yield on, off
    finally:
        await store.aclose()


@pytest.mark.asyncio
async def test_without_chaos_both_methods_say_so_as_mailpit_does(
    api: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    _, off = api
    for method in ("GET", "PUT"):
        response = await off.request(method, "/api/v1/chaos", json={"Sender": {"Probability": 1}})
        assert (response.status_code, response.text) == (400, "Chaos is not enabled")
        assert response.headers["content-type"].startswith("text/plain")
    assert (await off.get("/api/v1/webui")).json()["ChaosEnabled"] is False


@pytest.mark.asyncio
async def test_get_and_put_the_triggers(api: tuple[httpx.AsyncClient, httpx.AsyncClient]) -> None:
    on, _ = api
    assert (await on.get("/api/v1/webui")).json()["ChaosEnabled"] is True
    assert (await on.get("/api/v1/chaos")).json() == ChaosTriggers().json()
    put = await on.put("/api/v1/chaos", json={"Recipient": {"ErrorCode": 550, "Probability": 25}})
    expected = ChaosTriggers(recipient=ChaosTrigger(550, 25)).json()
    assert (put.status_code, put.json()) == (200, expected)
    assert (await on.get("/api/v1/chaos")).json() == expected
    # A trigger left out is reset, as in Mailpit; {} resets them all.
    put = await on.put("/api/v1/chaos", json={"Sender": {"ErrorCode": 421, "Probability": 100}})
    assert put.json() == ChaosTriggers(sender=ChaosTrigger(421, 100)).json()
    assert (await on.put("/api/v1/chaos", json={})).json() == ChaosTriggers().json()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"", "the body is not JSON (send {} to reset every trigger)"),
        (b"{", "the body is not JSON (send {} to reset every trigger)"),
        (b"[]", "the body must be a JSON object"),
        (b'{"Sender": {"ErrorCode": 250}}', "Sender: error code must be between 400 and 599"),
        (b'{"Recipient": {"Probability": 101}}', "probability must be between 0 and 100"),
        (b'{"Recipient": {"Probability": "50"}}', "Recipient.Probability must be a whole number"),
        (b'{"Helo": {}}', "unknown trigger 'Helo'"),
    ],
)
async def test_a_bad_body_gets_400_and_changes_nothing(
    api: tuple[httpx.AsyncClient, httpx.AsyncClient], body: bytes, problem: str
) -> None:
    on, _ = api
    before = (await on.put("/api/v1/chaos", json={"Sender": {"Probability": 5}})).json()
    response = await on.put("/api/v1/chaos", content=body)
    assert response.status_code == 400
    assert problem in response.text
    assert (await on.get("/api/v1/chaos")).json() == before


@pytest.mark.asyncio
async def test_put_answers_once_every_follower_has_the_triggers(tmp_path: Path) -> None:
    store = await open_store(f"sqlite://{tmp_path}/mail.db")
    chaos = Chaos()
    heard: list[str] = []

    async def slow_worker(triggers: ChaosTriggers) -> None:
        await asyncio.sleep(0.05)
        heard.append(triggers.text())

    chaos.follow(slow_worker)
    transport = httpx.ASGITransport(app=create_app(store, chaos=chaos))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://inbox.test") as client:
            await client.put("/api/v1/chaos", json={"Sender": {"Probability": 100}})
            assert heard == ["Sender:451:100,Recipient:451:0,Authentication:535:0"]
    finally:
        await store.aclose()


@pytest.mark.asyncio
async def test_the_openapi_document_describes_it(
    api: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    on, _ = api
    document = (await on.get("/api/v1/openapi.json")).json()
    path = document["paths"]["/api/v1/chaos"]
    assert set(path) == {"get", "put"}
    assert set(path["put"]["responses"]) == {"200", "400"}
    trigger = document["components"]["schemas"]["ChaosTrigger"]["properties"]
    assert set(trigger) == {"ErrorCode", "Probability"}
