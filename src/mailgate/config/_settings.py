"""The settings tree: what a running mailgate is told, as frozen dataclasses.

The dataclasses hold the defaults and nothing else; checking what a user
wrote (and naming the flag, variable or TOML key that was wrong) is the
loader's job, so code and tests may build settings with any values they
need, such as a recipient limit below the RFC minimum to exercise ``452``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal
from urllib.parse import quote

from mailgate.chaos import ChaosTriggers
from mailgate.protocol import (
    DEFAULT_ERROR_BUDGET,
    DEFAULT_MAX_MESSAGE_OCTETS,
    DEFAULT_MAX_RECIPIENTS,
    MAX_TEXT_LINE_OCTETS,
)
from mailgate.tags import AutoTags

__all__ = [
    "CATCH_ALL_MAX_MESSAGES",
    "MAX_WORKERS",
    "TLS",
    "Domain",
    "Limits",
    "Listen",
    "Outbound",
    "Retention",
    "Settings",
]

MAX_WORKERS = 64
"""The most SMTP processes ``Settings.workers`` may ask for."""

DEFAULT_IDLE_TIMEOUT_SECONDS = 300.0  # RFC 5321 4.5.3.2.7: at least 5 minutes
DEFAULT_SHUTDOWN_GRACE_SECONDS = 30.0
DEFAULT_FREE_SPACE_FLOOR_OCTETS = 64 * 1024 * 1024
"""The free space ``MAIL`` needs when messages have no size limit."""
DEFAULT_SPOOL_MEMORY_OCTETS = 64 * 1024 * 1024
"""What one SMTP process may hold in memory of messages on their way in."""
DEFAULT_WEBHOOK_LIMIT = 5
"""Webhook posts a second, as Mailpit's ``--webhook-limit`` default."""


@dataclass(frozen=True, slots=True)
class Listen:
    """An address to listen on.  ``host`` ``""`` means every interface."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Domain:
    """A domain mailgate accepts mail for.

    No ``mailboxes`` means any local part is accepted.  ``aliases`` maps a
    local part to its targets, each a local part of this domain or a whole
    address.  Local parts are kept as written and matched without regard to
    case, as most mail systems do (RFC 5321 2.4 allows either).
    """

    name: str
    mailboxes: tuple[str, ...] = ()
    aliases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    _mailbox_keys: frozenset[str] = field(init=False, repr=False, compare=False)
    _alias_keys: Mapping[str, tuple[str, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # A caller's dict would keep the frozen Domain mutable through it.
        object.__setattr__(self, "aliases", MappingProxyType(dict(self.aliases)))
        object.__setattr__(self, "_mailbox_keys", frozenset(m.casefold() for m in self.mailboxes))
        alias_keys = {local.casefold(): targets for local, targets in self.aliases.items()}
        object.__setattr__(self, "_alias_keys", MappingProxyType(alias_keys))

    def __reduce__(
        self,
    ) -> tuple[type[Domain], tuple[str, tuple[str, ...], dict[str, tuple[str, ...]]]]:
        # Settings cross to the commit service and SMTP workers as a pickle;
        # a mappingproxy cannot be pickled, so a Domain travels as its arguments.
        return (Domain, (self.name, self.mailboxes, dict(self.aliases)))

    @property
    def catch_all(self) -> bool:
        """Whether any local part is accepted (no mailboxes are listed)."""
        return not self.mailboxes

    def accepts(self, local_part: str) -> bool:
        """Whether mail to ``local_part`` at this domain is accepted."""
        key = local_part.casefold()
        return self.catch_all or key in self._mailbox_keys or key in self._alias_keys

    def alias_targets(self, local_part: str) -> tuple[str, ...] | None:
        """The targets of the alias ``local_part``, or ``None`` if it is not one."""
        return self._alias_keys.get(local_part.casefold())


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits.  ``max_message_size`` 0 means no limit (RFC 1870 4)."""

    max_message_size: int = DEFAULT_MAX_MESSAGE_OCTETS
    max_recipients: int = DEFAULT_MAX_RECIPIENTS
    max_connections: int = 1000
    max_connections_per_ip: int = 100
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT_SECONDS
    """Seconds a client may take to finish its next command line, or to send more of a
    message's content; bytes that finish nothing do not count (server._deadlines)."""
    stress_timeout: float = 10.0
    """The idle timeout (and the content rate's grace) once three quarters of the
    connection slots are taken, as Postfix's stress mode has it."""
    min_data_rate: int = 1024
    """Octets a second a message's content must average once past ``data_rate_grace``;
    0: no minimum."""
    data_rate_grace: float = 30.0
    """Seconds of content before ``min_data_rate`` applies."""
    max_session_time: float = 3600.0
    """Seconds one connection may last, however busy."""
    error_budget: int = DEFAULT_ERROR_BUDGET
    max_line_length: int = MAX_TEXT_LINE_OCTETS
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE_SECONDS
    max_auth_failures: int = 3
    auth_failure_delay: float = 1.0
    """Seconds before answering a failed password check; doubles with each failure of the
    client address, to 16 times as long."""
    auth_block_after: int = 10
    """Failed password checks from one address (an IPv6 /64) that block it."""
    auth_block_time: float = 600.0
    """How long a block lasts; failures older than this are forgotten."""
    min_free_space: int = 0
    """Octets that must stay free on the data directory's file system for ``MAIL``
    to be accepted; 0: one and a half times ``max_message_size`` (as Postfix does)."""
    spool_memory: int = DEFAULT_SPOOL_MEMORY_OCTETS
    """Octets of messages on their way in (part-way through DATA or BDAT, or being
    committed) that one SMTP process holds in memory, all connections together; past
    it a message goes to a spool file at once, so memory stays bounded however many
    clients send.  Each message holds at most 256 KiB in memory.  0: no limit."""

    @property
    def free_space_floor(self) -> int:
        """The free space below which ``MAIL`` gets ``452 4.3.1``."""
        if self.min_free_space:
            return self.min_free_space
        return self.max_message_size * 3 // 2 or DEFAULT_FREE_SPACE_FLOOR_OCTETS


