"""`POST /twilio/status`: Twilio's call status callbacks, kept as events of the call.

Twilio retries callbacks and does not promise their order; `SequenceNumber` gives both the
order and the key that makes a retried callback a no-op.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response

from control.state import AppState
from control.twilio_auth import read_form, refused, unknown_numbers, webhook_signed
from storage import CallRecord

__all__ = ["STATUS_PATH", "router"]

log = logging.getLogger("ava.twilio")
router = APIRouter()

STATUS_PATH = "/twilio/status"
# Vapi's endedReason for a call Twilio ended before its media stream started.
_NEVER_CONNECTED = {
    "busy": "customer-busy",
    "no-answer": "customer-did-not-answer",
    "failed": "twilio-failed-to-connect-call",
    "canceled": "manually-canceled",
    "completed": "customer-ended-call",
}
_FIELDS = ("CallStatus", "CallDuration", "Timestamp", "Direction", "AnsweredBy", "SipResponseCode")


@router.post(STATUS_PATH)
async def status_callback(request: Request) -> Response:
    state: AppState = request.app.state.ava
    form = await read_form(request)
    if form is None:
        return Response("webhook body too large", status_code=413)
    numbers = state.stores.phone_numbers
    # Our number is `To` on an inbound call and `From` on one we placed (both may be ours, when
    # one tenant's number calls another's: Direction says which leg this is).
    ours, theirs = form.get("To", ""), form.get("From", "")
    if form.get("Direction", "").startswith("outbound"):
        ours, theirs = theirs, ours
    number = await numbers.route(ours) or await numbers.route(theirs)
    # Signature first: an unsigned callback is refused alike for any number (twilio_auth).
    if not await webhook_signed(state, request, form, number):
        log.warning("status callback with a bad X-Twilio-Signature rejected")
        return refused()
    if number is None and unknown_numbers(state.settings) == "reject":
        return Response("unknown number", status_code=404)
    tenant_id = number.tenant_id if number is not None else None
    call_sid = form.get("CallSid", "")
    call = await state.stores.calls.find_by_twilio_sid(tenant_id, call_sid)
    named = request.query_params.get("call", "")[:64]
    if call is None and named:
        # A call we placed names itself in its callback URL (signed with it): its first
        # callback may beat calls.create's answer, before the CallSid is stored.
        candidate = await state.stores.calls.get_call(tenant_id, named, details=False)
        if candidate is not None and candidate.twilio_call_sid in (None, call_sid):
            call = candidate
    if call is None:
        # Before the media stream starts there is no call row to attach it to.
        return Response(status_code=204)
    try:
        sequence: int | None = int(form["SequenceNumber"])
    except (KeyError, ValueError):
        sequence = None
    if sequence is not None and not 0 <= sequence < 2**31:
        # The column is a 32-bit INTEGER; Twilio counts a call's callbacks from 0.
        sequence = None
    data = {key[0].lower() + key[1:]: form[key] for key in _FIELDS if key in form}
    if await state.stores.calls.add_event(call.id, "twilio-status", data, sequence=sequence):
        if await _progress(state, call, form.get("CallStatus", "")) and call.tenant_id:
            # Its slot was held while it rang (a scheduled call's): the next one may go.
            await request.app.state.call_slots.release(call.tenant_id, call.id)
    return Response(status_code=204)


async def _progress(state: AppState, call: CallRecord, twilio_status: str) -> bool:
    """Move a call that has not reached its media stream along, or end it (True).

    Once the stream has started (in-progress) the session owns the call's end and its reason;
    Twilio's `completed` then only confirms it. Before that, Twilio is the only witness."""
    calls = state.stores.calls
    if twilio_status == "ringing":
        await calls.advance_status(call.tenant_id, call.id, "ringing")
        return False
    reason = _NEVER_CONNECTED.get(twilio_status)
    if reason is None:
        return False
    current = await calls.get_call(call.tenant_id, call.id, details=False)
    if current is None or current.status not in ("queued", "ringing"):
        return False
    return await calls.finish_call(call.id, reason, f"Twilio call status {twilio_status}")
