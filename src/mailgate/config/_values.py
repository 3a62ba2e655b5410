"""Parsers for setting values, shared by flags, environment and TOML.

Each parser takes what a source produced (always a ``str`` from flags and
the environment; a ``str``, ``int``, ``float``, ``bool``, list or table from
TOML) and returns the typed value or raises ``InvalidValue`` with a short
problem statement.  The loader adds the name of the key the user wrote.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from urllib.parse import urlsplit

from mailgate.chaos import ChaosError, ChaosTriggers
from mailgate.config._settings import MAX_WORKERS, Domain, Listen
from mailgate.protocol import MAX_DOMAIN_OCTETS, MAX_LOCAL_PART_OCTETS

__all__ = [
    "InvalidValue",
    "parse_chaos_triggers",
    "parse_choice",
    "parse_domain_name",
    "parse_domain_names",
    "parse_domain_table",
    "parse_duration",
    "parse_flag",
    "parse_hostname",
    "parse_int",
    "parse_listen",
    "parse_network",
    "parse_networks",
    "parse_optional_listen",
    "parse_optional_path",
    "parse_origins",
    "parse_path",
    "parse_size",
    "parse_store_url",
    "parse_webhook_url",
    "parse_webroot",
]

MAX_PORT = 65535

_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_SIZE = re.compile(r"(\d+)\s*([KMG]?)(?:I?B)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)", re.IGNORECASE)
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_OFF = frozenset({"off", "false", "no", "none"})
_ON = frozenset({"on", "true", "yes"})
_STORE_URL = re.compile(r"[a-z][a-z0-9+.-]*:\S+", re.IGNORECASE)
_LOCAL_PART_FORBIDDEN = re.compile(r"[\s@<>()\[\],;:\\\"\x00-\x1f\x7f]")


class InvalidValue(Exception):
    """A value is wrong; ``at`` locates it inside a TOML table (``."x".mailboxes``)."""

    def __init__(self, problem: str, *, at: str = "") -> None:
        super().__init__(problem)
        self.problem = problem
        self.at = at


def _describe(value: object) -> str:
    match value:
        case bool():
            return "a boolean"
        case int():
            return "an integer"
        case float():
            return "a float"
        case str():
            return "a string"
        case list():
            return "an array"
        case dict():
            return "a table"
        case _:
            return f"a {type(value).__name__}"  # date, time or datetime


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise InvalidValue(f"expected a string, got {_describe(value)}")
    return value


def _minimum(value: int, least: int, unit: str, reason: str) -> int:
    if value < least:
        because = f" ({reason})" if reason else ""
        raise InvalidValue(f"must be at least {least}{unit}{because}, got {value}")
    return value


def _is_hostname(name: str) -> bool:
    labels = name.removesuffix(".").split(".")
    return len(name) <= MAX_DOMAIN_OCTETS and all(_LABEL.fullmatch(label) for label in labels)


def _is_host(name: str) -> bool:
    """An IP address (an IPv6 one without its brackets) or a host name."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return _is_hostname(name)
    return True


def parse_listen(value: object) -> Listen:
    """``HOST:PORT``, ``[IPv6]:PORT`` or ``:PORT`` (every interface)."""
    text = _text(value).strip()
    example = "e.g. 127.0.0.1:1025, [::1]:25 or :1025"
    if text.startswith("["):
        host, bracket, port = text[1:].partition("]:")
        if not bracket:
            raise InvalidValue(f"{text!r} is not [IPv6]:PORT ({example})")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise InvalidValue(f"{host!r} is not an IPv6 address") from None
    else:
        host, colon, port = text.rpartition(":")
        if not colon:
            raise InvalidValue(f"{text!r} is not HOST:PORT ({example})")
        if ":" in host:
            raise InvalidValue(f"write an IPv6 address in brackets, e.g. [{host}]:{port}")
        if host and not _is_hostname(host):
            raise InvalidValue(f"{host!r} is not a host name or IP address")
    if not port.isascii() or not port.isdigit() or int(port) > MAX_PORT:
        raise InvalidValue(f"{port!r} is not a port number (0 to {MAX_PORT})")
    return Listen(host, int(port))


