"""Mailpit's chaos triggers over HTTP: ``GET`` and ``PUT /api/v1/chaos``.

With chaos enabled (``--enable-chaos`` or ``--chaos-triggers``), ``GET``
answers the triggers in force as Mailpit's JSON (``mailgate.chaos``), and
``PUT`` sets them: a trigger the body leaves out goes back to its default
(probability 0), so ``{}`` resets them all, as in Mailpit.  ``PUT`` answers
the triggers now in force once every SMTP process of the node has them
(``Chaos.change`` waits for the node's followers): a test may send mail as
soon as it has its answer.  A body that is no valid triggers gets ``400``
with the reason as text.  Without chaos both answer Mailpit's ``400 Chaos is
not enabled``: a server not started for it cannot be made to fail mail over
HTTP.
"""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mailgate.chaos import ChaosError, ChaosTriggers
from mailgate.web._context import BadRequest, Inbox, text_error

__all__ = ["DISABLED", "get_chaos", "set_chaos"]

DISABLED = "Chaos is not enabled"
"""Mailpit's answer (``400``) when chaos was not enabled at start."""


async def get_chaos(inbox: Inbox, request: Request) -> Response:
    chaos = inbox.chaos
    if chaos is None:
        return text_error(400, DISABLED)
    return JSONResponse(chaos.triggers.json())


async def set_chaos(inbox: Inbox, request: Request) -> Response:
    chaos = inbox.chaos
    if chaos is None:
        return text_error(400, DISABLED)
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the body is not JSON (send {} to reset every trigger)") from None
    try:
        triggers = ChaosTriggers.from_json(body)
    except ChaosError as error:
        raise BadRequest(str(error)) from None
    await chaos.change(triggers)
    return JSONResponse(chaos.triggers.json())
