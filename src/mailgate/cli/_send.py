"""``mailgate send``: build one message and send it over SMTP with mailgate's own client.

With ``--server HOST:PORT`` it submits to that server (STARTTLS when
offered, or required with ``--tls``; implicit TLS with ``--tls-on-connect``;
AUTH with ``--auth-user``, the password from ``MAILGATE_SEND_PASSWORD`` or
standard input, never the command line).  Without it, it delivers to each
recipient domain's MX itself, as the queue does.  ``--transcript`` prints
the conversation as it happens: ``S:`` lines are the server's, ``C:`` ours.
"""

from __future__ import annotations

import argparse
import asyncio
import mimetypes
import os
import ssl
import sys
from collections.abc import Sequence
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mailgate.cli._exit import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, fail
from mailgate.model import MessageId

if TYPE_CHECKING:
    from mailgate.queue import TLSPolicy

__all__ = ["add_send_parser", "send_command", "server_address"]

PASSWORD_VARIABLE = "MAILGATE_SEND_PASSWORD"


def add_send_parser(commands: argparse._SubParsersAction[Any]) -> None:
    """The ``send`` command's flags."""
    send = commands.add_parser(
        "send",
        help="send one message over SMTP",
        description="Build one message and send it: to --server, or to each recipient's MX.",
    )
    send.add_argument("--server", metavar="HOST:PORT", help="submit to this server")
    send.add_argument("--from", dest="sender", required=True, metavar="ADDRESS")
    send.add_argument("--to", action="append", default=[], metavar="ADDRESS")
    send.add_argument("--cc", action="append", default=[], metavar="ADDRESS")
    send.add_argument("--bcc", action="append", default=[], metavar="ADDRESS")
    send.add_argument("--subject", default="", metavar="TEXT")
    body = send.add_mutually_exclusive_group()
    body.add_argument("--body", metavar="TEXT", help="the message text")
    body.add_argument("--body-file", type=Path, metavar="FILE", help="read the text from FILE")
    send.add_argument("--attach", action="append", default=[], type=Path, metavar="FILE")
    send.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'")
    tls = send.add_mutually_exclusive_group()
    tls.add_argument("--tls", action="store_true", help="require STARTTLS, certificate verified")
    tls.add_argument("--tls-on-connect", action="store_true", help="implicit TLS (port 465)")
    send.add_argument("--insecure", action="store_true", help="do not verify the certificate")
    send.add_argument("--ca", type=Path, metavar="FILE", help="CA certificates to trust (PEM)")
    send.add_argument(
        "--auth-user",
        metavar="USER",
        help=f"AUTH as USER; the password from ${PASSWORD_VARIABLE} or standard input",
    )
    send.add_argument("--hostname", default="localhost", metavar="NAME", help="our EHLO name")
    send.add_argument("--resolver", metavar="IP:PORT", help="DNS server for MX lookups")
    send.add_argument("--port", type=int, default=25, help="the MX hosts' port (default 25)")
    send.add_argument("--transcript", action="store_true", help="print the SMTP conversation")


def _message(args: argparse.Namespace) -> EmailMessage:
    message = EmailMessage()
    message["From"] = args.sender
    if args.to:
        message["To"] = ", ".join(args.to)
    if args.cc:
        message["Cc"] = ", ".join(args.cc)
    message["Subject"] = args.subject
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = make_msgid(domain=args.hostname)
    for header in args.header:
        name, colon, value = header.partition(":")
        if not colon or not name.strip() or any(c in header for c in "\r\n"):
            raise ValueError(f"--header {header!r} is not 'Name: value'")
        message[name.strip()] = value.strip()
    text = args.body_file.read_text() if args.body_file else (args.body or "")
    message.set_content(text if text.endswith("\n") else text + "\n")
    for path in args.attach:
        kind, _ = mimetypes.guess_type(path.name)
        main, _, sub = (kind or "application/octet-stream").partition("/")
        message.add_attachment(path.read_bytes(), maintype=main, subtype=sub, filename=path.name)
    return message


def _print_line(direction: Literal["C", "S"], line: str) -> None:
    print(f"{direction}: {line}", flush=True)


