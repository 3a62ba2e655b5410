"""The layer table of ARCHITECTURE.md, enforced on every module under src/mailgate.

Each module is parsed with ``ast`` (never imported), and every import it
makes -- at the top, inside functions, under ``TYPE_CHECKING``, or through
``importlib.import_module("...")`` with a literal name -- is checked against
the table.  A package missing from the table is itself a failure, so a new
package has to be given a layer before it can land.  No module imports
another package's private (``_name``) module: what a package offers the
others, its ``__init__`` exports.
"""

from __future__ import annotations

import ast
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Layer 0 may use only pure computation from the standard library: no clock,
# no randomness, no I/O.  Add to this list only what is pure.
PROTOCOL_STDLIB = frozenset(
    {
        "__future__", "abc", "base64", "binascii", "codecs", "collections", "dataclasses",
        "enum", "functools", "hmac", "ipaddress", "itertools", "math", "operator", "re",
        "string", "typing", "types", "unicodedata",
    }
)  # fmt: skip

# Layer 1 may use the standard library, but none of these: they do I/O, keep
# time, or run concurrently.  (pathlib is allowed: config reads the TOML file.)
IO_STDLIB = frozenset(
    {
        "asyncio", "concurrent", "fcntl", "ftplib", "http", "io", "logging", "mmap",
        "multiprocessing", "os", "random", "secrets", "select", "selectors", "shutil",
        "signal", "smtplib", "socket", "socketserver", "sqlite3", "ssl", "subprocess",
        "sys", "tempfile", "threading", "time", "urllib.request",
    }
)  # fmt: skip

DATABASE_DRIVERS = frozenset({"aiosqlite", "asyncpg", "psycopg", "psycopg2", "sqlite3"})

CLOCK_CALLS = frozenset({"now", "utcnow", "today"})

# package -> (layer, the mailgate packages it may import).  "" is the root package.
_LAYER_0 = frozenset({"", "protocol"})
_LAYER_1 = _LAYER_0 | {"model", "ports", "config", "query", "tags", "chaos"}
_LAYER_2 = _LAYER_1 | {"auth", "delivery", "stores", "queue"}
_LAYER_3 = _LAYER_2 | {"server", "web"}
_LAYER_4 = _LAYER_3 | {"runtime"}
_LAYER_5 = _LAYER_4 | {"cli"}
LAYERS: dict[str, tuple[str, frozenset[str]]] = {
    "": ("root", _LAYER_0),
    "protocol": ("0", frozenset({"protocol"})),
    "model": ("1", _LAYER_1),
    "ports": ("1", _LAYER_1),
    "config": ("1", _LAYER_1),
    "query": ("1", _LAYER_1),
    "tags": ("1", _LAYER_1),
    "chaos": ("1", _LAYER_1),
    "auth": ("2", _LAYER_2),
    "delivery": ("2", _LAYER_2),
    "stores": ("2", _LAYER_2),
    "queue": ("2", _LAYER_2),
    "server": ("3", _LAYER_1 | {"server"}),
    "web": ("3", _LAYER_1 | {"web"}),
    "runtime": ("4", _LAYER_4),
    "cli": ("5", _LAYER_5),
    "__main__": ("5", frozenset({"", "cli"})),
    "testing": ("side", _LAYER_4 | {"testing"}),  # the public API and runtime, never cli
}


@dataclass(frozen=True)
class Import:
    module: str
    line: int


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(root: Path, path: Path) -> Iterator[Import]:
    """Every module ``path`` imports, relative imports resolved."""
    name = module_name(root, path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                # ``from mailgate import server`` imports the module mailgate.server.
                submodule = f"{base}.{alias.name}"
                exists = any(
                    (root / Path(*submodule.split("."))).with_suffix(suffix).exists()
                    for suffix in (".py", "")
                )
                exists = exists or (base == "mailgate" and alias.name in LAYERS)
                if base.partition(".")[0] != "mailgate":
                    # ``from urllib import request``: the name may be a module; the
                    # checks below match on prefixes, so naming it is safe.
                    exists = True
                yield Import(submodule if exists else base, node.lineno)
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Name) and node.func.id == "__import__")
                or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
            )
        ):
            yield Import(node.args[0].value, node.lineno)


def clock_calls(path: Path) -> Iterator[tuple[str, int]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in CLOCK_CALLS
        ):
            yield node.func.attr, node.lineno


def check_tree(root: Path) -> list[str]:
    """Every breach of the layer table under ``root`` (a directory holding ``mailgate``)."""
    problems: list[str] = []
    for path in sorted((root / "mailgate").rglob("*.py")):
        name = module_name(root, path)
        package = name.split(".")[1] if "." in name else ""
        where = f"{path.relative_to(root)}"
        if package not in LAYERS:
            problems.append(f"{where}: mailgate.{package} has no layer in ARCHITECTURE.md")
            continue
        layer, allowed = LAYERS[package]
        for imported in dict.fromkeys(imports_of(root, path)):  # once per line and module
            problem = _judge(package, layer, allowed, imported.module)
            if problem:
                problems.append(
                    f"{where}:{imported.line}: {name} imports {imported.module}: {problem}"
                )
        if layer in {"0", "1"}:
            for call, line in clock_calls(path):
                problems.append(
                    f"{where}:{line}: {name} calls .{call}(): "
                    f"layer {layer} reads no clock (inject a ports.Clock)"
                )
    return problems


