"""Calls AVA places and ends through Twilio's REST API, and the media stream they come back on.

An outbound call's TwiML is handed to `calls.create` before Twilio has a CallSid for it, so its
stream token cannot name the CallSid as an inbound one does. It names our call id instead; the
CallSid Twilio answers with is stored on that call, and the media stream must start with it.
The token lives as long as the callee may take to answer (Twilio rings for up to 60 s) plus the
usual stream-token lifetime.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from pydantic import ValidationError

from control.settings import Settings
from control.state import AppState
from control.stores import Stores
from control.stream_token import InvalidToken, issue_token
from control.twilio_rest import TwilioRest, TwilioRestError
from media.twilio.twiml import connect_stream
from storage import CallRecord, CallType, TwilioCredentials
from storage.crypto import open_secrets
from storage.vapi import CUSTOMER
from voice.assistant import Assistant
from voice.voicemail import twilio_amd

__all__ = [
    "OUTBOUND",
    "RING_SECONDS",
    "TWILIO_FAILED",
    "OutboundStream",
    "PlacementFailed",
    "call_assistant",
    "hang_up_at_twilio",
    "outbound_stream",
    "outbound_twiml",
    "place_outbound",
    "twilio_for",
]

OUTBOUND: CallType = "outboundPhoneCall"
RING_SECONDS = 120.0


def twilio_for(settings: Settings, credentials: TwilioCredentials | None) -> TwilioRest | None:
    """The REST client for a number's account; the server's own account for a call without
    a number; None when neither has credentials (dev mode)."""
    base_url = settings.twilio_api_base_url
    if credentials is not None:
        api_key = None
        if credentials.api_key and credentials.api_secret:
            api_key = (credentials.api_key, credentials.api_secret)
        return TwilioRest(
            credentials.account_sid,
            credentials.auth_token or "",
            base_url=base_url,
            api_key=api_key,
        )
    token = settings.twilio_auth_token.get_secret_value()
    if settings.twilio_account_sid and token:
        return TwilioRest(settings.twilio_account_sid, token, base_url=base_url)
    return None


async def hang_up_at_twilio(
    settings: Settings,
    stores: Stores,
    *,
    tenant_id: str | None,
    phone_number_id: str | None,
    call_sid: str,
) -> bool:
    """End Twilio's leg of a call, with its number's account (the server's own for a call
    without a number). False when there is no account to ask (dev mode). Raises
    TwilioRestError when Twilio refuses or cannot be reached."""
    credentials = None
    if tenant_id is not None and phone_number_id is not None:
        credentials = await stores.phone_numbers.credentials(tenant_id, phone_number_id)
    twilio = twilio_for(settings, credentials)
    if twilio is None:
        return False
    async with twilio:
        await twilio.end_call(call_sid)
    return True


def outbound_twiml(settings: Settings, stream_url: str, call: CallRecord) -> str:
    """`<Connect><Stream>` with a token bound to `call` (see the module docstring)."""
    claims = {
        "call_id": call.id,
        "tenant_id": call.tenant_id or "",
        "phone_number_id": call.phone_number_id or "",
        "type": OUTBOUND,
    }
    token = issue_token(
        settings.signing_key(),
        claims,
        now=time.time(),
        ttl=settings.stream_token_ttl_seconds + RING_SECONDS,
    )
    return connect_stream(stream_url, {"ava_token": token})


TWILIO_FAILED = "twilio-failed-to-connect-call"


class PlacementFailed(Exception):
    """Twilio did not place the call; the call's record is ended with Twilio's reason."""

    def __init__(self, call_id: str, message: str, *, retryable: bool) -> None:
        super().__init__(f"Twilio did not place the call (call {call_id}): {message}")
        self.retryable = retryable


async def place_outbound(
    state: AppState, call: CallRecord, *, stream_url: str, status_url: str, amd_url: str
) -> str:
    """Ask Twilio (the call's number's account) to dial `call`'s customer; stores and returns
    the CallSid. Raises PlacementFailed (the record then ends, so the attempt and Twilio's
    reason stay on file). An assistant with `voicemailDetection` gets Twilio's asynchronous
    AMD, reporting to `amd_url` (control/voicemail.py)."""
    stores = state.stores
    credentials = None
    if call.tenant_id is not None and call.phone_number_id is not None:
        credentials = await stores.phone_numbers.credentials(call.tenant_id, call.phone_number_id)
    twilio = twilio_for(state.settings, credentials) if credentials is not None else None
    if twilio is None or not call.to_number or not call.from_number:
        reason = "the call's number has no Twilio credentials any more"
        await stores.calls.finish_call(call.id, TWILIO_FAILED, reason)
        raise PlacementFailed(call.id, reason, retryable=False)
    twiml = outbound_twiml(state.settings, stream_url, call)
    assistant = await call_assistant(state, call)
    detection = assistant.voicemail_detection if isinstance(assistant, Assistant) else None
    # Twilio's callbacks name the call: the first ("initiated") can arrive before
    # calls.create has answered with the CallSid the call is otherwise found by.
    query = urlencode({"call": call.id, "tenant": call.tenant_id or ""})
    amd = twilio_amd(detection, f"{amd_url}?{query}")
    try:
        async with twilio:
            call_sid = await twilio.create_call(
                to=call.to_number,
                from_=call.from_number,
                twiml=twiml,
                status_callback=f"{status_url}?{query}",
                options=amd,
            )
    except TwilioRestError as exc:
        await stores.calls.finish_call(call.id, TWILIO_FAILED, str(exc))
        raise PlacementFailed(call.id, str(exc), retryable=exc.retryable) from exc
    await stores.calls.set_twilio_sid(call.tenant_id, call.id, call_sid)
    return call_sid


@dataclass(frozen=True, slots=True)
class OutboundStream:
    call_id: str
    assistant: Assistant | str  # str: why there is none
    metadata: dict[str, str]
    customer: dict[str, str]  # Vapi's `customer`: number, and name etc. if POST /call gave them


async def outbound_stream(state: AppState, claims: dict[str, Any], call_sid: str) -> OutboundStream:
    """The call a stream with an outbound token belongs to, checked against its CallSid."""
    tenant_id = str(claims.get("tenant_id", "")) or None
    call = await state.stores.calls.get_call(tenant_id, str(claims["call_id"]), details=False)
    if call is None:
        raise InvalidToken("stream token names a call that does not exist")
    if not call.twilio_call_sid or call.twilio_call_sid != call_sid:
        raise InvalidToken("stream token was issued for another call")
    if call.status == "ended":
        raise InvalidToken(f"call {call.id} has already ended")
    metadata = {
        "tenant_id": call.tenant_id or "",
        "assistant_id": call.assistant_id or "",
        "phone_number_id": call.phone_number_id or "",
        "type": OUTBOUND,
        "from": call.from_number or "",
        "to": call.to_number or "",
    }
    known = call.metadata.get(CUSTOMER)
    customer = {str(k): str(v) for k, v in known.items()} if isinstance(known, dict) else {}
    if call.to_number:
        customer["number"] = call.to_number
    return OutboundStream(call.id, await call_assistant(state, call), metadata, customer)


async def call_assistant(state: AppState, call: CallRecord) -> Assistant | str:
    """The assistant an outbound call runs (its own, or its stored one); a str says why none."""
    inline = call.metadata.get("assistant")
    try:
        if isinstance(inline, dict):
            return Assistant.model_validate(open_secrets(inline, state.stores.box))
        if call.tenant_id is None or call.assistant_id is None:
            return f"call {call.id} has no assistant"
        record = await state.stores.assistants.get(call.tenant_id, call.assistant_id)
        if record is None:
            return f"assistant {call.assistant_id} no longer exists"
        return record.assistant()
    except ValidationError as exc:
        return f"the call's assistant is not valid: {exc.errors()[0]['msg']}"
