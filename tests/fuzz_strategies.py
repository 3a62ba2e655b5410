"""What the fuzz targets feed: SMTP sessions from a grammar, mutations of them, and splits.

A session is a list of *flights*: the octets a client sends in one go before
it waits for the server (PIPELINING, RFC 2920).  Flights matter only around
STARTTLS: a flight ends with it, and the handshake comes between flights.

The grammar (``sessions``) writes every command with valid and broken
arguments: ESMTP parameters (SIZE, BODY, SMTPUTF8, AUTH=, RET, ENVID,
NOTIFY, ORCPT) good and bad, addresses with quoted local parts, source
routes, address literals, UTF-8 and over-long parts; DATA content with dot
lines, long lines, bare CR and LF, NUL, 8-bit octets and the smuggling
sequences; BDAT chunks that match their size or do not; AUTH PLAIN and LOGIN
exchanges, cancelled and malformed; lines at and past every length limit;
any line ending.  ``mutations`` then flip, insert, delete, duplicate and
truncate octets of a session, so that what the grammar does not write is
reached too.

How long a target runs: ``fuzz_settings`` gives a short, derandomised run
(the same examples every time, so ``make test`` is repeatable) unless
``MAILGATE_FUZZ_SECONDS`` is set; then ``run_fuzz`` runs the target again and
again, each time from a fresh random seed, until that many seconds have
passed (``make fuzz``), and reports how many examples it tried.
"""

from __future__ import annotations

import base64
import os
import re
import sys
import time
from collections.abc import Callable, Sequence

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

FUZZ_SECONDS = float(os.environ.get("MAILGATE_FUZZ_SECONDS") or 0)
"""How long each fuzz target runs by hand; 0: the short run of ``make test``."""

PASSWORD = b"secret"
CRLF = b"\r\n"

Flights = list[bytes]


