"""Build hook: the per-message hot path is compiled to C with mypyc.

Everything else is in pyproject.toml.  A wheel (``pip install .``) holds the
modules below compiled, beside their sources; they run the same code, checked
by the same tests (``make test`` runs the suite against both builds).

The build is pure Python when

- it is not a wheel: an editable install (``pip install -e .``) stays pure, as a
  compiled module beside its source would shadow every later edit of it;
- ``MAILGATE_PURE_PYTHON=1`` is set;
- mypyc cannot be imported (a build without the ``build-system`` requirements).
"""

from __future__ import annotations

import os
import sys

from setuptools import setup

# What every message passes through: the SMTP engine, the session that drives it,
# the accept path (spool, summary, ids, trace header), the data it hands on, the
# row the store makes of it and the record that carries it to the commit service.
COMPILED = [
    "src/mailgate/model.py",
    "src/mailgate/protocol",
    "src/mailgate/server/_log.py",
    "src/mailgate/server/_session.py",
    "src/mailgate/server/_transaction.py",
    "src/mailgate/delivery",
    "src/mailgate/stores/_rows.py",
    "src/mailgate/stores/sqlite/_schema.py",
    "src/mailgate/stores/sqlite/_records.py",
]


def ext_modules() -> list[object]:
    if "bdist_wheel" not in sys.argv or os.environ.get("MAILGATE_PURE_PYTHON", "") not in ("", "0"):
        return []
    try:
        from mypyc.build import mypycify  # noqa: PLC0415 - only a wheel build needs it
    except ImportError:
        return []
    # The project's mypy settings name the packages to check; here mypy checks only
    # the files given (and what they import), so that configuration is left out.  The
    # build environment lacks the runtime dependencies: what they type stays Any.
    flags = ["--config-file=", "--strict", "--ignore-missing-imports"]
    return list(mypycify([*flags, *COMPILED], opt_level="3", group_name="mailgate"))


setup(ext_modules=ext_modules())
