"""``mailgate sendmail``: the sendmail command line, in front of a running mailgate.

PHP's ``mail()``, cron and many other programs hand a message to
``/usr/sbin/sendmail`` on standard input.  This command reads it as
sendmail does and submits it over SMTP, with mailgate's own client
(``mailgate.queue.connect``), to ``--server``, ``$MAILGATE_SENDMAIL_SERVER``
or ``127.0.0.1:1025``, the default SMTP listener.  Nothing is queued here:
the exit status (``sysexits.h``, as sendmail's) says at once whether the
server took the message.

Reading.  Without ``-i`` a line holding only ``.`` ends the input, as in
sendmail; nothing is unstuffed.  Lines may end in LF or CRLF; they are sent
with CRLF.  Recipients come from the arguments; with ``-t`` also from
``To``, ``Cc`` and ``Bcc`` (added to the arguments, as Postfix does), and
``Bcc`` is then removed from the content.  With no recipient argument the
headers are read as with ``-t``, as Mailpit's sendmail does, so
``sendmail_path = "mailgate sendmail"`` works as it does there.  A name
without a domain (cron's ``root``) gets ``@`` and this machine's name.

Writing.  The fields sendmail adds when missing are added after the others:
``From`` (``-F``'s name and the envelope sender), ``Date``, ``Message-ID``.
The envelope sender is ``-f``'s address, else the ``From`` field's, else
``user@hostname`` of the user running the command.  Nothing else in the
message changes.

Options are parsed as sendmail's ``getopt`` does, not by argparse:
``-fADDRESS`` and ``-f ADDRESS``, ``-oi`` and ``-odi``, clustered switches
(``-ti``), options after recipients.  The options programs pass and that
mean nothing here (delivery and error modes, ``-B``, ``-G``...) are
accepted and ignored; any other is a usage error (64) in one line.
"""

from __future__ import annotations

import asyncio
import getopt
import os
import pwd
import re
import socket
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from email.utils import formataddr, formatdate, getaddresses, make_msgid
from typing import TYPE_CHECKING, BinaryIO, Literal

from mailgate.cli._exit import fail
from mailgate.cli._send import server_address

if TYPE_CHECKING:
    from mailgate.protocol import Reply

__all__ = ["SERVER_VARIABLE", "sendmail_command"]

SERVER_VARIABLE = "MAILGATE_SENDMAIL_SERVER"
DEFAULT_SERVER = "127.0.0.1:1025"  # the default SMTP listener of mailgate serve
CONNECT_TIMEOUT_SECONDS = 30.0  # a program waits on us: do not wait RFC 5321's 5 minutes

# sysexits.h, the statuses sendmail exits with.
EX_OK = 0
EX_USAGE = 64  # a bad option or argument
EX_DATAERR = 65  # the message cannot be sent as it is
EX_NOUSER = 67  # a recipient's address is refused (5.1.x)
EX_NOHOST = 68  # the server's name does not resolve
EX_UNAVAILABLE = 69  # no connection, or a permanent refusal
EX_IOERR = 74  # standard input could not be read
EX_TEMPFAIL = 75  # a 4xx: try again later

_SHORT_OPTIONS = "B:C:F:GL:N:O:R:S:UV:X:b:cf:h:imno:r:tv"
_LONG_OPTIONS = ("server=", "help")
_IGNORED = frozenset("BCGLUXchmn")  # accepted as sendmail does, and meaning nothing here
_FIELD = re.compile(rb"[!-9;-~]+:")  # RFC 5322 2.2: a field name, then a colon
_NOTIFY = frozenset({"SUCCESS", "FAILURE", "DELAY"})  # RFC 3461 4.1, with NEVER alone

