"""Every way the README starts the server, started as a user starts it.

Each test runs the ``mailgate`` console script in a process of its own, with
its default process layout (the serving process and its commit service;
SMTP workers with ``--workers``), binds port 0 and reads the ports from the
ready line, then sends with a real client and reads back what was stored.
``serve --domain`` once crashed at start while every domain test passed,
because those tests ran in-process on a path the command does not take; these
tests take the command's path.  Each ends with SIGTERM (one with Ctrl-C): status 0,
no traceback, no process left.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import resource
import signal
import smtplib
import ssl
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from loopback import DnsZone
from mailgate.stores import open_store
from process_helpers import (
    TIMEOUT,
    Launcher,
    Serving,
    inbox,
    mailgate,
    mailgate_queue,
    make_tls_files,
    make_users_file,
    readme_block,
    run_swaks,
    serving_pid,
)
from server_helpers import COMMIT_SERVICE, WORKER

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="finds a server's processes in /proc"
)

PASSWORD = "secret"
MEBIBYTE = 1024 * 1024


@pytest.fixture
def unroutable(dns_zone: Callable[[], DnsZone]) -> list[str]:
    """``--resolver`` flags naming a DNS server that fails (SERVFAIL) for example.net: mail
    relayed there is deferred, never delivered nor bounced, and no test reaches the internet."""
    zone = dns_zone()
    zone.fail("example.net")
    return ["--resolver", zone.nameserver]


def ports_and_data(tmp_path: Path) -> list[str]:
    """The flags every test gives: free ports, and a data directory of its own."""
    return ["--smtp", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data", str(tmp_path / "data")]


def message(subject: str, to: str = "someone@example.org") -> bytes:
    return f"From: app@example.com\r\nTo: {to}\r\nSubject: {subject}\r\n\r\nHello.\r\n".encode()


def rcpt(client: smtplib.SMTP, address: str) -> str:
    """``RCPT TO`` and its reply as ``CODE TEXT``: ``250 2.1.5 Recipient OK``."""
    code, text = client.rcpt(address)
    return f"{code} {text.decode()}"


def send(client: smtplib.SMTP, to: str, subject: str, *, sender: str = "app@example.com") -> str:
    """Send one message to one recipient; the reply to the recipient, or to the data."""
    assert client.mail(sender)[0] == 250
    reply = rcpt(client, to)
    if not reply.startswith("250 "):
        client.rset()
        return reply
    code, text = client.data(message(subject, to))
    return f"{code} {text.decode()}"


def recipients(summary: dict[str, Any]) -> list[str]:
    return [each["Address"] for each in summary["To"]]


def commit_service_and_no_worker(served: Serving) -> None:
    """The default layout: the serving process serves SMTP itself beside one commit service."""
    assert len(served.children(COMMIT_SERVICE)) == 1
    assert served.children(WORKER) == []
    assert served.smtp_processes == 1


def test_the_console_script_runs_the_build_under_test(tmp_path: Path) -> None:
    # ``make test-compiled`` runs this same venv with the compiled build first on the path.
    build = "compiled" if os.environ.get("MAILGATE_EXPECT_COMPILED") == "1" else "pure Python"
    done = mailgate("--version", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith(f" ({build})\n")


# -- catch-all ------------------------------------------------------------------------------------


def test_catch_all_accepts_and_stores_every_recipient(launcher: Launcher, tmp_path: Path) -> None:
    served = launcher.serve(*ports_and_data(tmp_path))
    commit_service_and_no_worker(served)
    assert set(served.ports) == {"smtp"}
    addresses = ["bob@example.org", "x@elsewhere.example", "postmaster", "Odd.Name@EXAMPLE.NET"]
    with smtplib.SMTP("127.0.0.1", served.port, timeout=TIMEOUT) as client:
        client.ehlo("client.test")
        for number, address in enumerate(addresses):
            assert send(client, address, f"catch {number}").startswith("250 2.0.0 ")
    stored = inbox(served)
    assert [m["Subject"] for m in stored] == [f"catch {n}" for n in reversed(range(4))]
    assert [recipients(m) for m in reversed(stored)] == [[a] for a in addresses]
    listed = mailgate("messages", "--data", str(tmp_path / "data"), cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert len(listed.stdout.splitlines()) == 1 + len(addresses)
    served.stop_cleanly()


# -- local domains --------------------------------------------------------------------------------

DOMAIN_SOURCES = [
    pytest.param(["--domain", "example.org"], {}, id="flag"),
    pytest.param([], {"MAILGATE_DOMAIN": "example.org"}, id="environment"),
    pytest.param(["--domain", "example.org"], {"MAILGATE_DOMAIN": "example.net"}, id="flag-wins"),
]


@pytest.mark.parametrize(("flags", "env"), DOMAIN_SOURCES)
def test_a_local_domain(
    launcher: Launcher, tmp_path: Path, flags: list[str], env: dict[str, str]
) -> None:
    served = launcher.serve(*ports_and_data(tmp_path), *flags, env=env)
    commit_service_and_no_worker(served)
    with smtplib.SMTP("127.0.0.1", served.port, timeout=TIMEOUT) as client:
        client.ehlo("client.test")
        assert send(client, "anyone@example.org", "local").startswith("250 2.0.0 ")
        assert send(client, "postmaster@example.org", "postmaster").startswith("250 2.0.0 ")
        assert send(client, "Someone@EXAMPLE.ORG", "any case").startswith("250 2.0.0 ")
        assert send(client, "x@example.net", "relay") == "550 5.7.1 Relaying denied"
        assert send(client, "x@other.example", "relay") == "550 5.7.1 Relaying denied"
    assert [m["Subject"] for m in inbox(served)] == ["any case", "postmaster", "local"]
    served.stop_cleanly()


def test_domains_and_a_size_from_the_environment(launcher: Launcher, tmp_path: Path) -> None:
    # The README's examples of variables: MAILGATE_MAX_MESSAGE_SIZE=10M and a list of domains.
    env = {"MAILGATE_MAX_MESSAGE_SIZE": "10M", "MAILGATE_DOMAIN": "example.org,example.net"}
    served = launcher.serve(*ports_and_data(tmp_path), env=env)
    with smtplib.SMTP("127.0.0.1", served.port, timeout=TIMEOUT) as client:
        client.ehlo("client.test")
        assert client.esmtp_features["size"] == str(10 * MEBIBYTE)
        assert send(client, "a@example.org", "org").startswith("250 2.0.0 ")
        assert send(client, "a@example.net", "net").startswith("250 2.0.0 ")
        assert send(client, "a@example.com", "com") == "550 5.7.1 Relaying denied"
    served.stop_cleanly()


# -- the README's TOML file -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A CA, and a certificate it signed for mx.example.org and 127.0.0.1: the CA's file, the
    certificate's and the key's."""
    return make_tls_files(tmp_path_factory.mktemp("tls"), "mx.example.org", "127.0.0.1")


