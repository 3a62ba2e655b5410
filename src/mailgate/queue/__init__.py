"""The outbound queue: routes, the SMTP client's asyncio shell, retries and reports.

Mail for other domains waits here, one row per recipient
(``ports.QueueStore``), until it is delivered, bounced or deleted.  The
``QueueRunner`` (run by ``mailgate.runtime``) claims due recipients, groups
them by destination, and hands each group to the ``SMTPCourier``, which
resolves the route (``RouteResolver``: MX, implicit MX, a smarthost) and
drives ``mailgate.protocol.ClientConnection`` through ``SMTPClient``.  Each
recipient's reply is settled against the ``RetrySchedule``; the reports
senders asked for (``build_report``) go out as new mail (``MailReporter``).
"""

from __future__ import annotations

from mailgate.queue._courier import CourierSettings, SMTPCourier
from mailgate.queue._reporter import MailReporter
from mailgate.queue._reports import (
    Action,
    DeliveryReport,
    OriginalMessage,
    RecipientStatus,
    build_report,
    should_report,
)
from mailgate.queue._routes import (
    Route,
    RouteError,
    RouteHost,
    RouteKind,
    RouteResolver,
    RouteSettings,
    Smarthost,
)
from mailgate.queue._runner import (
    Attempt,
    AttemptResult,
    Courier,
    OutboundRecipient,
    QueueRunner,
    RecipientResult,
    Reporter,
    ReportRequest,
    RunnerSettings,
)
from mailgate.queue._schedule import RetrySchedule
from mailgate.queue._smtp import (
    DeliveryError,
    DeliveryResult,
    SMTPClient,
    SMTPClientSettings,
    TLSPolicy,
    Transaction,
    connect,
)

__all__ = [
    "Action",
    "Attempt",
    "AttemptResult",
    "Courier",
    "CourierSettings",
    "DeliveryError",
    "DeliveryReport",
    "DeliveryResult",
    "MailReporter",
    "OriginalMessage",
    "OutboundRecipient",
    "QueueRunner",
    "RecipientResult",
    "RecipientStatus",
    "ReportRequest",
    "Reporter",
    "RetrySchedule",
    "Route",
    "RouteError",
    "RouteHost",
    "RouteKind",
    "RouteResolver",
    "RouteSettings",
    "RunnerSettings",
    "SMTPClient",
    "SMTPClientSettings",
    "SMTPCourier",
    "Smarthost",
    "TLSPolicy",
    "Transaction",
    "build_report",
    "connect",
    "should_report",
]
