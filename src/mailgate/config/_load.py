"""Loading settings from flags, the environment, a TOML file and defaults.

Precedence is flags, then ``MAILGATE_*`` variables, then the TOML file,
then the dataclass defaults.  Every value present in any source is checked,
even one a higher source overrides, so a mistake never lies in wait.  A bad
value raises ``ConfigError`` naming the key exactly as the user wrote it.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from mailgate import MailgateError
from mailgate.config._options import OPTIONS, Option
from mailgate.config._settings import Listen, Settings
from mailgate.config._values import InvalidValue

__all__ = ["ConfigError", "load_settings"]


class ConfigError(MailgateError):
    """A setting is wrong.  ``str()`` is one line: ``KEY: PROBLEM``.

    ``key`` is the name as the user wrote it: ``--max-message-size``,
    ``MAILGATE_MAX_MESSAGE_SIZE`` or ``limits.max_message_size in mailgate.toml``.
    """

    def __init__(self, key: str, problem: str) -> None:
        # A value quoted into the problem may hold line breaks; the message stays one line.
        problem = "".join(c if c.isprintable() else repr(c)[1:-1] for c in problem)
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


def load_settings(
    *,
    argv_values: Mapping[str, object],
    environ: Mapping[str, str],
    config_file: Path | None,
) -> Settings:
    """Build the settings from every source.

    ``argv_values`` maps an option's ``dest`` (``max_message_size`` for
    ``--max-message-size``) to the text given, a list of texts for a
    repeatable option, or ``None`` when the flag was not given.  Empty
    environment variables count as unset.

    Raises ``ConfigError`` for a bad value, an unknown or mistyped TOML key,
    or a config file that cannot be read or parsed.
    Raises ``TypeError`` for an ``argv_values`` key no option has.
    """
    by_dest = {option.dest: option for option in OPTIONS}
    if unknown := sorted(argv_values.keys() - by_dest.keys()):
        raise TypeError(f"no option has dest {unknown[0]!r}")

    chosen: dict[str, tuple[object, str]] = {}  # field -> (value, key as written)
    if config_file is not None:
        for option, raw, at in _toml_values(config_file):
            chosen[option.field] = _parse(option, raw, at, config_file)
    for option in OPTIONS:
        text = environ.get(option.env, "")
        if text.strip():
            raw = (option.split_env or _split)(text) if option.repeatable else text
            chosen[option.field] = _parse(option, raw, option.env)
    for dest, raw in argv_values.items():
        if raw is not None:
            option = by_dest[dest]
            chosen[option.field] = _parse(option, raw, option.flag)

    settings = _build({field: value for field, (value, _) in chosen.items()})
    return _check_together(settings, {field: key for field, (_, key) in chosen.items()})


def _split(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _parse(
    option: Option, raw: object, key: str, config_file: Path | None = None
) -> tuple[object, str]:
    parse = option.parse_toml if config_file and option.parse_toml else option.parse
    try:
        value = parse(raw)
    except InvalidValue as error:
        where = f"{key}{error.at}" + (f" in {config_file}" if config_file else "")
        raise ConfigError(where, error.problem) from None
    return value, (f"{key} in {config_file}" if config_file else key)


_LISTENERS = ("smtp", "http", "submission", "smtps")


def _check_together(settings: Settings, keys: Mapping[str, str]) -> Settings:
    """Checks that span settings; each names a key the user set."""
    seen: dict[Listen, str] = {}
    for field in _LISTENERS:
        listen = getattr(settings, field)
        if listen is None or listen.port == 0:  # port 0: the system picks a free port
            continue
        if listen in seen:
            # Defaults never collide, so at least one of the two was set by the user.
            key = keys.get(field) or keys[seen[listen]]
            raise ConfigError(key, f"{listen} is both the {seen[listen]} and the {field} address")
        seen[listen] = field
    tls = settings.tls
    if (tls.cert is None) != (tls.key is None):
        given, missing = ("tls.cert", "--tls-key") if tls.key is None else ("tls.key", "--tls-cert")
        raise ConfigError(keys[given], f"needs {missing} too")
    if settings.smtps is not None and not tls.enabled:
        raise ConfigError(
            keys["smtps"], "implicit TLS needs --tls-cert and --tls-key, or --tls-self-signed"
        )
    outbound = settings.outbound
    if outbound.relay_auth is not None and outbound.relay_host is None:
        raise ConfigError(keys["outbound.relay_auth"], "needs --relay-host too")
    if settings.auth_accept_any and settings.domains:
        # Accepting any password on a real mail server would make it an open relay.
        raise ConfigError(
            keys["auth_accept_any"], "is for development only and cannot go with --domain"
        )
    if settings.chaos_enabled and settings.domains:
        # A real mail server must never fail mail on purpose.
        key = keys["chaos_triggers" if settings.chaos_triggers is not None else "enable_chaos"]
        raise ConfigError(key, "is for testing only and cannot go with --domain")
    return settings


def _read_toml(path: Path) -> dict[str, object]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except OSError as error:
        raise ConfigError(str(path), f"cannot read: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), "not UTF-8 text") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(str(path), f"not valid TOML: {error}") from None


def _unknown(key: str, candidates: list[str], path: Path) -> ConfigError:
    name = key.rpartition(".")[2]
    close = difflib.get_close_matches(name, [c.rpartition(".")[2] for c in candidates], n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return ConfigError(f"{key} in {path}", f"unknown key{hint}")


def _toml_values(path: Path) -> Iterator[tuple[Option, object, str]]:
    """Each option the file sets, with its raw value and TOML key."""
    document = _read_toml(path)
    by_key = {option.toml: option for option in OPTIONS}
    tables = {key.partition(".")[0] for key in by_key if "." in key}
    for key, value in document.items():
        if key in by_key:
            yield by_key[key], value, key
        elif key in tables:
            if not isinstance(value, dict):
                raise ConfigError(f"{key} in {path}", "expected a table")
            members = [k for k in by_key if k.startswith(f"{key}.")]
            for name, item in value.items():
                if f"{key}.{name}" not in by_key:
                    raise _unknown(f"{key}.{name}", members, path)
                yield by_key[f"{key}.{name}"], item, f"{key}.{name}"
        else:
            raise _unknown(key, [k for k in by_key if "." not in k] + sorted(tables), path)


def _build(values: Mapping[str, object]) -> Settings:
    # Any: each value has the type of its field, as its option's parser returns it.
    defaults = Settings()
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for field, value in values.items():
        table, dot, name = field.rpartition(".")
        if dot:
            nested.setdefault(table, {})[name] = value
        else:
            top[name] = value
    for table, members in nested.items():
        top[table] = dataclasses.replace(getattr(defaults, table), **members)
    return dataclasses.replace(defaults, **top)