def _judge(package: str, layer: str, allowed: frozenset[str], imported: str) -> str | None:
    top = imported.partition(".")[0]
    if top == "mailgate":
        target = imported.split(".")[1] if "." in imported else ""
        if target == "testing" and package != "testing":
            return "only tests may import mailgate.testing"
        if target not in allowed:
            return (
                f"layer {layer} ({package or 'the root package'}) may not import mailgate.{target}"
            )
        if target != package and any(_is_private(part) for part in imported.split(".")[2:]):
            return (
                f"a private module of mailgate.{target}: import it from mailgate.{target}"
                " (which exports it)"
            )
        return None
    if layer == "0" and imported not in PROTOCOL_STDLIB and top not in PROTOCOL_STDLIB:
        return "layer 0 imports only the pure standard library modules listed in test_layers.py"
    if layer in {"1", "root"}:
        if top not in sys.stdlib_module_names:
            return f"layer {layer} imports no third-party packages"
        if any(imported == name or imported.startswith(f"{name}.") for name in IO_STDLIB):
            return f"layer {layer} does no I/O"
    if layer == "3" and top in DATABASE_DRIVERS:
        return "layer 3 reaches stores only through mailgate.ports"
    return None


def _is_private(name: str) -> bool:
    """``_sasl`` is private; ``__init__`` and ``__main__`` are not."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_the_source_tree_keeps_the_layers() -> None:
    problems = check_tree(SRC)
    assert not problems, "the layer table of ARCHITECTURE.md is broken:\n" + "\n".join(problems)


def test_the_checker_sees_the_tree() -> None:
    names = {module_name(SRC, path) for path in (SRC / "mailgate").rglob("*.py")}
    assert {"mailgate", "mailgate.config", "mailgate.model", "mailgate.ports"} <= names
    assert any(name.startswith("mailgate.protocol.") for name in names)
    imported = {i.module for i in imports_of(SRC, SRC / "mailgate" / "config" / "_load.py")}
    assert {"tomllib", "mailgate", "mailgate.config._options"} <= imported


# -- the checker catches what it is for --------------------------------------------------------


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {"protocol/_x.py": "import asyncio"},
            "mailgate.protocol._x imports asyncio: layer 0 imports only the pure standard library",
        ),
        (
            {"protocol/_x.py": "from time import monotonic"},
            "imports time.monotonic: layer 0 imports only the pure standard library",
        ),
        (
            {"protocol/_x.py": "from mailgate.model import Envelope"},
            "imports mailgate.model: layer 0 (protocol) may not import mailgate.model",
        ),
        (
            {"protocol/_x.py": "from .. import model"},
            "imports mailgate.model: layer 0 (protocol) may not import mailgate.model",
        ),
        (
            {"config/_x.py": "def f():\n    import socket"},
            "mailgate.config._x imports socket: layer 1 does no I/O",
        ),
        (
            {"model.py": "import os.path"},
            "mailgate.model imports os.path: layer 1 does no I/O",
        ),
        ({"ports.py": "import attrs"}, "imports attrs: layer 1 imports no third-party packages"),
        (
            {"config/_x.py": "from urllib import request"},
            "imports urllib.request: layer 1 does no I/O",
        ),
        (
            {"config/_x.py": "from datetime import datetime\nSTART = datetime.now()"},
            "mailgate.config._x calls .now(): layer 1 reads no clock",
        ),
        (
            {
                "config/_x.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                "    from mailgate.server import SMTPServer"
            },
            "layer 1 (config) may not import mailgate.server",
        ),
        (
            {"stores/_x.py": "from mailgate import server"},
            "imports mailgate.server: layer 2 (stores) may not import mailgate.server",
        ),
        (
            {"delivery/_x.py": "import mailgate.cli"},
            "layer 2 (delivery) may not import mailgate.cli",
        ),
        (
            {"server/_x.py": "from mailgate.stores.sqlite import SQLiteStore"},
            "imports mailgate.stores.sqlite: layer 3 (server) may not import mailgate.stores",
        ),
        (
            {"server/_x.py": "import importlib\nq = importlib.import_module('mailgate.queue')"},
            "imports mailgate.queue: layer 3 (server) may not import mailgate.queue",
        ),
        ({"server/_x.py": "import mailgate.web"}, "layer 3 (server) may not import mailgate.web"),
        (
            {"web/_x.py": "from ..delivery import accept"},
            "imports mailgate.delivery: layer 3 (web) may not import mailgate.delivery",
        ),
        (
            {"web/_x.py": "from ..server import _x"},
            "layer 3 (web) may not import mailgate.server",
        ),
        ({"server/_x.py": "import sqlite3"}, "layer 3 reaches stores only through mailgate.ports"),
        (
            {"cli/__init__.py": "from mailgate.testing import plugin"},
            "only tests may import mailgate.testing",
        ),
        (
            {"__init__.py": "from mailgate.config import Settings"},
            "layer root (the root package) may not import mailgate.config",
        ),
        ({"extras/__init__.py": ""}, "mailgate.extras has no layer in ARCHITECTURE.md"),
        (
            {"runtime/_x.py": "from mailgate.cli import main"},
            "imports mailgate.cli: layer 4 (runtime) may not import mailgate.cli",
        ),
        (
            {"server/_x.py": "from mailgate.runtime import Mailgate"},
            "layer 3 (server) may not import mailgate.runtime",
        ),
        (
            {"stores/_x.py": "import mailgate.runtime"},
            "layer 2 (stores) may not import mailgate.runtime",
        ),
        (
            {"testing/_server.py": "from mailgate.cli import main"},
            "imports mailgate.cli: layer side (testing) may not import mailgate.cli",
        ),
        (
            {"runtime/__init__.py": "from mailgate.testing import MailgateServer"},
            "only tests may import mailgate.testing",
        ),
        (
            {"__main__.py": "from mailgate.runtime import Mailgate"},
            "layer 5 (__main__) may not import mailgate.runtime",
        ),
        (
            {
                "runtime/_node.py": "",
                "cli/_serve.py": "from mailgate.runtime._node import Mailgate",
            },
            "imports mailgate.runtime._node: a private module of mailgate.runtime",
        ),
        (
            {"server/_x.py": "from mailgate.protocol._sasl import SaslServer"},
            "imports mailgate.protocol._sasl: a private module of mailgate.protocol",
        ),
        (
            {"__init__.py": "from mailgate.protocol._errors import MailgateError"},
            "mailgate imports mailgate.protocol._errors: a private module of mailgate.protocol",
        ),
        (
            {"stores/_writer.py": "", "cli/_x.py": "from mailgate.stores import _writer"},
            "imports mailgate.stores._writer: a private module of mailgate.stores",
        ),
        (
            {"protocol/_y.py": "", "server/_x.py": "from ..protocol._y import Y"},
            "imports mailgate.protocol._y: a private module of mailgate.protocol",
        ),
        (
            {"cli/_x.py": "def f():\n    import mailgate.stores.sqlite._rows"},
            "imports mailgate.stores.sqlite._rows: a private module of mailgate.stores",
        ),
        (
            {"cli/_x.py": "import importlib\nt = importlib.import_module('mailgate.server._tls')"},
            "imports mailgate.server._tls: a private module of mailgate.server",
        ),
        (
            {"testing/_x.py": "from mailgate.server._tls import TLSLayer"},
            "imports mailgate.server._tls: a private module of mailgate.server",
        ),
    ],
)
def test_the_checker_catches(tmp_path: Path, files: dict[str, str], expected: str) -> None:
    write_tree(tmp_path, files)
    problems = check_tree(tmp_path)
    assert len(problems) == 1, problems
    assert expected in problems[0]


def test_the_checker_allows_what_the_table_allows(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "__init__.py": "from mailgate.protocol import MailgateError",
            "protocol/_x.py": "import re\nfrom collections.abc import Iterator\nfrom . import _y",
            "protocol/_z.py": "from mailgate.protocol._y import Y\nfrom ._y import Z",
            "protocol/_y.py": "from __future__ import annotations",
            "config/_x.py": "import tomllib\nfrom urllib.parse import quote\nfrom .. import model",
            "model.py": "from datetime import datetime\nfrom mailgate import MailgateError",
            "stores/_x.py": "import sqlite3\nimport asyncio\nfrom mailgate.ports import Clock",
            "server/_x.py": "import asyncio\nimport ssl\nfrom mailgate.config import Settings",
            "server/_y.py": "import time\nnow = time.monotonic()",
            "runtime/__init__.py": "from mailgate import server, stores, delivery, web, config",
            "runtime/_node.py": "from mailgate.runtime._workers import WorkerPool",
            "runtime/_workers.py": "from mailgate.stores import SQLiteStore",
            "cli/__init__.py": "from mailgate import server, stores, delivery, web, runtime",
            "cli/_x.py": "from mailgate.cli._y import f\nfrom mailgate.stores.sqlite import S",
            "cli/_y.py": "def f() -> None: ...",
            "__main__.py": "from mailgate.cli import main",
            "testing/__init__.py": "import pytest\nfrom . import _y\nimport mailgate.stores",
            "testing/_server.py": "from mailgate.runtime import Mailgate",
        },
    )
    assert check_tree(tmp_path) == []


def write_tree(root: Path, files: dict[str, str]) -> None:
    for relative, source in files.items():
        path = root / "mailgate" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source) + "\n", encoding="utf-8")
        for parent in path.parents:
            if parent == root:
                break
            (parent / "__init__.py").touch()
