"""Tags new mail gets as it is accepted: names as Mailpit cleans them, rules, the tagger."""

from __future__ import annotations

import dataclasses
import io

import pytest

from mailgate.delivery import summarize
from mailgate.delivery._tags import Tagger
from mailgate.model import MessageId, MessageSummary
from mailgate.query import parse_query
from mailgate.tags import (
    MAX_TAG_CHARS,
    PLUS_ADDRESSES,
    X_TAGS,
    AutoTags,
    TagRuleError,
    clean_tag,
    is_tag_name,
    parse_tag_rule,
)
from mailgate.testing.stores import EPOCH, make_envelope

ID = MessageId("01KAAAAAAAAAAAAAAAAAAAAAAA")


@pytest.mark.parametrize(
    ("text", "tag"),
    [
        ("billing", "billing"),
        ("  Billing  ", "Billing"),
        ("a  b", "a b"),
        ("bad:name", "bad name"),
        ("new\tline\r\n", "new line"),
        ("user@example.org", "user@example.org"),
        ("v1.2_beta-3", "v1.2_beta-3"),
        ("Müller", "M ller"),  # ASCII only, as Mailpit's pattern
        ("!!!", ""),
        ("", ""),
        ("x" * 150, "x" * MAX_TAG_CHARS),
        ("x" * 99 + " yz", "x" * 99),  # cut at the limit, no trailing space left
    ],
)
def test_clean_tag_as_mailpit(text: str, tag: str) -> None:
    assert clean_tag(text) == tag
    assert is_tag_name(text) == (text == tag and tag != "")


def test_a_rule_is_tags_then_a_query() -> None:
    rule = parse_tag_rule("billing, Finance=subject:invoice from:shop.test")
    assert rule.tags == ("billing", "Finance")
    assert rule.query == parse_query("subject:invoice from:shop.test")
    # Tag names hold no '=': the first one ends them, the query may hold more.
    assert parse_tag_rule("eq=subject:a=b").query == parse_query("subject:a=b")
    assert parse_tag_rule('q=subject:"quarterly report"').query == parse_query(
        'subject:"quarterly report"'
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("billing", "is not TAGS=QUERY"),
        ("subject:invoice=billing", "'subject:invoice' is not a tag name"),
        ("=subject:invoice", "'' is not a tag name"),
        ("a,,b=subject:x", "'' is not a tag name"),
        ("billing=", "has no search after '='"),
        ("billing=   ", "has no search after '='"),
        ("x=larger:lots", "not a size"),
        ("x=is:whatever", "unknown search term"),
        ("x=is:read", "is:read cannot be told when mail arrives"),
        ("x=from:a -is:unread", "is:unread cannot be told when mail arrives"),
        ("x" * 101 + "=subject:a", "is not a tag name"),
    ],
)
def test_bad_rules_are_refused_saying_why(text: str, problem: str) -> None:
    with pytest.raises(TagRuleError, match=problem) as caught:
        parse_tag_rule(text)
    assert "\n" not in str(caught.value)


def summary_of(content: bytes, *, header_tags: bool = True) -> MessageSummary:
    return summarize(
        io.BytesIO(content),
        message_id=ID,
        received_at=EPOCH,
        size=len(content),
        envelope=make_envelope(),
        header_tags=header_tags,
    )


MESSAGE = b"From: a@client.test\r\nTo: rcpt@mx.test\r\nSubject: Invoice 42\r\n\r\nPay.\r\n"


def test_summarize_reads_x_tags_when_asked() -> None:
    content = b"X-Tags: Billing, urgent ,, bad:name\r\nX-Tags: =?utf-8?q?second?=\r\n" + MESSAGE
    assert summary_of(content).tags == ("Billing", "urgent", "bad name", "second")
    assert summary_of(content, header_tags=False).tags == ()
    assert summary_of(MESSAGE).tags == ()


def tag(settings: AutoTags, content: bytes = MESSAGE, *recipients: str) -> tuple[str, ...]:
    envelope = make_envelope(*recipients)
    summary = summary_of(content, header_tags=settings.x_tags)
    return Tagger(settings).tag(summary, envelope).tags