def fuzz_settings(examples: int) -> settings:
    """``examples`` derandomised examples, or long random runs when ``FUZZ_SECONDS`` is set."""
    return settings(
        max_examples=2_000 if FUZZ_SECONDS else examples,
        derandomize=not FUZZ_SECONDS,
        # By hand, failures are saved (in .hypothesis/) and tried first the next time.
        database=settings.default.database if FUZZ_SECONDS else None,
        deadline=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


class Counter:
    """Counts the examples a target tried (shrinking included)."""

    def __init__(self) -> None:
        self.examples = 0

    def __call__(self) -> None:
        self.examples += 1


def run_fuzz(name: str, target: Callable[[], None], counter: Counter) -> None:
    """Run ``target`` (a ``@given`` test) once, or for ``FUZZ_SECONDS`` when set."""
    started = time.monotonic()
    runs = 0
    while True:
        target()
        runs += 1
        elapsed = time.monotonic() - started
        if elapsed >= FUZZ_SECONDS:
            break
    if FUZZ_SECONDS:
        print(
            f"\nfuzz {name}: {counter.examples} examples in {runs} runs, {elapsed:.0f} s",
            file=sys.stderr,
        )


# ------------------------------------------------------------------ tokens
# Each token is good most of the time (and shrinks toward good), so that sessions
# get deep into transactions; the bad ones are what the grammar is for.

GOOD_DOMAINS = [
    b"example.org",
    b"c.example",
    b"open.example",
    b"remote.example",
    b"EXAMPLE.ORG",
    b"[192.0.2.1]",
    b"[IPv6:2001:db8::1]",
    b"xn--bcher-kva.example",
    "bücher.example".encode(),
]
BAD_DOMAINS = [
    b"[IPv6:::ffff:192.0.2.1]",
    b"[IPv6:1:2:3:4:5:6:7:8:9]",
    b"[300.1.2.3]",
    b"[tag:x]",
    b"[]",
    "例え.テスト".encode(),
    b"a-.example",
    b"-a.example",
    b"a..example",
    b"example.",
    b"a" * 63 + b".example",
    b"a" * 64 + b".example",
    (b"a" * 63 + b".") * 4 + b"com",
    ("ü" * 62 + ".").encode() * 2 + b"com",
    b"",
]
GOOD_LOCAL_PARTS = [
    b"alice",
    b"bob",
    b"team",
    b"a",
    b"postmaster",
    b"ALICE",
    b"a.b",
    b'"quoted local"',
    b'"alice"',
    b"a+tag",
    b"mallory",
    "ünï".encode(),
]
BAD_LOCAL_PARTS = [
    b".a",
    b"a.",
    b"a..b",
    b'"a\\"b"',
    b'"unterminated',
    b'"a>b"',
    b"x" * 64,
    b"x" * 65,
    ("ü" * 40).encode(),
    b"user%remote.example",
    b"",
]
GOOD_MAIL_PARAMETERS = [
    b"SIZE=100",
    b"BODY=8BITMIME",
    b"BODY=7BIT",
    b"SMTPUTF8",
    b"RET=HDRS",
    b"RET=FULL",
    b"ENVID=abc+2Bdef",
    b"AUTH=<>",
    b"AUTH=alice+40example.org",
]
BAD_MAIL_PARAMETERS = [
    b"SIZE=0",
    b"SIZE=19999",
    b"SIZE=99999999999999999999",
    b"SIZE=123456789012345678901",
    b"SIZE=",
    b"SIZE=x",
    b"SIZE",
    b"body=8bitmime",
    b"BODY=BINARYMIME",
    b"BODY",
    b"SMTPUTF8=yes",
    b"AUTH",
    b"RET=NONE",
    b"RET",
    b"ENVID=" + b"x" * 101,
    b"ENVID=a+zz",
    b"ENVID=",
    b"X-FOO=bar",
    b"x-foo",
    b"=",
    b"A=",
    b"=B",
    "K=ü".encode(),
    "Ü=1".encode(),
    b"SIZE=1 SIZE=2",
]
GOOD_RCPT_PARAMETERS = [
    b"NOTIFY=NEVER",
    b"NOTIFY=SUCCESS,FAILURE,DELAY",
    b"ORCPT=rfc822;b+40example.com",
    b"ORCPT=RFC822;b@example.com",
    b"ORCPT=utf-8;b\\x{40}example.com",
]
BAD_RCPT_PARAMETERS = [
    b"notify=success",
    b"NOTIFY=NEVER,SUCCESS",
    b"NOTIFY=",
    b"NOTIFY=BOGUS",
    b"NOTIFY",
    "ORCPT=utf-8;ü\\x{40}example.com".encode(),
    b"ORCPT=rfc822;",
    b"ORCPT=x",
    b"ORCPT=rfc822;" + b"a" * 500,
    b"ORCPT=rfc822;a+ZZ",
    b"X-BAR=1",
    b"NOTIFY=NEVER NOTIFY=NEVER",
]
CONTENT_LINES = [
    b"Subject: fuzz",
    b"From: <a@example.org>",
    b"",
    b".",
    b"..",
    b".x",
    b"...",
    b"x" * 998,
    b"x" * 999,
    b"." + b"x" * 998,
    b"y" * 2000,
    "ünïcødé".encode(),
    b"\x00\xff\x80",
    b"\x1b[31m",
    b"a\n.\nb",
    b"a\r.\rb",
    b"a\n.\r\nb",
    b"a\r\n.\nb",
    b"\r",
    b"\n",
    b"QUIT",
    b"MAIL FROM:<evil@example.org>",
    b"BDAT 5 LAST",
]
BAD_ENDINGS = [b"\n", b"\r", b"", b"\n\r", b"\r\r\n", b" \r\n", b"\t\r\n"]
JUNK_VERBS = [
    b"FOO",
    b"TURN",
    b"ETRN x",
    b"SEND FROM:<a@b.c>",
    b"XCLIENT ADDR=1.2.3.4",
    b"XFORWARD NAME=x",
    b"",
    b" ",
    b"\t",
    b"MAIL",
    b"MAIL FROM",
    b"RCPT",
    b"RCPT TO",
    "ÉHLO x".encode(),
    b"EHL\xc4\xb0",
    b"HEL\xff x",
    b"\x00EHLO x",
    b"EHLO\tx",
    b" EHLO x",
    b"EHLO x ",
]
INTERESTING = [
    b"\r",
    b"\n",
    CRLF,
    b"\x00",
    b".",
    b"\r\n.\r\n",
    b"\n.\n",
    b"\r.\r",
    b"\xff",
    b"\x80",
    "é".encode(),
    "\u2028".encode(),
    b" ",
    b"\t",
    b"=",
    b"<",
    b">",
    b":",
    b"@",
    b"BDAT 5\r\n",
    b"BDAT 9999999\r\n",
    b"DATA\r\n",
    b"STARTTLS\r\n",
    b"QUIT\r\n",
    b"AUTH PLAIN\r\n",
]


def _bad(draw: st.DrawFn, one_in: int = 6) -> bool:
    """True one time in ``one_in``; shrinks to False."""
    return draw(st.integers(0, one_in - 1)) == one_in - 1


def _pick(draw: st.DrawFn, good: Sequence[bytes], bad: Sequence[bytes]) -> bytes:
    return draw(st.sampled_from(bad if _bad(draw) else good))


def _case(draw: st.DrawFn, word: bytes) -> bytes:
    if _bad(draw):
        return draw(st.sampled_from([word.lower(), word.title()]))
    return word


def _ending(draw: st.DrawFn) -> bytes:
    return draw(st.sampled_from(BAD_ENDINGS)) if _bad(draw, 20) else CRLF


def _address(draw: st.DrawFn) -> bytes:
    local = draw(st.sampled_from(GOOD_LOCAL_PARTS))
    domain = draw(st.sampled_from(GOOD_DOMAINS))
    if not _bad(draw, 4):
        return b"<" + local + b"@" + domain + b">"
    form = draw(st.integers(0, 6))
    if form == 0:
        return b"<" + draw(st.sampled_from(BAD_LOCAL_PARTS)) + b"@" + domain + b">"
    if form == 1:
        return b"<" + local + b"@" + draw(st.sampled_from(BAD_DOMAINS)) + b">"
    if form == 2:
        return draw(st.sampled_from([b"<>", b"<postmaster>", b"<Postmaster>", b"< >", b"<"]))
    if form == 3:
        return b"<@relay.example,@[192.0.2.9]:" + local + b"@" + domain + b">"
    if form == 4:
        return local + b"@" + domain
    if form == 5:
        return b"<" + local + b"@" + domain + draw(st.sampled_from([b"", b">x", b">>", b"> "]))
    return draw(st.binary(max_size=12))


def _parameters(draw: st.DrawFn, good: list[bytes], bad: list[bytes]) -> bytes:
    if draw(st.booleans()):
        return b""
    chosen = draw(st.lists(st.sampled_from(good), max_size=3, unique=True))
    if _bad(draw):
        chosen.append(draw(st.sampled_from(bad)))
    if _bad(draw, 12):
        # A long keyword: replies that name a parameter must stay within 512 octets.
        chosen.insert(0, b"X" * draw(st.integers(30, 1200)) + b"=1")
    return b"".join(b" " + p for p in chosen)


def _hello(draw: st.DrawFn) -> bytes:
    verb = _case(draw, draw(st.sampled_from([b"EHLO", b"HELO"])))
    good = [b"client.example", *GOOD_DOMAINS, b"[127.0.0.1]"]
    bad = [b"", b"x" * 600, "ünï.example".encode(), b"c\x01", *BAD_DOMAINS]
    argument = _pick(draw, good, bad)
    return verb + (b" " + argument if argument else b"") + _ending(draw)


def _mail(draw: st.DrawFn) -> bytes:
    space = b" " if _bad(draw) else b""
    head = _case(draw, b"MAIL FROM:")
    params = _parameters(draw, GOOD_MAIL_PARAMETERS, BAD_MAIL_PARAMETERS)
    return head + space + _address(draw) + params + _ending(draw)


def _rcpt(draw: st.DrawFn) -> bytes:
    params = _parameters(draw, GOOD_RCPT_PARAMETERS, BAD_RCPT_PARAMETERS)
    return _case(draw, b"RCPT TO:") + _address(draw) + params + _ending(draw)


def _content(draw: st.DrawFn) -> bytes:
    lines = []
    for _ in range(draw(st.integers(0, 8))):
        if _bad(draw, 3):
            lines.append(draw(st.one_of(st.sampled_from(CONTENT_LINES), st.binary(max_size=20))))
        else:
            lines.append(draw(st.sampled_from([b"Subject: hello", b"", b"Some text.", b"-- "])))
    return b"".join(line + _ending(draw) for line in lines)


def _data(draw: st.DrawFn) -> bytes:
    content = _content(draw)
    end = b".\r\n"
    if _bad(draw):
        end = draw(st.sampled_from([b"\r\n.\r\n", b".\n", b"\n.\n", b"", b"..\r\n"]))
    return _case(draw, b"DATA") + _ending(draw) + content + end


def _bdat(draw: st.DrawFn) -> bytes:
    chunks = []
    for index in range(draw(st.integers(1, 3))):
        payload = _content(draw) if draw(st.booleans()) else draw(st.binary(max_size=30))
        size = len(payload)
        if _bad(draw):
            size = max(0, size + draw(st.sampled_from([-1, 1, 5, -5])))
        last = index == 2 or draw(st.booleans())
        tail = b" LAST" if last else b""
        if _bad(draw):
            tail = draw(st.sampled_from([b" LAST x", b" FOO", b" last", b"  LAST"]))
        line = _case(draw, b"BDAT") + b" %d" % size + tail
        if _bad(draw, 12):
            line = draw(st.sampled_from([b"BDAT", b"BDAT x", b"BDAT -1", b"BDAT 1" + b"0" * 20]))
        chunks.append(line + _ending(draw) + payload)
        if last:
            break
    return b"".join(chunks)


def _auth(draw: st.DrawFn) -> bytes:
    username = _pick(draw, [b"alice"], [b"bob", "ünï".encode(), b"", b"a\x00b"])
    password = _pick(draw, [PASSWORD], [b"wrong", b""])
    plain = base64.b64encode(b"\x00" + username + b"\x00" + password)
    line = base64.b64encode
    auth = _case(draw, b"AUTH")
    end = _ending(draw)
    options = [
        auth + b" PLAIN " + plain + end,
        auth + b" PLAIN" + end + plain + end,
        auth + b" LOGIN" + end + line(username) + end + line(password) + end,
        auth + b" LOGIN " + line(username) + end + line(password) + end,
        auth + b" PLAIN =" + end,
        auth + b" PLAIN" + end + b"*" + end,
        auth + b" LOGIN" + end + b"not base64!" + end,
        auth + b" CRAM-MD5" + end,
        auth + end,
        auth + b" PLAIN " + plain + b" extra" + end,
        auth + b" PLAIN " + base64.b64encode(b"alice\x00alice\x00secret") + end,
        auth + b" PLAIN" + end + b"A" * draw(st.sampled_from([12285, 12287, 12300])) + end,
    ]
    return options[draw(st.integers(0, 3)) if not _bad(draw, 3) else draw(st.integers(4, 11))]


def _simple(draw: st.DrawFn) -> bytes:
    verbs = [b"RSET", b"NOOP", b"HELP", b"VRFY", b"EXPN", b"QUIT", b"DATA", b"STARTTLS", b"BDAT"]
    verb = draw(st.sampled_from(verbs))
    arguments = [b"alice", b"team", b"<alice@example.org>", b"team@example.org", b"ALICE"]
    argument = b""
    if verb in (b"VRFY", b"EXPN") or _bad(draw):
        argument = _pick(draw, arguments, [b"nobody@open.example", b"x", "ünï".encode(), b"a\x01b"])
    return _case(draw, verb) + (b" " + argument if argument else b"") + _ending(draw)


def _long_line(draw: st.DrawFn) -> bytes:
    head = draw(st.sampled_from([b"NOOP ", b"MAIL FROM:<a@b.c> X=", b"RCPT TO:<a@b.c> X=", b""]))
    length = draw(st.sampled_from([505, 508, 509, 510, 511, 520, 640, 1146, 1200, 12300]))
    return head + b"x" * (length - len(head)) + _ending(draw)


def _junk(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return draw(st.sampled_from(JUNK_VERBS)) + _ending(draw)
    return draw(st.binary(max_size=24))


def _transaction(draw: st.DrawFn) -> bytes:
    parts = [_mail(draw)]
    parts += [_rcpt(draw) for _ in range(draw(st.integers(1, 3)) if not _bad(draw) else 0)]
    parts.append(_bdat(draw) if draw(st.booleans()) else _data(draw))
    return b"".join(parts)


_STEPS: list[Callable[[st.DrawFn], bytes]] = [
    _transaction,
    _transaction,
    _transaction,
    _transaction,
    _simple,
    _hello,
    _auth,
    _mail,
    _rcpt,
    _data,
    _bdat,
    _simple,
    _long_line,
    _junk,
]


@st.composite
def sessions(draw: st.DrawFn) -> Flights:
    """A client's session, as flights; most begin with EHLO and hold transactions."""
    flights: Flights = []
    flight = b""
    hello = not _bad(draw, 8)
    for _ in range(draw(st.integers(1, 6))):
        if hello:
            flight += _case(draw, b"EHLO") + b" client.example" + _ending(draw)
            hello = False
        if _bad(draw, 5):
            # STARTTLS ends a flight: the handshake comes next, then EHLO again.
            # Or an attacker pipelines commands behind it (CVE-2011-0411).
            injected = draw(st.sampled_from(_STEPS))(draw) if _bad(draw, 3) else b""
            flights.append(flight + _case(draw, b"STARTTLS") + _ending(draw) + injected)
            flight = b""
            hello = not _bad(draw, 8)
            continue
        flight += draw(st.sampled_from(_STEPS))(draw)
        if _bad(draw, 4):
            flights.append(flight)
            flight = b""
    if not _bad(draw, 3):
        flight += _case(draw, b"QUIT") + CRLF
    flights.append(flight)
    return [f for f in flights if f] or [b""]


_LOGIN = b"AUTH PLAIN " + base64.b64encode(b"\x00alice\x00" + PASSWORD) + CRLF
COMPLETE_SESSIONS: list[Flights] = [
    # Every target begins with these, then explores: whole transactions by DATA and by
    # BDAT, STARTTLS and AUTH, and a parameter longer than a reply line may be.
    [
        b"EHLO client.example\r\nMAIL FROM:<a@example.org> SIZE=100 BODY=8BITMIME\r\n"
        b"RCPT TO:<alice@example.org> NOTIFY=NEVER\r\nRCPT TO:<team@example.org>\r\n"
        b"DATA\r\nSubject: one\r\n\r\n..dot\r\n.\r\n"
        b"MAIL FROM:<>\r\nRCPT TO:<bob@open.example>\r\n"
        b"BDAT 6\r\nSubjecBDAT 10 LAST\r\nt: two\r\n\r\n"
        b"VRFY alice\r\nEXPN team\r\nRSET\r\nNOOP\r\nHELP\r\nQUIT\r\n"
    ],
    [
        b"EHLO client.example\r\nSTARTTLS\r\n",
        b"EHLO client.example\r\n" + _LOGIN + b"MAIL FROM:<alice@example.org>\r\n"
        b"RCPT TO:<x@remote.example>\r\nDATA\r\nSubject: relayed\r\n\r\nbody\r\n.\r\n"
        b"QUIT\r\n",
    ],
    [b"EHLO client.example\r\n" + _LOGIN + b"MAIL FROM:<a@b.example> " + b"X" * 600 + b"=1\r\n"],
]


# --------------------------------------------------------------- mutations

Mutation = tuple[str, int, int, int, bytes]
"""(kind, which flight, position, length, octets), each position modulo what is there."""

mutations = st.lists(
    st.tuples(
        st.sampled_from(["flip", "insert", "delete", "duplicate", "truncate"]),
        st.integers(0, 7),
        st.integers(0, 2**16),
        st.integers(1, 64),
        st.one_of(st.sampled_from(INTERESTING), st.binary(min_size=1, max_size=4)),
    ),
    max_size=4,
)


def mutate(flights: Sequence[bytes], changes: Sequence[Mutation]) -> Flights:
    """``flights`` with each change applied in turn (positions wrap to fit)."""
    out = list(flights)
    for kind, which, position, length, octets in changes:
        index = which % len(out)
        data = out[index]
        at = position % (len(data) + 1)
        if kind == "flip" and data:
            at %= len(data)
            data = data[:at] + bytes([data[at] ^ (octets[0] or 0x20)]) + data[at + 1 :]
        elif kind == "insert":
            data = data[:at] + octets + data[at:]
        elif kind == "delete":
            data = data[:at] + data[at + length :]
        elif kind == "duplicate":
            data = data[:at] + data[at : at + length] + data[at:]
        elif kind == "truncate":
            data = data[:at]
            del out[index + 1 :]
        out[index] = data
    return out


def splits(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    """``data`` cut into pieces of the sizes in ``cuts`` (cycling), never an empty one."""
    if not cuts:
        return [data] if data else []
    pieces, at, turn = [], 0, 0
    while at < len(data):
        size = cuts[turn % len(cuts)]
        pieces.append(data[at : at + size])
        at += size
        turn += 1
    return pieces


cut_sizes = st.lists(st.integers(1, 40), min_size=1, max_size=30)


# ----------------------------------------------------------------- replies

MAX_REPLY_LINE_OCTETS = 512  # RFC 5321 4.5.3.1.5, code and CRLF included
_REPLY_LINE = re.compile(rb"([2-5][0-9][0-9])([ -])(.*)", re.DOTALL)
_ENHANCED = re.compile(r"([245])\.[0-9]{1,3}\.[0-9]{1,3}(?: |\Z)")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NO_ENHANCED_CODE = (220, 334, 354)  # greetings, SASL challenges, DATA's go-ahead


def check_replies(output: bytes, *, hostname: str) -> list[tuple[int, list[str]]]:
    """Check the server's output reply by reply; return (code, text lines) for each.

    RFC 5321 4.2: each line is three digits, ``-`` or a space, text and CRLF,
    at most 512 octets (4.5.3.1.5); every line of a multi-line reply has the
    same code; the text is UTF-8 without control characters.  RFC 2034 4,
    RFC 3463 2: every reply but the greeting, a 334, a 354 and the answers to
    HELO and EHLO (whose text starts with ``hostname``) carries an enhanced
    status code of the reply's class, on every line.

    Raises ``AssertionError`` naming the offending line.
    """
    assert not output or output.endswith(CRLF), f"output ends mid-line: {output[-80:]!r}"
    replies: list[tuple[int, list[str]]] = []
    lines: list[str] = []
    code = 0
    for raw in output.split(CRLF)[:-1]:
        assert len(raw) + 2 <= MAX_REPLY_LINE_OCTETS, (
            f"reply line of {len(raw) + 2} octets: {raw[:80]!r}"
        )
        match = _REPLY_LINE.fullmatch(raw)
        assert match is not None, f"malformed reply line {raw[:80]!r}"
        text = match.group(3).decode("utf-8")
        assert not _CONTROL.search(text), f"control character in {raw[:80]!r}"
        this = int(match.group(1))
        assert not lines or this == code, f"{this} inside a multi-line {code} reply"
        code = this
        lines.append(text)
        if match.group(2) == b" ":
            replies.append((code, lines))
            lines = []
    assert not lines, f"unfinished reply: {lines[:3]}"
    for index, (code, texts) in enumerate(replies):
        marks = [_ENHANCED.match(text) for text in texts]
        where = f"reply {code} {texts[0][:60]!r}"
        if index == 0 or code in _NO_ENHANCED_CODE:
            continue
        if marks[0] is None:
            assert code == 250, f"{where}: no enhanced code"
            assert texts[0].startswith(hostname), f"{where}: no enhanced code"
            continue
        assert all(m is not None and m.group(1) == str(code)[0] for m in marks), where
    return replies
