"""Every example in README.md, run: a README that shows something that does not run is a bug.

The fenced blocks are read from the README itself, so what a newcomer reads is
what runs.  The examples name fixed ports (1025, 8025, 1587); the tests start
servers on free ports and put those in their place, and change nothing else.
``test_every_block_is_run`` fails when a block appears that no test runs.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import smtplib
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from loopback import DnsZone
from mailgate.config import OPTIONS, load_settings
from postgresql_helpers import fresh_database
from process_helpers import (
    MAILGATE,
    README,
    TIMEOUT,
    Block,
    Launcher,
    Serving,
    environment,
    mailgate,
    readme_block,
    readme_blocks,
    require_swaks_tls,
    run_command,
)
from server_helpers import require_tool

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="finds a server's processes in /proc"
)

ROOT = README.parent

# Each block of the README, by its language and first line, and the test that runs it.
BLOCKS = {
    ("console", "$ make serve"): "test_make_serve_and_make_test",
    ("text", "220 mail.example.test"): "test_the_session",
    ("console", "$ mailgate messages"): "test_messages_show_and_curl",
    ("toml", 'smtp = "0.0.0.0:25"'): "test_serve_modes.py::test_the_readme_config_file*",
    ("console", "$ echo secret | mailgate users add"): "test_tls_and_auth_for_development",
    ("console", "$ mailgate serve --hostname mail.example.org"): "test_sending_mail_onward",
    ("console", "$ mailgate serve --store postgresql://"): "test_several_nodes_on_postgresql",
    ("console", "$ mailgate serve --tag"): "test_serve_tags.py::test_the_readme_example",
    ("console", "$ mailgate serve --webhook-url"): "test_webhook.py::test_the_readme_example",
    ("json", "{"): "test_webhook.py::test_the_readme_example",
    ("console", "$ printf 'Subject: Backup done"): "test_sendmail",
    ("ini", 'sendmail_path = "mailgate sendmail -t -i"'): "test_sendmail_for_php",
    ("console", "$ sudo ln -s"): "test_sendmail_for_cron",
    ("python", "import smtplib"): "test_the_pytest_example",
    ("python", "# test_signup.py"): "test_the_wait_for_example",
    ("ini", "[pytest]"): "test_the_plugins_ini_options",
    ("", "src/mailgate/"): "test_the_layout",
}

QUEUED_ID = re.compile(r"(?<=queued as )[0-9A-Z]{26}$")
LISTED_ID = re.compile(r"^[0-9A-Z]{26}(?=  )", re.MULTILINE)
LISTED_DATE = re.compile(r"\b\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\b")
TRACE_DATE = re.compile(
    r"\b[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d [+-]\d{4}$", re.M
)


def shell(
    command: str, *, cwd: Path, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a README command line with ``sh``, ``mailgate`` being the console script."""
    path = {"PATH": f"{MAILGATE.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return run_command("sh", "-c", command, cwd=cwd, env={**path, **(env or {})})


def commands(block: Block) -> list[tuple[str, str]]:
    """A console block's ``$ `` commands (continuation lines joined), each with its output."""
    found: list[tuple[str, str]] = []
    continued = False
    for line in block.text.splitlines(keepends=True):
        if continued:
            command, _ = found[-1]
            found[-1] = (f"{command}\n{line.rstrip()}", "")  # sh joins them
        elif line.startswith("$ "):
            found.append((line.removeprefix("$ ").rstrip("\n"), ""))
        else:
            command, output = found[-1]
            found[-1] = (command, output + line)
        continued = line.endswith("\\\n")
    return found


def test_every_block_is_run() -> None:
    matched = []
    for block in readme_blocks():
        keys = [key for key in BLOCKS if block.lang == key[0] and block.text.startswith(key[1])]
        assert len(keys) == 1, f"README.md line {block.line}: no test runs this block; add one"
        matched += keys
    assert sorted(matched) == sorted(BLOCKS), "a test for a block the README no longer has"


# -- make serve, make test ------------------------------------------------------------------------


def make(*argv: str) -> str:
    """What ``make -n ...`` would run in the repository (it runs nothing but sub-makes, also -n)."""
    make = require_tool("make")
    env = environment()
    for name in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES"):  # when make test runs us
        env.pop(name, None)
    done = subprocess.run(
        [make, "--no-print-directory", "-n", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_make_serve_and_make_test() -> None:
    block = readme_block("console", "$ make serve")
    lines = [command for command, _ in commands(block)]
    assert [line.split("#")[0].strip() for line in lines] == ["make serve", "make test"]

    # "creates .venv, installs mailgate, runs it": what make does from nothing (-B).
    steps = make("-B", "serve").splitlines()
    assert steps[0] == "python3 -m venv .venv"
    assert "pip install" in steps[1]
    assert "-e '.[fast]'" in steps[1]
    assert steps[-1].rstrip() == ".venv/bin/mailgate serve"
    # "Pass more flags with make serve ARGS=..."
    text = README.read_text()
    assert 'make serve ARGS="--domain example.org"' in text
    serve = make("serve", "ARGS=--domain example.org").splitlines()[-1]
    assert serve == ".venv/bin/mailgate serve --domain example.org"
    # "listens for SMTP on 127.0.0.1:1025, serves the web inbox and API on 127.0.0.1:8025 and
    # keeps mail in ./mailgate-data (a SQLite database)": the defaults, with nothing set.
    assert "listens for SMTP on 127.0.0.1:1025, serves the web inbox and API on" in text
    defaults = load_settings(argv_values={}, environ={}, config_file=None)
    assert (str(defaults.smtp), str(defaults.http)) == ("127.0.0.1:1025", "127.0.0.1:8025")
    assert defaults.store_url == "sqlite:mailgate-data/mail.db"
    # "Needs Python 3.11 or newer."
    assert "Needs Python 3.11 or newer" in text
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["requires-python"] == ">=3.11"

    # make test: "format check, lint, mypy --strict, layer check, the test suite, coverage gate,
    # then the suite again against the compiled wheel", in that order.
    steps = make("test").splitlines()
    wanted = [
        r"\.venv/bin/ruff format --check \.",
        r"\.venv/bin/ruff check \.",
        r"\.venv/bin/mypy",
        r"\.venv/bin/coverage run .*-m pytest( .*)?",
        r"\.venv/bin/coverage report --include='src/mailgate/protocol/\*' --fail-under=100",
        r"\.venv/bin/python -m pip wheel .*",
        r"MAILGATE_EXPECT_COMPILED=1 PYTHONPATH=build/compiled \.venv/bin/python -m pytest.*",
    ]
    at = 0
    for pattern in wanted:
        at = next(
            (i for i in range(at, len(steps)) if re.fullmatch(pattern, steps[i])),
            -1,
        )
        assert at >= 0, f"make test does not run {pattern} (after the steps before it):\n{steps}"
    # "each pass runs in TEST_JOBS (3) pytest processes ... make test TEST_JOBS=1 runs them
    # one at a time"
    assert "each pass runs in `TEST_JOBS` (3) pytest processes" in " ".join(text.split())
    for jobs, argv in (("3", ()), ("1", ("TEST_JOBS=1",))):
        passes = [step for step in make("test", *argv).splitlines() if " -m pytest " in step]
        assert len(passes) == 2, passes
        assert all(f" -n {jobs} " in step for step in passes), passes
    assert pyproject["tool"]["mypy"]["strict"] is True
    assert (ROOT / "tests" / "test_layers.py").exists()  # the layer check is in the suite


# -- the session, then messages, show and curl ----------------------------------------------------


@dataclass
class Session:
    served: Serving
    directory: Path
    transcript: str
    """The session as it went, with the README's ids in place of the ids the server gave."""
    ids: dict[str, str]
    """README id -> the id the server gave that message."""


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    """The README's session typed into a real ``mailgate serve`` run in a fresh directory,
    on its defaults but for the ports and the host name the transcript shows."""
    directory = tmp_path_factory.mktemp("session")
    launcher = Launcher(directory)
    try:
        served = launcher.serve(
            *("--hostname", "mail.example.test", "--smtp", "127.0.0.1:0", "--http", "127.0.0.1:0")
        )
        transcript, ids = replay(served.port, readme_block("text", "220 ").text)
        yield Session(served, directory, transcript, ids)
        served.stop_cleanly()
    finally:
        launcher.close()


def replay(port: int, transcript: str) -> tuple[str, dict[str, str]]:
    """Type the client's lines of ``transcript`` as ``nc -C`` sends them (each ending in CRLF),
    reading a reply line wherever the transcript shows one; the session as it went."""
    import socket  # noqa: PLC0415

    went: list[str] = []
    ids: dict[str, str] = {}
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as connection:
        replies = connection.makefile("rb")
        for line in transcript.splitlines():
            if not re.match(r"\d{3}[ -]", line):
                connection.sendall(line.encode() + b"\r\n")
                went.append(line)
                continue
            reply = replies.readline().decode()
            assert reply.endswith("\r\n"), f"the connection ended before {line!r}: {went}"
            reply = reply.removesuffix("\r\n")
            if (given := QUEUED_ID.search(reply)) and (shown := QUEUED_ID.search(line)):
                ids[shown[0]] = given[0]
                reply = QUEUED_ID.sub(shown[0], reply)
            went.append(reply)
        assert replies.readline() == b"", "the server did not close the connection after QUIT"
    return "".join(f"{line}\n" for line in went), ids


def run_console_command(command: str, *, cwd: Path) -> str:
    """What ``command`` prints, as a console shows it (its last line ended)."""
    curl = re.fullmatch(r"curl -s (\S+) \| head -c (\d+)", command)
    if curl and shutil.which("curl") is None:
        # A fresh Debian has no curl (CI installs none): the same request, made with httpx.
        body = httpx.get(curl[1], timeout=TIMEOUT).content[: int(curl[2])]
        return body.decode() + "\n"
    done = shell(command, cwd=cwd)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    return done.stdout if done.stdout.endswith("\n") else done.stdout + "\n"


def test_the_session(session: Session) -> None:
    assert "`nc -C 127.0.0.1 1025`" in README.read_text()
    assert session.transcript == readme_block("text", "220 ").text
    assert len(set(session.ids.values())) == 2
    # "make serve ... keeps mail in ./mailgate-data (a SQLite database)": its defaults.
    assert session.served.where == "data ./mailgate-data"
    assert (session.directory / "mailgate-data" / "mail.db").is_file()


def test_messages_show_and_curl(session: Session) -> None:
    block = readme_block("console", "$ mailgate messages")
    ran = []
    for command, _ in commands(block):
        here = command.replace("127.0.0.1:8025", session.served.http_url[len("http://") : -1])
        for shown, given in session.ids.items():
            here = here.replace(shown, given)
        output = run_console_command(here, cwd=session.directory)
        for shown, given in session.ids.items():
            output = output.replace(given, shown)
        ran.append(f"$ {command}\n{output}")
    went = "".join(ran)

    def dateless(text: str) -> str:
        return TRACE_DATE.sub("DATE", LISTED_DATE.sub("YYYY-MM-DD hh:mm:ss", text))

    assert dateless(went) == dateless(block.text)


# -- TLS and AUTH, for development ----------------------------------------------------------------


def test_tls_and_auth_for_development(launcher: Launcher, tmp_path: Path) -> None:
    block = readme_block("console", "$ echo secret | mailgate users add")
    add, serve, swaks = (command for command, _ in commands(block))
    done = shell(add, cwd=tmp_path)
    assert done.returncode == 0, done.stderr

    argv = shlex.split(serve)
    assert argv[:2] == ["mailgate", "serve"]
    assert "127.0.0.1:1587" in argv
    # Free ports for the submission port shown and for the defaults (1025, 8025).
    argv = [arg.replace("127.0.0.1:1587", "127.0.0.1:0") for arg in argv[2:]]
    served = launcher.serve(*argv, "--smtp", "127.0.0.1:0", "--http", "127.0.0.1:0")

    require_swaks_tls()
    done = shell(swaks.replace(":1587", f":{served.ports['submission']}"), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "220 2.0.0" in done.stdout  # STARTTLS
    assert "235 2.7.0" in done.stdout  # AUTH PLAIN as alice
    [stored] = httpx.get(f"{served.http_url}api/v1/messages", timeout=TIMEOUT).json()["messages"]
    assert [to["Address"] for to in stored["To"]] == ["someone@example.net"]
    served.stop_cleanly()


# -- sending mail onward --------------------------------------------------------------------------

ANY_ID = re.compile(r"\b[0-9A-Z]{26}\b")
OCTETS = re.compile(r"(?<=SIZE=)\d+|(?<=BDAT )\d+|(?<=\[)\d+(?= octets)")


def free_loopback_address(port: int) -> str:
    """A 127.0.25.N nobody listens on at ``port``: the example's example.net, another mailgate
    on a loopback address of its own (two suites running at once each get one)."""
    for n in range(1, 255):
        address = f"127.0.25.{n}"
        with socket.socket() as probe:
            try:
                probe.bind((address, port))
            except OSError:
                continue
            return address
    raise RuntimeError(f"no 127.0.25.N address is free on port {port}")


def test_sending_mail_onward(
    launcher: Launcher, tmp_path: Path, dns_zone: Callable[[], DnsZone]
) -> None:
    """The example as shown, but for the DNS: the test's own server answers for example.net
    (``--resolver``), and example.net's MX is a second mailgate on 127.0.25.N."""
    block = readme_block("console", "$ mailgate serve --hostname mail.example.org")
    (serve, _), (send, transcript), (show, listing) = commands(block)
    port = 25 if os.geteuid() == 0 else 0
    remote_address = free_loopback_address(port)
    remote = launcher.serve(
        "--smtp", f"{remote_address}:{port}", "--no-http", "--hostname", "mx.example.net",
        "--domain", "example.net", "--data", str(tmp_path / "example.net"),
    )  # fmt: skip
    bound = re.search(rf"smtp {re.escape(remote_address)}:(\d+)", remote.ready_line)
    assert bound is not None, remote.ready_line
    zone = dns_zone()
    zone.mx("example.net", (10, "mx.example.net"))
    zone.a("mx.example.net", remote_address)
    argv = shlex.split(serve.removesuffix("&"))
    assert argv[:2] == ["mailgate", "serve"]
    served = launcher.serve(
        *argv[2:], "--smtp", "127.0.0.1:0", "--http", "127.0.0.1:0",
        "--resolver", zone.nameserver, "--outbound-port", bound[1],
    )  # fmt: skip
    sent = shell(send.replace("127.0.0.1:1025", f"127.0.0.1:{served.port}"), cwd=tmp_path)
    assert sent.returncode == 0, sent.stderr

    def same(text: str) -> str:
        return OCTETS.sub("N", ANY_ID.sub("ID", text))

    assert same(sent.stdout) == same(transcript)
    match = QUEUED_ID.search(sent.stdout.splitlines()[-3])
    assert match is not None
    shown_id = ANY_ID.search(show)
    assert shown_id is not None
    command = show.replace(shown_id[0], match[0])
    deadline = time.monotonic() + TIMEOUT
    while "delivered" not in (done := shell(command, cwd=tmp_path)).stdout:
        assert time.monotonic() < deadline, done.stdout + done.stderr
        time.sleep(0.05)
    assert same(done.stdout) == same(listing)
    stored = mailgate("messages", "--data", str(tmp_path / "example.net"), cwd=tmp_path)
    assert "alice@example.org  bob@example.net  Lunch?" in stored.stdout
    served.stop_cleanly()
    remote.stop_cleanly()


# -- several nodes on one PostgreSQL --------------------------------------------------------------

SHOWN_STORE = "postgresql://postgres@127.0.0.1/mailgate"


def test_several_nodes_on_postgresql(launcher: Launcher, tmp_path: Path) -> None:
    """The example as shown, on a fresh database and free ports in place of those shown."""
    block = readme_block("console", "$ mailgate serve --store postgresql://")
    (first, _), (second, _), (send, sent_shown), (curl, found_shown) = commands(block)
    with fresh_database() as store:
        ports: dict[str, str] = {}
        for serve in (first, second):
            argv = shlex.split(serve.removesuffix("&"))
            assert argv[:2] == ["mailgate", "serve"]
            assert SHOWN_STORE in argv
            smtp, http = argv[argv.index("--smtp") + 1], argv[argv.index("--http") + 1]
            given = [
                store if a == SHOWN_STORE else "127.0.0.1:0" if a in (smtp, http) else a
                for a in argv[2:]
            ]
            served = launcher.serve(*given)
            ports[smtp] = f"127.0.0.1:{served.port}"
            ports[http] = served.http_url.removeprefix("http://").rstrip("/")

        def here(command: str) -> str:
            for shown, given in ports.items():
                command = command.replace(shown, given)
            return command

        sent = shell(here(send), cwd=tmp_path)
        assert sent.returncode == 0, sent.stderr
        assert ANY_ID.sub("ID", sent.stdout) == ANY_ID.sub("ID", sent_shown)
        found = shell(here(curl), cwd=tmp_path)
        assert found.stdout + "\n" == found_shown


# -- mail from PHP, cron and other programs ------------------------------------------------------

MESSAGE_ID = re.compile(r"<\d+\.\d+\.\d+@[^>\s]+>")


def catcher(launcher: Launcher) -> tuple[Serving, dict[str, str]]:
    """A server named as the examples show, on free ports; where sendmail finds it."""
    served = launcher.serve(
        "--hostname", "mail.example.test", "--smtp", "127.0.0.1:0", "--http", "127.0.0.1:0"
    )  # fmt: skip
    return served, {"MAILGATE_SENDMAIL_SERVER": f"127.0.0.1:{served.port}"}


def latest(served: Serving) -> tuple[bytes, dict[str, object]]:
    """The newest message's bytes, and its summary from the API."""
    url = f"{served.http_url}api/v1/message/latest"
    return httpx.get(f"{url}/raw", timeout=TIMEOUT).content, httpx.get(url, timeout=TIMEOUT).json()


def test_sendmail(launcher: Launcher, tmp_path: Path) -> None:
    """The example as shown, but for the ports: the server is found through
    MAILGATE_SENDMAIL_SERVER, and the curl asks the test's server."""
    block = readme_block("console", "$ printf 'Subject: Backup done")
    (send, sent), (curl, raw) = commands(block)
    served, env = catcher(launcher)
    done = shell(send, cwd=tmp_path, env=env)
    assert (done.returncode, done.stdout, done.stderr, sent) == (0, "", "", "")
    url = served.http_url.removeprefix("http://").rstrip("/")
    command = curl.replace("127.0.0.1:8025", url)
    if shutil.which("curl") is None:  # as in test_messages_show_and_curl
        got = httpx.get(command.split()[-1], timeout=TIMEOUT).text
    else:
        got = run_console_command(command, cwd=tmp_path)
    assert "<backup@example.org>" in got

    def same(text: str) -> str:
        text = text.replace("\r\n", "\n")
        return MESSAGE_ID.sub("<MESSAGE-ID>", TRACE_DATE.sub("DATE", ANY_ID.sub("ID", text)))

    assert same(got) == same(raw)
    assert "`127.0.0.1:1025`, the default listener" in README.read_text()
    assert "else 127.0.0.1:1025" in mailgate("sendmail", "--help", cwd=tmp_path).stdout
    served.stop_cleanly()


PHP_MAIL = (
    'exit(mail("ops@example.org", "Backup done", "All 3\\n.\\nvolumes copied.",'
    ' "From: backup@example.org\\r\\nBcc: boss@example.org") ? 0 : 1);'
)


def test_sendmail_for_php(launcher: Launcher, tmp_path: Path) -> None:
    """PHP's mail() with the php.ini line shown, and with the shorter one the text names."""
    php = require_tool("php")
    text = README.read_text()
    default = subprocess.run(
        [php, "-n", "-r", 'echo ini_get("sendmail_path");'],
        capture_output=True, text=True, timeout=TIMEOUT, check=True,
    ).stdout  # fmt: skip
    assert default.endswith(" -t -i")
    assert "the flags of PHP's own default, `sendmail -t -i`" in text
    served, env = catcher(launcher)
    env["PATH"] = f"{MAILGATE.parent}{os.pathsep}{os.environ.get('PATH', '')}"
    shorter = 'sendmail_path = "mailgate sendmail"'
    assert f"`{shorter}` works too" in text
    for ini, body in [
        (readme_block("ini", "sendmail_path").text, b"All 3\r\n.\r\nvolumes copied.\r\n"),
        (f"{shorter}\n", b"All 3\r\n"),  # without -i, a lone dot ends the message
    ]:
        (tmp_path / "php.ini").write_text(ini)
        done = run_command(
            php, "-c", str(tmp_path / "php.ini"), "-r", PHP_MAIL, cwd=tmp_path, env=env
        )
        assert (done.returncode, done.stdout, done.stderr) == (0, "", ""), ini
        content, summary = latest(served)
        assert content.endswith(b"\r\n\r\n" + body), ini
        assert b"boss@" not in content  # Bcc removed, in the envelope only:
        assert summary["Bcc"] == [{"Name": "", "Address": "boss@example.org"}]
        assert summary["To"] == [{"Name": "", "Address": "ops@example.org"}]
    served.stop_cleanly()


def test_sendmail_for_cron(launcher: Launcher, tmp_path: Path) -> None:
    """The link made in a directory of the test's own rather than /usr/sbin, without sudo."""
    block = readme_block("console", "$ sudo ln -s")
    sbin = tmp_path / "sbin"
    sbin.mkdir()
    served, env = catcher(launcher)
    for command, output in commands(block):
        here = command.removeprefix("sudo ").replace("/usr/sbin/sendmail", f"{sbin}/sendmail")
        done = shell(here, cwd=tmp_path, env=env)
        assert (done.returncode, done.stdout, done.stderr, output) == (0, "", "", "")
    assert (sbin / "sendmail").resolve() == MAILGATE.resolve()
    content, summary = latest(served)
    assert content.endswith(b"\r\n\r\ndisk 91% full\r\n")
    assert summary["Bcc"] == [{"Name": "", "Address": "ops@example.org"}]
    served.stop_cleanly()


# -- in your tests --------------------------------------------------------------------------------


def run_pytest(project: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """pytest, run in ``project`` as a user runs it: the plugin found because it is installed."""
    env = environment()
    for name in ("PYTEST_ADDOPTS", "PYTEST_PLUGINS", "PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        env.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *argv],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 2,
        check=False,
    )


def test_the_pytest_example(tmp_path: Path) -> None:
    """The example, as a user's own test file, run by pytest with the plugin mailgate installs."""
    (tmp_path / "test_example.py").write_text(readme_block("python", "import smtplib").text)
    done = run_pytest(tmp_path, "test_example.py")
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"\b1 passed\b", done.stdout), done.stdout


def test_the_wait_for_example(tmp_path: Path) -> None:
    """The sign-up example, as the file it names: the link it follows confirms the address."""
    block = readme_block("python", "# test_signup.py")
    (tmp_path / "test_signup.py").write_text(block.text)
    done = run_pytest(tmp_path, "-W", "error", "-p", "no:asyncio", "test_signup.py")
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"\b1 passed\b", done.stdout), done.stdout

    # The assertions are real: a link that confirms nothing fails the test.
    (tmp_path / "test_signup.py").write_text(block.text.replace("confirmed.update(", "len("))
    failed = run_pytest(tmp_path, "test_signup.py")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "AssertionError: assert set() == {'t0k3n'}" in failed.stdout, failed.stdout


def test_the_plugins_ini_options(tmp_path: Path) -> None:
    """The ini file of the README sets mailgate_server's defaults."""
    (tmp_path / "pytest.ini").write_text(readme_block("ini", "[pytest]").text)
    (tmp_path / "test_defaults.py").write_text(
        "import smtplib\n"
        "import pytest\n\n"
        "def test_defaults(mailgate_server):\n"
        "    assert mailgate_server.http_url == ''\n"
        "    with smtplib.SMTP(mailgate_server.host, mailgate_server.port) as smtp:\n"
        "        assert smtp.ehlo()[1].startswith(b'mx.shop.example')\n"
        "        smtp.sendmail('a@shop.example', ['b@example.org'], b'To: b@example.org\\r\\n')\n"
        "        with pytest.raises(smtplib.SMTPRecipientsRefused):\n"
        "            smtp.sendmail('a@shop.example', ['b@example.net'], b'\\r\\n.')\n"
        "    assert mailgate_server.wait_for('to:b@example.org').to[0].address == 'b@example.org'\n"
    )
    done = run_pytest(tmp_path, "test_defaults.py")
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"\b1 passed\b", done.stdout), done.stdout


def test_mailgate_server_as_a_context_manager() -> None:
    from mailgate.testing import MailgateServer  # noqa: PLC0415 - as the README names it

    [code] = re.findall(r"`(with MailgateServer\(.*?\) as server: \.\.\.)`", README.read_text())
    seen: list[str] = []

    def use(server: MailgateServer) -> None:
        with smtplib.SMTP(server.host, server.port, timeout=TIMEOUT) as client:
            client.sendmail("a@example.org", ["b@example.net"], b"Subject: hi\r\n\r\nHi\r\n")
        page = httpx.get(f"{server.http_url}/api/v1/messages", timeout=TIMEOUT).json()
        seen.extend(m["Subject"] for m in page["messages"])
        seen.extend(m.subject for m in server.messages())

    # The "..." of the sentence becomes a use of the server; nothing else changes.
    exec(code.replace(": ...", ": use(server)"), {"MailgateServer": MailgateServer, "use": use})
    assert seen == ["hi", "hi"]


# -- commands and messages named in the text ------------------------------------------------------


def test_the_examples_in_the_text(tmp_path: Path) -> None:
    text = README.read_text()

    error = (
        "mailgate: error: --max-message-size: 'lots' is not a size: give octets, "
        "or a number with K, M or G (e.g. 25M)"
    )
    assert f"`{error}`" in text
    done = mailgate("serve", "--max-message-size", "lots", cwd=tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", f"{error}\n")

    assert "`mailgate 0.1.0 (compiled)` or `(pure Python)`" in text
    version = mailgate("--version", cwd=tmp_path).stdout
    assert re.fullmatch(r"mailgate \d+\.\d+\.\d+ \((compiled|pure Python)\)\n", version)
    assert "`python -m mailgate` works too" in text
    module = run_command(sys.executable, "-m", "mailgate", "--version", cwd=tmp_path)
    assert module.stdout == version

    assert "`echo pw \\| mailgate users add alice --users users`" in text
    done = shell("echo pw | mailgate users add alice --users users", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert mailgate("users", "list", "--users", "users", cwd=tmp_path).stdout == "alice\n"
    # MAILGATE_MAX_MESSAGE_SIZE=10M and MAILGATE_DOMAIN=example.org,example.net are served by
    # test_serve_modes.py::test_domains_and_a_size_from_the_environment.
    assert "(`MAILGATE_MAX_MESSAGE_SIZE=10M`, `MAILGATE_DOMAIN=example.org,example.net`)" in text


def test_the_configuration_table_names_real_flags() -> None:
    text = README.read_text()
    table = text[text.index("## Configuration") : text.index("The environment variable is")]
    named = {
        flag
        for row in table.splitlines()
        if row.startswith("| `--")
        for flag in re.findall(r"--[a-z][a-z-]*", row.split("|")[1])
    }
    assert len(named) > 20, named  # the table was found
    assert named <= {option.flag for option in OPTIONS} | {"--no-http"}


# -- how it is built ------------------------------------------------------------------------------


def test_the_layout() -> None:
    block = readme_block("", "src/mailgate/")
    package = ROOT / "src" / "mailgate"
    named: set[str] = set()
    for line in block.text.splitlines()[1:]:
        if re.match(r"  \S", line):  # a name; deeper lines continue a description
            names, _, description = line.strip().partition("  ")
            assert description.strip(), line
            named.update(name.strip() for name in names.split(","))
    for name in named:
        assert (package / name.rstrip("/")).exists(), f"README names {name}: not in {package}"
    packages = {f"{p.parent.name}/" for p in package.glob("*/__init__.py")}
    assert packages <= named, f"packages the README's layout leaves out: {packages - named}"