USAGE = f"""\
usage: mailgate sendmail [options] [recipient ...] < message

Send the message on standard input to a running mailgate over SMTP, as sendmail would.

  -t             also send to the To, Cc and Bcc fields' addresses, and remove Bcc
                 (the default when no recipient is named)
  -i, -oi        a line holding only "." does not end the message
  -f ADDRESS     the envelope sender (default: the From field's, else user@hostname)
  -r ADDRESS     the same as -f
  -F NAME        the full name in the From field added when there is none
  -N DSN         never, or success,failure,delay: the delivery notices asked for
  -R full|hdrs   what a bounce returns;  -V ENVID  the envelope id
  -v             print the SMTP conversation
  --server HOST:PORT, -S HOST:PORT
                 where mailgate listens (default ${SERVER_VARIABLE}, else {DEFAULT_SERVER})

Accepted and ignored: -bm, -o<option>, -O<option>, -B, -C, -G, -L, -U, -X, -c, -h, -m, -n.
Exit status (sysexits.h): 0 sent, 64 usage, 65 the message as it is cannot be sent,
67 a recipient refused, 68 unknown host, 69 no connection or refused, 75 try later.
"""


class _Usage(Exception):
    """A bad option or argument: reported in one line, exit status 64."""


class _Refused(Exception):
    """The message cannot be sent; ``status`` is the exit status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Invocation:
    """What a sendmail command line asks for."""

    recipients: list[str] = field(default_factory=list)
    sender: str | None = None
    full_name: str | None = None
    extract: bool = False
    ignore_dots: bool = False
    verbose: bool = False
    server: str | None = None
    notify: str | None = None
    ret: Literal["FULL", "HDRS"] | None = None
    envid: str | None = None
    help: bool = False


def parse(argv: Sequence[str]) -> Invocation:
    """Read a sendmail command line.  Raises ``_Usage`` for what sendmail would refuse."""
    try:
        options, arguments = getopt.gnu_getopt(list(argv), _SHORT_OPTIONS, list(_LONG_OPTIONS))
    except getopt.GetoptError as error:
        if error.opt and "not recognized" in error.msg:
            dashes = "-" if len(error.opt) == 1 else "--"
            raise _Usage(f"unknown option {dashes}{error.opt}") from None
        raise _Usage(error.msg) from None
    given = Invocation(recipients=arguments)
    for name, value in options:
        letter = name.removeprefix("-")
        if letter in _IGNORED:
            continue
        match letter:
            case "t":
                given.extract = True
            case "i":
                given.ignore_dots = True
            case "v":
                given.verbose = True
            case "f" | "r":
                given.sender = _sender_option(name, value)
            case "F":
                given.full_name = value
            case "o":  # -oi is sendmail's IgnoreDots; -odi, -oem... are modes we need not
                given.ignore_dots = given.ignore_dots or value == "i"
            case "O":
                key, _, setting = value.partition("=")
                if key.strip().lower() == "ignoredots":
                    given.ignore_dots = setting.strip().lower() not in {"false", "f", "no", "n"}
            case "b" if value != "m":
                raise _Usage(f"-b{value} is not supported: only -bm, reading a message")
            case "N":
                given.notify = _notify(value)
            case "R":
                if value.upper() not in ("FULL", "HDRS"):
                    raise _Usage(f"-R {value!r}: give full or hdrs")
                given.ret = "FULL" if value.upper() == "FULL" else "HDRS"
            case "V":
                given.envid = value
            case "S" | "-server":
                given.server = value
            case "-help":
                given.help = True
    return given


def _sender_option(name: str, value: str) -> str:
    text = value.strip()
    if text in ("", "<>"):
        return ""  # the null reverse-path, as for a bounce
    found = _addresses([text])
    if len(found) != 1:
        raise _Usage(f"{name} {value!r} is not one address")
    return found[0]


def _notify(value: str) -> str:
    words = {word.strip().upper() for word in value.split(",")}
    if words == {"NEVER"} or (words and words <= _NOTIFY):
        return ",".join(sorted(words))
    raise _Usage(f"-N {value!r}: give never, or some of success, failure and delay")


def _addresses(values: Iterable[str]) -> list[str]:
    """The addresses in address lists (RFC 5322 3.4), names and groups left out."""
    return [address for _, address in getaddresses(list(values)) if address]


# -- the message --------------------------------------------------------------------------------


def read_lines(stream: BinaryIO, *, ignore_dots: bool) -> list[bytes]:
    """The message's lines, without their ends; a lone ``.`` ends it unless ``ignore_dots``."""
    lines = []
    for read in stream:
        line = read.removesuffix(b"\n").removesuffix(b"\r")
        if line == b"." and not ignore_dots:
            break
        lines.append(line)
    return lines