@pytest.fixture(scope="module")
def users_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A users file with alice, made as the README says: the password on standard input."""
    return make_users_file(tmp_path_factory.mktemp("users"), "alice", PASSWORD)


def readme_config(tmp_path: Path) -> Path:
    """The README's TOML example, verbatim, in a file."""
    path = tmp_path / "mailgate.toml"
    path.write_text(readme_block("toml").text)
    return path


def serve_readme_config(
    launcher: Launcher,
    tmp_path: Path,
    tls_files: tuple[Path, Path, Path],
    users_file: Path,
    *more: str,
) -> Serving:
    """The README's file, with what names this machine (ports, paths, certificates) given as
    flags, which win over the file."""
    _, cert, key = tls_files
    served = launcher.serve(
        *("--config", str(readme_config(tmp_path)), *ports_and_data(tmp_path)),
        *("--submission", "127.0.0.1:0", "--users", str(users_file)),
        *("--tls-cert", str(cert), "--tls-key", str(key), *more),
    )
    commit_service_and_no_worker(served)
    assert set(served.ports) == {"smtp", "submission"}
    return served


def client_context(ca: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def test_the_readme_config_file_is_what_the_example_says(tmp_path: Path) -> None:
    """Guards the tests below: they check what these values promise."""
    config = tomllib.loads(readme_block("toml").text)
    assert config["hostname"] == "mx.example.org"
    assert config["relay_networks"] == ["10.0.0.0/8"]
    assert config["limits"] == {"max_message_size": "50M", "max_recipients": 200}
    assert config["domains"] == {
        "example.org": {"mailboxes": ["alice", "bob"], "aliases": {"team": ["alice", "bob"]}}
    }


def test_the_readme_config_file(
    launcher: Launcher,
    tmp_path: Path,
    tls_files: tuple[Path, Path, Path],
    users_file: Path,
) -> None:
    served = serve_readme_config(launcher, tmp_path, tls_files, users_file)
    with smtplib.SMTP("127.0.0.1", served.port, timeout=TIMEOUT) as client:
        _, greeting = client.ehlo("client.test")
        assert greeting.startswith(b"mx.example.org")  # the file's hostname: no flag replaced it
        assert client.esmtp_features["size"] == str(50 * MEBIBYTE)
        assert "starttls" in client.esmtp_features
        assert client.mail("sender@example.com")[0] == 250
        for address in ("alice@example.org", "bob@example.org", "Alice@Example.Org"):
            assert rcpt(client, address) == "250 2.1.5 Recipient OK"
        assert rcpt(client, "team@example.org") == "250 2.1.5 Recipient OK"
        assert rcpt(client, "postmaster@example.org") == "250 2.1.5 Recipient OK"
        assert rcpt(client, "carol@example.org") == "550 5.1.1 No such user here"
        assert rcpt(client, "someone@example.net") == "550 5.7.1 Relaying denied"
        assert client.data(message("to the mailboxes"))[0] == 250

        # [limits]: the 201st recipient, and a message declared larger than 50M.
        assert client.mail("sender@example.com")[0] == 250
        replies = [rcpt(client, "alice@example.org") for _ in range(201)]
        assert replies[:200] == ["250 2.1.5 Recipient OK"] * 200
        assert replies[200].startswith("452 4.5.3 ")
        client.rset()
        code, text = client.mail("sender@example.com", [f"SIZE={50 * MEBIBYTE + 1}"])
        assert (code, text[:6]) == (552, b"5.3.4 ")
        client.rset()

    with smtplib.SMTP("127.0.0.1", served.port, timeout=TIMEOUT) as client:
        client.ehlo("client.test")
        assert client.mail("sender@example.com")[0] == 250
        assert rcpt(client, "bob@example.org").startswith("250 ")
        # Over the limit while the data streams, with no SIZE to warn of it.
        too_big = b"Subject: too big\r\n\r\n" + (b"x" * 998 + b"\r\n") * (52 * 1024 + 1)
        code, text = client.data(too_big)
        assert (code, text[:6]) == (552, b"5.3.4 ")

    assert [m["Subject"] for m in inbox(served)] == ["to the mailboxes"]
    served.stop_cleanly()


def test_the_readme_config_file_relays_only_for_authenticated_submission(
    launcher: Launcher,
    tmp_path: Path,
    tls_files: tuple[Path, Path, Path],
    users_file: Path,
    unroutable: list[str],
) -> None:
    ca, _, _ = tls_files
    served = serve_readme_config(launcher, tmp_path, tls_files, users_file, *unroutable)
    port = served.ports["submission"]
    with smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT) as client:
        client.ehlo("client.test")
        assert "auth" not in client.esmtp_features  # no AUTH in plaintext
        assert client.mail("alice@example.org")[0] == 530
        client.starttls(context=client_context(ca))
        client.ehlo("client.test")
        assert client.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        assert client.mail("alice@example.org")[0] == 530  # submission: AUTH first
        client.login("alice", PASSWORD)
        assert send(client, "someone@example.net", "relayed", sender="alice@example.org")[:9] == (
            "250 2.0.0"
        )
    [relayed] = inbox(served)
    assert relayed["Subject"] == "relayed"
    assert [
        (r["MessageID"], r["Recipient"]) for r in mailgate_queue(tmp_path, "list", "--json")
    ] == [(relayed["ID"], "someone@example.net")]
    detail = httpx.get(f"{served.http_url}api/v1/message/{relayed['ID']}", timeout=TIMEOUT).json()
    assert detail["Username"] == "alice"
    assert detail["ReturnPath"] == "alice@example.org"

    transcript = run_swaks(
        *("--server", f"127.0.0.1:{port}", "--tls", "--tls-verify", "--tls-ca-path", str(ca)),
        *("--auth", "PLAIN", "--auth-user", "alice", "--auth-password", PASSWORD),
        *("--from", "alice@example.org", "--to", "someone@example.net"),
    )
    assert "235 2.7.0" in transcript
    assert len(inbox(served)) == 2
    served.stop_cleanly()


