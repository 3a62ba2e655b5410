"""Settings loading: precedence, parsing, and one-line errors naming the key as written."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from config_helpers import error_of, load
from mailgate.config import (
    OPTIONS,
    TLS,
    ConfigError,
    Domain,
    Limits,
    Listen,
    Settings,
    load_settings,
)

# -- defaults and the shape of the tree ---------------------------------------------------------


def test_defaults() -> None:
    settings = load()
    assert settings == Settings()
    assert settings.smtp == Listen("127.0.0.1", 1025)
    assert settings.http == Listen("127.0.0.1", 8025)
    assert settings.data_dir == Path("mailgate-data")
    assert settings.store == ""
    assert settings.store_url == "sqlite:mailgate-data/mail.db"
    assert settings.hostname == ""
    assert settings.domains == ()
    assert settings.catch_all
    assert settings.limits == Limits()
    assert settings.limits.max_message_size == 25 * 1024 * 1024
    assert settings.limits.max_recipients == 1000
    assert settings.limits.max_connections == 1000
    assert settings.limits.max_connections_per_ip == 100
    assert settings.limits.idle_timeout == 300.0
    assert settings.limits.error_budget == 20
    assert settings.limits.max_line_length == 1000
    assert settings.limits.shutdown_grace == 30.0
    assert (settings.vrfy, settings.expn, settings.bare_line_endings) == ("252", "off", "normalise")
    assert settings.log_level == "info"


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.vrfy = "on"  # type: ignore[misc]
    with pytest.raises(TypeError):
        Domain("example.org", aliases={"a": ("b",)}).aliases["c"] = ("d",)  # type: ignore[index]


def _leaf_fields(cls: type, prefix: str = "") -> set[str]:
    names = set()
    defaults = cls()
    for field in dataclasses.fields(cls):
        value = getattr(defaults, field.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, Listen):
            names |= _leaf_fields(type(value), f"{prefix}{field.name}.")
        else:
            names.add(prefix + field.name)
    return names


def test_every_setting_has_exactly_one_option() -> None:
    fields = [option.field for option in OPTIONS]
    assert sorted(fields) == sorted(_leaf_fields(Settings))


def test_option_names_are_unique_and_conventional() -> None:
    for attribute in ("flag", "env", "toml", "dest"):
        names = [getattr(option, attribute) for option in OPTIONS]
        assert len(names) == len(set(names)), attribute
    for option in OPTIONS:
        assert option.flag.startswith("--")
        assert option.env == "MAILGATE_" + option.dest.upper()
        assert option.help
        assert option.metavar


def test_store_url() -> None:
    assert Settings(data_dir=Path("/var/lib/mg")).store_url == "sqlite:///var/lib/mg/mail.db"
    assert Settings(data_dir=Path("./my data")).store_url == "sqlite:my%20data/mail.db"
    assert Settings(store="maildir:///srv/mail").store_url == "maildir:///srv/mail"


def test_listen_str() -> None:
    assert str(Listen("127.0.0.1", 25)) == "127.0.0.1:25"
    assert str(Listen("::1", 25)) == "[::1]:25"
    assert str(Listen("", 1025)) == ":1025"


# -- precedence ---------------------------------------------------------------------------------


def test_flags_beat_environment_beat_file_beat_defaults(tmp_path: Path) -> None:
    toml = 'smtp = "10.0.0.1:25"\nhostname = "file.example"\nvrfy = "on"\nexpn = "on"\n'
    env = {
        "MAILGATE_SMTP": "10.0.0.2:25",
        "MAILGATE_HOSTNAME": "env.example",
        "MAILGATE_VRFY": "off",
    }
    argv = {"smtp": "10.0.0.3:25", "hostname": None}
    settings = load(argv, env, toml, tmp_path)
    assert settings.smtp == Listen("10.0.0.3", 25)
    assert settings.hostname == "env.example"
    assert settings.vrfy == "off"
    assert settings.expn == "on"
    assert settings.bare_line_endings == "normalise"


def test_limits_from_every_source(tmp_path: Path) -> None:
    toml = "[limits]\nmax_message_size = 1048576\nmax_recipients = 500\nidle_timeout = 60\n"
    env = {"MAILGATE_MAX_RECIPIENTS": "300", "MAILGATE_SHUTDOWN_GRACE": "2.5"}
    settings = load({"max_recipients": "200"}, env, toml, tmp_path)
    assert settings.limits == Limits(
        max_message_size=1024 * 1024, max_recipients=200, idle_timeout=60.0, shutdown_grace=2.5
    )


def test_empty_environment_variables_count_as_unset() -> None:
    assert load(env={"MAILGATE_SMTP": "", "MAILGATE_DOMAIN": " "}) == Settings()


def test_unrelated_environment_is_ignored() -> None:
    assert load(env={"MAILGATE_UNKNOWN": "x", "PATH": "/bin"}) == Settings()


def test_a_bad_value_is_reported_even_when_overridden() -> None:
    message = error_of({"smtp": "127.0.0.1:25"}, {"MAILGATE_SMTP": "nonsense"})
    assert message.startswith("MAILGATE_SMTP: ")


def test_unknown_argv_key_is_a_programming_error() -> None:
    with pytest.raises(TypeError, match="no_such_flag"):
        load({"no_such_flag": "1"})


# -- listen addresses ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:1025", Listen("127.0.0.1", 1025)),
        ("0.0.0.0:25", Listen("0.0.0.0", 25)),
        ("[::1]:25", Listen("::1", 25)),
        ("[::]:2525", Listen("::", 2525)),
        ("[fe80::1%eth0]:25", Listen("fe80::1%eth0", 25)),
        (":1025", Listen("", 1025)),
        ("localhost:0", Listen("localhost", 0)),
        ("mail.example.org:65535", Listen("mail.example.org", 65535)),
        (" 127.0.0.1:25 ", Listen("127.0.0.1", 25)),
    ],
)
def test_listen_addresses(text: str, expected: Listen) -> None:
    assert load({"smtp": text}).smtp == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("127.0.0.1", "'127.0.0.1' is not HOST:PORT"),
        ("", "'' is not HOST:PORT"),
        ("127.0.0.1:", "'' is not a port number (0 to 65535)"),
        ("127.0.0.1:65536", "'65536' is not a port number"),
        ("127.0.0.1:-1", "'-1' is not a port number"),
        ("127.0.0.1:٣", "'٣' is not a port number"),
        ("::1:25", "write an IPv6 address in brackets, e.g. [::1]:25"),
        ("[::1]25", "'[::1]25' is not [IPv6]:PORT"),
        ("[127.0.0.1]:25", "'127.0.0.1' is not an IPv6 address"),
        ("bad_host:25", "'bad_host' is not a host name or IP address"),
        ("-x.org:25", "'-x.org' is not a host name or IP address"),
    ],
)
def test_bad_listen_addresses(text: str, problem: str) -> None:
    assert error_of({"smtp": text}).startswith(f"--smtp: {problem}")


@pytest.mark.parametrize("off", ["off", "OFF", "false", "no", "none"])
def test_http_off_from_text(off: str) -> None:
    assert load({"http": off}).http is None
    assert load(env={"MAILGATE_HTTP": off}).http is None


def test_http_from_file(tmp_path: Path) -> None:
    assert load(toml="http = false", tmp_path=tmp_path).http is None
    assert load(toml='http = ":8080"', tmp_path=tmp_path).http == Listen("", 8080)
    assert error_of(toml="http = true", tmp_path=tmp_path) == (
        f"http in {tmp_path / 'mailgate.toml'}: expected HOST:PORT or false, got true"
    )


def test_smtp_and_http_must_differ(tmp_path: Path) -> None:
    assert error_of({"http": "127.0.0.1:1025"}) == (
        "--http: 127.0.0.1:1025 is both the smtp and the http address"
    )
    assert error_of(env={"MAILGATE_SMTP": "127.0.0.1:8025"}).startswith("MAILGATE_SMTP: ")
    # Port 0 asks the system for a free port, so both may say so.
    assert load({"smtp": "127.0.0.1:0", "http": "127.0.0.1:0"}).http == Listen("127.0.0.1", 0)


# -- sizes, numbers, durations ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "octets"),
    [
        ("1048576", 1048576),
        ("25M", 25 * 1024**2),
        ("25m", 25 * 1024**2),
        ("25MB", 25 * 1024**2),
        ("25MiB", 25 * 1024**2),
        ("25 MB", 25 * 1024**2),
        ("64K", 65536),
        ("1G", 1024**3),
        ("0", 0),
    ],
)
def test_sizes(text: str, octets: int) -> None:
    assert load({"max_message_size": text}).limits.max_message_size == octets


@pytest.mark.parametrize("text", ["25X", "M", "-1", "1.5M", "25 M B", "", "\uff12\uff15M"])
def test_bad_sizes(text: str) -> None:
    assert error_of({"max_message_size": text}) == (
        f"--max-message-size: {text!r} is not a size: give octets, "
        "or a number with K, M or G (e.g. 25M)"
    )


def test_size_below_the_rfc_minimum() -> None:
    assert error_of(env={"MAILGATE_MAX_MESSAGE_SIZE": "1K"}) == (
        "MAILGATE_MAX_MESSAGE_SIZE: must be at least 65536 octets "
        "(RFC 5321 4.5.3.1.7; 0 for no limit), got 1024"
    )


def test_sizes_in_the_file(tmp_path: Path) -> None:
    assert load(toml='[limits]\nmax_message_size = "10M"', tmp_path=tmp_path).limits == Limits(
        max_message_size=10 * 1024**2
    )
    assert error_of(toml="[limits]\nmax_message_size = true", tmp_path=tmp_path) == (
        f"limits.max_message_size in {tmp_path / 'mailgate.toml'}: expected a string, got a boolean"
    )


def test_max_recipients_minimum(tmp_path: Path) -> None:
    assert load({"max_recipients": "100"}).limits.max_recipients == 100
    assert error_of({"max_recipients": "99"}) == (
        "--max-recipients: must be at least 100 (RFC 5321 4.5.3.1.8), got 99"
    )
    assert error_of(toml="[limits]\nmax_recipients = 10", tmp_path=tmp_path) == (
        f"limits.max_recipients in {tmp_path / 'mailgate.toml'}: "
        "must be at least 100 (RFC 5321 4.5.3.1.8), got 10"
    )


def test_workers(tmp_path: Path) -> None:
    assert load().workers == 1
    assert load({"workers": "4"}).workers == 4
    assert load(env={"MAILGATE_WORKERS": "auto"}).workers == 0  # one per CPU
    assert load(toml="workers = 2", tmp_path=tmp_path).workers == 2
    assert error_of({"workers": "0"}) == "--workers: must be at least 1, got 0"
    assert error_of({"workers": "65"}) == "--workers: 65 is more than 64 workers"
    assert error_of(env={"MAILGATE_WORKERS": "many"}) == (
        "MAILGATE_WORKERS: 'many' is not a number of processes or auto"
    )


def test_max_line_length_minimum() -> None:
    assert load({"max_line_length": "4096"}).limits.max_line_length == 4096
    assert error_of({"max_line_length": "998"}) == (
        "--max-line-length: must be at least 1000 (RFC 5321 4.5.3.1.6), got 998"
    )


@pytest.mark.parametrize("text", ["ten", "1.5", "", "-3", "1e3"])
def test_bad_whole_numbers(text: str) -> None:
    assert error_of({"max_connections": text}) == (
        f"--max-connections: {text!r} is not a whole number"
    )


def test_whole_numbers_in_the_file(tmp_path: Path) -> None:
    toml = "[limits]\nmax_connections = 5\nmax_connections_per_ip = 1\nerror_budget = 3"
    limits = load(toml=toml, tmp_path=tmp_path).limits
    assert (limits.max_connections, limits.max_connections_per_ip, limits.error_budget) == (5, 1, 3)
    assert error_of(toml="[limits]\nmax_connections = 0", tmp_path=tmp_path).endswith(
        ": must be at least 1, got 0"
    )
    assert error_of(toml="[limits]\nmax_connections = 1.5", tmp_path=tmp_path).endswith(
        ": a float is not a whole number"
    )
    assert error_of(toml="[limits]\nmax_connections = false", tmp_path=tmp_path).endswith(
        ": a boolean is not a whole number"
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("300", 300.0), ("2.5", 2.5), (".5", 0.5), ("90s", 90.0), ("5m", 300.0), ("1h", 3600.0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert load({"idle_timeout": text}).limits.idle_timeout == seconds


@pytest.mark.parametrize("text", ["soon", "5 minutes", "-1", "", "1w"])
def test_bad_durations(text: str) -> None:
    assert error_of({"idle_timeout": text}) == (
        f"--idle-timeout: {text!r} is not a duration: give seconds, or use s, m, h or d"
    )


def test_session_deadlines(tmp_path: Path) -> None:
    limits = load(
        {"stress_timeout": "5", "min_data_rate": "2K", "data_rate_grace": "1m"},
        env={"MAILGATE_MAX_SESSION_TIME": "2h"},
    ).limits
    assert (limits.stress_timeout, limits.min_data_rate, limits.data_rate_grace) == (5, 2048, 60)
    assert limits.max_session_time == 7200
    toml = "[limits]\nmin_data_rate = 0\nmax_session_time = 600\n"
    limits = load(toml=toml, tmp_path=tmp_path).limits
    assert (limits.min_data_rate, limits.max_session_time) == (0, 600)
    assert error_of({"max_session_time": "0.5"}) == (
        "--max-session-time: must be at least 1 seconds, got 0.5"
    )
    assert error_of({"min_data_rate": "fast"}).startswith("--min-data-rate: 'fast' is not a size")


def test_duration_bounds(tmp_path: Path) -> None:
    assert error_of({"idle_timeout": "0"}) == (
        "--idle-timeout: must be at least 0.001 seconds, got 0"
    )
    assert load({"shutdown_grace": "0"}).limits.shutdown_grace == 0.0
    assert load(toml="[limits]\nshutdown_grace = 1", tmp_path=tmp_path).limits.shutdown_grace == 1
    assert error_of(toml="[limits]\nidle_timeout = inf", tmp_path=tmp_path).endswith(
        ": must be at least 0.001 seconds, got inf"
    )


# -- choices ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dest", "text", "expected"),
    [
        ("vrfy", "OFF", "off"),
        ("vrfy", "252", "252"),
        ("vrfy", "on", "on"),
        ("expn", "on", "on"),
        ("bare_line_endings", "normalise", "normalise"),
        ("bare_line_endings", "normalize", "normalise"),
        ("log_level", "DEBUG", "debug"),
    ],
)
def test_choices(dest: str, text: str, expected: str) -> None:
    assert getattr(load({dest: text}), dest) == expected


def test_bad_choices() -> None:
    assert error_of({"vrfy": "maybe"}) == "--vrfy: 'maybe' is not one of off, 252, on"
    assert error_of(env={"MAILGATE_EXPN": "252"}) == "MAILGATE_EXPN: '252' is not one of off, on"
    assert error_of({"log_level": "loud"}) == (
        "--log-level: 'loud' is not one of debug, info, warning, error, critical"
    )


def test_choices_in_the_file(tmp_path: Path) -> None:
    settings = load(toml="vrfy = 252\nexpn = true", tmp_path=tmp_path)
    assert (settings.vrfy, settings.expn) == ("252", "on")
    assert load(toml="expn = false\nvrfy = false", tmp_path=tmp_path).vrfy == "off"
    assert error_of(toml="bare_line_endings = true", tmp_path=tmp_path).endswith(
        ": expected a string, got a boolean"
    )


# -- paths, store, hostname ---------------------------------------------------------------------


def test_data_dir_and_store(tmp_path: Path) -> None:
    settings = load({"data": "/srv/mail"})
    assert settings.data_dir == Path("/srv/mail")
    assert settings.store_url == "sqlite:///srv/mail/mail.db"
    assert load({"data": "~/mg"}).data_dir == Path("~/mg").expanduser()
    assert error_of({"data": ""}) == "--data: must not be empty"
    settings = load(env={"MAILGATE_STORE": "postgresql://mailgate@db/mail"})
    assert settings.store_url == "postgresql://mailgate@db/mail"
    assert load(toml='store = "maildir:///srv/mail"', tmp_path=tmp_path).store == (
        "maildir:///srv/mail"
    )
    assert load({"store": "sqlite:mail.db"}).store_url == "sqlite:mail.db"
    assert error_of({"store": "/srv/mail.db"}).startswith(
        "--store: '/srv/mail.db' is not a store URL (e.g. sqlite:///mail.db"
    )


def test_hostname() -> None:
    assert load({"hostname": "Mail.Example.org."}).hostname == "Mail.Example.org"
    assert error_of({"hostname": "mail example"}) == (
        "--hostname: 'mail example' is not a host name"
    )
    assert error_of({"hostname": "a" * 64 + ".org"}).startswith("--hostname: ")


# -- domains ------------------------------------------------------------------------------------


def test_domains_from_flags_and_environment() -> None:
    settings = load({"domain": ["Example.ORG", "example.net.", "example.org"]})
    assert settings.domains == (Domain("example.org"), Domain("example.net"))
    assert not settings.catch_all
    settings = load(env={"MAILGATE_DOMAIN": "a.example, b.example,,"})
    assert [d.name for d in settings.domains] == ["a.example", "b.example"]
    assert error_of({"domain": ["ok.example", "not a domain"]}) == (
        "--domain: 'not a domain' is not a domain name"
    )
    assert error_of(env={"MAILGATE_DOMAIN": "bücher.example"}) == (
        "MAILGATE_DOMAIN: 'bücher.example': write an internationalised domain in its xn-- form"
    )


def test_domains_from_the_file(tmp_path: Path) -> None:
    toml = """
