"""`POST /twilio/amd`: Twilio's asynchronous answering-machine detection result for a call AVA
placed (voice/voicemail.py says when it is asked for and what counts as voicemail).

The callback URL names the call (`?call=…`); Twilio signs it with the number's auth token, so
the name cannot be forged. The result is kept as an event of the call; when it is voicemail,
the call's node (this one or another, through control/live_control.py) leaves the assistant's
`voicemailMessage` and hangs up with ended reason `voicemail`.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Request, Response

from control.control_commands import VoicemailCommand
from control.live_control import LiveControl
from control.outbound import call_assistant
from control.state import AppState
from control.twilio_auth import read_form, refused, webhook_signed
from voice.assistant import Assistant
from voice.voicemail import ANSWERED_BY, is_voicemail

__all__ = ["AMD_PATH", "router"]

log = logging.getLogger("ava.twilio")
router = APIRouter()

AMD_PATH = "/twilio/amd"
_STREAM_WAITS = 6  # × _STREAM_WAIT_SECONDS: well inside Twilio's 15 s webhook timeout
_STREAM_WAIT_SECONDS = 0.5


@router.post(AMD_PATH)
async def amd_callback(request: Request) -> Response:
    state: AppState = request.app.state.ava
    form = await read_form(request)
    if form is None:
        return Response("webhook body too large", status_code=413)
    stores = state.stores
    call_id = request.query_params.get("call", "")[:64]
    tenant_id = request.query_params.get("tenant") or None
    call = await stores.calls.get_call(tenant_id, call_id, details=False) if call_id else None
    number = None
    if call is not None and call.tenant_id is not None and call.phone_number_id is not None:
        number = await stores.phone_numbers.get(call.tenant_id, call.phone_number_id)
    # Signature first, refused alike whatever the URL names (control/twilio_auth.py).
    if not await webhook_signed(state, request, form, number):
        log.warning("AMD callback with a bad X-Twilio-Signature rejected")
        return refused()
    if call is None or not call.twilio_call_sid or form.get("CallSid") != call.twilio_call_sid:
        return Response(status_code=204)  # not a call of ours (any more): nothing to do
    answered = form.get("AnsweredBy", "")
    if answered not in ANSWERED_BY:
        log.warning("call %s: AMD result %r is not one Twilio documents", call.id, answered[:40])
        return Response(status_code=204)
    data = {"answeredBy": answered}
    if form.get("MachineDetectionDuration", "").isdigit():
        data["machineDetectionDuration"] = form["MachineDetectionDuration"]
    await stores.calls.add_event(call.id, "twilio-amd", data)
    assistant = await call_assistant(state, call)
    if not isinstance(assistant, Assistant):
        return Response(status_code=204)
    if not is_voicemail(assistant.voicemail_detection, answered):
        return Response(status_code=204)
    command = VoicemailCommand(type="voicemail", answered_by=answered)
    live: LiveControl = request.app.state.live_control
    outcome = await live.send(call, command)
    for _ in range(_STREAM_WAITS):
        # The result may beat the media stream's start by a moment: give it that moment.
        current = await stores.calls.get_call(call.tenant_id, call.id, details=False)
        if outcome.ok or current is None or current.status not in ("queued", "ringing"):
            break
        await asyncio.sleep(_STREAM_WAIT_SECONDS)
        outcome = await live.send(current, command)
    if outcome.ok:
        log.info("call %s reached voicemail (%s)", call.id, answered)
    else:
        log.warning("call %s reached voicemail, but: %s", call.id, outcome.message)
    return Response(status_code=204)
