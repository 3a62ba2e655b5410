"""The servers under test: how each is started, stopped and asked what it kept.

Every server is started fresh for every run, on a free loopback port, with its
own directory, so each run's count of stored messages is exact.

``count`` is what the server kept: messages stored durably for mailgate,
Postfix and aiosmtpd + Maildir; messages received (and dropped) for the two
discarding references. The harness compares it with what the client saw
acknowledged.

A server with ``nodes`` > 1 is several processes on one machine, each on its
own port (``Running.ports``), that act as one server: the load is split
between the ports.  The PostgreSQL servers keep their mail in a database of
their own on ``BENCH_POSTGRESQL``'s server, created when a run starts and
dropped when it ends (``Server.discard``).

A server that ``relays`` can be started with ``relay_port``: it then sends
mail for other domains onward to that port (smtp-sink, in the relay scenario)
from its durable queue; ``outbound_pending`` says how much still waits there
and ``relay_check`` what its own records say was delivered.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from bench import _proc

try:
    import psycopg
except ImportError:  # the PostgreSQL servers then say why they cannot run
    psycopg = None  # type: ignore[assignment]

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(os.environ.get("BENCH_VENV_BIN", REPO / ".venv" / "bin"))
MAILGATE = Path(os.environ.get("MAILGATE_BIN", VENV_BIN / "mailgate"))
AIOSMTPD = VENV_BIN / "aiosmtpd"
POSTFIX = Path("/usr/sbin/postfix")
POSTCONF = Path("/usr/sbin/postconf")
SMTP_SINK = Path(shutil.which("smtp-sink") or "/usr/sbin/smtp-sink")

MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # room for the 50 MiB message of scenario 5
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0
LOCAL_DOMAIN = "bench.test"  # the one domain a relaying server keeps mail for
RELAY_NETWORK = "127.0.0.0/8"  # clients allowed to relay: the load generator
DELIVERED_TO_SINK = "delivered to the sink"  # the count every relay_check gives
POSTGRESQL = os.environ.get("BENCH_POSTGRESQL", "postgresql://postgres@127.0.0.1:5432")
"""The PostgreSQL server the PostgreSQL runs make their databases on (a URL without one)."""


def count_mailgate_messages(
    data_dir: Path, env: dict[str, str] | None = None, *, store: str | None = None
) -> int:
    """How many messages mailgate has stored under ``data_dir`` (or in ``store``, a URL).

    The one place that knows how to ask mailgate; change it here if the
    command changes.
    """
    where = ["--store", store] if store else []
    done = subprocess.run(
        [str(MAILGATE), "messages", "--data", str(data_dir), *where, "--count"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        env=env,
    )
    return int(done.stdout.strip().splitlines()[-1])


_NOT_STARTED: subprocess.Popen[bytes] = None  # type: ignore[assignment]


@dataclass
class Running:
    """One started server."""

    server: Server
    port: int
    workdir: Path
    proc: subprocess.Popen[bytes]
    log: Path
    http_port: int | None = None
    big: bool = False
    connections: int | None = None
    relay_port: int | None = None
    clean_stop: bool | None = None
    stop_status: int | None = None
    known_pids: set[int] = field(default_factory=set)
    others: list[Running] = field(default_factory=list)
    """The other nodes of a server of several (``Server.nodes``), each on its own port."""
    database: str = ""
    """The URL of the database a PostgreSQL server keeps its mail in."""

    @property
    def ports(self) -> list[int]:
        """Every node's SMTP port, the first node's first: the load is split between them."""
        return [self.port, *(other.port for other in self.others)]

    def pids(self) -> list[int]:
        """The server's live processes (the whole tree for Postfix; every node's)."""
        pids = _proc.tree(self.proc.pid)
        for other in self.others:
            pids += other.pids()
        self.known_pids.update(pids)
        return pids

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.replace("\r", "\n").splitlines()[-lines:])


class Server:
    """Base class: a server the harness can start and stop."""

    key = ""
    label = ""
    durable = False  # stores messages (True) or only counts them (False)
    scenarios: tuple[str, ...] | None = None  # the only scenarios it runs in; None: any

    def unavailable(self) -> str | None:
        """Why this server cannot run here, or None."""
        return None

    def relays(self) -> str | None:
        """Why this server cannot relay mail onward, or None when it can."""
        return "it keeps all mail it accepts"

    def version(self) -> str:
        return ""

    def command(self) -> str:
        """The start command as the report shows it."""
        raise NotImplementedError

    def argv(self, run: Running) -> list[str]:
        raise NotImplementedError

    def prepare(self, workdir: Path, port: int, relay_port: int | None) -> None:
        """Create the server's files under ``workdir`` before it starts."""
        del workdir, port, relay_port

    def start(
        self,
        workdir: Path,
        *,
        big: bool = False,
        http_port: int | None = None,
        connections: int | None = None,
        relay_port: int | None = None,
    ) -> Running:
        """Start the server on a free port with ``workdir`` as its own directory.

        ``big``: allow the 50 MiB message. ``connections``: let this many
        sessions in at once where the server has a configurable limit.
        ``relay_port``: keep mail for ``LOCAL_DOMAIN`` only and send the rest,
        from clients in ``RELAY_NETWORK``, to 127.0.0.1 on that port.
        Raises RuntimeError when it does not come up.
        """
        workdir.mkdir(parents=True, exist_ok=True)
        port = _proc.free_port()
        self.prepare(workdir, port, relay_port)
        log = workdir / "server.log"
        run = Running(
            self, port, workdir, _NOT_STARTED, log, http_port, big, connections, relay_port
        )
        with log.open("wb") as out:
            run.proc = _proc.spawn(
                self.argv(run), env=self.env(), stdout=out, stderr=subprocess.STDOUT
            )
        try:
            _proc.wait_listening(port, run.proc, START_TIMEOUT_S)
            self.wait_ready(run, START_TIMEOUT_S)
        except (RuntimeError, TimeoutError) as exc:
            self.stop(run)
            raise RuntimeError(f"{self.label} did not start: {exc}\n{run.log_tail()}") from exc
        except BaseException:
            self.stop(run)
            raise
        run.pids()
        return run

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def wait_ready(self, run: Running, timeout_s: float) -> None:
        """Wait, past its port listening, until the server serves in full (a no-op here)."""

    def settle(self, run: Running, expected: int, timeout_s: float) -> float:
        """Wait until accepted mail has reached its final place; return seconds waited."""
        del run, expected, timeout_s
        return 0.0

    def stop(self, run: Running) -> None:
        run.clean_stop, run.stop_status = _proc.stop(
            run.proc, sig=signal.SIGTERM, timeout_s=STOP_TIMEOUT_S, extra_pids=run.known_pids
        )

    def count(self, run: Running) -> int | None:
        """Messages kept (stored, or counted by a discarding server); call after stop."""
        raise NotImplementedError

    def discard(self, run: Running) -> None:
        """Remove what the server kept outside its directory; call after ``count``."""
        del run

    def helper_pids(self, run: Running) -> list[int]:
        """Processes outside the server's own that work for it now (the PostgreSQL
        backends serving its database's connections)."""
        del run
        return []

    def outbound_pending(self, run: Running) -> int:
        """Messages (or recipients) still waiting in the server's outbound queue."""
        raise NotImplementedError

    def relay_check(self, run: Running, expected: int) -> dict[str, int]:
        """What the server's own records say about the mail it relayed: counts by
        delivery state (mailgate) or of logged deliveries (Postfix), always with
        ``DELIVERED_TO_SINK``. Call while it runs, once ``outbound_pending`` is 0; it
        waits a little for ``expected``."""
        raise NotImplementedError


