"""The queue service of a node: the queue runner, its courier and its reporter, built from the
settings and run beside the SMTP listeners in the serving process (never in a worker: one
runner a node owns every delivery attempt)."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import cast

from mailgate.config import Settings
from mailgate.delivery import new_message_id
from mailgate.ports import Clock, MailSink, QueueStore
from mailgate.queue import (
    CourierSettings,
    MailReporter,
    QueueRunner,
    RetrySchedule,
    RouteSettings,
    RunnerSettings,
    Smarthost,
    SMTPCourier,
    TLSPolicy,
)
from mailgate.server import RecipientPolicy

__all__ = ["QueueService"]

log = logging.getLogger("mailgate")


def _schedule(settings: Settings) -> RetrySchedule:
    outbound = settings.outbound
    return RetrySchedule(
        intervals=tuple(timedelta(seconds=s) for s in outbound.retry_schedule),
        lifetime=timedelta(seconds=outbound.queue_lifetime),
    )


class QueueService:
    """Delivers what the node queues, until ``aclose``."""

    def __init__(self, settings: Settings, store: QueueStore, sink: MailSink, clock: Clock) -> None:
        outbound = settings.outbound
        self._grace = settings.limits.shutdown_grace
        hostname = settings.hostname or "localhost"
        smarthost = Smarthost.parse(outbound.relay_host) if outbound.relay_host else None
        self.courier = SMTPCourier(
            CourierSettings(
                hostname=hostname,
                routes=RouteSettings(nameserver=outbound.resolver, smtp_port=outbound.port),
                smarthost=smarthost,
                smarthost_auth=outbound.relay_auth,
                tls=outbound.tls,
                # The loader took each policy from TLS_POLICIES, the values TLSPolicy names.
                tls_policies=cast(dict[str, TLSPolicy], dict(outbound.tls_policies)),
                ca_file=outbound.ca_file,
            )
        )
        schedule = _schedule(settings)
        reporter = MailReporter(
            sink,
            hostname=hostname,
            lifetime=schedule.lifetime,
            is_local=RecipientPolicy(settings).is_local,
            new_report_id=lambda: new_message_id(clock.now()),
        )
        self.runner = QueueRunner(
            store,
            self.courier,
            reporter,
            RunnerSettings(
                # Stable across restarts (a node takes its own claims back at once), and
                # distinct between nodes sharing a PostgreSQL store, even on one machine.
                owner=f"{hostname}/{settings.smtp}",
                schedule=schedule,
                smarthost=smarthost is not None,
                destination_concurrency=outbound.destination_concurrency,
            ),
            clock=clock,
        )

    async def start(self) -> None:
        """Take back this node's claims from before a restart and start delivering."""
        await self.runner.start()

    async def aclose(self) -> None:
        """Finish the deliveries in flight, then close kept connections."""
        try:
            await self.runner.aclose(self._grace)
        finally:
            await self.courier.aclose()