@dataclass
class Message:
    """A message as read: its header fields (each its lines) and its body lines."""

    fields: list[list[bytes]]
    body: list[bytes]

    @classmethod
    def of(cls, lines: list[bytes]) -> Message:
        fields: list[list[bytes]] = []
        start = 1 if lines and lines[0].startswith(b"From ") else 0  # an mbox line, dropped
        at = start
        for at in range(start, len(lines) + 1):
            line = lines[at] if at < len(lines) else b""
            if fields and line[:1] in (b" ", b"\t"):
                fields[-1].append(line)
            elif line and _FIELD.match(line):
                fields.append([line])
            else:  # the empty line, or the body begins without one
                break
        body = lines[at + 1 :] if at < len(lines) and lines[at] == b"" else lines[at:]
        return cls(fields, body)

    def values(self, *names: str) -> list[str]:
        """The unfolded values of the fields named (any case)."""
        wanted = {name.lower() for name in names}
        found = []
        for lines in self.fields:
            name, _, value = b"".join(lines).partition(b":")
            if name.strip().lower().decode("ascii") in wanted:
                found.append(value.decode("utf-8", "replace").strip())
        return found

    def remove(self, name: str) -> None:
        self.fields = [f for f in self.fields if not _named(f, name)]

    def add(self, name: str, value: str) -> None:
        self.fields.append([f"{name}: {value}".encode()])

    def content(self) -> bytes:
        lines = [line for each in self.fields for line in each]
        return b"".join(line + b"\r\n" for line in [*lines, b"", *self.body])


def _named(lines: list[bytes], name: str) -> bool:
    return lines[0].partition(b":")[0].strip().lower() == name.lower().encode()


def _hostname() -> str:
    return socket.gethostname() or "localhost"


def _user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:  # a user id with no name, as in some containers
        return os.environ.get("USER") or "nobody"


def _qualified(address: str) -> str:
    """``address``, with this machine's name as its domain when it has none (cron's root)."""
    return address if not address or "@" in address else f"{address}@{_hostname()}"


def _from_field(name: str | None, address: str) -> str:
    if not name:
        return address
    try:
        return formataddr((name, address))  # a name that is not ASCII is RFC 2047-encoded
    except UnicodeEncodeError:  # an address that is not ASCII: SMTPUTF8 carries it as it is
        return f'"{name}" <{address}>'


def prepare(given: Invocation, message: Message) -> tuple[str, list[str], bytes]:
    """The envelope sender, the recipients and the content to send.

    Raises ``_Usage`` when there is no recipient.
    """
    recipients = _addresses(given.recipients)
    if given.recipients and not recipients:
        raise _Usage(f"{' '.join(given.recipients)!r} names no address")
    if given.extract or not given.recipients:
        recipients += _addresses(message.values("To", "Cc", "Bcc"))
        message.remove("Bcc")  # the Bcc recipients stay in the envelope only
    unique: dict[str, str] = {}  # each once (whatever its case), in the order named
    for recipient in map(_qualified, recipients):
        unique.setdefault(recipient.lower(), recipient)
    recipients = list(unique.values())
    if not recipients:
        raise _Usage("no recipient: name one, or put one in To, Cc or Bcc")
    if given.sender is not None:
        sender = _qualified(given.sender)
    else:
        sender = _qualified(next(iter(_addresses(message.values("From"))), _user()))
    if not message.values("From"):
        message.add("From", _from_field(given.full_name, sender or _qualified(_user())))
    if not message.values("Date"):
        message.add("Date", formatdate(localtime=True))
    if not message.values("Message-ID"):
        message.add("Message-ID", make_msgid(domain=_hostname()))
    return sender, recipients, message.content()