def parse_optional_listen(value: object) -> Listen | None:
    """A listen address, or ``off`` (``false`` in TOML) for none."""
    if value is False or (isinstance(value, str) and value.strip().lower() in _OFF):
        return None
    if isinstance(value, bool):
        raise InvalidValue("expected HOST:PORT or false, got true")
    return parse_listen(value)


def parse_int(*, least: int, reason: str = "") -> Callable[[object], int]:
    """A parser of whole numbers of at least ``least``."""

    def parse(value: object) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
            number = int(value)
        else:
            shown = repr(value) if isinstance(value, str) else _describe(value)
            raise InvalidValue(f"{shown} is not a whole number")
        return _minimum(number, least, "", reason)

    return parse


def parse_workers(value: object) -> int:
    """A count of SMTP worker processes, from 1; ``auto`` (one per CPU) is 0."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return 0
    if isinstance(value, str) and not value.strip().isdigit():
        raise InvalidValue(f"{value!r} is not a number of processes or auto")
    count = parse_int(least=1)(value)
    if count > MAX_WORKERS:
        raise InvalidValue(f"{count} is more than {MAX_WORKERS} workers")
    return count


def parse_size(*, least: int, reason: str = "") -> Callable[[object], int]:
    """A parser of octet counts: ``1048576``, ``25M``, ``25MB``, ``25MiB``; K, M, G are 1024-based.

    ``0`` is always allowed and means no limit.
    """

    def parse(value: object) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            size = value
        else:
            text = _text(value).strip()
            match = _SIZE.fullmatch(text)
            if match is None or not match[1].isascii():
                raise InvalidValue(
                    f"{text!r} is not a size: give octets, or a number with K, M or G (e.g. 25M)"
                )
            size = int(match[1]) * _SIZE_UNITS[match[2].upper()]
        return size if size == 0 else _minimum(size, least, " octets", reason)

    return parse


def parse_duration(*, least: float) -> Callable[[object], float]:
    """A parser of seconds: ``300``, ``2.5``, ``90s``, ``5m``, ``1h``, ``5d``."""

    def parse(value: object) -> float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            seconds = float(value)
        else:
            text = _text(value).strip()
            match = _DURATION.fullmatch(text)
            if match is None or not match[1].isascii():
                raise InvalidValue(f"{text!r} is not a duration: give seconds, or use s, m, h or d")
            seconds = float(match[1]) * _DURATION_UNITS[match[2].lower()]
        if not math.isfinite(seconds) or seconds < least:
            raise InvalidValue(f"must be at least {least:g} seconds, got {seconds:g}")
        return seconds

    return parse


def parse_choice(
    choices: Iterable[str], *, aliases: dict[str, str] | None = None
) -> Callable[[object], str]:
    """A parser of one of ``choices`` (any case); TOML booleans mean ``on``/``off``."""
    allowed = tuple(choices)
    spellings = {c: c for c in allowed} | (aliases or {})

    def parse(value: object) -> str:
        if isinstance(value, bool) and {"on", "off"} <= set(allowed):
            return "on" if value else "off"
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        text = _text(value).strip().lower()
        if text not in spellings:
            raise InvalidValue(f"{text!r} is not one of {', '.join(allowed)}")
        return spellings[text]

    return parse


def parse_path(value: object) -> Path:
    """A non-empty file system path, ``~`` expanded."""
    text = _text(value)
    if not text.strip():
        raise InvalidValue("must not be empty")
    return Path(text).expanduser()


def parse_optional_path(value: object) -> Path | None:
    """A file system path, or none for ``""`` in TOML."""
    return None if value == "" else parse_path(value)


def parse_flag(value: object) -> bool:
    """A yes-or-no setting: ``on``/``off``, ``true``/``false``, ``yes``/``no``."""
    if isinstance(value, bool):
        return value
    text = _text(value).strip().lower()
    if text not in _ON | _OFF:
        raise InvalidValue(f"{text!r} is not on or off (or true, false, yes, no)")
    return text in _ON


def parse_credentials(value: object) -> tuple[str, str] | None:
    """``USER:PASSWORD`` for HTTP basic auth, or none for ``""``."""
    text = _text(value)
    if text == "":
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise InvalidValue("expected USER:PASSWORD, both non-empty")
    return user, password


def parse_network(value: object) -> str:
    """A network in CIDR notation (``10.0.0.0/8``, ``2001:db8::/32``) or one address."""
    text = _text(value).strip()
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise InvalidValue(f"{text!r} is not an IP network (e.g. 192.0.2.0/24)") from None


def parse_networks(value: object) -> tuple[str, ...]:
    """Networks from flags, the environment or a TOML array, duplicates dropped."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple):
        raise InvalidValue(f"expected an array of strings, got {_describe(value)}")
    return tuple(dict.fromkeys(parse_network(item) for item in value))


