"""The pytest plugin: a ``mailgate_server`` fixture.

Installed with mailgate through the ``pytest11`` entry point::

    def test_signup_sends_mail(mailgate_server):
        app.send_welcome(smtp_host=mailgate_server.host, smtp_port=mailgate_server.port)
        [message] = mailgate_server.messages()
        assert message.subject == "Welcome"
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from mailgate.testing._server import MailgateServer

__all__ = ["mailgate_server"]


@pytest.fixture
def mailgate_server(tmp_path: Path) -> Iterator[MailgateServer]:
    """A catch-all mailgate on a free port with a fresh store, for one test."""
    # Imported here, not at plugin load, so coverage sees mailgate's imports.
    from mailgate.testing._server import MailgateServer  # noqa: PLC0415

    with MailgateServer(data_dir=tmp_path / "mailgate") as server:
        yield server