def test_the_readme_config_file_with_a_relay_network_flag(
    launcher: Launcher,
    tmp_path: Path,
    tls_files: tuple[Path, Path, Path],
    users_file: Path,
    unroutable: list[str],
) -> None:
    # The flag replaces the file's relay_networks (10.0.0.0/8), which loopback is not in.
    served = serve_readme_config(
        launcher, tmp_path, tls_files, users_file, "--relay-network", "127.0.0.1/32", *unroutable
    )
    with smtplib.SMTP("127.0.0.1", served.port, timeout=TIMEOUT) as client:
        client.ehlo("client.test")
        assert send(client, "someone@example.net", "trusted")[:9] == "250 2.0.0"
        assert send(client, "carol@example.org", "unknown") == "550 5.1.1 No such user here"
    assert [m["Subject"] for m in inbox(served)] == ["trusted"]
    served.stop_cleanly()


def test_the_readme_config_file_expands_the_alias(
    launcher: Launcher,
    tmp_path: Path,
    tls_files: tuple[Path, Path, Path],
    users_file: Path,
) -> None:
    served = serve_readme_config(launcher, tmp_path, tls_files, users_file)
    with smtplib.SMTP("127.0.0.1", served.port, timeout=TIMEOUT) as client:
        client.ehlo("client.test")
        assert send(client, "team@example.org", "to the team")[:9] == "250 2.0.0"
    [stored] = inbox(served)
    served.stop_cleanly()

    async def read() -> tuple[set[str], bytes]:
        store = await open_store(f"sqlite://{tmp_path / 'data' / 'mail.db'}")
        try:
            full = await store.get(stored["ID"])
            raw = await store.raw(stored["ID"])
        finally:
            await store.aclose()
        assert full is not None
        assert raw is not None
        return set(full.envelope.rcpt_to) | set(full.envelope.outbound), raw

    envelope, raw = asyncio.run(read())
    headers = raw.split(b"\r\n\r\n", 1)[0].decode().lower()
    named = envelope | {
        address
        for address in ("alice@example.org", "bob@example.org")
        if f"delivered-to: <{address}>" in headers or f"delivered-to: {address}" in headers
    }
    assert {"alice@example.org", "bob@example.org"} <= named, (envelope, headers)


