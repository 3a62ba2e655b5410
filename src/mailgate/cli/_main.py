"""Parsing the command line and dispatching to a command."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NoReturn

from mailgate import __version__, protocol
from mailgate.cli._exit import EXIT_USAGE, fail
from mailgate.cli._send import add_send_parser
from mailgate.config import OPTIONS, ConfigError, Settings, load_settings

__all__ = ["main"]

_STORE_DESTS = frozenset({"data", "store"})


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: ``mailgate: error: ...``."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"mailgate: error: {message} (see {self.prog} --help)\n")


def _positive(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def _add_config_flag(parser: argparse.ArgumentParser, default: object = None) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        type=Path,
        default=default,
        help="read settings from this TOML file (or MAILGATE_CONFIG); flags and MAILGATE_* win",
    )


def _add_store_flags(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: a flag given before ``show`` must survive the defaults of ``show``'s parser.
    for option in OPTIONS:
        if option.dest in _STORE_DESTS:
            parser.add_argument(
                option.flag,
                dest=option.dest,
                metavar=option.metavar,
                help=option.help,
                default=argparse.SUPPRESS,
            )
    _add_config_flag(parser, default=argparse.SUPPRESS)


def build() -> str:
    """``compiled`` when the engine runs from a wheel built with mypyc, else ``pure Python``."""
    return "pure Python" if (protocol.__file__ or "").endswith(".py") else "compiled"


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``mailgate``'s command line; ``serve`` flags come from ``OPTIONS``."""
    parser = _Parser(
        prog="mailgate",
        description="An ESMTP mail server and developer inbox.",
        epilog="Every serve flag can also be set as MAILGATE_<FLAG> or in a TOML file (--config).",
    )
    parser.add_argument(
        "--version", action="version", version=f"mailgate {__version__} ({build()})"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser("serve", help="receive mail", description="Receive mail over SMTP.")
    for option in OPTIONS:
        if option.secret:
            continue
        if option.switch:
            serve.add_argument(
                option.flag, dest=option.dest, action="store_const", const="on", help=option.help
            )
        else:
            serve.add_argument(
                option.flag,
                dest=option.dest,
                metavar=option.metavar,
                help=option.help,
                action="append" if option.repeatable else "store",
            )
    serve.add_argument(
        "--no-http", dest="http", action="store_const", const="off", help="same as --http off"
    )
    _add_config_flag(serve)

    messages = commands.add_parser(
        "messages", help="list stored messages", description="List stored messages, newest first."
    )
    messages.add_argument(
        "--limit", type=_positive, default=50, metavar="N", help="show at most N (default 50)"
    )
    messages.add_argument(
        "--count", action="store_true", help="print only how many messages are stored"
    )
    _add_store_flags(messages)
    shows = messages.add_subparsers(dest="messages_command", metavar="show")
    show = shows.add_parser("show", help="print one message", description="Print one message.")
    show.add_argument("id", metavar="ID", help="the message id, as listed")
    show.add_argument("--raw", action="store_true", help="write the exact stored bytes")
    _add_store_flags(show)

    queue = commands.add_parser(
        "queue",
        help="show and manage the outbound queue",
        description="Show and manage the outbound queue: one row per recipient waiting.",
    )
    from mailgate.cli._queue import QUEUE_ACTIONS  # noqa: PLC0415 - its text only

    queue_actions = queue.add_subparsers(dest="queue_command", metavar="ACTION", required=True)
    for action, text in QUEUE_ACTIONS.items():
        sub = queue_actions.add_parser(
            action, help=text, description=text[0].upper() + text[1:] + "."
        )
        if action in {"list", "show"}:
            sub.add_argument("--json", action="store_true", help="print JSON, one object a row")
        if action == "retry":
            target = sub.add_mutually_exclusive_group(required=True)
            target.add_argument("id", metavar="ID", nargs="?", help="the message id")
            target.add_argument("--all", action="store_true", help="every waiting message")
        elif action != "list":
            sub.add_argument("id", metavar="ID", help="the message id, as listed")
        _add_store_flags(sub)

    add_send_parser(commands)
    # Listed for --help only: main hands ``sendmail``'s arguments over before argparse sees them.
    commands.add_parser(
        "sendmail",
        help="read a message on standard input, as sendmail does, and send it",
        add_help=False,
    )

    users = commands.add_parser(
        "users",
        help="manage who may authenticate",
        description="Manage the users file (salted scrypt hashes) that AUTH checks.",
    )
    actions = users.add_subparsers(dest="users_command", metavar="ACTION", required=True)
    for action, text in (
        ("list", "list the users"),
        ("add", "add a user; the password is asked for, or read from standard input"),
        ("passwd", "change a user's password"),
        ("delete", "delete a user"),
    ):
        sub = actions.add_parser(action, help=text, description=text[0].upper() + text[1:] + ".")
        if action != "list":
            sub.add_argument("name", metavar="NAME", help="the user name (as given to AUTH)")
        _add_users_flags(sub)
    return parser


def _add_users_flags(parser: argparse.ArgumentParser) -> None:
    for option in OPTIONS:
        if option.dest in {"users", "data"}:
            parser.add_argument(
                option.flag,
                dest=option.dest,
                metavar=option.metavar,
                help=option.help,
                default=argparse.SUPPRESS,
            )
    _add_config_flag(parser, default=argparse.SUPPRESS)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mailgate`` with ``argv`` (default ``sys.argv[1:]``); return the exit status.

    Run as ``sendmail`` (a link of that name), it is ``mailgate sendmail``.
    """
    if argv is None:
        argv = sys.argv[1:]
        if Path(sys.argv[0]).name == "sendmail":
            argv = ["sendmail", *argv]
    if argv[:1] == ["sendmail"]:  # sendmail's options are getopt's, not argparse's
        from mailgate.cli._sendmail import sendmail_command  # noqa: PLC0415

        return sendmail_command(argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, or a usage error already reported
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    if args.command is None:
        return fail(
            "choose a command: serve, messages, queue, send, sendmail or users"
            " (see mailgate --help)",
            EXIT_USAGE,
        )

    if args.command == "send":
        from mailgate.cli._send import send_command  # noqa: PLC0415

        return send_command(args)

    try:
        settings = _settings(args, os.environ)
    except ConfigError as error:
        return fail(str(error), EXIT_USAGE)

    if args.command == "serve":
        from mailgate.cli._serve import serve  # noqa: PLC0415 - the server loads only to serve

        return serve(settings)
    if args.command == "queue":
        from mailgate.cli._queue import queue_command  # noqa: PLC0415

        return queue_command(
            settings,
            args.queue_command,
            getattr(args, "id", None),
            all_=getattr(args, "all", False),
            as_json=getattr(args, "json", False),
        )
    if args.command == "users":
        from mailgate.cli._users import users_command  # noqa: PLC0415

        return users_command(settings, args.users_command, getattr(args, "name", None))
    from mailgate.cli._messages import list_messages, show_message  # noqa: PLC0415

    if args.messages_command == "show":
        return show_message(settings, args.id, raw=args.raw)
    return list_messages(settings, limit=args.limit, count=args.count)


def _settings(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    given = vars(args)
    argv_values = {option.dest: given[option.dest] for option in OPTIONS if option.dest in given}
    config = given.get("config") or environ.get("MAILGATE_CONFIG")
    return load_settings(
        argv_values=argv_values, environ=environ, config_file=Path(config) if config else None
    )