def parse_store_url(value: object) -> str:
    """A store URL such as ``sqlite:///path/mail.db`` (``open_store`` checks the rest)."""
    text = _text(value).strip()
    if not _STORE_URL.fullmatch(text):
        raise InvalidValue(
            f"{text!r} is not a store URL (e.g. sqlite:///mail.db, maildir:///var/mail, "
            "postgresql://user@host/db)"
        )
    return text


def parse_hostname(value: object) -> str:
    """The name this server calls itself in greetings and trace headers."""
    text = _text(value).strip()
    if text and not _is_hostname(text):
        raise InvalidValue(f"{text!r} is not a host name")
    return text.removesuffix(".")


def parse_domain_name(value: object) -> str:
    """A domain name, lower-cased, without a trailing dot."""
    text = _text(value).strip()
    if not text.isascii():
        raise InvalidValue(f"{text!r}: write an internationalised domain in its xn-- form")
    if not text or not _is_hostname(text):
        raise InvalidValue(f"{text!r} is not a domain name")
    return text.lower().removesuffix(".")


def _local_part(value: object, *, at: str) -> str:
    if not isinstance(value, str):
        raise InvalidValue(f"expected a string, got {_describe(value)}", at=at)
    if not value or _LOCAL_PART_FORBIDDEN.search(value):
        raise InvalidValue(f"{value!r} is not a local part (a mailbox name without @)", at=at)
    if len(value.encode()) > MAX_LOCAL_PART_OCTETS:
        raise InvalidValue(
            f"{value!r} is longer than {MAX_LOCAL_PART_OCTETS} octets (RFC 5321 4.5.3.1.1)",
            at=at,
        )
    return value


def _alias_target(value: object, *, at: str) -> str:
    if isinstance(value, str) and "@" in value:
        local, _, domain = value.rpartition("@")
        _local_part(local, at=at)
        try:
            return f"{local}@{parse_domain_name(domain)}"
        except InvalidValue as error:
            raise InvalidValue(error.problem, at=at) from None
    return _local_part(value, at=at)


def _strings(value: object, *, at: str) -> list[object]:
    if not isinstance(value, list):
        raise InvalidValue(f"expected an array of strings, got {_describe(value)}", at=at)
    return value