# -- TLS, submission and implicit TLS -------------------------------------------------------------


def test_tls_submission_and_smtps(launcher: Launcher, tmp_path: Path, users_file: Path) -> None:
    served = launcher.serve(
        *ports_and_data(tmp_path),
        *("--hostname", "mx.test", "--tls-self-signed", "--users", str(users_file)),
        *("--auth-failure-delay", "0"),  # the wrong password below need not cost a second
        *("--submission", "127.0.0.1:0", "--smtps", "127.0.0.1:0"),
    )
    commit_service_and_no_worker(served)
    assert set(served.ports) == {"smtp", "submission", "smtps"}
    made = tmp_path / "data" / "tls" / "self-signed.crt"
    context = ssl.create_default_context(cafile=str(made))  # the certificate serve made
    context.check_hostname = False  # made for mx.test; the clients connect to 127.0.0.1
    port = served.ports["submission"]

    with smtplib.SMTP("127.0.0.1", served.port, timeout=TIMEOUT) as client:
        client.ehlo("client.test")
        assert "starttls" in client.esmtp_features  # port 25 offers TLS too
        assert "auth" not in client.esmtp_features
        client.starttls(context=context)
        client.ehlo("client.test")
        assert "PLAIN" in client.esmtp_features["auth"].split()

    with smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT) as client:
        client.ehlo("client.test")
        assert "starttls" in client.esmtp_features
        assert "auth" not in client.esmtp_features
        assert client.mail("alice@example.org")[0] == 530  # 530 before AUTH
        plain = base64.b64encode(f"\0alice\0{PASSWORD}".encode()).decode()
        code, text = client.docmd("AUTH", f"PLAIN {plain}")
        assert code == 538, text  # AUTH only after STARTTLS (RFC 4954 6)
        client.starttls(context=context)
        client.ehlo("client.test")
        assert "PLAIN" in client.esmtp_features["auth"].split()
        assert client.mail("alice@example.org")[0] == 530
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.login("alice", "wrong")
        client.login("alice", PASSWORD)
        assert send(client, "bob@example.net", "submitted")[:9] == "250 2.0.0"

    with smtplib.SMTP_SSL(
        "127.0.0.1", served.ports["smtps"], context=context, timeout=TIMEOUT
    ) as c:
        c.ehlo("client.test")  # the greeting came over TLS: implicit TLS, no STARTTLS
        assert c.sock is not None
        assert isinstance(c.sock, ssl.SSLSocket)
        assert "starttls" not in c.esmtp_features
        assert c.mail("alice@example.org")[0] == 530
        c.login("alice", PASSWORD)
        assert send(c, "carol@example.net", "over smtps")[:9] == "250 2.0.0"

    run_swaks(
        *("--server", f"127.0.0.1:{port}", "--tls", "--auth", "PLAIN"),
        *("--auth-user", "alice", "--auth-password", PASSWORD, "--to", "someone@example.net"),
    )
    stored = inbox(served)
    assert [recipients(m) for m in stored] == [
        ["someone@example.net"],
        ["carol@example.net"],
        ["bob@example.net"],
    ]
    for summary in stored:
        detail = httpx.get(f"{served.http_url}api/v1/message/{summary['ID']}", timeout=TIMEOUT)
        assert detail.json()["Username"] == "alice"
    served.stop_cleanly()


