"""No ``asyncio.wait_for`` in mailgate, and no close that swallows its own cancellation.

When the awaited thing finishes in the turn the waiting task is cancelled, 3.11's
``wait_for`` returns its result and the cancellation is lost (3.12 rebuilt it on
``asyncio.timeout``). A service loop that waits for work that way goes on after its
``aclose`` cancelled it, and the stop waits for ever: the queue runner did
(``test_queue_runner.py``). ``async with asyncio.timeout(...)`` is used instead.
Likewise a close that awaits its cancelled task under ``suppress(CancelledError)``
swallows its own caller's cancellation. Each module is parsed, not imported.
"""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import pytest

from mailgate.stores import SQLiteStore
from mailgate.web._events import EventHub

SRC = Path(__file__).resolve().parents[1] / "src" / "mailgate"


def _uses_wait_for(tree: ast.AST) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr == "wait_for"
            and isinstance(node.value, ast.Name)
            and node.value.id == "asyncio"
        ):
            lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module == "asyncio":
            lines += [node.lineno for alias in node.names if alias.name == "wait_for"]
    return lines


def test_no_module_waits_with_asyncio_wait_for() -> None:
    found = {
        str(path.relative_to(SRC)): lines
        for path in sorted(SRC.rglob("*.py"))
        if (lines := _uses_wait_for(ast.parse(path.read_text(), str(path))))
    }
    assert found == {}


def test_the_check_finds_both_spellings() -> None:
    assert _uses_wait_for(ast.parse("import asyncio\nawait asyncio.wait_for(f, 1)")) == [2]
    assert _uses_wait_for(ast.parse("from asyncio import sleep, wait_for")) == [1]
    assert _uses_wait_for(ast.parse("async with asyncio.timeout(1):\n    await f")) == []


def _awaits_under_suppressed_cancellation(tree: ast.AST) -> list[int]:
    """Lines of ``with suppress(...CancelledError...)`` blocks that await something."""
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.With | ast.AsyncWith):
            continue
        suppressing = any(
            isinstance(item.context_expr, ast.Call)
            and "suppress" in ast.unparse(item.context_expr.func)
            and "CancelledError" in ast.unparse(item.context_expr)
            for item in node.items
        )
        if suppressing and any(isinstance(inner, ast.Await) for inner in ast.walk(node)):
            lines.append(node.lineno)
    return lines


def test_no_close_swallows_its_own_cancellation() -> None:
    # ``with suppress(CancelledError): await task`` after ``task.cancel()`` also swallows
    # the cancellation of whoever is closing: ``asyncio.gather(task, return_exceptions=True)``
    # waits for the task and lets that cancellation through.
    found = {
        str(path.relative_to(SRC)): lines
        for path in sorted(SRC.rglob("*.py"))
        if (lines := _awaits_under_suppressed_cancellation(ast.parse(path.read_text())))
    }
    assert found == {}


def test_the_suppress_check_finds_an_await_under_it() -> None:
    swallowing = "with contextlib.suppress(asyncio.CancelledError):\n    await task"
    assert _awaits_under_suppressed_cancellation(ast.parse(swallowing)) == [1]
    other = "with contextlib.suppress(OSError):\n    await task"
    assert _awaits_under_suppressed_cancellation(ast.parse(other)) == []


@pytest.mark.asyncio
async def test_a_cancelled_close_of_the_event_hub_is_cancelled(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "mail.db")
    try:
        hub = EventHub(store)
        with hub.listen():
            closing = asyncio.create_task(hub.aclose())
            await asyncio.sleep(0)  # it has cancelled its task and waits for it to end
            closing.cancel()
            with pytest.raises(asyncio.CancelledError):
                await closing
    finally:
        await store.aclose()
