"""Settings loaded as ``mailgate serve`` loads them, for the configuration tests.

``load`` takes the three sources (flags, environment, a TOML file's text)
and writes the TOML into the test's temporary directory; ``error_of``
expects a ``ConfigError`` and checks the promise every bad setting keeps:
one line, naming the key as the user wrote it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

from mailgate.config import ConfigError, Settings, load_settings


def load(
    argv: Mapping[str, object] | None = None,
    env: Mapping[str, str] | None = None,
    toml: str | None = None,
    tmp_path: Path | None = None,
) -> Settings:
    """The settings from flags, environment and a TOML text, as ``mailgate serve`` loads them."""
    config_file = None
    if toml is not None:
        assert tmp_path is not None
        config_file = tmp_path / "mailgate.toml"
        config_file.write_text(toml, encoding="utf-8")
    return load_settings(argv_values=argv or {}, environ=env or {}, config_file=config_file)


def error_of(
    argv: Mapping[str, object] | None = None,
    env: Mapping[str, str] | None = None,
    toml: str | None = None,
    tmp_path: Path | None = None,
) -> str:
    """The one-line error these sources give, checked to be ``key: problem``."""
    with pytest.raises(ConfigError) as caught:
        load(argv, env, toml, tmp_path)
    message = str(caught.value)
    assert "\n" not in message
    assert message == f"{caught.value.key}: {caught.value.problem}"
    return message
