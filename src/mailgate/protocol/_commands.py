"""Command lines: the verb's kind, and the arguments checked against their grammar.

Strategy.  ``command_verbs`` maps each verb to its ``Verb`` as configured.
Then one function per command that takes an argument.  Each gets the
argument text (verb removed, surrounding blanks stripped) and the session
facts its grammar depends on, and returns the event to hand the application
or raises ``ArgumentError`` carrying the reply: 501 for bad syntax (a bad
DSN parameter value among it, RFC 3461 4), 555 for an unknown MAIL/RCPT
parameter (RFC 5321 4.1.1.11), 552 for a declared size over the limit (RFC
1870 6.1), 504 for an unknown SASL mechanism.

Whether the command may come now at all (503) is not decided here: the
tables of ``_state`` say, and ``ServerConnection`` asks them first (RFC
5321 4.1.4).

No argument holds a control character (``require_printable``, which
``ServerConnection`` calls before a command's own checks; BDAT's chunk is
read whatever its line holds, so ``parse_bdat`` judges its own): nothing in
RFC 5321's command grammar admits one, and keeping them out of every event
means no reply ever echoes one back.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

from mailgate.protocol._address import ArgumentError, parse_params, parse_path, shown_in_reply
from mailgate.protocol._dsn import (
    Notify,
    OriginalRecipient,
    Ret,
    parse_envid,
    parse_notify,
    parse_orcpt,
    parse_ret,
)
from mailgate.protocol._events import Ehlo, Expn, Helo, MailFrom, RcptTo, Vrfy
from mailgate.protocol._limits import MAX_SIZE_DIGITS
from mailgate.protocol._replies import Reply
from mailgate.protocol._sasl import decode_response
from mailgate.protocol._settings import ConnectionSettings
from mailgate.protocol._state import Verb

__all__ = [
    "AuthArguments",
    "BdatArguments",
    "command_verbs",
    "has_prefix",
    "parse_auth",
    "parse_bdat",
    "parse_hello",
    "parse_lookup",
    "parse_mail",
    "parse_rcpt",
    "require_no_argument",
    "require_printable",
    "split_path",
]

_T = TypeVar("_T")
SYNTAX = "5.5.4"  # RFC 3463 3.6: invalid command arguments
# ASCII digits only: str.isdigit() also takes "³" and "٣", and int() reads some.
_SIZE_VALUE = re.compile(rf"[0-9]{{1,{MAX_SIZE_DIGITS}}}\Z")
_NON_ASCII_SENDER = Reply(550, "5.6.7", "Non-ASCII address needs SMTPUTF8")
_NON_ASCII_RECIPIENT = Reply(553, "5.6.7", "Non-ASCII address needs SMTPUTF8")
# RFC 5321 4.5.3.1.10: 452, so the client sends the rest later (flow control).
_TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
# C0 controls (tab included), DEL, C1 controls, and the Unicode line and
# paragraph separators some software splits lines at.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROL_CHARACTER = Reply(501, SYNTAX, "Control character in command arguments")
_VERBS: dict[str, Verb] = {
    v.name: v for v in Verb if v not in (Verb.UNRECOGNIZED, Verb.UNIMPLEMENTED)
}
# RFC 5321 4.2.4: known commands we do not implement get 502, not 500.
_VERBS.update(dict.fromkeys(("TURN", "ETRN", "ATRN", "SEND", "SOML", "SAML"), Verb.UNIMPLEMENTED))


def command_verbs(settings: ConnectionSettings) -> dict[str, Verb]:
    """Each verb the server knows (upper case), as configured.

    STARTTLS and AUTH are ``UNIMPLEMENTED`` unless the settings offer them.
    A verb missing here is ``UNRECOGNIZED``.
    """
    verbs = dict(_VERBS)
    if not settings.starttls:
        verbs["STARTTLS"] = Verb.UNIMPLEMENTED
    if not settings.auth_mechanisms:
        verbs["AUTH"] = Verb.UNIMPLEMENTED
    return verbs


def has_prefix(text: str, keyword: str) -> bool:
    """Whether ``text`` starts with ASCII ``keyword``, in any case (RFC 5321 2.4).

    Only ASCII counts: some non-ASCII letters (the dotless i, the long s)
    upper-case to ASCII ones and must not stand in for a keyword's.
    """
    head = text[: len(keyword)]
    return head.isascii() and head.upper() == keyword


def require_no_argument(argument: str, verb: str) -> None:
    """RFC 5321 4.1.1: RSET, DATA, QUIT (and STARTTLS, RFC 3207 4) take none.

    Raises ``ArgumentError`` (501) if there is one.
    """
    if argument:
        raise ArgumentError(Reply(501, SYNTAX, f"Syntax: {verb} takes no parameters"))


def require_printable(argument: str) -> None:
    """RFC 5321 4.1.2, 4.1.1: no command argument holds a control character.

    Raises ``ArgumentError`` (501) if this one does; the reply never echoes it.
    """
    if _CONTROL.search(argument):
        raise ArgumentError(_CONTROL_CHARACTER)


def parse_hello(argument: str, *, extended: bool) -> Helo | Ehlo:
    """``HELO``/``EHLO`` name.  Any non-empty name is taken, as most servers do.

    Raises ``ArgumentError`` (501) when the name is missing.
    """
    if not argument:
        verb = "EHLO" if extended else "HELO"
        raise ArgumentError(Reply(501, SYNTAX, f"Syntax: {verb} hostname"))
    return Ehlo(argument) if extended else Helo(argument)


def parse_lookup(argument: str, *, verb: str) -> Vrfy | Expn:
    """``VRFY string`` or ``EXPN string`` (RFC 5321 4.1.1.6, 4.1.1.7).

    Raises ``ArgumentError`` (501) when the string is missing.
    """
    if not argument:
        raise ArgumentError(Reply(501, SYNTAX, f"Syntax: {verb} string"))
    return Vrfy(argument) if verb == "VRFY" else Expn(argument)


def split_path(argument: str, *, enhanced: str) -> tuple[str, list[str]]:
    """Split ``<path> params`` into the path and the parameter words.

    Honours quoted local parts, which may hold ``>`` and spaces.

    Raises ``ArgumentError`` (501 with ``enhanced``) for an unterminated
    path or one glued to what follows.
    """
    argument = argument.lstrip(" ")
    if not argument.startswith("<"):
        word, _, rest = argument.partition(" ")
        return word, rest.split()
    quoted = False
    i = 1
    while i < len(argument):
        char = argument[i]
        if quoted and char == "\\":
            i += 2
            continue
        if char == '"':
            quoted = not quoted
        elif char == ">" and not quoted:
            rest = argument[i + 1 :]
            if rest and not rest.startswith(" "):
                break
            return argument[: i + 1], rest.split()
        i += 1
    raise ArgumentError(Reply(501, enhanced, "Bad address syntax"))


def parse_mail(
    argument: str,
    *,
    extended: bool,
    smtputf8: bool,
    max_message_size: int,
    auth: bool,
) -> MailFrom:
    """``MAIL FROM:<reverse-path> [params]`` (RFC 5321 4.1.1.2).

    ``extended``: the session began with EHLO, so parameters are allowed.
    ``smtputf8``: SMTPUTF8 is offered.  ``auth``: AUTH is offered, so the
    AUTH parameter must be accepted (RFC 4954 5).

    Raises ``ArgumentError``: 501 syntax (a bad RET or ENVID among it, RFC
    3461 4.3, 4.4), 555 unknown or premature parameter, 552 SIZE over
    ``max_message_size``, 550 5.6.7 for a non-ASCII address without SMTPUTF8
    (RFC 6531 3.5).
    """
    if not has_prefix(argument, "FROM:"):
        raise ArgumentError(Reply(501, SYNTAX, "Syntax: MAIL FROM:<address>"))
    path, words = split_path(argument[5:], enhanced="5.1.7")
    params = parse_params(words, utf8=smtputf8)
    if params and not extended:
        raise ArgumentError(Reply(555, SYNTAX, "Parameters need EHLO"))
    size: int | None = None
    body: str | None = None
    utf8 = False
    ret: Ret | None = None
    envid: str | None = None
    for key, value in params.items():
        if key == "SIZE":
            # RFC 1870 3: size-value ::= 1*20DIGIT
            if value is None or not _SIZE_VALUE.match(value):
                raise ArgumentError(Reply(501, SYNTAX, "Syntax: SIZE=<octets>"))
            size = int(value)
            if max_message_size and size > max_message_size:
                raise ArgumentError(Reply(552, "5.3.4", "Message size exceeds the fixed maximum"))
        elif key == "BODY":
            body = (value or "").upper()
            if body not in ("7BIT", "8BITMIME"):
                raise ArgumentError(Reply(501, SYNTAX, "BODY must be 7BIT or 8BITMIME"))
        elif key == "SMTPUTF8" and smtputf8:
            if value is not None:
                raise ArgumentError(Reply(501, SYNTAX, "SMTPUTF8 takes no value"))
            utf8 = True
        elif key == "AUTH" and auth:
            if value is None:
                raise ArgumentError(Reply(501, SYNTAX, "Syntax: AUTH=<mailbox>"))
        elif key == "RET":
            ret = _dsn_value(parse_ret, value)
        elif key == "ENVID":
            envid = _dsn_value(parse_envid, value)
        else:
            raise _unsupported(key)
    parsed = parse_path(
        path,
        allow_null=True,
        allow_postmaster=False,
        utf8=utf8,
        non_ascii_reply=_NON_ASCII_SENDER,
        enhanced="5.1.7",
    )
    return MailFrom(parsed.address, params, size, body, utf8, ret, envid)


def _unsupported(key: str) -> ArgumentError:
    """RFC 5321 4.1.1.11: 555 for a parameter not recognized (or not offered)."""
    return ArgumentError(Reply(555, SYNTAX, f"Unsupported parameter {shown_in_reply(key)}"))


def _dsn_value(parse: Callable[[str | None], _T], value: str | None) -> _T:
    """A DSN parameter's value parsed; raises ``ArgumentError`` (501) saying why not."""
    try:
        return parse(value)
    except ValueError as error:
        raise ArgumentError(Reply(501, SYNTAX, str(error))) from None