class Mailgate(Server):
    """mailgate, from a snapshot of a commit when :meth:`snapshot` was called.

    Other people change the tree while the benchmark runs; a snapshot keeps
    every run on the same code, built as the wheel users install. The snapshot
    goes first on PYTHONPATH, ahead of the editable install's path to the
    working tree (pure Python, what runs without a snapshot).
    """

    durable = True

    def __init__(self, *, workers: str = "auto", flags: tuple[str, ...] = ()) -> None:
        self.workers = workers
        self.flags = flags
        """More ``serve`` flags, for comparing settings of one build (bench/ab.py)."""
        if workers == "auto":
            self.key, self.label = "mailgate", "mailgate (one SMTP process per CPU)"
        else:
            self.key, self.label = f"mailgate-{workers}", f"mailgate ({workers} SMTP process)"
        self.source: Path | None = None
        self.source_note = "the working tree, live (it may change during the run)"

    def wait_ready(self, run: Running, timeout_s: float) -> None:
        """Wait for the line ``mailgate serve`` prints once every SMTP process serves.

        The port listens as soon as the first worker does; load sent then would go to
        the workers alone, and 50 long sessions would stay there (the serving process
        joins the port's ``SO_REUSEPORT`` group last).
        """
        deadline = time.monotonic() + timeout_s
        while b" listening: " not in run.log.read_bytes():
            if run.proc.poll() is not None:
                raise RuntimeError(f"exited with status {run.proc.returncode} before serving")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no 'listening' line within {timeout_s:.0f} s")
            time.sleep(0.05)

    def snapshot(self, into: Path, revision: str = "HEAD") -> None:
        """Run mailgate as built from ``revision``: the wheel a user would install.

        The commit's tree is built into a wheel (its hot path compiled, where that
        revision's build compiles it) and unpacked into ``into/site``; should the
        build fail, its ``src/`` runs as it is.
        """
        into.mkdir(parents=True, exist_ok=True)
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", revision],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", commit],
            capture_output=True,
            timeout=60,
            check=True,
        ).stdout
        tree = into / "tree"
        tree.mkdir(exist_ok=True)
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, timeout=60, check=True)
        pip = [str(MAILGATE.parent / "python"), "-m", "pip", "--disable-pip-version-check"]
        built = subprocess.run(
            [*pip, "wheel", "--quiet", "--no-deps", "-w", str(into / "wheel"), str(tree)],
            capture_output=True,
            timeout=900,
            check=False,
        )
        wheels = sorted((into / "wheel").glob("mailgate-*.whl"))
        if built.returncode == 0 and wheels:
            subprocess.run(
                [
                    *pip,
                    "install",
                    "--quiet",
                    "--no-deps",
                    "--target",
                    str(into / "site"),
                    wheels[0],
                ],
                capture_output=True,
                timeout=300,
                check=True,
            )
        (into / "src").symlink_to(tree / "src")
        (into / "COMMIT").write_text(commit)
        self.use_snapshot(into)

    def use_snapshot(self, into: Path) -> None:
        """Run from a snapshot that :meth:`snapshot` made for another instance."""
        commit = (into / "COMMIT").read_text()
        site = into / "site"
        if site.is_dir():
            self.source = site
            compiled = any((site / "mailgate" / "protocol").glob("_server.*.so"))
            build = "compiled" if compiled else "pure Python"
            self.source_note = f"commit {commit} (its wheel, {build})"
        else:
            self.source = into / "src"
            self.source_note = f"commit {commit} (its src/; the wheel did not build)"
        self.help_text.cache_clear()

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.source is not None:
            env["PYTHONPATH"] = os.pathsep.join(
                filter(None, [str(self.source), env.get("PYTHONPATH")])
            )
        return env

    @cache  # noqa: B019 - one instance per run
    def help_text(self) -> tuple[int, str]:
        if not MAILGATE.exists():
            return 127, f"{MAILGATE} does not exist"
        try:
            done = subprocess.run(
                [str(MAILGATE), "serve", "--help"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
                env=self.env(),
            )
        except subprocess.TimeoutExpired:
            return 124, "`mailgate serve --help` did not finish within 30 s"
        return done.returncode, done.stdout + done.stderr

    def unavailable(self) -> str | None:
        status, text = self.help_text()
        if status == 0:
            return None
        last = text.strip().splitlines()[-1] if text.strip() else f"exit status {status}"
        return f"`mailgate serve --help` fails: {last}"

    def supports(self, flag: str) -> bool:
        status, text = self.help_text()
        return status == 0 and flag in text

    def version(self) -> str:
        code = "import mailgate, importlib.metadata as m; print(m.version('mailgate'))"
        try:
            done = subprocess.run(
                [str(VENV_BIN / "python"), "-c", code],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
                env=self.env(),
            )
            version = done.stdout.strip()
        except (subprocess.SubprocessError, OSError):
            version = "?"
        return f"{version}, {self.source_note}"

    def command(self) -> str:
        workers = f" --workers {self.workers}" if self.workers != "1" else ""
        return f".venv/bin/mailgate serve --smtp 127.0.0.1:PORT --data DIR --no-http{workers}"

    def argv(self, run: Running) -> list[str]:
        argv = [str(MAILGATE), "serve", "--smtp", f"127.0.0.1:{run.port}"]
        argv += ["--data", str(run.workdir / "data")]
        if run.http_port is not None:
            argv += ["--http", f"127.0.0.1:{run.http_port}"]
        else:
            argv += ["--no-http"]
        argv += self.scenario_flags(run)
        if self.supports("--max-messages"):  # keep every message: the count is the result
            argv += ["--max-messages", "0"]
        argv += self.relay_flags(run)
        argv += self.flags
        if self.workers != "1" and self.supports("--workers"):
            argv += ["--workers", self.workers]
        return argv

    def scenario_flags(self, run: Running) -> list[str]:
        """Limits raised for one scenario (when this mailgate has the flag)."""
        flags = []
        if run.big and self.supports("--max-message-size"):
            flags += ["--max-message-size", str(MAX_MESSAGE_BYTES)]
        if run.connections is not None:
            for flag in ("--max-connections", "--max-connections-per-ip"):
                if self.supports(flag):
                    flags += [flag, str(run.connections)]
        return flags

    def relays(self) -> str | None:
        if self.supports("--relay-host"):
            return None
        return "`mailgate serve --help` lists no --relay-host"

    def relay_flags(self, run: Running) -> list[str]:
        """Keep mail for ``LOCAL_DOMAIN``; send the rest through 127.0.0.1:``relay_port``."""
        if run.relay_port is None:
            return []
        return [
            "--domain",
            LOCAL_DOMAIN,
            "--relay-network",
            RELAY_NETWORK,
            "--relay-host",
            f"127.0.0.1:{run.relay_port}",
        ]

    def count(self, run: Running) -> int | None:
        return count_mailgate_messages(run.workdir / "data", self.env())

    def _queue_api(self, run: Running, *, every: bool) -> list[dict[str, object]]:
        """The rows of ``GET /api/v1/queue`` (``?all=true``: delivered ones too)."""
        if run.http_port is None:
            raise RuntimeError("mailgate was started without --http: its queue cannot be read")
        url = f"http://127.0.0.1:{run.http_port}/api/v1/queue" + ("?all=true" if every else "")
        with urllib.request.urlopen(url, timeout=60) as response:
            body = json.loads(response.read())
        return list(body["Recipients"])

    def outbound_pending(self, run: Running) -> int:
        return len(self._queue_api(run, every=False))

    def relay_check(self, run: Running, expected: int) -> dict[str, int]:
        # The queue rows are read back from the store, committed with synchronous=FULL.
        del expected
        states: dict[str, int] = {}
        for row in self._queue_api(run, every=True):
            state = str(row["State"])
            states[state] = states.get(state, 0) + 1
            if state == "delivered" and str(row["Relay"]).endswith(f":{run.relay_port}"):
                states[DELIVERED_TO_SINK] = states.get(DELIVERED_TO_SINK, 0) + 1
        return states


class MailgatePostgreSQL(Mailgate):
    """mailgate with the PostgreSQL store: ``nodes`` nodes on this machine, each a
    ``mailgate serve`` with its own port and directory, sharing one database made
    for the run on ``POSTGRESQL`` and dropped after it."""

    scenarios = ("s9",)

    def __init__(self, *, nodes: int = 1) -> None:
        super().__init__()
        self.nodes = nodes
        if nodes == 1:
            self.key = "mailgate-postgresql"
            self.label = "mailgate on PostgreSQL (one SMTP process per CPU)"
        else:
            self.key = f"mailgate-postgresql-{nodes}"
            self.label = f"mailgate on PostgreSQL, {nodes} nodes (one SMTP process per CPU each)"
        self._database = ""  # the run's, while its nodes start

    def unavailable(self) -> str | None:
        reason = super().unavailable()
        if reason is not None:
            return reason
        if not self.supports("--store"):
            return "`mailgate serve --help` lists no --store"
        if psycopg is None:
            return "psycopg is not installed in the virtualenv"
        try:
            with psycopg.connect(f"{POSTGRESQL}/postgres", connect_timeout=5):
                pass
        except psycopg.Error as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return f"PostgreSQL cannot be reached at {POSTGRESQL} (BENCH_POSTGRESQL): {first}"
        return None

    def command(self) -> str:
        shown = (
            ".venv/bin/mailgate serve --smtp 127.0.0.1:PORT --data DIR"
            f" --store {POSTGRESQL}/DB --no-http --workers {self.workers}"
        )
        if self.nodes > 1:
            shown += f"  ({self.nodes} of them, each with its own PORT and DIR, one DB)"
        return shown

    def argv(self, run: Running) -> list[str]:
        return [*super().argv(run), "--store", self._database]

    def start(
        self,
        workdir: Path,
        *,
        big: bool = False,
        http_port: int | None = None,
        connections: int | None = None,
        relay_port: int | None = None,
    ) -> Running:
        """Make a fresh database, then start every node on it (HTTP on the first only)."""
        assert psycopg is not None
        name = f"mailgate_bench_{os.urandom(6).hex()}"
        with psycopg.connect(f"{POSTGRESQL}/postgres", autocommit=True, connect_timeout=5) as db:
            db.execute(f'CREATE DATABASE "{name}"')
        self._database = f"{POSTGRESQL}/{name}"
        first: Running | None = None
        try:
            for index in range(self.nodes):
                run = super().start(
                    workdir / f"node-{index + 1}",
                    big=big,
                    http_port=http_port if index == 0 else None,
                    connections=connections,
                    relay_port=relay_port,
                )
                run.database = self._database
                if first is None:
                    first = run
                else:
                    first.others.append(run)
        except BaseException:
            if first is not None:
                self.stop(first)
            _drop_database(self._database)
            raise
        assert first is not None
        return first

    def stop(self, run: Running) -> None:
        for node in [*run.others, run]:
            super().stop(node)
        if any(node.clean_stop is False for node in run.others):
            run.clean_stop = False

    def count(self, run: Running) -> int | None:
        return count_mailgate_messages(run.workdir / "data", self.env(), store=run.database)

    def helper_pids(self, run: Running) -> list[int]:
        assert psycopg is not None
        server, _, name = run.database.rpartition("/")
        with psycopg.connect(f"{server}/postgres", autocommit=True, connect_timeout=5) as db:
            rows = db.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s", (name,)
            ).fetchall()
        return [int(pid) for (pid,) in rows]

    def discard(self, run: Running) -> None:
        if run.database:
            _drop_database(run.database)
            run.database = ""


