"""Retention's settings: ``--max-messages`` and ``--max-age`` from flags, the environment and
the TOML file, the defaults (5,000 in catch-all mode, nothing pruned for real domains), and
one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailgate.config import ConfigError, Settings, load_settings
from process_helpers import mailgate


def settings_from(
    argv: dict[str, object], environ: dict[str, str], toml: str, tmp_path: Path
) -> Settings:
    config = tmp_path / "mailgate.toml"
    config.write_text(toml)
    return load_settings(argv_values=argv, environ=environ, config_file=config)


def test_the_settings_of_retention(tmp_path: Path) -> None:
    assert settings_from({}, {}, "", tmp_path).messages_kept == 5000
    assert settings_from({"domain": ["here.test"]}, {}, "", tmp_path).messages_kept == 0
    assert settings_from({"max_messages": "0"}, {}, "", tmp_path).messages_kept == 0
    chosen = settings_from(
        {"domain": ["here.test"], "max_messages": "20"},
        {"MAILGATE_MAX_MESSAGES": "30", "MAILGATE_MAX_AGE": "12h"},
        '[retention]\nmax_messages = 40\nmax_age = "7d"\n',
        tmp_path,
    )
    assert (chosen.messages_kept, chosen.retention.max_age) == (20, 12 * 3600)
    from_file = settings_from({}, {}, '[retention]\nmax_messages = 40\nmax_age = "7d"\n', tmp_path)
    assert (from_file.messages_kept, from_file.retention.max_age) == (40, 7 * 86400)


@pytest.mark.parametrize(
    ("argv", "environ", "toml", "error"),
    [
        ({"max_messages": "-1"}, {}, "", "--max-messages: '-1' is not a whole number"),
        ({"max_messages": "lots"}, {}, "", "--max-messages: 'lots' is not a whole number"),
        ({}, {"MAILGATE_MAX_AGE": "a week"}, "", "MAILGATE_MAX_AGE: 'a week' is not a duration"),
        ({}, {}, "[retention]\nmax_age = -5\n", "retention.max_age in "),
        ({}, {}, "[retention]\nmax_message = 5\n", "did you mean max_messages?"),
    ],
)
def test_a_wrong_retention_setting_is_one_line_naming_its_key(
    argv: dict[str, object], environ: dict[str, str], toml: str, error: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as raised:
        settings_from(argv, environ, toml, tmp_path)
    assert error in str(raised.value)
    assert "\n" not in str(raised.value)


def test_the_command_line_names_the_wrong_key(tmp_path: Path) -> None:
    done = mailgate("serve", "--max-age", "soon", "--data", str(tmp_path / "d"), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "mailgate: error: --max-age: 'soon' is not a duration: give seconds, or use s, m, h or d"
    ]
