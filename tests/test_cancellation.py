"""No ``asyncio.wait_for`` in mailgate: on Python 3.11 it can drop a cancellation.

When the awaited thing finishes in the turn the waiting task is cancelled, 3.11's
``wait_for`` returns its result and the cancellation is lost (3.12 rebuilt it on
``asyncio.timeout``). A service loop that waits for work that way goes on after its
``aclose`` cancelled it, and the stop waits for ever: the queue runner did
(``test_queue_runner.py``). ``async with asyncio.timeout(...)`` is used instead.
Each module is parsed, not imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

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
