"""`POST /twilio/status`: Twilio's call status callbacks, kept as events of the call.

Twilio retries callbacks and does not promise their order; `SequenceNumber` gives both the
order and the key that makes a retried callback a no-op.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response

from control.state import AppState
from control.twilio_auth import read_form, webhook_signed

__all__ = ["STATUS_PATH", "router"]

log = logging.getLogger("ava.twilio")
router = APIRouter()

STATUS_PATH = "/twilio/status"
_FIELDS = ("CallStatus", "CallDuration", "Timestamp", "Direction", "AnsweredBy", "SipResponseCode")


@router.post(STATUS_PATH)
async def status_callback(request: Request) -> Response:
    state: AppState = request.app.state.ava
    form = await read_form(request)
    if form is None:
        return Response("webhook body too large", status_code=413)
    numbers = state.stores.phone_numbers
    # Our number is `To` on an inbound call and `From` on one we placed.
    number = await numbers.route(form.get("To", "")) or await numbers.route(form.get("From", ""))
    if number is None and await numbers.any_imported():
        return Response("unknown number", status_code=404)
    if not await webhook_signed(state, request, form, number):
        log.warning("status callback with a bad X-Twilio-Signature rejected")
        return Response("invalid signature", status_code=403)
    tenant_id = number.tenant_id if number is not None else None
    call = await state.stores.calls.find_by_twilio_sid(tenant_id, form.get("CallSid", ""))
    if call is None:
        # Before the media stream starts there is no call row to attach it to.
        return Response(status_code=204)
    try:
        sequence: int | None = int(form["SequenceNumber"])
    except (KeyError, ValueError):
        sequence = None
    data = {key[0].lower() + key[1:]: form[key] for key in _FIELDS if key in form}
    await state.stores.calls.add_event(call.id, "twilio-status", data, sequence=sequence)
    return Response(status_code=204)