def _drop_database(url: str) -> None:
    """Drop the database ``url`` names, ending its connections first."""
    assert psycopg is not None
    server, _, name = url.rpartition("/")
    with psycopg.connect(f"{server}/postgres", autocommit=True, connect_timeout=5) as db:
        db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Aiosmtpd(Server):
    """aiosmtpd with a handler from :mod:`bench.aiosmtpd_handlers`."""

    def __init__(self, *, maildir: bool) -> None:
        self.maildir = maildir
        self.durable = maildir
        if maildir:
            self.key, self.label = "aiosmtpd-maildir", "aiosmtpd + Maildir + fsync"
        else:
            self.key, self.label = "aiosmtpd-discard", "aiosmtpd discarding"

    def unavailable(self) -> str | None:
        if not AIOSMTPD.exists():
            return f"{AIOSMTPD} not found (run bench/setup.sh)"
        return None

    def version(self) -> str:
        return _venv_module_version("aiosmtpd")

    def _handler(self) -> str:
        name = "MaildirHandler" if self.maildir else "DiscardHandler"
        return f"bench.aiosmtpd_handlers.{name}"

    def command(self) -> str:
        arg = "DIR/Maildir" if self.maildir else "DIR/count"
        return (
            f"PYTHONPATH=. .venv/bin/aiosmtpd -n -l 127.0.0.1:PORT -s {MAX_MESSAGE_BYTES}"
            f" -c {self._handler()} {arg}"
        )

    def argv(self, run: Running) -> list[str]:
        arg = run.workdir / ("Maildir" if self.maildir else "count")
        return [
            str(AIOSMTPD),
            "-n",
            "-l",
            f"127.0.0.1:{run.port}",
            "-s",
            str(MAX_MESSAGE_BYTES),
            "-c",
            self._handler(),
            str(arg),
        ]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        return env

    def stop(self, run: Running) -> None:
        # aiosmtpd's command stops its loop on SIGINT and exits normally.
        run.clean_stop, run.stop_status = _proc.stop(
            run.proc, sig=signal.SIGINT, timeout_s=STOP_TIMEOUT_S, extra_pids=run.known_pids
        )

    def count(self, run: Running) -> int | None:
        if self.maildir:
            return len(os.listdir(run.workdir / "Maildir" / "new"))
        try:
            return int((run.workdir / "count").read_text())
        except (OSError, ValueError):
            return None


