"""Tags that come by themselves, as a user sees them: ``mailgate serve``, smtplib, the API.

Each test starts ``mailgate serve`` as a real process, on the SQLite store (through
its commit service) and on a fresh PostgreSQL database, sends mail with an
``X-Tags`` header, to a plus address and matching a ``--tag`` rule, and reads the
tags back from Mailpit's API: the message JSON's ``Tags``, ``/api/v1/tags`` and a
``tag:`` search.  A bad rule stops ``serve`` with one line naming the key.  The
README's example is run here too.
"""

from __future__ import annotations

import shlex
import smtplib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from postgresql_helpers import fresh_database
from process_helpers import TIMEOUT, Launcher, Serving, mailgate, readme_block
from server_helpers import require_tool
from test_readme import ANY_ID, commands, shell

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="real processes")

RULES = ("invoices,Billing=subject:invoice", "big=larger:64K", "vip=from:boss@client.test")


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[str]]:
    """The ``serve`` flags of the store under test."""
    if request.param == "sqlite":
        yield ["--data", str(tmp_path / "data")]
        return
    with fresh_database() as url:
        yield ["--data", str(tmp_path / "data"), "--store", url]


def serve(launcher: Launcher, store: list[str], *argv: str) -> Serving:
    rules = [flag for rule in RULES for flag in ("--tag", rule)]
    return launcher.serve("--smtp", "127.0.0.1:0", "--http", "127.0.0.1:0", *store, *rules, *argv)


def send(served: Serving, recipients: list[str], subject: str, headers: str = "") -> None:
    body = (
        f"{headers}From: a@client.test\r\nTo: team@here.test\r\nSubject: {subject}\r\n\r\nHi.\r\n"
    )
    with smtplib.SMTP("127.0.0.1", served.port, timeout=TIMEOUT) as client:
        client.sendmail("a@client.test", recipients, body.encode())


