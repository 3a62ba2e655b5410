"""Sending delivery reports: from the runner's outcomes to a report accepted as new mail.

``MailReporter`` turns a ``ReportRequest`` (one original message, the
recipients it reports on) into the values ``build_report`` takes, then
accepts the report through the accept path like any message: from ``<>``
to the original sender, stored in the inbox when the sender's domain is
local, queued for delivery when it is not.  One path for new mail, so a
report is as durable as anything mailgate acknowledges.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from mailgate.model import Envelope
from mailgate.ports import MailSink
from mailgate.protocol import OriginalRecipient, Reply, parse_envid, parse_orcpt, parse_ret
from mailgate.queue._reports import (
    Action,
    OriginalMessage,
    RecipientStatus,
    build_report,
)
from mailgate.queue._runner import ReportRequest

__all__ = ["MailReporter", "report_status"]

log = logging.getLogger("mailgate.queue")

_EXPIRED = "5.4.7"  # RFC 3463: delivery time expired
_CLASS = {Action.FAILED: "5", Action.DELAYED: "4", Action.DELIVERED: "2", Action.RELAYED: "2"}


def report_status(action: Action, reply: Reply) -> str:
    """The enhanced status code a report gives a recipient, of the class its action needs.

    A failure reported after a temporary reply is a recipient whose time ran
    out (``5.4.7``); a reply without an enhanced code gets the class's
    ``X.0.0``.
    """
    wanted = _CLASS[action]
    if reply.enhanced and reply.enhanced[0] == wanted:
        return reply.enhanced
    if action is Action.FAILED and reply.code < 500:
        return _EXPIRED
    return f"{wanted}.0.0"


def _original_recipient(orcpt: str | None, *, utf8: bool) -> OriginalRecipient | None:
    if not orcpt:
        return None
    try:
        return parse_orcpt(orcpt, utf8=utf8)
    except ValueError:  # checked on receipt; a store written by another version may differ
        return None


class MailReporter:
    """A ``Reporter`` that builds RFC 3464 reports and accepts them through ``sink``."""

    def __init__(
        self,
        sink: MailSink,
        *,
        hostname: str,
        lifetime: timedelta,
        is_local: Callable[[str], bool],
        new_report_id: Callable[[], str],
    ) -> None:
        self._sink = sink
        self._hostname = hostname
        self._lifetime = lifetime
        self._is_local = is_local
        self._new_report_id = new_report_id

    async def send(self, request: ReportRequest) -> None:
        """Build the report and accept it; raises ``MailgateError`` when it cannot be stored."""
        envelope = request.message.envelope
        params = envelope.mail_params
        smtputf8 = "SMTPUTF8" in params
        try:
            envid = parse_envid(params.get("ENVID")) or None
            ret = parse_ret(params["RET"]) if params.get("RET") else None
        except ValueError:
            envid, ret = None, None
        original = OriginalMessage(
            sender=envelope.mail_from,
            content=request.content,
            arrival_date=envelope.received_at,
            envid=envid,
            ret=ret,
            smtputf8=smtputf8,
            whole=request.whole,
        )
        rcpt_params = dict(zip(envelope.rcpt_to, envelope.rcpt_params, strict=False))
        statuses = []
        for action_name, result, row in request.entries:
            action = Action(action_name)
            reply = result.reply
            statuses.append(
                RecipientStatus(
                    final_recipient=result.recipient,
                    action=action,
                    status=report_status(action, reply),
                    original_recipient=_original_recipient(
                        rcpt_params.get(result.recipient, {}).get("ORCPT"), utf8=smtputf8
                    ),
                    remote_mta=result.relay.partition("[")[0] or None,
                    diagnostic=f"{reply.code} {reply.enhanced or ''} {reply.text}".replace(
                        "  ", " "
                    ),
                    last_attempt=request.at,
                    will_retry_until=(
                        row.queued_at + self._lifetime if action is Action.DELAYED else None
                    ),
                )
            )
        report = build_report(
            original,
            statuses,
            reporting_mta=self._hostname,
            report_id=self._new_report_id(),
            now=request.at,
        )
        await self._accept(report.content, report.recipient, request.at, report.smtputf8)
        log.info(
            "id=%s report to=<%s> about %d recipient(s): %s",
            request.message.summary.id,
            report.recipient,
            len(statuses),
            ", ".join(sorted({s.action.value for s in statuses})),
        )

    async def _accept(self, content: bytes, recipient: str, at: datetime, utf8: bool) -> None:
        params: dict[str, str | None] = {"BODY": "8BITMIME"} if not content.isascii() else {}
        if utf8:
            params["SMTPUTF8"] = None
        envelope = Envelope(
            mail_from="",
            rcpt_to=(recipient,),
            received_at=at,
            helo_name=self._hostname,
            protocol="local",
            mail_params=params,
            outbound=() if self._is_local(recipient) else (recipient,),
        )
        spool = self._sink.begin(envelope)
        try:
            spool.write(content)
        except BaseException:
            spool.discard()
            raise
        await self._sink.commit(spool)
