"""How a mailgate node runs: its processes, their supervision, the services they run.

``Mailgate`` is a running node: the store, the accept path, the SMTP
listeners, the web inbox, the SMTP workers (``--workers``) and, with an
SQLite store, the commit service, the one process that commits the new mail
of every SMTP process.  ``mailgate serve`` (``mailgate.cli``) and
``mailgate.testing.MailgateServer`` both run it.  Every process of a node
starts with ``configure_process``, runs its event loop from ``new_runner``
and calls ``freeze_startup_objects`` once it serves; the children are
``python -m mailgate.runtime KIND``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mailgate.runtime._process import configure_process, freeze_startup_objects, new_runner
from mailgate.runtime._supervisor import ChildStartError

if TYPE_CHECKING:
    from mailgate.runtime._node import Mailgate

__all__ = [
    "ChildStartError",
    "Mailgate",
    "configure_process",
    "freeze_startup_objects",
    "new_runner",
]


def __getattr__(name: str) -> Any:
    # ``Mailgate`` pulls in the server, the stores and the web app: load it only when
    # asked for, so that the commit service, which needs none of that, starts lean.
    if name == "Mailgate":
        from mailgate.runtime._node import Mailgate  # noqa: PLC0415

        return Mailgate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