def api(served: Serving, path: str, **params: str) -> Any:
    response = httpx.get(f"{served.http_url}api/v1/{path}", params=params, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return response.json()


def tags_by_subject(served: Serving, query: str = "") -> dict[str, list[str]]:
    page = api(served, "search", query=query) if query else api(served, "messages")
    return {m["Subject"]: m["Tags"] for m in page["messages"]}


def test_tags_from_the_header_plus_addresses_and_rules(
    launcher: Launcher, store: list[str]
) -> None:
    served = serve(launcher, store)
    send(
        served,
        ["team+welcome@here.test", "ops+night+Welcome@here.test", "plain@here.test"],
        "Invoice 42",
        "X-Tags: Urgent , bad:name,, urgent\r\n",
    )
    send(served, ["plain@here.test"], "Lunch?")
    expected = {
        "Invoice 42": ["Billing", "Urgent", "bad name", "invoices", "night", "welcome"],
        "Lunch?": [],
    }
    assert tags_by_subject(served) == expected
    # The message JSON, /api/v1/tags and the tags the listing names.
    invoice = next(m for m in api(served, "messages")["messages"] if m["Tags"])
    assert api(served, f"message/{invoice['ID']}")["Tags"] == expected["Invoice 42"]
    assert api(served, "tags") == ["bad name", "Billing", "invoices", "night", "Urgent", "welcome"]
    assert api(served, "messages")["tags"] == api(served, "tags")
    # Searches for the tags, as the inbox makes them.
    assert list(tags_by_subject(served, "tag:billing")) == ["Invoice 42"]
    assert list(tags_by_subject(served, 'tag:"bad name"')) == ["Invoice 42"]
    assert list(tags_by_subject(served, "-is:tagged")) == ["Lunch?"]
    served.stop_cleanly()


def test_each_rule_on_what_the_message_is(launcher: Launcher, store: list[str]) -> None:
    served = serve(launcher, store)
    big = "X-Padding: " + "x" * 900 + "\r\n"
    send(served, ["a@here.test"], "Large", big * 80)
    with smtplib.SMTP("127.0.0.1", served.port, timeout=TIMEOUT) as client:
        client.sendmail(
            "boss@client.test",
            ["a@here.test"],
            b"From: The Boss <boss@client.test>\r\nSubject: Hello\r\n\r\nHi.\r\n",
        )
    assert tags_by_subject(served) == {"Large": ["big"], "Hello": ["vip"]}
    served.stop_cleanly()


def test_header_and_plus_tags_turned_off(launcher: Launcher, store: list[str]) -> None:
    served = serve(launcher, store, "--tags-disable", "x-tags,plus-addresses")
    send(served, ["team+welcome@here.test"], "Invoice 7", "X-Tags: urgent\r\n")
    assert tags_by_subject(served) == {"Invoice 7": ["Billing", "invoices"]}
    served.stop_cleanly()


def test_the_environment_and_the_config_file(launcher: Launcher, tmp_path: Path) -> None:
    config = tmp_path / "mailgate.toml"
    config.write_text('tags_disable = "x-tags"\n\n[tags]\nfrom-file = "subject:report"\n')
    served = launcher.serve(
        "--smtp", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data", str(tmp_path / "data"),
        "--config", str(config),
        env={"MAILGATE_TAG": '"weekly=subject:report subject:weekly"'},
    )  # fmt: skip
    send(served, ["a+plus@here.test"], "Weekly report", "X-Tags: ignored\r\n")
    send(served, ["b@here.test"], "Monthly report")
    # The environment's rule wins over the file's, as every setting does.
    assert tags_by_subject(served) == {"Weekly report": ["plus", "weekly"], "Monthly report": []}
    served.stop_cleanly()


@pytest.mark.parametrize(
    ("argv", "env", "line"),
    [
        (
            ["--tag", "subject:invoice=billing"],
            {},
            "mailgate: error: --tag: 'subject:invoice' is not a tag name: 1 to 100 letters,"
            " digits, spaces, '-', '_', '.' or '@' (TAGS=QUERY, e.g. billing=subject:invoice)",
        ),
        (
            ["--tag", "fresh=is:unread"],
            {},
            "mailgate: error: --tag: is:unread cannot be told when mail arrives: it is always"
            " unread",
        ),
        (
            [],
            {"MAILGATE_TAG": "x=before:someday"},
            "mailgate: error: MAILGATE_TAG: 'before:someday': not a date: 'someday'"
            " (use YYYY-MM-DD)",
        ),
        (
            ["--tags-disable", "headers"],
            {},
            "mailgate: error: --tags-disable: 'headers' is not x-tags or plus-addresses",
        ),
    ],
)
def test_a_bad_rule_is_one_line_naming_the_key(
    argv: list[str], env: dict[str, str], line: str, tmp_path: Path
) -> None:
    done = mailgate("serve", "--smtp", "127.0.0.1:0", "--no-http", *argv, cwd=tmp_path, env=env)
    assert done.returncode == 2
    assert done.stderr == line + "\n"
    assert not (tmp_path / "mailgate-data").exists()  # refused before anything started


def test_the_readme_example(launcher: Launcher, tmp_path: Path) -> None:
    """The commands as shown, with free ports in place of 1025 and 8025."""
    require_tool("curl")
    require_tool("jq")
    (serve_shown, _), (send_shown, sent_shown), (curl_shown, listed_shown) = commands(
        readme_block("console", "$ mailgate serve --tag")
    )
    argv = shlex.split(serve_shown.removesuffix("&"))
    assert argv[:2] == ["mailgate", "serve"]
    served = launcher.serve(*argv[2:], "--smtp", "127.0.0.1:0", "--http", "127.0.0.1:0")
    sent = shell(send_shown.replace("127.0.0.1:1025", f"127.0.0.1:{served.port}"), cwd=tmp_path)
    assert sent.returncode == 0, sent.stderr
    assert ANY_ID.sub("ID", sent.stdout) == ANY_ID.sub("ID", sent_shown)
    listed = shell(curl_shown.replace("http://127.0.0.1:8025/", served.http_url), cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout == listed_shown
    served.stop_cleanly()