def _domain(name: str, table: object, *, at: str) -> Domain:
    if not isinstance(table, dict):
        raise InvalidValue(f"expected a table, got {_describe(table)}", at=at)
    for key in sorted(table.keys() - {"mailboxes", "aliases"}):
        raise InvalidValue(
            "unknown key (a domain has mailboxes and aliases)", at=f"{at}.{_toml_key(key)}"
        )
    mailboxes: dict[str, str] = {}
    for item in _strings(table.get("mailboxes", []), at=f"{at}.mailboxes"):
        local = _local_part(item, at=f"{at}.mailboxes")
        if mailboxes.setdefault(local.casefold(), local) != local:
            raise InvalidValue(f"{local!r} is listed twice", at=f"{at}.mailboxes")
    aliases_table = table.get("aliases", {})
    if not isinstance(aliases_table, dict):
        raise InvalidValue(f"expected a table, got {_describe(aliases_table)}", at=f"{at}.aliases")
    aliases: dict[str, tuple[str, ...]] = {}
    seen: set[str] = set()
    for alias, targets in aliases_table.items():
        where = f"{at}.aliases.{_toml_key(alias)}"
        local = _local_part(alias, at=where)
        if local.casefold() in mailboxes:
            raise InvalidValue(f"{local!r} is both a mailbox and an alias", at=where)
        if local.casefold() in seen:
            raise InvalidValue(f"{local!r} is defined twice", at=where)
        seen.add(local.casefold())
        items = _strings(targets, at=where)
        if not items:
            raise InvalidValue("an alias needs at least one target", at=where)
        aliases[local] = tuple(_alias_target(item, at=where) for item in items)
    return Domain(name, tuple(mailboxes.values()), aliases)


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else f'"{key}"'


def parse_domain_table(value: object) -> tuple[Domain, ...]:
    """The ``[domains."example.org"]`` tables of a TOML file."""
    if not isinstance(value, dict):
        raise InvalidValue(f"expected a table, got {_describe(value)}")
    domains: dict[str, Domain] = {}
    for written, table in value.items():
        at = f".{_toml_key(written)}"
        try:
            name = parse_domain_name(written)
        except InvalidValue as error:
            raise InvalidValue(error.problem, at=at) from None
        if name in domains:
            raise InvalidValue(f"{name!r} is defined twice", at=at)
        domains[name] = _domain(name, table, at=at)
    return tuple(domains.values())


def parse_domain_names(values: object) -> tuple[Domain, ...]:
    """Domain names from flags or the environment: catch-all mailboxes each."""
    names = values if isinstance(values, list | tuple) else [values]
    return tuple(Domain(name) for name in dict.fromkeys(parse_domain_name(n) for n in names))


TLS_POLICIES = ("none", "may", "encrypt", "verify")
"""How outbound connections use TLS: never; when offered, unverified; always, unverified;
always, with the certificate verified against the host name."""


def parse_durations(*, least: float) -> Callable[[object], tuple[float, ...]]:
    """A parser of a list of durations: ``1m,5m,1h`` or a TOML array of them."""
    one = parse_duration(least=least)

    def parse(value: object) -> tuple[float, ...]:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not items:
            raise InvalidValue(f"expected a list of durations, got {_describe(value)}")
        return tuple(one(item) for item in items)

    return parse


def parse_host_port(value: object) -> str:
    """``HOST`` or ``HOST:PORT`` (an IPv6 address in brackets), checked, kept as written."""
    text = _text(value).strip()
    host, port = text, ""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise InvalidValue(f"{text!r} is not HOST:PORT")
        port = rest[1:]
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    if port and (not port.isdigit() or not 1 <= int(port) <= MAX_PORT):
        raise InvalidValue(f"{text!r}: the port must be a number from 1 to {MAX_PORT}")
    if not _is_host(host):
        raise InvalidValue(f"{text!r} is not HOST:PORT")
    return text


def parse_nameserver(value: object) -> str | None:
    """A DNS server's ``IP`` or ``IP:PORT`` (``[IPv6]:PORT``), or none for the system's."""
    text = _text(value).strip()
    if text.lower() in _OFF | {"", "system"}:
        return None
    checked = parse_host_port(text)
    host = checked[1:].partition("]")[0] if checked.startswith("[") else checked.partition(":")[0]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise InvalidValue(f"{text!r}: the resolver must be an IP address") from None
    return checked


