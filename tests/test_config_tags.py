"""The tagging settings from flags, environment and TOML, and their one-line errors."""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import pytest

from config_helpers import error_of, load
from mailgate.tags import PLUS_ADDRESSES, X_TAGS, AutoTags, parse_tag_rule


def rules(*texts: str) -> tuple[object, ...]:
    return tuple(parse_tag_rule(text) for text in texts)


def test_by_default_header_and_plus_tags_and_no_rules() -> None:
    tags = load().tags
    assert tags == AutoTags()
    assert (tags.x_tags, tags.plus_addresses, tags.username, tags.rules) == (True, True, False, ())


def test_rules_from_flags_the_environment_and_toml(tmp_path: Path) -> None:
    flags = ["billing=subject:invoice", "a,b=from:shop.test has:attachment"]
    assert load({"tag": flags}).tags.rules == rules(*flags)
    # The environment, as Mailpit's MP_TAG: separated by spaces, quoted when they hold one.
    env = 'billing=subject:invoice "a,b=from:shop.test has:attachment" q=subject:"x y"'
    assert load(env={"MAILGATE_TAG": env}).tags.rules == rules(*flags, 'q=subject:"x y"')
    table = '[tags]\nbilling = "subject:invoice"\n"a,b" = "from:shop.test has:attachment"\n'
    assert load(toml=table, tmp_path=tmp_path).tags.rules == rules(*flags)
    listed = 'tags = ["billing=subject:invoice", "a,b=from:shop.test has:attachment"]\n'
    assert load(toml=listed, tmp_path=tmp_path).tags.rules == rules(*flags)
    # Flags win over the environment, which wins over the file.
    both = load({"tag": ["f=subject:f"]}, {"MAILGATE_TAG": "e=subject:e"}, table, tmp_path)
    assert both.tags.rules == rules("f=subject:f")


def test_automatic_tags_turned_off_and_the_user_name_turned_on(tmp_path: Path) -> None:
    both = frozenset({X_TAGS, PLUS_ADDRESSES})
    assert load({"tags_disable": ["x-tags,plus-addresses"]}).tags.disabled == both
    assert load({"tags_disable": ["X-Tags", "plus-addressing"]}).tags.disabled == both
    assert load(env={"MAILGATE_TAGS_DISABLE": "xtags"}).tags.disabled == {X_TAGS}
    toml = 'tags_disable = ["plus-addresses"]\ntags_username = true\n'
    settings = load(toml=toml, tmp_path=tmp_path)
    assert settings.tags == AutoTags(disabled=frozenset({PLUS_ADDRESSES}), username=True)
    assert load({"tags_username": "on"}).tags.username
    assert not load(env={"MAILGATE_TAGS_USERNAME": "off"}).tags.username
    # Settings cross to SMTP workers as a pickle: rules and all.
    settings = load({"tag": ["billing=subject:invoice"], "tags_disable": ["x-tags"]})
    assert pickle.loads(pickle.dumps(settings)) == settings


@pytest.mark.parametrize(
    ("argv", "env", "toml", "message"),
    [
        (
            {"tag": ["subject:invoice=billing"]},
            None,
            None,
            "--tag: 'subject:invoice' is not a tag name: 1 to 100 letters, digits, spaces, '-',"
            " '_', '.' or '@' (TAGS=QUERY, e.g. billing=subject:invoice)",
        ),
        (
            {"tag": ["billing"]},
            None,
            None,
            "--tag: 'billing' is not TAGS=QUERY, e.g. billing=subject:invoice",
        ),
        (
            {"tag": ["big=larger:huge"]},
            None,
            None,
            "--tag: 'larger:huge': not a size: 'huge' (use a number of octets, 10K or 2MB)",
        ),
        (
            None,
            {"MAILGATE_TAG": "new=is:unread"},
            None,
            "MAILGATE_TAG: is:unread cannot be told when mail arrives: it is always unread",
        ),
        (
            None,
            None,
            '[tags]\n"bad:tag" = "subject:x"\n',
            "tags.\"bad:tag\" in {file}: 'bad:tag' is not a tag name: 1 to 100 letters, digits,"
            " spaces, '-', '_', '.' or '@' (TAGS=QUERY, e.g. billing=subject:invoice)",
        ),
        (
            None,
            None,
            "[tags]\nbilling = 3\n",
            "tags.billing in {file}: expected a search (a string)",
        ),
        (None, None, "tags = 3\n", "tags in {file}: expected TAGS=QUERY rules, got an integer"),
        (
            {"tags_disable": ["x-tags,headers"]},
            None,
            None,
            "--tags-disable: 'headers' is not x-tags or plus-addresses",
        ),
        (
            None,
            {"MAILGATE_TAGS_USERNAME": "maybe"},
            None,
            "MAILGATE_TAGS_USERNAME: 'maybe' is not on or off (or true, false, yes, no)",
        ),
    ],
)
def test_bad_settings_get_one_line_naming_the_key(
    argv: Mapping[str, object] | None,
    env: Mapping[str, str] | None,
    toml: str | None,
    message: str,
    tmp_path: Path,
) -> None:
    error = error_of(argv, env, toml, tmp_path)
    assert error == message.format(file=tmp_path / "mailgate.toml")