class SmtpSink(Server):
    key = "smtp-sink"
    label = "smtp-sink (C, discards)"

    def unavailable(self) -> str | None:
        if not SMTP_SINK.exists():
            return "smtp-sink not found (run bench/setup.sh: Debian package postfix)"
        return None

    def version(self) -> str:
        return f"Postfix {postfix_version()}"

    def command(self) -> str:
        return "smtp-sink -c -u nobody -m 20000 127.0.0.1:PORT 100"

    def argv(self, run: Running) -> list[str]:
        argv = [str(SMTP_SINK), "-c"]
        if os.geteuid() == 0:
            argv += ["-u", "nobody"]  # smtp-sink refuses to keep root privileges
        # -m: the default of 256 simultaneous sessions would cap the idle test.
        return [*argv, "-m", "20000", f"127.0.0.1:{run.port}", "100"]

    def count(self, run: Running) -> int | None:
        # -c prints "sess=N quit=N mesg=N" after each session and each ".".
        found = re.findall(r"mesg=(\d+)", run.log.read_text(errors="replace"))
        return int(found[-1]) if found else 0

    def received(self, run: Running) -> tuple[int, int]:
        """(messages, sessions ended) so far: the last counter line -c printed.

        Only the end of the log is read, so that polling it costs little.
        """
        try:
            with run.log.open("rb") as log:
                log.seek(max(0, log.seek(0, os.SEEK_END) - 256))
                tail = log.read().decode(errors="replace")
        except OSError:
            return 0, 0
        found = re.findall(r"sess=(\d+) quit=\d+ mesg=(\d+)", tail)
        return (int(found[-1][1]), int(found[-1][0])) if found else (0, 0)


