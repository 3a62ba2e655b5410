"""The two forms of mailgate's log lines on stderr: text, or JSON objects one a line.

Every process of ``mailgate serve`` (the serving process, its SMTP workers,
the commit service) sets up the same handler, so the chosen form holds for
every line whichever process wrote it.  A record whose ``fields`` attribute
holds a mapping (``mailgate.server`` logs messages and refusals so) gives its
fields as keys of the JSON object; its message is their text form.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Callable, Mapping
from typing import Literal, TextIO

__all__ = [
    "JSONFormatter",
    "TextFormatter",
    "TurnBufferedHandler",
    "log_handler",
    "spare_record_details",
]

_RESERVED = frozenset({"time", "level", "logger", "message", "process", "exception", "stack"})


def spare_record_details() -> None:
    """Skip what every log record gathers and no line of ours shows.

    The caller's file, line and function, the thread and the process (the
    logging HOWTO's "Optimization"): about a fifth of what a line costs, and
    the SMTP service logs a line for every message.
    """
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


class _SecondCache:
    """A time's text to the second, formatted once a second however many lines."""

    def __init__(self, pattern: str, convert: Callable[[float], time.struct_time]) -> None:
        self._pattern = pattern
        self._convert = convert
        self._second = -1
        self._text = ""

    def text(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._text = time.strftime(self._pattern, self._convert(second))
            self._second = second
        return self._text


class TextFormatter(logging.Formatter):
    """``TIME LEVEL LOGGER[LABEL]: MESSAGE``, the time local, to the millisecond."""

    def __init__(self, label: str = "") -> None:
        super().__init__(f"%(asctime)s %(levelname)s %(name)s{label}: %(message)s")
        self._label = label
        self._seconds = _SecondCache("%Y-%m-%d %H:%M:%S", time.localtime)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return f"{self._seconds.text(record.created)},{int(record.msecs):03d}"

    def format(self, record: logging.LogRecord) -> str:
        # The same line as the pattern above, built directly: one is written per message.
        line = (
            f"{self.formatTime(record)} {record.levelname} {record.name}{self._label}: "
            f"{record.getMessage()}"
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class TurnBufferedHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes the lines of one turn of the event loop in one write.

    A line logged on a thread running an event loop waits for the end of
    that turn (``call_soon``), with every other line of the turn; under load
    many messages finish in one turn, and one write serves them all.
    Warnings and worse, and lines from threads without a loop, go out at once
    with whatever is waiting.  ``flush`` (as at exit) writes everything.
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._waiting: list[str] = []
        self._scheduled_on: asyncio.AbstractEventLoop | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._waiting.append(line + self.terminator)
        if record.levelno >= logging.WARNING:
            self.flush()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        if self._scheduled_on is loop:
            return
        if self._scheduled_on is not None:  # another loop's turn (it may never end): now
            self._write()
        self._scheduled_on = loop
        loop.call_soon(self._flush_turn, loop)

    def _flush_turn(self, loop: asyncio.AbstractEventLoop) -> None:
        with self.lock:  # type: ignore[union-attr]
            if self._scheduled_on is loop:
                self._scheduled_on = None
            self._write()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write()

    def _write(self) -> None:
        if not self._waiting:
            return
        text = "".join(self._waiting)
        self._waiting.clear()
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass  # stderr is gone (closed, or a pipe nobody reads): nowhere to say so


class JSONFormatter(logging.Formatter):
    """One JSON object a record: ``time``, ``level``, ``logger``, ``message``, then its fields.

    ``time`` is UTC (ISO 8601, milliseconds); ``process`` names the child
    process (``worker 1``, ``commit service``) when ``label`` is given; a traceback
    is ``exception``.  Field names never replace those keys.
    """

    def __init__(self, label: str = "") -> None:
        super().__init__()
        self._label = label
        # default=str: a value json cannot write is written as its text, never dropped.
        self._encoder = json.JSONEncoder(ensure_ascii=False, default=str)
        self._seconds = _SecondCache("%Y-%m-%dT%H:%M:%S", time.gmtime)

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": f"{self._seconds.text(record.created)}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self._label:
            entry["process"] = self._label
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):
            for key, value in fields.items():
                if key not in _RESERVED:
                    entry[str(key)] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return self._encoder.encode(entry)


def log_handler(log_format: Literal["text", "json"], label: str = "") -> logging.Handler:
    """A handler writing to stderr in ``log_format``; ``label`` names a child process.

    Text lines are ``TIME LEVEL LOGGER[LABEL]: MESSAGE``.
    """
    handler = TurnBufferedHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JSONFormatter(label.strip("[]")))
    else:
        handler.setFormatter(TextFormatter(label))
    return handler
