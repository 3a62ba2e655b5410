"""Records whose ``__init__`` is written out behave as the dataclass's own would.

A few frozen dataclasses made for every message write their ``__init__`` by hand
(``init=False``): under mypyc the generated one stays interpreted Python, at
about 15 times the cost (docs/design/performance.md, "Records made per
message").  Here each such class is held to the generated one's contract: the
same parameters in the same order and of the same kinds, the same defaults,
every field set from its own parameter, ``dataclasses.replace`` and equality
as before.  A class written out later without a sample here fails the first
test, so none goes unchecked.  So are the other shortcuts of the path a message takes:
``Envelope.with_node`` (``dataclasses.replace`` written out) and the store's JSON
encoders (``json_encoder``), each against what it stands for.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import pkgutil
from datetime import UTC, datetime
from typing import Any

import pytest

import mailgate
from mailgate.delivery._accept import ReceivedMessage
from mailgate.delivery._summary import _Part
from mailgate.model import Address, Envelope, MessageId, MessageSummary, TLSInfo
from mailgate.protocol import DataChunk, DataEnd, MailFrom, RcptTo, Reply
from mailgate.protocol._address import ParsedPath
from mailgate.protocol._dsn import Notify, OriginalRecipient, Ret
from mailgate.stores.sqlite._schema import json_encoder

WHEN = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)
LATER = datetime(2026, 12, 6, 11, 0, tzinfo=UTC)
ID = MessageId("01JEXAMPLE0000000000000000")
TLS = TLSInfo("TLSv1.3", "TLS_AES_128_GCM_SHA256")
ENVELOPE_ARGS = (
    *("a@example.test", ("b@example.test",), WHEN, "client.test", "192.0.2.1"),
    *("host.client.test", 2525, "ESMTPSA", {"BODY": "8BITMIME"}, ({"NOTIFY": "NEVER"},)),
    *("alice", TLS, ("c@elsewhere.test",), "node-1"),
)
SUMMARY_ARGS = (
    *(ID, WHEN, 1024, Address("Ann", "a@example.test"), (Address("", "b@example.test"),)),
    *((Address("", "c@example.test"),), (Address("", "d@example.test"),)),
    *((Address("", "e@example.test"),), "Hello", LATER, "<m@example.test>", 2, "text"),
    *(True, ("x",), 1),
)

# What to make one instance of each class with: a value for every field, in field order
# (keyword-only ones by keyword), each unlike its default and its neighbours, so that
# a field set from the wrong parameter shows.
SAMPLES: dict[type[Any], tuple[tuple[Any, ...], dict[str, Any]]] = {
    Reply: ((550, "5.7.1", "No"), {"charged": False}),
    Address: (("Ann", "a@example.test"), {}),
    Envelope: (ENVELOPE_ARGS, {}),
    MessageSummary: (SUMMARY_ARGS, {}),
    MailFrom: (("a@example.test", {"SIZE": "10"}, 10, "8BITMIME", True, Ret.HDRS, "env"), {}),
    RcptTo: (
        ("b@example.test", {"NOTIFY": "FAILURE"}, Notify.FAILURE, OriginalRecipient("rfc822", "b")),
        {},
    ),
    DataChunk: ((b"content",), {}),
    DataEnd: ((7,), {}),
    ParsedPath: (("a@example.test", "@relay.test"), {}),
    _Part: (("text/html", {"charset": "utf-8"}, "base64", True, False), {}),
    ReceivedMessage: (
        (ID, Envelope(*ENVELOPE_ARGS), MessageSummary(*SUMMARY_ARGS), 1024, b"x", "/spool/x"),
        {},
    ),
}


def _written_out() -> set[type[Any]]:
    """Every dataclass of the package that writes its own ``__init__``."""
    found: set[type[Any]] = set()
    for module_info in pkgutil.walk_packages(mailgate.__path__, "mailgate."):
        if module_info.name.startswith(
            ("mailgate.testing", "mailgate.web", "mailgate.cli")
        ) or module_info.name.endswith("__main__"):
            continue  # not on the path of a message (and __main__ runs a command)
        module = importlib.import_module(module_info.name)
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and value.__module__ == module.__name__
                and dataclasses.is_dataclass(value)
                and not value.__dataclass_params__.init  # type: ignore[attr-defined]
            ):
                found.add(value)
    return found


def test_every_class_written_out_has_a_sample() -> None:
    assert _written_out() == set(SAMPLES)


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda cls: cls.__name__)
def test_the_signature_is_the_dataclasss(cls: type[Any]) -> None:
    fields = [field for field in dataclasses.fields(cls) if field.init]
    parameters = list(inspect.signature(cls).parameters.values())
    assert [p.name for p in parameters] == [f.name for f in fields]
    for parameter, field in zip(parameters, fields, strict=True):
        kind = (
            inspect.Parameter.KEYWORD_ONLY
            if field.kw_only
            else inspect.Parameter.POSITIONAL_OR_KEYWORD
        )
        assert parameter.kind == kind, field.name
        if field.default is not dataclasses.MISSING:
            assert parameter.default == field.default, field.name
        elif field.default_factory is not dataclasses.MISSING:
            assert parameter.default is None, field.name  # None stands for a fresh default
        else:
            assert parameter.default is inspect.Parameter.empty, field.name


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda cls: cls.__name__)
def test_each_field_comes_from_its_parameter_and_defaults_hold(cls: type[Any]) -> None:
    args, kwargs = SAMPLES[cls]
    fields = [field for field in dataclasses.fields(cls) if field.init]
    given = dict(zip([f.name for f in fields if not f.kw_only], args, strict=True)) | kwargs
    assert list(given) == [f.name for f in fields]
    defaults = {
        field.name: field.default
        if field.default is not dataclasses.MISSING
        else field.default_factory()  # type: ignore[misc]
        for field in fields
        if field.default is not dataclasses.MISSING
        or field.default_factory is not dataclasses.MISSING
    }
    for name, value in given.items():
        assert value != defaults.get(name, object()), f"the sample's {name} is its default"
    made = cls(*args, **kwargs)
    # equal, not the same object: the compiled build keeps an int unboxed and boxes it anew
    assert {name: getattr(made, name) for name in given} == given
    assert cls(**given) == made  # by keyword, as dataclasses.replace calls it
    assert dataclasses.replace(made) == made
    # only what has no default given: every other field takes its default
    bare = cls(*[value for name, value in given.items() if name not in defaults])
    assert {name: getattr(bare, name) for name in defaults} == defaults


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda cls: cls.__name__)
def test_they_stay_frozen(cls: type[Any]) -> None:
    args, kwargs = SAMPLES[cls]
    sample = cls(*args, **kwargs)
    name = dataclasses.fields(cls)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(sample, name, getattr(sample, name))


def test_a_reply_still_checks_what_it_is_given() -> None:
    with pytest.raises(ValueError, match="outside 200-599"):
        Reply(600, None, "x")
    with pytest.raises(ValueError, match="bad enhanced status code"):
        Reply(250, "5.0.0", "x")
    with pytest.raises(ValueError, match="control character"):
        Reply(250, None, "a\rb")
    assert Reply(250, "2.0.0", "a\nb").to_bytes() == b"250-2.0.0 a\r\n250 2.0.0 b\r\n"


def test_an_envelope_with_a_node_is_the_envelope_replaced() -> None:
    envelope = Envelope(*ENVELOPE_ARGS)
    assert envelope.with_node("node-2") == dataclasses.replace(envelope, node="node-2")
    assert envelope.with_node("node-2").node == "node-2"


@pytest.mark.parametrize(
    "value",
    [
        {"to": [["Ann Örn", "a@example.test"]], "cc": [], "n": None, "ok": True, "f": 1.5},
        ["Ann", "a@example.test"],
        ["01JEXAMPLE0000000000000000", 7],
        {"mail_params": {"BODY": "8BITMIME", "SMTPUTF8": None}, "quote": 'a "b" \\ \u2028'},
        [],
        {},
    ],
)
def test_the_stores_json_encoders_write_what_json_dumps_writes(value: object) -> None:
    compact = json.JSONEncoder(ensure_ascii=False, check_circular=False, separators=(",", ":"))
    spaced = json.JSONEncoder(ensure_ascii=False, check_circular=False)
    assert json_encoder(compact)(value) == compact.encode(value)
    assert json_encoder(spaced)(value) == spaced.encode(value)
    assert json.loads(json_encoder(compact)(value)) == value
    with pytest.raises(TypeError):
        json_encoder(compact)({"when": WHEN})