class Postfix(Server):
    """A private Postfix instance delivering to one Maildir with virtual(8)."""

    key = "postfix"
    label = "Postfix → Maildir"
    durable = True
    MAIL_UID = 65534  # nobody: owns the Maildir that virtual(8) writes

    def __init__(self, *, process_limit: int | None = None) -> None:
        self.process_limit = process_limit

    def unavailable(self) -> str | None:
        if not POSTFIX.exists() or not Path("/usr/lib/postfix/sbin/master").exists():
            return "Postfix is not installed (run bench/setup.sh)"
        if os.geteuid() != 0:
            return "a private Postfix instance needs root (its daemons run as user postfix)"
        return None

    def version(self) -> str:
        return postfix_version()

    def command(self) -> str:
        return "postfix -c DIR/etc start-fg   (main.cf/master.cf written by bench/servers.py)"

    def relays(self) -> str | None:
        return None

    def prepare(self, workdir: Path, port: int, relay_port: int | None) -> None:
        etc, queue, data, mail, log = (workdir / d for d in ("etc", "queue", "data", "mail", "log"))
        for path in (workdir, etc, queue, data, mail, log):
            path.mkdir(parents=True, exist_ok=True)
        # Postfix daemons run as "postfix", deliveries as nobody: both must
        # reach their directories. The harness makes its own tree 0755.
        workdir.chmod(0o755)
        for path in workdir.parents:
            if path.stat().st_mode & 0o001 == 0:
                raise RuntimeError(f"{path} is not searchable by others; Postfix needs it")
        shutil.chown(data, "postfix", "postfix")
        os.chown(mail, self.MAIL_UID, self.MAIL_UID)
        limit = f"default_process_limit = {self.process_limit}\n" if self.process_limit else ""
        if relay_port is None:
            onward = (
                "# Nothing leaves this instance.\n"
                "relayhost =\n"
                "default_transport = error:outbound mail is disabled in the benchmark\n"
            )
        else:
            onward = (
                "# Mail for other domains goes to the sink, through the durable queue.\n"
                f"relayhost = [127.0.0.1]:{relay_port}\n"
                "default_transport = smtp\n"
            )
        (etc / "main.cf").write_text(
            f"""\
# Private benchmark instance.
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
myhostname = postfix.bench.test
mydomain = bench.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = {RELAY_NETWORK}
maillog_file = {log}/postfix.log
maillog_file_prefixes = {log}
virtual_mailbox_domains = {LOCAL_DOMAIN}
virtual_mailbox_base = {mail}
virtual_mailbox_maps = static:Maildir/
virtual_uid_maps = static:{self.MAIL_UID}
virtual_gid_maps = static:{self.MAIL_UID}
message_size_limit = {MAX_MESSAGE_BYTES}
virtual_mailbox_limit = 0
mailbox_size_limit = 0
alias_maps =
alias_database =
biff = no
{onward}{limit}"""
        )
        # Like Debian's master.cf, without chroot and the services not used here.
        services = [
            f"127.0.0.1:{port} inet n - n - - smtpd",
            "pickup unix n - n 60 1 pickup",
            "cleanup unix n - n - 0 cleanup",
            "qmgr unix n - n 300 1 qmgr",
            "rewrite unix - - n - - trivial-rewrite",
            "bounce unix - - n - 0 bounce",
            "defer unix - - n - 0 bounce",
            "trace unix - - n - 0 bounce",
            "verify unix - - n - 1 verify",
            "flush unix n - n 1000? 0 flush",
            "proxymap unix - - n - - proxymap",
            "showq unix n - n - - showq",
            "error unix - - n - - error",
            "retry unix - - n - - error",
            "discard unix - - n - - discard",
            "local unix - n n - - local",
            "virtual unix - n n - - virtual",
            "smtp unix - - n - - smtp",
            "relay unix - - n - - smtp",
            "anvil unix - - n - 1 anvil",
            "scache unix - - n - 1 scache",
            "postlog unix-dgram n - n - 1 postlogd",
        ]
        (etc / "master.cf").write_text("\n".join(services) + "\n")

    def argv(self, run: Running) -> list[str]:
        return [str(POSTFIX), "-c", str(run.workdir / "etc"), "start-fg"]

    def maildir_new(self, run: Running) -> Path:
        return run.workdir / "mail" / "Maildir" / "new"

    def _delivered(self, run: Running) -> int:
        try:
            return len(os.listdir(self.maildir_new(run)))
        except FileNotFoundError:
            return 0

    def _queued(self, run: Running) -> int:
        queue = run.workdir / "queue"
        total = 0
        for sub in ("maildrop", "incoming", "active", "deferred", "hold"):
            for _dirpath, _dirs, files in os.walk(queue / sub):
                total += len(files)
        return total

    def settle(self, run: Running, expected: int, timeout_s: float) -> float:
        """Wait for the queue to deliver what smtpd accepted."""
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            if self._delivered(run) >= expected or self._queued(run) == 0:
                # An empty queue with fewer delivered means mail went elsewhere
                # (bounced or deferred): count() will show it.
                break
            time.sleep(0.1)
        return time.monotonic() - start

    def stop(self, run: Running) -> None:
        run.pids()
        try:
            subprocess.run(
                [str(POSTFIX), "-c", str(run.workdir / "etc"), "stop"],
                capture_output=True,
                timeout=STOP_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            pass
        super().stop(run)

    def count(self, run: Running) -> int | None:
        return self._delivered(run)

    def outbound_pending(self, run: Running) -> int:
        return self._queued(run)

    def relay_check(self, run: Running, expected: int) -> dict[str, int]:
        # postlogd writes the log a moment after the delivery: wait for it a little.
        sent = 0
        deadline = time.monotonic() + 10.0
        pattern = re.compile(
            rf" relay=127\.0\.0\.1\[127\.0\.0\.1\]:{run.relay_port},.* status=sent "
        )
        while True:
            try:
                text = (run.workdir / "log" / "postfix.log").read_text(errors="replace")
            except OSError:
                text = ""
            sent = sum(1 for line in text.splitlines() if pattern.search(line))
            if sent >= expected or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        return {DELIVERED_TO_SINK: sent}


@cache
def postfix_version() -> str:
    try:
        done = subprocess.run(
            [str(POSTCONF), "-d", "-h", "mail_version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    except (subprocess.SubprocessError, OSError):
        return "not installed"
    return done.stdout.strip()


@cache
def _venv_module_version(name: str) -> str:
    code = f"import importlib.metadata as m; print(m.version({name!r}))"
    try:
        done = subprocess.run(
            [str(VENV_BIN / "python"), "-c", code],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    except (subprocess.SubprocessError, OSError):
        return "not installed"
    return done.stdout.strip()


def all_servers(*, postfix_process_limit: int | None = None) -> dict[str, Server]:
    """Every server the harness knows, in report order."""
    servers: list[Server] = [
        Mailgate(),
        Mailgate(workers="1"),
        Aiosmtpd(maildir=True),
        MailgatePostgreSQL(),
        MailgatePostgreSQL(nodes=2),
        Postfix(process_limit=postfix_process_limit),
        Aiosmtpd(maildir=False),
        SmtpSink(),
    ]
    return {server.key: server for server in servers}


if __name__ == "__main__":  # pragma: no cover - manual check
    for key, server in all_servers().items():
        print(key, server.unavailable() or "ok", server.version(), file=sys.stdout)
