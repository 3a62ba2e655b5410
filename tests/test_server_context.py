"""What a session is given: a ``SessionContext``, never the ``SMTPServer`` itself.

A session works with what its context holds, and with nothing else: no
import of the server module (no cycle, not even for type checking).
"""

from __future__ import annotations

import ast
from pathlib import Path

SESSION = Path(__file__).resolve().parents[1] / "src" / "mailgate" / "server" / "_session.py"


def test_the_session_takes_nothing_from_the_server_module() -> None:
    tree = ast.parse(SESSION.read_text(encoding="utf-8"))
    imported = {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert "mailgate.server._server" not in imported  # no cycle, not even for type checking
    assert "mailgate.server._context" in imported