[domains."Example.org"]
mailboxes = ["Alice", "bob"]
aliases = { team = ["alice", "Carol@Other.Example"], "info.desk" = ["bob"] }

[domains."example.net"]
"""
    settings = load(toml=toml, tmp_path=tmp_path)
    org, net = settings.domains
    assert org == Domain(
        "example.org",
        ("Alice", "bob"),
        {"team": ("alice", "Carol@other.example"), "info.desk": ("bob",)},
    )
    assert net == Domain("example.net")
    assert settings.domain("EXAMPLE.org.") is org
    assert settings.domain("example.com") is None


def test_flags_replace_the_domains_of_the_file(tmp_path: Path) -> None:
    toml = '[domains."example.org"]\nmailboxes = ["alice"]\n'
    settings = load({"domain": ["example.com"]}, toml=toml, tmp_path=tmp_path)
    assert settings.domains == (Domain("example.com"),)


def test_settings_with_domains_survive_a_pickle(tmp_path: Path) -> None:
    # The commit process and each SMTP worker get the settings as a pickle.
    toml = '[domains."example.org"]\nmailboxes = ["alice"]\naliases = { team = ["alice"] }\n'
    settings = load(toml=toml, tmp_path=tmp_path)
    copy = pickle.loads(pickle.dumps(settings))
    assert copy == settings
    [domain] = copy.domains
    assert domain.alias_targets("TEAM") == ("alice",)
    assert domain.accepts("Alice")
    assert not domain.accepts("mallory")


def test_domain_matching_ignores_case() -> None:
    domain = Domain("example.org", ("Alice",), {"Team": ("alice", "bob@example.net")})
    assert domain.accepts("alice")
    assert domain.accepts("ALICE")
    assert domain.accepts("team")
    assert not domain.accepts("mallory")
    assert domain.alias_targets("TEAM") == ("alice", "bob@example.net")
    assert domain.alias_targets("alice") is None
    assert not domain.catch_all
    catch_all = Domain("example.org")
    assert catch_all.catch_all
    assert catch_all.accepts("anyone")


@pytest.mark.parametrize(
    ("toml", "key", "problem"),
    [
        ("[domains]\nx = 1", "domains.x", "expected a table, got an integer"),
        ("domains = 1", "domains", "expected a table, got an integer"),
        ('[domains."bad domain"]', 'domains."bad domain"', "'bad domain' is not a domain name"),
        (
            '[domains."a.example"]\n[domains."A.example"]',
            'domains."A.example"',
            "'a.example' is defined twice",
        ),
        (
            '[domains."a.example"]\nmailbox = []',
            'domains."a.example".mailbox',
            "unknown key (a domain has mailboxes and aliases)",
        ),
        (
            '[domains."a.example"]\nmailboxes = "alice"',
            'domains."a.example".mailboxes',
            "expected an array of strings, got a string",
        ),
        (
            '[domains."a.example"]\nmailboxes = [1]',
            'domains."a.example".mailboxes',
            "expected a string, got an integer",
        ),
        (
            '[domains."a.example"]\nmailboxes = ["alice@a.example"]',
            'domains."a.example".mailboxes',
            "'alice@a.example' is not a local part (a mailbox name without @)",
        ),
        (
            '[domains."a.example"]\nmailboxes = ["Alice", "alice"]',
            'domains."a.example".mailboxes',
            "'alice' is listed twice",
        ),
        (
            f'[domains."a.example"]\nmailboxes = ["{"x" * 65}"]',
            'domains."a.example".mailboxes',
            f"'{'x' * 65}' is longer than 64 octets (RFC 5321 4.5.3.1.1)",
        ),
        (
            '[domains."a.example"]\naliases = ["x"]',
            'domains."a.example".aliases',
            "expected a table, got an array",
        ),
        (
            '[domains."a.example"]\naliases = { team = [] }',
            'domains."a.example".aliases.team',
            "an alias needs at least one target",
        ),
        (
            '[domains."a.example"]\naliases = { team = "alice" }',
            'domains."a.example".aliases.team',
            "expected an array of strings, got a string",
        ),
        (
            '[domains."a.example"]\naliases = { team = ["alice@bad domain"] }',
            'domains."a.example".aliases.team',
            "'bad domain' is not a domain name",
        ),
        (
            '[domains."a.example"]\naliases = { team = ["@a.example"] }',
            'domains."a.example".aliases.team',
            "'' is not a local part (a mailbox name without @)",
        ),
        (
            '[domains."a.example"]\naliases = { "a b" = ["x"] }',
            'domains."a.example".aliases."a b"',
            "'a b' is not a local part (a mailbox name without @)",
        ),
        (
            '[domains."a.example"]\nmailboxes = ["Team"]\naliases = { team = ["x"] }',
            'domains."a.example".aliases.team',
            "'team' is both a mailbox and an alias",
        ),
        (
            '[domains."a.example"]\naliases = { team = ["x"], TEAM = ["y"] }',
            'domains."a.example".aliases.TEAM',
            "'TEAM' is defined twice",
        ),
    ],
)
def test_bad_domain_tables(tmp_path: Path, toml: str, key: str, problem: str) -> None:
    assert error_of(toml=toml, tmp_path=tmp_path) == (
        f"{key} in {tmp_path / 'mailgate.toml'}: {problem}"
    )


# -- the file itself ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "key", "problem"),
    [
        ("smpt = ':25'", "smtp", "unknown key (did you mean smtp?)"),
        ("whatever = 1", "whatever", "unknown key"),
        ("[limit]\nmax_recipients = 100", "limit", "unknown key (did you mean limits?)"),
        (
            "[limits]\nmax_mesage_size = 1",
            "limits.max_mesage_size",
            "unknown key (did you mean max_message_size?)",
        ),
        ("limits = 5", "limits", "expected a table"),
        ("smtp = 25", "smtp", "expected a string, got an integer"),
        ("smtp = { host = 'x' }", "smtp", "expected a string, got a table"),
        ("smtp = 1979-05-27", "smtp", "expected a string, got a date"),
    ],
)
def test_bad_keys(tmp_path: Path, toml: str, key: str, problem: str) -> None:
    message = error_of(toml=toml, tmp_path=tmp_path)
    shown = key if key != "smtp" or "smpt" not in toml else "smpt"
    assert message == f"{shown} in {tmp_path / 'mailgate.toml'}: {problem}"


def test_unreadable_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as caught:
        load_settings(argv_values={}, environ={}, config_file=missing)
    assert str(caught.value) == f"{missing}: cannot read: No such file or directory"
    with pytest.raises(ConfigError, match=r": cannot read: Is a directory$"):
        load_settings(argv_values={}, environ={}, config_file=tmp_path)

    assert error_of(toml="smtp = \n", tmp_path=tmp_path).startswith(
        f"{tmp_path / 'mailgate.toml'}: not valid TOML: Invalid value (at line 1"
    )
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'hostname = "caf\xe9"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(argv_values={}, environ={}, config_file=path)
    assert str(caught.value) == f"{path}: not UTF-8 text"


def test_a_complete_file(tmp_path: Path) -> None:
    toml = """