def parse_rcpt(argument: str, *, extended: bool, smtputf8: bool, full: bool = False) -> RcptTo:
    """``RCPT TO:<forward-path> [params]`` (RFC 5321 4.1.1.3).

    ``extended``: the session began with EHLO, so parameters are allowed.
    ``smtputf8``: the transaction declared SMTPUTF8.  The parameters are
    DSN's NOTIFY and ORCPT (RFC 3461 4.1, 4.2); ORCPT's ``utf-8`` address
    type needs ``smtputf8`` (RFC 6533 3).  ``full``: the transaction has as
    many recipients as it may.

    Raises ``ArgumentError``: 501 syntax (a bad NOTIFY or ORCPT among it),
    555 for an unknown or premature parameter, 553 5.6.7 for a non-ASCII
    address without SMTPUTF8 (RFC 6531 3.5), then 452 4.5.3 when ``full``
    (RFC 5321 4.5.3.1.10).
    """
    if not has_prefix(argument, "TO:"):
        raise ArgumentError(Reply(501, SYNTAX, "Syntax: RCPT TO:<address>"))
    path, words = split_path(argument[3:], enhanced="5.1.3")
    params = parse_params(words, utf8=smtputf8)
    if params and not extended:
        raise ArgumentError(Reply(555, SYNTAX, "Parameters need EHLO"))
    notify: Notify | None = None
    orcpt: OriginalRecipient | None = None
    for key, value in params.items():
        if key == "NOTIFY":
            notify = _dsn_value(parse_notify, value)
        elif key == "ORCPT":
            orcpt = _dsn_value(partial(parse_orcpt, utf8=smtputf8), value)
        else:
            raise _unsupported(key)
    parsed = parse_path(
        path,
        allow_null=False,
        allow_postmaster=True,
        utf8=smtputf8,
        non_ascii_reply=_NON_ASCII_RECIPIENT,
        enhanced="5.1.3",
    )
    if full:
        raise ArgumentError(_TOO_MANY_RECIPIENTS)
    return RcptTo(parsed.address, params, notify, orcpt)