@dataclass(frozen=True, slots=True)
class TLS:
    """Where the server's certificate comes from.

    ``cert`` and ``key`` name PEM files; ``self_signed`` makes (once) and
    keeps a certificate under the data directory, for development.
    """

    cert: Path | None = None
    key: Path | None = None
    self_signed: bool = False

    @property
    def enabled(self) -> bool:
        """Whether TLS is configured at all."""
        return self.self_signed or self.cert is not None


DEFAULT_RETRY_SCHEDULE_SECONDS = (60.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0)
DEFAULT_QUEUE_LIFETIME_SECONDS = 5 * 86400.0  # RFC 5321 4.5.4.1: give up after 4-5 days


@dataclass(frozen=True, slots=True)
class Outbound:
    """How mail for other domains leaves: routes, TLS, retries.

    ``resolver`` is a DNS server's ``IP[:PORT]`` (``None``: the system's);
    ``relay_host`` a smarthost's ``HOST[:PORT]`` that takes all outbound mail
    (``None``: deliver by MX), with ``relay_auth`` as its AUTH credentials;
    ``tls`` the policy for every destination but those ``tls_policies``
    names; ``ca_file`` the CAs ``verify`` trusts (``None``: the system's);
    ``port`` the SMTP port of MX hosts (25; tests and non-root developers
    change it).  ``retry_schedule`` lists the seconds between attempts (the
    last repeats); ``queue_lifetime`` is how long a recipient is tried
    before it bounces.
    """

    resolver: str | None = None
    relay_host: str | None = None
    relay_auth: tuple[str, str] | None = None
    tls: Literal["none", "may", "encrypt", "verify"] = "may"
    tls_policies: tuple[tuple[str, str], ...] = ()
    ca_file: Path | None = None
    port: int = 25
    retry_schedule: tuple[float, ...] = DEFAULT_RETRY_SCHEDULE_SECONDS
    queue_lifetime: float = DEFAULT_QUEUE_LIFETIME_SECONDS
    destination_concurrency: int = 5


CATCH_ALL_MAX_MESSAGES = 5000
"""The newest messages a catch-all mailgate keeps unless told otherwise: ten times what
Mailpit keeps (500); about 100 MB of mail at 20 KiB a message."""


