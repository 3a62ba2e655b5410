"""The one table of settings a user can set, and their names in each source.

A row names the settings field it fills, the ``--flag``, the
``MAILGATE_*`` variable and the TOML key that set it, and the parser that
checks the value.  The command line builds its flags from this table, so a
new setting is one new row (and one new dataclass field).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mailgate.config._tags import parse_tag_rules, parse_tags_disable, split_tag_rules
from mailgate.config._values import (
    parse_chaos_triggers,
    parse_choice,
    parse_credentials,
    parse_domain_names,
    parse_domain_names_list,
    parse_domain_table,
    parse_duration,
    parse_durations,
    parse_flag,
    parse_hostname,
    parse_int,
    parse_listen,
    parse_nameserver,
    parse_networks,
    parse_optional_host_port,
    parse_optional_listen,
    parse_optional_path,
    parse_origins,
    parse_path,
    parse_size,
    parse_store_url,
    parse_tls_policies,
    parse_webhook_url,
    parse_webroot,
    parse_workers,
)
from mailgate.protocol import MAX_TEXT_LINE_OCTETS, MIN_RECIPIENTS

__all__ = ["OPTIONS", "Option"]

MIN_MESSAGE_OCTETS = 64 * 1024  # RFC 5321 4.5.3.1.7


@dataclass(frozen=True, slots=True)
class Option:
    """One setting and the names it goes by.

    ``field`` is the dotted path in ``Settings`` (``limits.idle_timeout``).
    A ``repeatable`` option takes its flag several times and a
    comma-separated list in the environment (or the list ``split_env`` makes of it).
    A ``switch`` is a flag without
    a value that means ``on``; its variable and TOML key take on or off.  ``parse_toml``, when set,
    replaces ``parse`` for values from the TOML file.  A ``secret`` (a password) has no flag:
    a command line is visible to every user of the machine, so it is read from the
    environment or the TOML file only.
    """

    field: str
    flag: str
    env: str
    toml: str
    parse: Callable[[object], object]
    metavar: str
    help: str
    parse_toml: Callable[[object], object] | None = None
    repeatable: bool = False
    switch: bool = False
    secret: bool = False
    split_env: Callable[[str], list[str]] | None = None

    @property
    def dest(self) -> str:
        """The key of this option in ``argv_values``: the flag in snake case."""
        return self.flag.removeprefix("--").replace("-", "_")


OPTIONS: tuple[Option, ...] = (
    Option(
        "smtp", "--smtp", "MAILGATE_SMTP", "smtp", parse_listen, "HOST:PORT",
        "where to accept SMTP (default 127.0.0.1:1025; :PORT for every interface)",
    ),
    Option(
        "http", "--http", "MAILGATE_HTTP", "http", parse_optional_listen, "HOST:PORT",
        "where to serve the web inbox and API, or off (default 127.0.0.1:8025)",
    ),
    Option(
        "data_dir", "--data", "MAILGATE_DATA", "data", parse_path, "DIR",
        "directory for the default store and spool files (default ./mailgate-data)",
    ),
    Option(
        "store", "--store", "MAILGATE_STORE", "store", parse_store_url, "URL",
        "a message store, e.g. sqlite:///var/lib/mailgate/mail.db (default: mail.db in --data)",
    ),
    Option(
        "workers", "--workers", "MAILGATE_WORKERS", "workers", parse_workers, "N|auto",
        "SMTP worker processes sharing the listening ports (default 1; auto: one per CPU)",
    ),
    Option(
        "hostname", "--hostname", "MAILGATE_HOSTNAME", "hostname", parse_hostname, "NAME",
        "the name this server greets with (default: this machine's name)",
    ),
    Option(
        "domains", "--domain", "MAILGATE_DOMAIN", "domains", parse_domain_names, "DOMAIN",
        "a local domain; repeat for several (none: accept every recipient)",
        parse_toml=parse_domain_table, repeatable=True,
    ),
    Option(
        "limits.max_message_size", "--max-message-size", "MAILGATE_MAX_MESSAGE_SIZE",
        "limits.max_message_size",
        parse_size(least=MIN_MESSAGE_OCTETS, reason="RFC 5321 4.5.3.1.7; 0 for no limit"),
        "SIZE", "largest message accepted, e.g. 25M (default 25M; 0 for no limit)",
    ),
    Option(
        "retention.max_messages", "--max-messages", "MAILGATE_MAX_MESSAGES",
        "retention.max_messages", parse_int(least=0), "N",
        "keep the newest N messages, deleting older ones (default 5000 without --domain, "
        "else all; 0: all)",
    ),
    Option(
        "retention.max_age", "--max-age", "MAILGATE_MAX_AGE", "retention.max_age",
        parse_duration(least=0), "DURATION",
        "delete messages received longer ago than this, e.g. 7d or 12h (default 0: keep)",
    ),
    Option(
        "limits.min_free_space", "--min-free-space", "MAILGATE_MIN_FREE_SPACE",
        "limits.min_free_space", parse_size(least=1), "SIZE",
        "free disk space below which MAIL gets 452 4.3.1 (default 1.5 x the largest message)",
    ),
    Option(
        "limits.spool_memory", "--spool-memory", "MAILGATE_SPOOL_MEMORY", "limits.spool_memory",
        parse_size(least=1), "SIZE",
        "memory for messages on their way in, per SMTP process; past it they go to spool "
        "files (default 64M; 0 for no limit)",
    ),
    Option(
        "limits.max_recipients", "--max-recipients", "MAILGATE_MAX_RECIPIENTS",
        "limits.max_recipients", parse_int(least=MIN_RECIPIENTS, reason="RFC 5321 4.5.3.1.8"),
        "N", "most recipients of one message (default 1000)",
    ),
    Option(
        "limits.max_connections", "--max-connections", "MAILGATE_MAX_CONNECTIONS",
        "limits.max_connections", parse_int(least=1), "N",
        "most SMTP connections at once, per worker (default 1000)",
    ),
    Option(
        "limits.max_connections_per_ip", "--max-connections-per-ip",
        "MAILGATE_MAX_CONNECTIONS_PER_IP", "limits.max_connections_per_ip", parse_int(least=1),
        "N", "most SMTP connections from one address at once, per worker (default 100)",
    ),
    Option(
        "limits.idle_timeout", "--idle-timeout", "MAILGATE_IDLE_TIMEOUT", "limits.idle_timeout",
        parse_duration(least=0.001), "SECONDS",
        "close a connection that finishes no command line in this long (default 300; "
        "RFC 5321 4.5.3.2.7)",
    ),
    Option(
        "limits.stress_timeout", "--stress-timeout", "MAILGATE_STRESS_TIMEOUT",
        "limits.stress_timeout", parse_duration(least=0.001), "SECONDS",
        "the idle timeout once 3/4 of the connection slots are taken (default 10)",
    ),
    Option(
        "limits.min_data_rate", "--min-data-rate", "MAILGATE_MIN_DATA_RATE",
        "limits.min_data_rate", parse_size(least=0), "OCTETS",
        "octets a second a message's content must average after its grace (default 1K; 0: any)",
    ),
    Option(
        "limits.data_rate_grace", "--data-rate-grace", "MAILGATE_DATA_RATE_GRACE",
        "limits.data_rate_grace", parse_duration(least=0), "SECONDS",
        "seconds of content before --min-data-rate applies (default 30)",
    ),
    Option(
        "limits.max_session_time", "--max-session-time", "MAILGATE_MAX_SESSION_TIME",
        "limits.max_session_time", parse_duration(least=1), "SECONDS",
        "longest one SMTP connection may last (default 3600)",
    ),
    Option(
        "limits.error_budget", "--error-budget", "MAILGATE_ERROR_BUDGET", "limits.error_budget",
        parse_int(least=1), "N", "refused (5xx) commands before a disconnect (default 20)",
    ),
    Option(
        "limits.max_line_length", "--max-line-length", "MAILGATE_MAX_LINE_LENGTH",
        "limits.max_line_length",
        parse_int(least=MAX_TEXT_LINE_OCTETS, reason="RFC 5321 4.5.3.1.6"),
        "OCTETS", "longest text line in a message, CRLF included (default 1000)",
    ),
    Option(
        "limits.shutdown_grace", "--shutdown-grace", "MAILGATE_SHUTDOWN_GRACE",
        "limits.shutdown_grace", parse_duration(least=0), "SECONDS",
        "how long shutdown waits for transactions in flight (default 30)",
    ),
    Option(
        "vrfy", "--vrfy", "MAILGATE_VRFY", "vrfy", parse_choice(("off", "252", "on")),
        "off|252|on", "answer VRFY: off (502), 252 (cannot verify; default) or on",
    ),
    Option(
        "expn", "--expn", "MAILGATE_EXPN", "expn", parse_choice(("off", "on")), "off|on",
        "answer EXPN with alias members (default off)",
    ),
    Option(
        "bare_line_endings", "--bare-line-endings", "MAILGATE_BARE_LINE_ENDINGS",
        "bare_line_endings",
        parse_choice(("reject", "normalise"), aliases={"normalize": "normalise"}),
        "reject|normalise", "what a bare CR or LF in a message gets (default normalise)",
    ),
    Option(
        "log_level", "--log-level", "MAILGATE_LOG_LEVEL", "log_level",
        parse_choice(("debug", "info", "warning", "error", "critical")), "LEVEL",
        "debug, info, warning, error or critical (default info)",
    ),
    Option(
        "log_format", "--log-format", "MAILGATE_LOG_FORMAT", "log_format",
        parse_choice(("text", "json")), "text|json",
        "log lines as text (default) or as JSON objects, one a line",
    ),
    Option(
        "submission", "--submission", "MAILGATE_SUBMISSION", "submission",
        parse_optional_listen, "HOST:PORT",
        "also accept mail submission here, AUTH required (RFC 6409; off by default)",
    ),
    Option(
        "smtps", "--smtps", "MAILGATE_SMTPS", "smtps", parse_optional_listen, "HOST:PORT",
        "also accept submission over implicit TLS here (RFC 8314; off by default)",
    ),
    Option(
        "tls.cert", "--tls-cert", "MAILGATE_TLS_CERT", "tls.cert", parse_optional_path, "FILE",
        "the server's certificate chain (PEM), to offer STARTTLS",
    ),
    Option(
        "tls.key", "--tls-key", "MAILGATE_TLS_KEY", "tls.key", parse_optional_path, "FILE",
        "the private key of --tls-cert (PEM)",
    ),
    Option(
        "tls.self_signed", "--tls-self-signed", "MAILGATE_TLS_SELF_SIGNED", "tls.self_signed",
        parse_flag, "on|off", "make and keep a self-signed certificate in --data (for development)",
        switch=True,
    ),
    Option(
        "http_auth", "--http-auth", "MAILGATE_HTTP_AUTH", "http_auth", parse_credentials,
        "USER:PASSWORD", "require HTTP basic auth for the web inbox and API (off by default)",
    ),
    Option(
        "http_allowed_hosts", "--http-allowed-host", "MAILGATE_HTTP_ALLOWED_HOST",
        "http_allowed_hosts", parse_domain_names_list, "NAME",
        "a host name the web inbox answers to (besides IPs, localhost and --hostname); repeat",
        repeatable=True,
    ),
    Option(
        "webroot", "--webroot", "MAILGATE_WEBROOT", "webroot", parse_webroot, "PATH",
        "serve the web inbox and API below this path, e.g. /mail/ (default /)",
    ),
    Option(
        "api_cors", "--api-cors", "MAILGATE_API_CORS", "api_cors", parse_origins, "ORIGIN",
        "let pages from this origin (scheme://host[:port], or *) call the API; repeat",
        repeatable=True,
    ),
    Option(
        "allow_internal_http_requests", "--allow-internal-http-requests",
        "MAILGATE_ALLOW_INTERNAL_HTTP_REQUESTS", "allow_internal_http_requests", parse_flag,
        "on|off", "let the API's link check ask loopback and private addresses (off by default)",
        switch=True,
    ),
    Option(
        "webhook_url", "--webhook-url", "MAILGATE_WEBHOOK_URL", "webhook_url", parse_webhook_url,
        "URL", "POST a JSON summary of each new message to this http(s) URL (off by default)",
    ),
    Option(
        "webhook_limit", "--webhook-limit", "MAILGATE_WEBHOOK_LIMIT", "webhook_limit",
        parse_int(least=0), "N", "most webhook posts a second (default 5; 0: no limit)",
    ),
    Option(
        "enable_chaos", "--enable-chaos", "MAILGATE_ENABLE_CHAOS", "enable_chaos", parse_flag,
        "on|off", "let GET/PUT /api/v1/chaos set SMTP failures on purpose, for testing "
        "(off by default; never with --domain)", switch=True,
    ),
    Option(
        "chaos_triggers", "--chaos-triggers", "MAILGATE_CHAOS_TRIGGERS", "chaos_triggers",
        parse_chaos_triggers, "TRIGGER:CODE:PROBABILITY,...",
        "enable chaos with these triggers, e.g. Sender:451:50,Recipient:550:10 "
        "(triggers: Sender, Recipient, Authentication)",
    ),
    Option(
        "tags.rules", "--tag", "MAILGATE_TAG", "tags", parse_tag_rules, "TAGS=QUERY",
        "tag new mail that QUERY (a search, as in the inbox) matches with TAGS "
        "(comma-separated); repeat", repeatable=True, split_env=split_tag_rules,
    ),
    Option(
        "tags.disabled", "--tags-disable", "MAILGATE_TAGS_DISABLE", "tags_disable",
        parse_tags_disable, "x-tags,plus-addresses",
        "do not tag new mail from its X-Tags header, or from plus addresses (user+tag@)",
        repeatable=True,
    ),
    Option(
        "tags.username", "--tags-username", "MAILGATE_TAGS_USERNAME", "tags_username",
        parse_flag, "on|off", "tag new mail with the user name its client authenticated as",
        switch=True,
    ),
    Option(
        "users", "--users", "MAILGATE_USERS", "users", parse_optional_path, "FILE",
        "the users who may AUTH, with their password hashes",
    ),
    Option(
        "relay_networks", "--relay-network", "MAILGATE_RELAY_NETWORK", "relay_networks",
        parse_networks, "CIDR", "clients in this network may relay; repeat for several",
        repeatable=True,
    ),
    Option(
        "auth_accept_any", "--auth-accept-any", "MAILGATE_AUTH_ACCEPT_ANY", "auth_accept_any",
        parse_flag, "on|off", "accept any user name and password (for development only)",
        switch=True,
    ),
    Option(
        "limits.max_auth_failures", "--max-auth-failures", "MAILGATE_MAX_AUTH_FAILURES",
        "limits.max_auth_failures", parse_int(least=1), "N",
        "failed AUTH attempts before a client is disconnected (default 3; RFC 4954 9)",
    ),
    Option(
        "limits.auth_failure_delay", "--auth-failure-delay", "MAILGATE_AUTH_FAILURE_DELAY",
        "limits.auth_failure_delay", parse_duration(least=0), "SECONDS",
        "pause before answering a failed password, doubling per failure of the address (default 1)",
    ),
    Option(
        "limits.auth_block_after", "--auth-block-after", "MAILGATE_AUTH_BLOCK_AFTER",
        "limits.auth_block_after", parse_int(least=1), "N",
        "failed passwords from one address (IPv6: its /64) that block it (default 10)",
    ),
    Option(
        "limits.auth_block_time", "--auth-block-time", "MAILGATE_AUTH_BLOCK_TIME",
        "limits.auth_block_time", parse_duration(least=1), "SECONDS",
        "how long a blocked address is refused AUTH and HTTP auth (default 600)",
    ),
    Option(
        "outbound.resolver", "--resolver", "MAILGATE_RESOLVER", "outbound.resolver",
        parse_nameserver, "IP:PORT",
        "the DNS server outbound delivery asks for MX records (default: the system's)",
    ),
    Option(
        "outbound.relay_host", "--relay-host", "MAILGATE_RELAY_HOST", "outbound.relay_host",
        parse_optional_host_port, "HOST:PORT",
        "send all outbound mail through this smarthost instead of by MX",
    ),
    Option(
        "outbound.relay_auth", "--relay-auth", "MAILGATE_RELAY_AUTH", "outbound.relay_auth",
        parse_credentials, "USER:PASSWORD",
        "AUTH credentials for --relay-host (environment or TOML file only)", secret=True,
    ),
    Option(
        "outbound.tls", "--outbound-tls", "MAILGATE_OUTBOUND_TLS", "outbound.tls",
        parse_choice(("none", "may", "encrypt", "verify")), "none|may|encrypt|verify",
        "TLS for outbound delivery (default may: STARTTLS when offered)",
    ),
    Option(
        "outbound.tls_policies", "--tls-policy", "MAILGATE_TLS_POLICY", "outbound.tls_policy",
        parse_tls_policies, "DOMAIN=POLICY",
        "the TLS policy for one destination domain; repeat for several", repeatable=True,
    ),
    Option(
        "outbound.ca_file", "--outbound-ca", "MAILGATE_OUTBOUND_CA", "outbound.ca_file",
        parse_optional_path, "FILE",
        "CA certificates (PEM) that TLS policy verify trusts (default: the system's)",
    ),
    Option(
        "outbound.port", "--outbound-port", "MAILGATE_OUTBOUND_PORT", "outbound.port",
        parse_int(least=1), "PORT", "the SMTP port of remote mail servers (default 25)",
    ),
    Option(
        "outbound.retry_schedule", "--retry-schedule", "MAILGATE_RETRY_SCHEDULE",
        "outbound.retry_schedule", parse_durations(least=1), "LIST",
        "waits between delivery attempts, the last repeating (default 1m,5m,10m,30m,1h,2h,4h)",
    ),
    Option(
        "outbound.queue_lifetime", "--queue-lifetime", "MAILGATE_QUEUE_LIFETIME",
        "outbound.queue_lifetime", parse_duration(least=1), "DURATION",
        "how long a recipient is retried before it bounces (default 5d)",
    ),
    Option(
        "outbound.destination_concurrency", "--destination-concurrency",
        "MAILGATE_DESTINATION_CONCURRENCY", "outbound.destination_concurrency",
        parse_int(least=1), "N", "connections to one destination domain at once (default 5)",
    ),
)  # fmt: skip