# -- relay networks -------------------------------------------------------------------------------


@pytest.mark.parametrize("trusted", [True, False], ids=["relay-network", "none"])
def test_a_relay_network(
    launcher: Launcher, tmp_path: Path, trusted: bool, unroutable: list[str]
) -> None:
    relay = ["--relay-network", "127.0.0.0/8"] if trusted else []
    served = launcher.serve(
        *ports_and_data(tmp_path), "--domain", "example.org", *relay, *unroutable
    )
    with smtplib.SMTP("127.0.0.1", served.port, timeout=TIMEOUT) as client:
        client.ehlo("client.test")
        reply = send(client, "someone@example.net", "onward")
        assert send(client, "someone@example.org", "local")[:9] == "250 2.0.0"
    if trusted:
        assert reply[:9] == "250 2.0.0"
        assert [m["Subject"] for m in inbox(served)] == ["local", "onward"]
        assert [r["Recipient"] for r in mailgate_queue(tmp_path, "list", "--json")] == [
            "someone@example.net"
        ]
    else:
        assert reply == "550 5.7.1 Relaying denied"
        assert [m["Subject"] for m in inbox(served)] == ["local"]
    served.stop_cleanly()


# -- HTTP basic auth ------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["flag", "environment"])
def test_http_auth(launcher: Launcher, tmp_path: Path, source: str) -> None:
    if source == "flag":
        served = launcher.serve(*ports_and_data(tmp_path), "--http-auth", "user:pass")
    else:
        served = launcher.serve(*ports_and_data(tmp_path), env={"MAILGATE_HTTP_AUTH": "user:pass"})
    if source == "environment":  # the README's reason to prefer it: not in ps
        assert "pass" not in Path(f"/proc/{served.process.pid}/cmdline").read_text()
    with smtplib.SMTP("127.0.0.1", served.port, timeout=TIMEOUT) as client:
        client.sendmail("app@example.com", ["bob@example.org"], message("guarded"))
    url = f"{served.http_url}api/v1/messages"
    refused = httpx.get(url, timeout=TIMEOUT)
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].lower().startswith("basic")
    assert httpx.get(url, auth=("user", "wrong"), timeout=TIMEOUT).status_code == 401
    assert httpx.get(served.http_url, timeout=TIMEOUT).status_code == 401  # the inbox page too
    assert [m["Subject"] for m in inbox(served, auth=("user", "pass"))] == ["guarded"]
    served.stop_cleanly()


