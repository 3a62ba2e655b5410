"""The stderr handler: the lines of one event-loop turn go out in one write."""

from __future__ import annotations

import asyncio
import io
import logging

from mailgate.runtime._logging import TextFormatter, TurnBufferedHandler


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def handler_and_stream() -> tuple[logging.Logger, CountingStream]:
    stream = CountingStream()
    handler = TurnBufferedHandler(stream)
    handler.setFormatter(TextFormatter())
    logger = logging.Logger("mailgate.test-turns", logging.INFO)
    logger.addHandler(handler)
    return logger, stream


def test_the_lines_of_one_turn_are_one_write_and_warnings_go_at_once() -> None:
    logger, stream = handler_and_stream()

    async def main() -> None:
        for n in range(5):
            logger.info("message %d", n)
        assert stream.writes == 0  # waiting for the end of the turn
        await asyncio.sleep(0)
        assert stream.writes == 1
        logger.info("one more")
        logger.warning("at once")  # takes what waits with it, in order
        assert stream.writes == 2

    asyncio.run(main())
    lines = stream.getvalue().splitlines()
    assert [line.split(": ", 1)[1] for line in lines] == [
        *(f"message {n}" for n in range(5)),
        "one more",
        "at once",
    ]


def test_lines_outside_a_loop_and_after_a_loop_ended_are_written() -> None:
    logger, stream = handler_and_stream()
    logger.info("no loop")
    assert stream.writes == 1

    async def log_and_end() -> None:
        logger.info("the last turn of a loop")

    asyncio.run(log_and_end())  # its turn ended with the loop's
    asyncio.run(log_and_end())  # a new loop: the line is not stranded
    logger.handlers[0].flush()
    assert stream.getvalue().count("the last turn of a loop") == 2
