"""Mailpit's chaos triggers: SMTP commands failed on purpose, to test an application.

The triggers' two written forms (Mailpit's ``--chaos-triggers`` text and its
JSON); a real server whose triggers are set in its own process: MAIL, RCPT
and AUTH get the trigger's code, logged and counted as refusals, and none of
it spends the client's error budget; ``/api/v1/chaos`` over a real store,
with chaos enabled and without; and ``mailgate serve --enable-chaos`` as a
user runs it, its triggers set over the API (with Mailpit's npm client too),
and refused with ``--domain``; with ``--workers`` every SMTP process applies
the triggers the API sets, one started again included.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import smtplib
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from mailgate.auth import UsersFile
from mailgate.chaos import Chaos, ChaosError, ChaosTrigger, ChaosTriggers
from mailgate.config import ConfigError, Limits, Settings, load_settings
from mailgate.runtime._workers import ChaosUpdate
from mailgate.server import server_context
from mailgate.stores import open_store
from mailgate.testing import MailgateServer
from mailgate.web import create_app
from process_helpers import (
    Launcher,
    Serving,
    mailgate,
    make_tls_files,
    make_users_file,
    serving_pid,
    until,
)
from server_helpers import WORKER, require_tool

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


def test_an_authentication_trigger_fails_auth_and_counts_no_failure(tmp_path: Path) -> None:
    ca, cert, key = make_tls_files(tmp_path, "127.0.0.1")
    users = UsersFile(tmp_path / "users")
    users.set_password("alice", PASSWORD, log2_n=CHEAP)
    # Three failed passwords would end the session: ten chaos refusals must not.
    settings = Settings(limits=Limits(max_auth_failures=3, auth_failure_delay=0))
    with MailgateServer(
        settings=settings, tls_context=server_context(cert, key), authenticator=users
    ) as server:
        arm(server, "Authentication:454:100")
        with connect(server) as client:
            client.starttls(context=ssl.create_default_context(cafile=str(ca)))
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


# ------------------------------------------------------ mailgate serve --enable-chaos

INTEROP = Path(__file__).with_name("interop")
MESSAGE = b"From: app@example.com\r\nSubject: chaos\r\n\r\nHello.\r\n"


def serve(
    launcher: Launcher, tmp_path: Path, *flags: str, env: dict[str, str] | None = None
) -> Serving:
    return launcher.serve(
        *("--smtp", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data", str(tmp_path / "data")),
        *flags,
        env=env,
    )


def put(served: Serving, triggers: object) -> dict[str, object]:
    response = httpx.put(f"{served.http_url}api/v1/chaos", json=triggers, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    answer: dict[str, object] = response.json()
    return answer


def smtp(served: Serving) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", served.port, timeout=TIMEOUT)
    client.ehlo("client.test")
    return client


def test_serve_fails_mail_and_rcpt_as_the_api_sets(launcher: Launcher, tmp_path: Path) -> None:
    served = serve(launcher, tmp_path, "--enable-chaos", "--error-budget", "3")
    chaos_url = f"{served.http_url}api/v1/chaos"
    assert httpx.get(chaos_url, timeout=TIMEOUT).json() == ChaosTriggers().json()
    webui = httpx.get(f"{served.http_url}api/v1/webui", timeout=TIMEOUT).json()
    assert webui["ChaosEnabled"] is True

    put(served, {"Sender": {"ErrorCode": 451, "Probability": 100}})
    with smtp(served) as client:
        for _ in range(5):
            assert client.mail("app@example.com") == (451, b"4.3.0 Chaos sender error")
    put(served, {"Recipient": {"ErrorCode": 550, "Probability": 100}})
    with smtp(served) as client:
        for _ in range(5):  # past the error budget of 3: none of it the client's
            with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
                client.sendmail("app@example.com", ["user@example.org"], MESSAGE)
            assert refused.value.recipients == {
                "user@example.org": (550, b"5.3.0 Chaos recipient error")
            }
        assert client.noop()[0] == 250
    put(served, {})
    with smtp(served) as client:
        for _ in range(10):
            assert client.sendmail("app@example.com", ["user@example.org"], MESSAGE) == {}
    metrics = httpx.get(f"{served.http_url}metrics", timeout=TIMEOUT).text
    assert 'mailgate_smtp_refusals_total{reason="chaos"} 10.0' in metrics
    bad = httpx.put(chaos_url, json={"Sender": {"ErrorCode": 200}}, timeout=TIMEOUT)
    assert (bad.status_code, bad.text) == (400, "Sender: error code must be between 400 and 599")
    log = served.stop_cleanly()
    assert "chaos is enabled" in log
    assert "chaos triggers set: Sender:451:100,Recipient:451:0,Authentication:535:0" in log
    assert log.count('reply="550 5.3.0 Chaos recipient error"') == 5


def test_serve_fails_auth_as_the_api_sets(launcher: Launcher, tmp_path: Path) -> None:
    users = make_users_file(tmp_path, "alice", PASSWORD)
    served = serve(launcher, tmp_path, "--enable-chaos", "--tls-self-signed", "--users", str(users))
    context = ssl.create_default_context(cafile=str(tmp_path / "data/tls/self-signed.crt"))
    context.check_hostname = False  # made for the machine's name; the client dials 127.0.0.1
    put(served, {"Authentication": {"ErrorCode": 535, "Probability": 100}})
    with smtp(served) as client:
        client.starttls(context=context)
        client.ehlo("client.test")
        for _ in range(5):  # more than --max-auth-failures (3): these are no failures
            with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
                client.login("alice", PASSWORD)
            assert refused.value.args == (535, b"5.7.0 Chaos authentication error")
        put(served, {"Authentication": {"Probability": 0}})
        assert client.login("alice", PASSWORD)[0] == 235
    log = served.stop_cleanly()
    assert 'refused AUTH user=alice client=[127.0.0.1] reply="535 5.7.0 Chaos' in log


def test_triggers_given_at_start_fire_at_once(launcher: Launcher, tmp_path: Path) -> None:
    served = serve(launcher, tmp_path, env={"MAILGATE_CHAOS_TRIGGERS": "recipients:452:100"})
    with smtp(served) as client:
        assert client.mail("app@example.com")[0] == 250
        assert client.rcpt("user@example.org") == (452, b"4.3.0 Chaos recipient error")
    answer = httpx.get(f"{served.http_url}api/v1/chaos", timeout=TIMEOUT).json()
    assert answer["Recipient"] == {"ErrorCode": 452, "Probability": 100}
    served.stop_cleanly()


def test_without_enable_chaos_nothing_can_fail_mail(launcher: Launcher, tmp_path: Path) -> None:
    served = serve(launcher, tmp_path)
    chaos_url = f"{served.http_url}api/v1/chaos"
    refused = httpx.put(chaos_url, json={"Sender": {"Probability": 100}}, timeout=TIMEOUT)
    assert (refused.status_code, refused.text) == (400, "Chaos is not enabled")
    assert httpx.get(chaos_url, timeout=TIMEOUT).status_code == 400
    with smtp(served) as client:
        assert client.sendmail("app@example.com", ["user@example.org"], MESSAGE) == {}
    served.stop_cleanly()


@pytest.mark.parametrize(
    ("argv", "env", "key"),
    [
        (["--enable-chaos", "--domain", "example.org"], {}, "--enable-chaos"),
        (["--chaos-triggers", "Sender:451:1", "--domain", "example.org"], {}, "--chaos-triggers"),
        (["--domain", "example.org"], {"MAILGATE_ENABLE_CHAOS": "on"}, "MAILGATE_ENABLE_CHAOS"),
    ],
)
def test_chaos_with_a_domain_is_a_one_line_error(
    tmp_path: Path, argv: list[str], env: dict[str, str], key: str
) -> None:
    done = mailgate("serve", *argv, "--data", str(tmp_path / "data"), cwd=tmp_path, env=env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"mailgate: error: {key}: is for testing only and cannot go with --domain"
    )
    assert not (tmp_path / "data").exists()  # refused before anything was made


def test_the_toml_file_names_its_key(tmp_path: Path) -> None:
    config = tmp_path / "mailgate.toml"
    config.write_text('enable_chaos = true\n[domains."example.org"]\n')
    with pytest.raises(ConfigError) as refused:
        load_settings(argv_values={}, environ={}, config_file=config)
    assert str(refused.value) == (
        f"enable_chaos in {config}: is for testing only and cannot go with --domain"
    )
    config.write_text('chaos_triggers = "Sender:451:50,Authentication:454:5"\n')
    settings = load_settings(argv_values={}, environ={}, config_file=config)
    assert settings.chaos_enabled
    assert settings.chaos_triggers == ChaosTriggers.parse("Sender:451:50,Authentication:454:5")
    assert not load_settings(argv_values={}, environ={}, config_file=None).chaos_enabled
    with pytest.raises(ConfigError, match=r"^MAILGATE_CHAOS_TRIGGERS: unknown trigger 'Data'"):
        load_settings(
            argv_values={}, environ={"MAILGATE_CHAOS_TRIGGERS": "Data:451:1"}, config_file=None
        )


@pytest.mark.interop
def test_mailpits_npm_client_sets_the_triggers(launcher: Launcher, tmp_path: Path) -> None:
    node = require_tool("node")
    if not (INTEROP / "node_modules" / "mailpit-api").is_dir():
        message = "npm's mailpit-api is not installed: npm install --prefix tests/interop"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    served = serve(launcher, tmp_path, "--enable-chaos")

    def client(*triggers: str) -> dict[str, object]:
        done = subprocess.run(
            [node, str(INTEROP / "mailpit_chaos.cjs"), served.http_url, *triggers],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        report: dict[str, object] = json.loads(done.stdout)
        return report

    report = client('{"Recipient": {"ErrorCode": 550, "Probability": 100}}')
    assert report["enabled"] is True
    assert report["before"] == ChaosTriggers().json()
    assert report["after"] == ChaosTriggers(recipient=ChaosTrigger(550, 100)).json()
    with smtp(served) as smtp_client:
        smtp_client.mail("app@example.com")
        assert smtp_client.rcpt("user@example.org") == (550, b"5.3.0 Chaos recipient error")
    assert client()["after"] == ChaosTriggers().json()  # setChaosTriggers(): all reset
    with smtp(served) as smtp_client:
        assert smtp_client.sendmail("app@example.com", ["user@example.org"], MESSAGE) == {}
    served.stop_cleanly()


# ------------------------------------------------------------ --workers: every process


def test_a_worker_is_told_in_a_line_and_answers_its_number() -> None:
    update = ChaosUpdate(7, ChaosTriggers.parse("Sender:554:100"))
    line = update.to_line()
    assert line == "chaos 7 Sender:554:100,Recipient:451:0,Authentication:535:0"
    assert ChaosUpdate.from_line(line) == update
    assert ChaosUpdate.applied(update.applied_line()) == 7
    assert ChaosUpdate.applied('counts {"pid": 1}') is None
    for wrong in ("counts 1 2", "chaos x Sender:451:1", "chaos 1 Helo:451:1"):
        with pytest.raises((ValueError, ChaosError)):
            ChaosUpdate.from_line(wrong)


def each_process(served: Serving, pids: list[int], answer: object) -> dict[int, int]:
    """Connect until each of ``pids`` has served a connection (at most 400 connections); on
    each, MAIL and RCPT: ``answer`` is ``(MAIL code, RCPT code)``.  Connections per pid."""
    served_by = dict.fromkeys(pids, 0)
    for _ in range(400):
        with smtp(served) as client:
            pid = serving_pid(client, pids)
            code = client.mail("app@example.com")[0]
            codes = (code, client.rcpt("user@example.org")[0] if code == 250 else None)
            assert codes == answer, f"process {pid} answered {codes}"
        served_by[pid] += 1
        if all(served_by.values()):
            return served_by
    raise AssertionError(f"400 connections did not reach every process: {served_by}")


def test_with_workers_every_process_applies_what_the_api_sets(
    launcher: Launcher, tmp_path: Path
) -> None:
    served = serve(launcher, tmp_path, "--enable-chaos", "--workers", "2")
    assert served.smtp_processes == 2
    (worker,) = served.children(WORKER)
    pids = [served.process.pid, worker]

    # Each PUT answers once every process has the triggers: the next connection obeys them.
    put(served, {"Sender": {"ErrorCode": 451, "Probability": 100}})
    each_process(served, pids, (451, None))
    put(served, {"Recipient": {"ErrorCode": 550, "Probability": 100}})
    each_process(served, pids, (250, 550))
    put(served, {})
    each_process(served, pids, (250, 250))

    # A worker started again has the triggers in force, not those the node started with.
    put(served, {"Sender": {"ErrorCode": 554, "Probability": 100}})
    os.kill(worker, signal.SIGKILL)
    started = until(
        lambda: [pid for pid in served.children(WORKER) if pid != worker],
        "the killed SMTP worker to be started again",
    )
    each_process(served, [served.process.pid, *started], (554, None))
    put(served, {})
    each_process(served, [served.process.pid, *started], (250, 250))
    log = served.stop_cleanly()
    assert "did not say they have the new chaos triggers" not in log