@dataclass(frozen=True, slots=True)
class Retention:
    """How much stored mail is kept; the node prunes what is over (``runtime``).

    ``max_messages`` is how many of the newest are kept: ``None`` for the
    default (``Settings.messages_kept``), 0 for all of them.  ``max_age`` is
    how many seconds a message is kept after it was received; 0: for ever.
    """

    max_messages: int | None = None
    max_age: float = 0.0


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything ``mailgate serve`` is configured with.

    ``store`` ``""`` means the SQLite database in ``data_dir``
    (see ``store_url``); ``hostname`` ``""`` means the machine's name, which
    the command line resolves.  No ``domains`` means catch-all: every
    recipient is accepted and stored.
    """

    smtp: Listen = Listen("127.0.0.1", 1025)
    http: Listen | None = Listen("127.0.0.1", 8025)
    data_dir: Path = Path("mailgate-data")
    store: str = ""
    hostname: str = ""
    domains: tuple[Domain, ...] = ()
    limits: Limits = Limits()
    vrfy: Literal["off", "252", "on"] = "252"
    expn: Literal["off", "on"] = "off"
    bare_line_endings: Literal["reject", "normalise"] = "normalise"
    log_level: str = "info"
    log_format: Literal["text", "json"] = "text"
    """How log lines are written to stderr: ``text`` or ``json`` (one object per line)."""
    submission: Listen | None = None
    smtps: Listen | None = None
    tls: TLS = TLS()
    users: Path | None = None
    relay_networks: tuple[str, ...] = ()
    auth_accept_any: bool = False
    http_auth: tuple[str, str] | None = None
    http_allowed_hosts: tuple[str, ...] = ()
    """Host names the web inbox answers to besides IP addresses, ``localhost`` and ``hostname``
    (a defence against DNS rebinding: a page whose name rebinds to this address gets 400)."""
    webroot: str = "/"
    """The path the web inbox and API are served below, behind a proxy (``/mail/``), with a
    slash at each end; Mailpit's ``--webroot``."""
    api_cors: tuple[str, ...] = ()
    """Origins (``https://app.example:8443``, or ``*`` for any) whose pages may call the API
    from a browser (CORS) and open its websocket, besides the inbox's own."""
    allow_internal_http_requests: bool = False
    """Whether the API's link check may ask loopback and private addresses (Mailpit's
    ``--allow-internal-http-requests``); link-local ones never."""
    workers: int = 1
    """SMTP processes; above 1 they share the ports through ``SO_REUSEPORT``; 0: one per CPU."""
    tags: AutoTags = field(default_factory=AutoTags)
    """Where new mail's tags come from (``X-Tags``, plus addresses, ``--tag`` rules)."""
    webhook_url: str | None = None
    """An http or https URL that gets a POST with the summary of each new message (Mailpit's
    ``--webhook-url``); ``None``: none."""
    webhook_limit: int = DEFAULT_WEBHOOK_LIMIT
    """The most webhook posts a second; 0: no limit."""
    enable_chaos: bool = False
    """Whether chaos triggers may fail SMTP commands on purpose, set over the API
    (Mailpit's ``--enable-chaos``): for testing an application, never with ``domains``."""
    chaos_triggers: ChaosTriggers | None = None
    """The chaos triggers in force at start (Mailpit's ``--chaos-triggers``); given, they
    enable chaos too."""
    outbound: Outbound = Outbound()
    retention: Retention = Retention()

    @property
    def store_url(self) -> str:
        """The store to open: ``store``, or the SQLite database ``DATA_DIR/mail.db``.

        That is ``sqlite:///var/lib/mailgate/mail.db`` for an absolute
        ``data_dir`` and ``sqlite:mailgate-data/mail.db`` for a relative one,
        as ``mailgate.stores.open_store`` reads them.
        """
        if self.store:
            return self.store
        path = quote((self.data_dir / "mail.db").as_posix())
        return f"sqlite://{path}" if self.data_dir.is_absolute() else f"sqlite:{path}"

    @property
    def messages_kept(self) -> int:
        """How many of the newest messages are kept, 0 for all: ``retention.max_messages``,
        or by default ``CATCH_ALL_MAX_MESSAGES`` in catch-all mode, a catcher left running
        that must not fill the disk, and all of them for a server of real domains, whose
        mail is nobody's test data to throw away."""
        kept = self.retention.max_messages
        if kept is not None:
            return kept
        return CATCH_ALL_MAX_MESSAGES if self.catch_all else 0

    @property
    def chaos_enabled(self) -> bool:
        """Whether chaos is enabled: ``enable_chaos``, or triggers given at start."""
        return self.enable_chaos or self.chaos_triggers is not None

    @property
    def catch_all(self) -> bool:
        """Whether every recipient domain is accepted (no domains are configured)."""
        return not self.domains

    def domain(self, name: str) -> Domain | None:
        """The configured domain called ``name`` (any case), or ``None``."""
        key = name.lower().removesuffix(".")
        return next((d for d in self.domains if d.name == key), None)
