"""MTA-STS policies (RFC 8461 3.2, 4.1): parsing and host matching."""

from __future__ import annotations

import pytest

from mailgate.queue._mta_sts import STSPolicy, parse_policy


def test_a_policy_is_parsed_with_its_hosts_and_age() -> None:
    policy = parse_policy(
        "version: STSv1\nmode: enforce\nmx: mail.example.com\nmx: *.example.net\nmax_age: 604800\n",
        "abc",
    )
    assert policy == STSPolicy("enforce", ("mail.example.com", "*.example.net"), 604800, "abc")


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("mail.example.com", True),
        ("MAIL.example.com.", True),
        ("mx1.example.net", True),
        ("example.net", False),  # the wildcard is one label, not none
        ("a.b.example.net", False),  # nor two
        ("other.example.com", False),
    ],
)
def test_hosts_match_names_and_one_label_wildcards(host: str, allowed: bool) -> None:
    policy = STSPolicy("enforce", ("mail.example.com", "*.example.net"), 60)
    assert policy.allows(host) is allowed


@pytest.mark.parametrize(
    "text",
    [
        "",
        "version: STSv2\nmode: enforce\nmx: a.test\nmax_age: 60\n",
        "version: STSv1\nmode: strict\nmx: a.test\nmax_age: 60\n",
        "version: STSv1\nmode: enforce\nmax_age: 60\n",  # no mx
        "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: soon\n",
        "version: STSv1\nnot a field\n",
    ],
)
def test_what_is_no_policy_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        parse_policy(text)


def test_max_age_is_capped_at_a_year_and_none_needs_no_hosts() -> None:
    policy = parse_policy("version: STSv1\r\nmode: none\r\nmax_age: 99999999999\r\n")
    assert (policy.mode, policy.mx, policy.max_age) == ("none", (), 31_557_600)