smtp = "0.0.0.0:25"
http = "127.0.0.1:8080"
data = "/var/lib/mailgate"
store = "sqlite:////var/lib/mailgate/other.db"
hostname = "mx.example.org"
vrfy = "off"
expn = "on"
bare_line_endings = "normalise"
log_level = "warning"

[limits]
max_message_size = "50M"
max_recipients = 200
max_connections = 50
max_connections_per_ip = 5
idle_timeout = "2m"
error_budget = 10
max_line_length = 2000
shutdown_grace = 5

[domains."example.org"]
mailboxes = ["postmaster"]
"""
    assert load(toml=toml, tmp_path=tmp_path) == Settings(
        smtp=Listen("0.0.0.0", 25),
        http=Listen("127.0.0.1", 8080),
        data_dir=Path("/var/lib/mailgate"),
        store="sqlite:////var/lib/mailgate/other.db",
        hostname="mx.example.org",
        domains=(Domain("example.org", ("postmaster",)),),
        limits=Limits(
            max_message_size=50 * 1024**2,
            max_recipients=200,
            max_connections=50,
            max_connections_per_ip=5,
            idle_timeout=120.0,
            error_budget=10,
            max_line_length=2000,
            shutdown_grace=5.0,
        ),
        vrfy="off",
        expn="on",
        bare_line_endings="normalise",
        log_level="warning",
    )


# -- properties ---------------------------------------------------------------------------------

_hosts = st.one_of(
    st.ip_addresses().map(str),
    st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z]{2,6}){0,2}", fullmatch=True),
    st.just(""),
)


@given(host=_hosts, port=st.integers(0, 65535))
def test_listen_round_trips_through_its_text(host: str, port: int) -> None:
    listen = Listen(host, port)
    assert load({"smtp": str(listen), "http": "off"}).smtp == listen


@given(octets=st.integers(65536, 2**40), unit=st.sampled_from(["", "K", "M", "G"]))
def test_sizes_scale_by_1024(octets: int, unit: str) -> None:
    factor = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[unit]
    number = max(octets // factor, 64)
    assert load({"max_message_size": f"{number}{unit}"}).limits.max_message_size == number * factor


@given(st.text(max_size=30))
@example(":\n:")  # an IPv6-looking host quoted into the message once broke the line
def test_any_text_gives_a_value_or_a_one_line_config_error(text: str) -> None:
    for dest in ("smtp", "max_message_size", "idle_timeout", "hostname", "domain", "vrfy"):
        error: ConfigError | None = None
        try:
            load({dest: [text] if dest == "domain" else text})
        except ConfigError as raised:
            error = raised
        if error is not None:
            assert "\n" not in str(error)
            assert error.key == f"--{dest.replace('_', '-')}"


# -- listeners, TLS, AUTH and relaying ----------------------------------------------------------


def test_submission_smtps_and_tls(tmp_path: Path) -> None:
    toml = """
