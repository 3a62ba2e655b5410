"""The pytest plugin: the ``mailgate_server`` and ``mailgate_server_factory`` fixtures.

Installed with mailgate through the ``pytest11`` entry point::

    def test_signup_sends_mail(mailgate_server):
        app.sign_up("bob@example.org", smtp_port=mailgate_server.port)
        message = mailgate_server.wait_for('to:bob@example.org subject:"Welcome"')
        assert message.links == ("https://app.example/confirm?token=...",)

``mailgate_server`` is a real mailgate on free ports with a fresh store, for
one test: SMTP at ``host`` and ``port``, the web inbox and the Mailpit API at
``http_url``.  Its defaults are ini options (``[pytest]`` or
``[tool.pytest.ini_options]``):

- ``mailgate_hostname``: the name it greets with (``mailgate.test``);
- ``mailgate_domains``: its local domains, space-separated (none: catch-all,
  every recipient is accepted and stored);
- ``mailgate_http``: whether it serves HTTP too (``true``).

``@pytest.mark.mailgate(domains=["example.org"], users={"app": "secret"})``
sets the options of one test's ``mailgate_server``; they are those of
``mailgate_server_factory``, which starts as many servers as a test asks for
and stops them after it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import ssl

    from mailgate.config import Limits, Settings
    from mailgate.testing._server import MailgateServer

__all__ = ["mailgate_server", "mailgate_server_factory"]

TEST_PASSWORD_COST = 4
"""scrypt cost (log2 N) of the ``users`` passwords: throwaway passwords, hashed fast."""


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "mailgate_hostname",
        "mailgate_server: the host name it greets with",
        default="mailgate.test",
    )
    parser.addini(
        "mailgate_domains",
        "mailgate_server: its local domains, space-separated (none: catch-all)",
        type="args",
        default=[],
    )
    parser.addini(
        "mailgate_http",
        "mailgate_server: whether it serves the web inbox and API (http_url)",
        type="bool",
        default=True,
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "mailgate(**options): options of this test's mailgate_server, as"
        " mailgate_server_factory takes them (domains, hostname, http, tls, users, limits,"
        " settings)",
    )


ServerFactory = Callable[..., "MailgateServer"]


@pytest.fixture
def mailgate_server_factory(tmp_path: Path, pytestconfig: pytest.Config) -> Iterator[ServerFactory]:
    """Start a mailgate with options; every one started is stopped after the test.

    Keyword options, the ini options their defaults: ``domains`` (local
    domains; none means catch-all), ``hostname``, ``http`` (serve the web
    inbox and API at ``http_url``), ``tls`` (``True`` for STARTTLS with a
    self-signed certificate, or an ``ssl.SSLContext``), ``users`` (a mapping
    of user names to passwords: AUTH is offered, and a ``submission``
    listener, which requires it, is opened: ``port_of("submission")``),
    ``limits`` (a ``mailgate.config.Limits``) and ``settings`` (a whole
    ``mailgate.config.Settings`` the others are applied to).
    """
    # Imported here, not at plugin load, so coverage sees mailgate's imports.
    from mailgate.auth import UsersFile  # noqa: PLC0415
    from mailgate.config import TLS, Listen  # noqa: PLC0415
    from mailgate.config import Settings as BaseSettings  # noqa: PLC0415
    from mailgate.testing._server import MailgateServer  # noqa: PLC0415

    started: list[MailgateServer] = []

    def mailgate_server_factory(
        *,
        domains: Sequence[str] | None = None,
        hostname: str | None = None,
        http: bool | None = None,
        tls: bool | ssl.SSLContext = False,
        users: Mapping[str, str] | None = None,
        limits: Limits | None = None,
        settings: Settings | None = None,
    ) -> MailgateServer:
        if isinstance(domains, str):
            raise TypeError("domains is a list of domain names, not one string")
        data_dir = tmp_path / ("mailgate" if not started else f"mailgate-{len(started) + 1}")
        data_dir.mkdir()
        base = settings or BaseSettings()
        tls_context = None if isinstance(tls, bool) else tls
        if tls is True:
            base = dataclasses.replace(base, tls=TLS(self_signed=True))
        authenticator = None
        if users:
            authenticator = UsersFile(data_dir / "users")
            for name, password in users.items():
                authenticator.set_password(name, password, log2_n=TEST_PASSWORD_COST)
            base = dataclasses.replace(base, submission=Listen("127.0.0.1", 0))
        server = MailgateServer(
            data_dir=data_dir,
            domains=tuple(pytestconfig.getini("mailgate_domains") if domains is None else domains),
            hostname=hostname or pytestconfig.getini("mailgate_hostname"),
            limits=limits,
            settings=base,
            tls_context=tls_context,
            authenticator=authenticator,
            http=pytestconfig.getini("mailgate_http") if http is None else http,
        )
        server.start()
        started.append(server)
        return server

    try:
        yield mailgate_server_factory
    finally:
        for server in reversed(started):
            server.stop()


@pytest.fixture
def mailgate_server(
    request: pytest.FixtureRequest, mailgate_server_factory: ServerFactory
) -> MailgateServer:
    """A mailgate on free ports with a fresh store, for one test.

    Catch-all unless ``mailgate_domains`` or a ``@pytest.mark.mailgate``
    marker says otherwise; the marker takes ``mailgate_server_factory``'s
    options.
    """
    marker = request.node.get_closest_marker("mailgate")
    if marker is not None and marker.args:
        pytest.fail("@pytest.mark.mailgate takes keyword options only", pytrace=False)
    return mailgate_server_factory(**(marker.kwargs if marker is not None else {}))