@dataclass(frozen=True, slots=True)
class AuthArguments:
    """``AUTH mechanism [initial-response]``; the response is ``None`` when absent."""

    mechanism: str
    initial_response: bytes | None


def parse_auth(argument: str, *, mechanisms: tuple[str, ...]) -> AuthArguments:
    """``AUTH mechanism [initial-response]`` (RFC 4954 4), the response decoded.

    ``=`` stands for an empty initial response.

    Raises ``ArgumentError``: 501 syntax or undecodable response, 504 for a
    mechanism not in ``mechanisms``.
    """
    words = argument.split(" ")
    if not words[0] or len(words) > 2:
        raise ArgumentError(Reply(501, SYNTAX, "Syntax: AUTH mechanism [initial-response]"))
    mechanism = words[0].upper()
    if mechanism not in mechanisms:
        raise ArgumentError(Reply(504, "5.5.4", "Unrecognized authentication type"))
    if len(words) == 1:
        return AuthArguments(mechanism, None)
    initial = words[1]
    if initial == "=":
        return AuthArguments(mechanism, b"")
    return AuthArguments(mechanism, decode_response(initial))


@dataclass(frozen=True, slots=True)
class BdatArguments:
    """``BDAT size [LAST]``: ``refusal`` is set for bad syntax after the size."""

    size: int
    last: bool
    refusal: Reply | None = None


def parse_bdat(argument: str) -> BdatArguments | None:
    """``BDAT chunk-size [LAST]`` (RFC 3030 2).

    Returns ``None`` when the size cannot be read: nobody can then tell where
    the next command starts.  With a readable size, other bad syntax is a
    ``refusal`` to send once the chunk has been read and thrown away.
    """
    words = argument.split()
    if not words or not _SIZE_VALUE.match(words[0]):
        return None
    size = int(words[0])
    last = len(words) == 2 and words[1].upper() == "LAST"
    if len(words) > 2 or (len(words) == 2 and not last):
        return BdatArguments(size, False, Reply(501, SYNTAX, "Syntax: BDAT size [LAST]"))
    return BdatArguments(size, last)