submission = "0.0.0.0:587"
smtps = "0.0.0.0:465"
users = "/etc/mailgate/users"
relay_networks = ["10.1.2.3/8", "2001:db8::/32"]
[tls]
cert = "/etc/mailgate/cert.pem"
key = "/etc/mailgate/key.pem"
[limits]
max_auth_failures = 5
auth_failure_delay = "1.5s"
"""
    settings = load(toml=toml, tmp_path=tmp_path)
    assert settings.submission == Listen("0.0.0.0", 587)
    assert settings.smtps == Listen("0.0.0.0", 465)
    assert settings.tls == TLS(Path("/etc/mailgate/cert.pem"), Path("/etc/mailgate/key.pem"))
    assert settings.tls.enabled
    assert settings.users == Path("/etc/mailgate/users")
    assert settings.relay_networks == ("10.0.0.0/8", "2001:db8::/32")
    assert (settings.limits.max_auth_failures, settings.limits.auth_failure_delay) == (5, 1.5)
    assert not settings.auth_accept_any


def test_the_guessing_limits_from_each_source(tmp_path: Path) -> None:
    toml = '[limits]\nauth_block_after = 4\nauth_block_time = "15m"\n'
    limits = load(toml=toml, tmp_path=tmp_path).limits
    assert (limits.auth_block_after, limits.auth_block_time) == (4, 900.0)
    env = {"MAILGATE_AUTH_BLOCK_AFTER": "6", "MAILGATE_AUTH_BLOCK_TIME": "30"}
    limits = load({"auth_block_after": "7"}, env=env).limits
    assert (limits.auth_block_after, limits.auth_block_time) == (7, 30.0)
    assert "--auth-block-after" in error_of({"auth_block_after": "0"})


def test_switches_and_networks_from_text() -> None:
    settings = load(
        {"tls_self_signed": "on", "relay_network": ["192.0.2.0/24", "192.0.2.7/24"]},
        {"MAILGATE_AUTH_ACCEPT_ANY": "yes", "MAILGATE_SUBMISSION": ":587"},
    )
    assert settings.tls == TLS(self_signed=True)
    assert settings.auth_accept_any
    assert settings.relay_networks == ("192.0.2.0/24",)
    assert settings.submission == Listen("", 587)
    assert not load(env={"MAILGATE_AUTH_ACCEPT_ANY": "off"}).auth_accept_any
    assert load(env={"MAILGATE_RELAY_NETWORK": "10.0.0.0/8, ::1"}).relay_networks == (
        "10.0.0.0/8",
        "::1/128",
    )


def test_bad_switches_and_networks(tmp_path: Path) -> None:
    assert error_of(env={"MAILGATE_TLS_SELF_SIGNED": "sure"}) == (
        "MAILGATE_TLS_SELF_SIGNED: 'sure' is not on or off (or true, false, yes, no)"
    )
    assert error_of({"relay_network": ["10.0.0.0/33"]}) == (
        "--relay-network: '10.0.0.0/33' is not an IP network (e.g. 192.0.2.0/24)"
    )
    assert error_of(toml="relay_networks = 5", tmp_path=tmp_path).endswith(
        ": expected an array of strings, got an integer"
    )
    assert load(toml='relay_networks = "10.0.0.0/8"', tmp_path=tmp_path).relay_networks == (
        "10.0.0.0/8",
    )
    assert load(toml='users = ""', tmp_path=tmp_path).users is None
    assert load(toml="auth_accept_any = true", tmp_path=tmp_path).auth_accept_any


def test_listeners_must_differ() -> None:
    assert error_of({"submission": "127.0.0.1:1025"}) == (
        "--submission: 127.0.0.1:1025 is both the smtp and the submission address"
    )
    assert (
        error_of({"smtps": "127.0.0.1:8025", "tls_self_signed": "on"})
        == "--smtps: 127.0.0.1:8025 is both the http and the smtps address"
    )


def test_tls_needs_both_files_and_smtps_needs_tls() -> None:
    assert error_of({"tls_cert": "c.pem"}) == "--tls-cert: needs --tls-key too"
    assert error_of(env={"MAILGATE_TLS_KEY": "k.pem"}) == "MAILGATE_TLS_KEY: needs --tls-cert too"
    assert error_of({"smtps": ":465"}) == (
        "--smtps: implicit TLS needs --tls-cert and --tls-key, or --tls-self-signed"
    )
    assert load({"smtps": ":465", "tls_cert": "c.pem", "tls_key": "k.pem"}).smtps == Listen("", 465)


def test_auth_accept_any_is_refused_with_local_domains() -> None:
    assert error_of({"auth_accept_any": "on", "domain": ["example.org"]}) == (
        "--auth-accept-any: is for development only and cannot go with --domain"
    )
    assert load({"auth_accept_any": "on"}).auth_accept_any


def test_outbound_settings_from_flags_environment_and_toml(tmp_path: Path) -> None:
    settings = load(
        {"resolver": "127.0.0.1:5353", "outbound_tls": "verify", "tls_policy": ["a.test=none"]},
        {"MAILGATE_RELAY_AUTH": "me:secret", "MAILGATE_QUEUE_LIFETIME": "2d"},
        '[outbound]\nrelay_host = "smtp.example.net:587"\nretry_schedule = ["1m", "1h"]\n'
        'port = 2525\ntls_policy = { "b.test" = "encrypt" }\n',
        tmp_path,
    )
    outbound = settings.outbound
    assert outbound.resolver == "127.0.0.1:5353"
    assert outbound.relay_host == "smtp.example.net:587"
    assert outbound.relay_auth == ("me", "secret")
    assert outbound.tls == "verify"
    assert outbound.tls_policies == (("a.test", "none"),)  # the flag wins over the file
    assert outbound.retry_schedule == (60.0, 3600.0)
    assert outbound.queue_lifetime == 2 * 86400
    assert outbound.port == 2525


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        ({"resolver": "dns.example.net"}, {}, "--resolver: 'dns.example.net': the resolver must"),
        ({"relay_host": "smtp:x"}, {}, "--relay-host: 'smtp:x': the port must be a number"),
        ({"tls_policy": ["a.test=maybe"]}, {}, "--tls-policy: 'maybe' for a.test is not a TLS"),
        ({"retry_schedule": "1m,,1h"}, {}, "--retry-schedule: '' is not a duration"),
        ({}, {"MAILGATE_RELAY_AUTH": "me:pw"}, "MAILGATE_RELAY_AUTH: needs --relay-host too"),
    ],
)
def test_bad_outbound_settings_name_their_key(
    argv: dict[str, object], env: dict[str, str], expected: str
) -> None:
    assert error_of(argv, env).startswith(expected)
