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

from pydantic import ValidationError

from control.settings import Settings
from control.state import AppState
from control.stream_token import InvalidToken, issue_token
from control.twilio_rest import TwilioRest
from media.twilio.twiml import connect_stream
from storage import CallRecord, CallType, TwilioCredentials
from storage.crypto import open_secrets
from voice.assistant import Assistant

__all__ = [
    "OUTBOUND",
    "RING_SECONDS",
    "OutboundStream",
    "outbound_stream",
    "outbound_twiml",
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


@dataclass(frozen=True, slots=True)
class OutboundStream:
    call_id: str
    assistant: Assistant | str  # str: why there is none
    metadata: dict[str, str]


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
    return OutboundStream(call.id, await _assistant(state, call), metadata)


async def _assistant(state: AppState, call: CallRecord) -> Assistant | str:
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