def _password(args: argparse.Namespace) -> str | None:
    if args.auth_user is None:
        return None
    password = os.environ.get(PASSWORD_VARIABLE)
    if password is None:
        password = sys.stdin.readline().rstrip("\r\n")
    return password


def _context(args: argparse.Namespace) -> ssl.SSLContext | None:
    if args.insecure:
        return None
    return ssl.create_default_context(cafile=str(args.ca) if args.ca else None)


def server_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[IPv6]:PORT``; port 25 when left out) as a host and a port.

    Raises ``ValueError`` naming ``--server`` for anything else.
    """
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        host, _, port = text.rpartition(":") if text.count(":") == 1 else (text, "", "")
    if not host or (port and not port.isdigit()):
        raise ValueError(f"--server {text!r} is not HOST:PORT")
    return host, int(port or 25)


async def _submit(args: argparse.Namespace, content: bytes, recipients: list[str]) -> int:
    # The client loads only to send: every other command starts without it.
    from mailgate.queue import (  # noqa: PLC0415
        DeliveryError,
        SMTPClientSettings,
        Transaction,
        connect,
    )

    host, port = server_address(args.server)
    context = _context(args)
    policy: TLSPolicy = "may"
    if args.tls or args.tls_on_connect or args.auth_user:
        policy = "encrypt" if context is None else "verify"
    settings = SMTPClientSettings(
        hostname=args.hostname,
        tls=policy,
        tls_context=context,
        implicit_tls=args.tls_on_connect,
        connect_timeout=30.0,
        transcript=_print_line if args.transcript else None,
    )
    password = _password(args)
    try:
        async with await connect(host, port, settings) as client:
            if args.auth_user is not None and password is not None:
                await client.login(args.auth_user, password)
            result = await client.send(
                Transaction.of(content, sender=args.sender, recipients=recipients)
            )
    except DeliveryError as error:
        return fail(f"{host}:{port}: {error}")
    refused = [(r, reply) for r, reply in result.recipients if reply.code >= 400]
    for recipient, reply in refused:
        print(f"{recipient}: {reply.code} {reply.enhanced or ''} {reply.text}", file=sys.stderr)
    if not args.transcript:
        print(f"{result.reply.code} {result.reply.enhanced or ''} {result.reply.text}")
    return EXIT_FAILURE if refused else EXIT_OK


async def _deliver(args: argparse.Namespace, content: bytes, recipients: list[str]) -> int:
    from mailgate.queue import (  # noqa: PLC0415
        Attempt,
        CourierSettings,
        OutboundRecipient,
        RouteSettings,
        SMTPCourier,
    )

    courier = SMTPCourier(
        CourierSettings(
            hostname=args.hostname,
            routes=RouteSettings(nameserver=args.resolver, smtp_port=args.port),
            tls="verify" if args.tls else "may",
            ca_file=args.ca,
        )
    )
    by_domain: dict[str, list[str]] = {}
    for recipient in recipients:
        by_domain.setdefault(recipient.rpartition("@")[2].lower(), []).append(recipient)
    failed = False
    try:
        for domain, group in by_domain.items():
            result = await courier.deliver(
                Attempt(
                    message_id=MessageId(""),
                    domain=domain,
                    sender=args.sender,
                    recipients=tuple(OutboundRecipient(r) for r in group),
                    content=content,
                )
            )
            for each in result.results:
                reply = each.reply
                failed = failed or reply.code >= 400
                print(
                    f"{each.recipient} via {each.relay or 'no host'}: {reply.code} "
                    f"{reply.enhanced or ''} {reply.text}".replace("  ", " ")
                )
    finally:
        await courier.aclose()
    return EXIT_FAILURE if failed else EXIT_OK


def send_command(args: argparse.Namespace) -> int:
    """Run ``mailgate send``; return the exit status."""
    recipients: Sequence[str] = [*args.to, *args.cc, *args.bcc]
    if not recipients:
        return fail("name a recipient with --to, --cc or --bcc", EXIT_USAGE)
    try:
        content = bytes(_message(args)).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    except (OSError, ValueError) as error:
        return fail(str(error), EXIT_USAGE)
    if args.server:
        try:
            return asyncio.run(_submit(args, content, list(recipients)))
        except ValueError as error:
            return fail(str(error), EXIT_USAGE)
    return asyncio.run(_deliver(args, content, list(recipients)))