def test_plain_mail_keeps_its_summary_as_it_was() -> None:
    summary = summary_of(MESSAGE)
    tagged = Tagger(AutoTags()).tag(summary, make_envelope("a@mx.test", "b@mx.test"))
    assert tagged is summary


def test_tags_from_the_header_plus_addresses_and_rules_once_each_sorted() -> None:
    rules = (
        parse_tag_rule("invoices,Billing=subject:invoice"),
        parse_tag_rule("never=subject:nothing-like-it"),
        parse_tag_rule("ops-seen=tag:ops"),  # sees the tags the message brought
        parse_tag_rule("chained=tag:invoices"),  # ...not those other rules give
    )
    content = b"X-Tags: billing, Urgent\r\n" + MESSAGE
    got = tag(AutoTags(rules=rules), content, "team+Ops+night@mx.test", "x+ops@mx.test")
    # Each once, case aside: the first spelling wins (the header's "billing", "Ops").
    assert got == ("Ops", "Urgent", "billing", "invoices", "night", "ops-seen")


def test_plus_addresses_are_the_envelope_recipients_local_parts() -> None:
    settings = AutoTags()
    assert tag(settings, MESSAGE, "a+welcome@mx.test") == ("welcome",)
    assert tag(settings, MESSAGE, "a+b+c@mx.test") == ("b", "c")
    assert tag(settings, MESSAGE, "a+@mx.test", "+solo@mx.test") == ("solo",)
    assert tag(settings, MESSAGE, "a+x:y@mx.test") == ("x y",)
    assert tag(settings, MESSAGE, "plain@plus+domain.test") == ()


def test_each_source_can_be_turned_off() -> None:
    content = b"X-Tags: header\r\n" + MESSAGE
    rule = parse_tag_rule("ruled=subject:invoice")
    assert tag(AutoTags(rules=(rule,)), content, "a+plus@mx.test") == ("header", "plus", "ruled")
    no_header = AutoTags(rules=(rule,), disabled=frozenset({X_TAGS}))
    assert tag(no_header, content, "a+plus@mx.test") == ("plus", "ruled")
    no_plus = AutoTags(disabled=frozenset({PLUS_ADDRESSES}))
    assert tag(no_plus, content, "a+plus@mx.test") == ("header",)
    off = AutoTags(disabled=frozenset({X_TAGS, PLUS_ADDRESSES}))
    assert not off.enabled
    assert dataclasses.replace(off, username=True).enabled


def test_the_auth_user_name_tags_mail_when_asked() -> None:
    envelope = dataclasses.replace(make_envelope(), auth_user="alice@example.org")
    summary = summary_of(MESSAGE)
    assert Tagger(AutoTags()).tag(summary, envelope).tags == ()
    tagged = Tagger(AutoTags(username=True)).tag(summary, envelope)
    assert tagged.tags == ("alice@example.org",)
    rule = parse_tag_rule("by-alice=tag:alice@example.org")
    assert Tagger(AutoTags(rules=(rule,), username=True)).tag(summary, envelope).tags == (
        "alice@example.org",
        "by-alice",
    )


@pytest.mark.parametrize(
    ("search", "hit"),
    [
        ("subject:invoice", True),
        ("invoice", True),  # a free word: subject, addresses, snippet
        ("pay", True),
        ("from:client.test", True),
        ("to:rcpt@mx.test -subject:receipt", True),
        ("has:attachment", False),
        ("-has:attachment", True),
        ("larger:1K", False),
        ("smaller:1K", True),
        ("is:tagged", False),
        (f"before:{EPOCH.date().isoformat()}", False),
        (f"after:{EPOCH.date().isoformat()}", True),
    ],
)
def test_a_rule_means_what_the_inbox_search_means(search: str, hit: bool) -> None:
    rule = parse_tag_rule(f"hit={search}")
    assert tag(AutoTags(rules=(rule,)), MESSAGE) == (("hit",) if hit else ())