# -- sending ------------------------------------------------------------------------------------


def _print_line(direction: Literal["C", "S"], line: str) -> None:
    print(f"{direction}: {line}", flush=True)


def _status(reply: Reply) -> int:
    """The exit status for a refusal: sendmail's reading of the reply's code."""
    enhanced = reply.enhanced or ""
    if reply.code < 500:
        return EX_TEMPFAIL
    if enhanced.startswith("5.1."):  # RFC 3463 3.2: addressing status
        return EX_NOUSER
    if enhanced.startswith("5.6.") or enhanced == "5.3.4":  # the content, or its size
        return EX_DATAERR
    return EX_UNAVAILABLE


async def _submit(
    server: str, given: Invocation, sender: str, recipients: list[str], content: bytes
) -> int:
    # The client loads only to send: a usage error answers without it.
    from mailgate.protocol import Recipient  # noqa: PLC0415
    from mailgate.queue import (  # noqa: PLC0415
        DeliveryError,
        SMTPClientSettings,
        Transaction,
        connect,
    )

    host, port = server_address(server)
    try:
        await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        status = EX_TEMPFAIL if error.errno == socket.EAI_AGAIN else EX_NOHOST
        raise _Refused(f"{host}: {error.strerror}", status) from None
    try:
        transaction = Transaction.of(
            content,
            sender=sender,
            recipients=[Recipient(r, notify=given.notify) for r in recipients],
            ret=given.ret,
            envid=given.envid,
        )
    except ValueError as error:
        raise _Refused(str(error), EX_DATAERR) from None
    settings = SMTPClientSettings(
        hostname="localhost",
        tls="may",
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        transcript=_print_line if given.verbose else None,
    )
    try:
        async with await connect(host, port, settings) as client:
            result = await client.send(transaction)
    except DeliveryError as error:
        reply = error.reply
        no_connection = (reply.code, reply.enhanced) == (451, "4.4.1")  # connect's own
        status = EX_UNAVAILABLE if no_connection else _status(reply)
        raise _Refused(f"{host}:{port}: {error}", status) from None
    # A line for each recipient refused at RCPT, and one for the message if it was refused
    # (unless no recipient was left to send it to: then the RCPT replies said why).
    refused = [(r, reply) for r, reply in result.recipients if reply is not result.reply]
    if result.reply.code >= 400 and len(refused) < len(result.recipients):
        refused.append((f"{host}:{port}", result.reply))
    statuses = [_status(reply) for _, reply in refused if reply.code >= 400]
    for what, reply in refused:
        if reply.code >= 400:
            fail(f"{what}: {reply.code} {reply.enhanced or ''} {reply.text}".replace("  ", " "))
    permanent = [status for status in statuses if status != EX_TEMPFAIL]
    return permanent[0] if permanent else statuses[0] if statuses else EX_OK


def sendmail_command(argv: Sequence[str]) -> int:
    """Run ``mailgate sendmail ARGV`` on standard input; the exit status (sysexits.h)."""
    try:
        given = parse(argv)
        if given.help:
            print(USAGE, end="")
            return EX_OK
        server = given.server or os.environ.get(SERVER_VARIABLE) or DEFAULT_SERVER
        source = "--server" if given.server else SERVER_VARIABLE
        try:
            server_address(server)
        except ValueError:
            raise _Usage(f"{source} {server!r} is not HOST:PORT") from None
        try:
            lines = read_lines(sys.stdin.buffer, ignore_dots=given.ignore_dots)
        except OSError as error:
            return fail(f"cannot read the message: {error}", EX_IOERR)
        sender, recipients, content = prepare(given, Message.of(lines))
        return asyncio.run(_submit(server, given, sender, recipients, content))
    except _Usage as error:
        return fail(f"sendmail: {error} (see mailgate sendmail --help)", EX_USAGE)
    except _Refused as error:
        return fail(str(error), error.status)