# -- SMTP workers ---------------------------------------------------------------------------------


def test_workers_with_a_domain(launcher: Launcher, tmp_path: Path) -> None:
    served = launcher.serve(*ports_and_data(tmp_path), "--workers", "2", "--domain", "example.org")
    assert served.smtp_processes == 2
    workers = served.children(WORKER)
    assert len(workers) == 1
    assert len(served.children(COMMIT_SERVICE)) == 1
    processes = [served.process.pid, *workers]
    answered: dict[int, list[str]] = {pid: [] for pid in processes}
    sent = 0
    with contextlib.ExitStack() as stack:
        # New connections until each process has served two (the kernel spreads them): 4 replies.
        while min(len(replies) for replies in answered.values()) < 4 and sent < 60:
            client = stack.enter_context(smtplib.SMTP("127.0.0.1", served.port, timeout=TIMEOUT))
            client.ehlo("client.test")
            pid = serving_pid(client, processes)
            answered[pid].append(send(client, "someone@example.net", "relay"))
            answered[pid].append(send(client, f"user{sent}@example.org", f"local {sent}"))
            sent += 1
    for replies in answered.values():
        assert len(replies) >= 4, answered  # two connections each, or chance failed us
        assert replies[0::2] == ["550 5.7.1 Relaying denied"] * (len(replies) // 2)
        assert all(reply[:9] == "250 2.0.0" for reply in replies[1::2])
    assert len(inbox(served)) == sent
    served.stop_cleanly()


def test_ctrl_c_stops_every_process(launcher: Launcher, tmp_path: Path) -> None:
    """Ctrl-C in a terminal sends SIGINT to every process of the command at once."""
    served = launcher.serve(*ports_and_data(tmp_path), "--workers", "2", "--domain", "example.org")
    assert len(served.children(WORKER)) == 1
    with smtplib.SMTP("127.0.0.1", served.port, timeout=TIMEOUT) as client:
        client.ehlo("client.test")
        assert send(client, "someone@example.org", "before Ctrl-C")[:9] == "250 2.0.0"
    served.stop_cleanly(signal.SIGINT, group=True)
    listed = mailgate("messages", "--count", "--data", str(tmp_path / "data"), cwd=tmp_path)
    assert listed.stdout == "1\n"


def open_files_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open-files line")


def test_every_process_raises_its_open_files_limit_for_its_connections(
    launcher: Launcher,
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 3000:
        pytest.skip(f"the hard open-files limit here is {hard}")
    # A soft limit of 1,024, as many systems start with, passed on to mailgate serve.
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    try:
        serving = launcher.serve("--smtp", "127.0.0.1:0", "--no-http", "--workers", "2")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    # 1,000 connections, each with a socket and maybe a spool file, and some to spare.
    pids = [serving.process.pid, *serving.children("")]
    assert len(pids) >= 3  # the serving process, its commit service, a second worker
    assert [open_files_limit(pid) for pid in pids] == [2256] * len(pids)
    serving.stop_cleanly()