def parse_webhook_url(value: object) -> str | None:
    """An ``http://`` or ``https://`` URL with a host, or none for ``""``/``off``."""
    text = _text(value).strip()
    if text.lower() in _OFF | {""}:
        return None
    example = "e.g. http://127.0.0.1:8000/new-mail"
    if not text.isascii() or not text.isprintable() or " " in text:
        raise InvalidValue(f"{text!r} is not a URL: percent-encode spaces and non-ASCII")
    try:
        url = urlsplit(text)
        port = url.port
    except ValueError as error:
        raise InvalidValue(f"{text!r} is not a URL ({error})") from None
    if url.scheme.lower() not in ("http", "https"):
        raise InvalidValue(f"{text!r} is not an http or https URL ({example})")
    host = url.hostname or ""
    if not host:
        raise InvalidValue(f"{text!r} names no host ({example})")
    if not _is_host(host):
        raise InvalidValue(f"{host!r} is not a host name or IP address")
    if port == 0:
        raise InvalidValue(f"{text!r}: the port must be a number from 1 to {MAX_PORT}")
    return text


def parse_optional_host_port(value: object) -> str | None:
    """``HOST:PORT``, or none for ``""``/``off``."""
    text = _text(value).strip()
    return None if text.lower() in _OFF | {""} else parse_host_port(text)


def parse_tls_policies(value: object) -> tuple[tuple[str, str], ...]:
    """Per-domain outbound TLS policies: ``example.com=verify`` (repeatable) or a TOML table."""
    if isinstance(value, dict):
        pairs = list(value.items())
    else:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            raise InvalidValue(f"expected DOMAIN=POLICY, got {_describe(value)}")
        pairs = []
        for item in items:
            domain, sep, policy = _text(item).partition("=")
            if not sep:
                raise InvalidValue(f"{item!r} is not DOMAIN=POLICY")
            pairs.append((domain, policy))
    policies: dict[str, str] = {}
    for domain, policy in pairs:
        name = parse_domain_name(domain)
        text = _text(policy).strip().lower()
        if text not in TLS_POLICIES:
            raise InvalidValue(
                f"{policy!r} for {name} is not a TLS policy: {', '.join(TLS_POLICIES)}",
                at=f".{_toml_key(name)}" if isinstance(value, dict) else "",
            )
        policies[name] = text
    return tuple(policies.items())


def parse_origins(value: object) -> tuple[str, ...]:
    """Web origins (``scheme://host[:port]``, as an ``Origin`` header names them) or ``*``,
    from flags (commas separate several, as Mailpit's ``--api-cors`` has it), the
    environment or a TOML array."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple):
        raise InvalidValue(f"expected an array of origins, got {_describe(value)}")
    parts = [part.strip() for item in value for part in _text(item).split(",")]
    return tuple(dict.fromkeys(_origin(part) for part in parts))


def _origin(text: str) -> str:
    if text == "*":
        return text
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or port == -1
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username is not None
    ):
        raise InvalidValue(f"{text!r} is not an origin: give scheme://host[:port], or *")
    return f"{parts.scheme}://{parts.netloc.lower()}"


_WEBROOT = re.compile(r"/(?:[A-Za-z0-9._~-]+/)*")


def parse_webroot(value: object) -> str:
    """A path to serve the web inbox below: ``/mail/`` (slashes added where missing)."""
    text = _text(value).strip()
    path = "/" + text.strip("/") + "/" if text.strip("/") else "/"
    if _WEBROOT.fullmatch(path) is None or "/./" in path or "/../" in path:
        raise InvalidValue(f"{text!r} is not a path: give segments of letters, digits, . _ ~ -")
    return path


def parse_domain_names_list(value: object) -> tuple[str, ...]:
    """Host names from flags, the environment or a TOML array, lower-cased, duplicates dropped."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple):
        raise InvalidValue(f"expected an array of host names, got {_describe(value)}")
    return tuple(dict.fromkeys(parse_domain_name(item) for item in value))


def parse_chaos_triggers(value: object) -> ChaosTriggers:
    """Mailpit's ``--chaos-triggers``: ``Sender:451:50,Recipient:550:10`` (``mailgate.chaos``)."""
    try:
        return ChaosTriggers.parse(_text(value))
    except ChaosError as error:
        raise InvalidValue(str(error)) from None
