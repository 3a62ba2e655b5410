"""``mailgate serve``: start a node (``runtime.Mailgate``), say so, run until a signal."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import socket
from collections.abc import Callable
from pathlib import Path

from mailgate import __version__
from mailgate.cli._exit import EXIT_OK, EXIT_USAGE, fail
from mailgate.config import Listen, Settings
from mailgate.ports import StoreError
from mailgate.runtime import (
    ChildStartError,
    Mailgate,
    configure_process,
    freeze_startup_objects,
    new_runner,
)
from mailgate.server import ListenError, ServerConfigError, TLSConfigError
from mailgate.stores import StoreURLError

__all__ = ["serve"]

log = logging.getLogger("mailgate")

EXIT_INTERRUPTED = 130  # the shell's convention for a second Ctrl-C


def serve(settings: Settings) -> int:
    """Serve until SIGTERM or SIGINT; return the exit status."""
    configure_process(settings)
    if not settings.hostname:
        settings = dataclasses.replace(settings, hostname=socket.getfqdn())
    try:
        with new_runner() as runner:
            return runner.run(_serve(settings))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


async def _serve(settings: Settings) -> int:
    app = Mailgate(settings)
    try:
        await app.start()
    except StoreURLError as error:
        return fail(str(error), EXIT_USAGE)
    except (StoreError, TLSConfigError) as error:
        return fail(str(error))
    except ServerConfigError as error:
        return fail(str(error), EXIT_USAGE)
    except (ListenError, ChildStartError) as error:
        return fail(str(error))
    try:
        stop = asyncio.Event()
        _on_signals(stop.set)
        freeze_startup_objects()
        print(_listening_line(settings, app), flush=True)
        await stop.wait()
        log.info("shutting down: finishing transactions in flight")
    finally:
        await app.aclose()
    return EXIT_OK


def _on_signals(stop: Callable[[], None]) -> None:
    """Stop on the first SIGTERM or SIGINT; a second SIGINT interrupts at once."""
    loop = asyncio.get_running_loop()

    def first(signum: signal.Signals) -> None:
        log.info("received %s", signum.name)
        for each in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(each)
        stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, first, signum)


def _listening_line(settings: Settings, app: Mailgate) -> str:
    server = app.server
    parts = []
    for listener in server.listeners:
        bound = " ".join(
            str(Listen(host, port)) for host, port in server.addresses_of(listener.name)
        )
        parts.append(f"{listener.name} {bound}")
    if app.settings.workers > 1:
        parts.append(f"{app.settings.workers} SMTP processes")
    if app.http is not None:
        bound = " ".join(str(Listen(host, port)) for host, port in app.http.addresses)
        parts.append(f"http http://{bound}/")
    where = f"store {settings.store}" if settings.store else f"data {_shown(settings.data_dir)}"
    return f"mailgate {__version__} listening: {', '.join(parts)}, {where}"


def _shown(path: Path) -> str:
    text = str(path)
    return text if path.is_absolute() or text.startswith(".") else f"./{text}"
