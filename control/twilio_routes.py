"""Twilio's two entry points: the voice webhook (TwiML) and the media websocket."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from fastapi import APIRouter, Request, Response, WebSocket
from pydantic import ValidationError

from control.assistant_request import PendingAssistants, ask_for_assistant, call_id_for
from control.call_control import twilio_call_control
from control.outbound import OUTBOUND, OutboundStream, outbound_stream
from control.providers import resolve_tools
from control.state import AppState
from control.stream_token import InvalidToken, issue_token, verify_token
from control.twilio_auth import auth_token, external_url, read_form, webhook_signed
from control.webhooks import WebhookSender
from media.transport import TransportClosed
from media.twilio.signature import validate_signature
from media.twilio.twiml import connect_stream, say_and_hangup
from media.twilio.websocket import CLOSE_POLICY, TwilioWebSocket
from voice.assistant import Assistant
from voice.errors import ConfigError
from voice.session import CallSession
from voice.types import EndedReason

__all__ = ["router"]

log = logging.getLogger("ava.twilio")
router = APIRouter()

MEDIA_PATH = "/twilio/media"
START_TIMEOUT = 10.0
UNKNOWN_NUMBER_SAY = "Sorry, this number is not in service. Goodbye."
NO_ASSISTANT_SAY = "Sorry, no one can take this call right now. Goodbye."


def _twiml(xml: str) -> Response:
    return Response(xml, media_type="text/xml")


@router.post("/twilio/voice")
async def voice_webhook(request: Request) -> Response:
    state: AppState = request.app.state.ava
    if state.calls.draining:
        # 503 makes Twilio try the number's fallback URL (another node) instead.
        return Response("server draining", status_code=503)
    form = await read_form(request)
    if form is None:
        return Response("webhook body too large", status_code=413)
    settings = state.settings
    number = await state.stores.phone_numbers.route(form.get("To", ""))
    # Until some tenant imports a number the server is single-tenant: every call gets the
    # assistant file. After that, a number nobody imported is told so, not served.
    if number is None and await state.stores.phone_numbers.any_imported():
        log.info("call to %r, which no tenant imported", form.get("To", ""))
        return _twiml(say_and_hangup(UNKNOWN_NUMBER_SAY))
    if not await webhook_signed(state, request, form, number):
        log.warning("voice webhook with a bad X-Twilio-Signature rejected")
        return Response("invalid signature", status_code=403)
    claims: dict[str, str] = {
        "call_sid": form.get("CallSid", ""),
        "assistant": "default",
        "from": form.get("From", ""),
        "to": form.get("To", ""),
    }
    if number is not None and number.assistant_id is None:
        if not number.server:
            return _twiml(say_and_hangup(NO_ASSISTANT_SAY))
        # Vapi's assistant-request, while the caller hears ringing (control/assistant_request.py).
        routed = await ask_for_assistant(state, number, form, _pending(request.app))
        if routed.twiml is not None:
            return _twiml(routed.twiml)
        assert routed.claims is not None
        claims |= routed.claims
    elif number is not None:
        claims |= {
            "tenant_id": number.tenant_id,
            "assistant_id": number.assistant_id or "",
            "phone_number_id": number.id,
        }
    token = issue_token(
        settings.signing_key(), claims, now=time.time(), ttl=settings.stream_token_ttl_seconds
    )
    stream_url = external_url(state, request.headers, request.url.scheme, MEDIA_PATH, True)
    return _twiml(connect_stream(stream_url, {"ava_token": token}))


def _pending(app: Any) -> PendingAssistants:
    """This process's transient assistants from assistant-request answers (made on first use)."""
    pending: PendingAssistants | None = getattr(app.state, "pending_assistants", None)
    if pending is None:
        ttl = app.state.ava.settings.stream_token_ttl_seconds
        pending = app.state.pending_assistants = PendingAssistants(ttl)
    return pending


async def _tenant_assistant(
    state: AppState, claims: dict[str, object], pending: PendingAssistants
) -> Assistant | str:
    """The assistant a tenant's number answers with, or why there is none."""
    if claims.get("pending"):
        transient = pending.take(str(claims.get("call_sid", "")))
        if transient is None:
            return "the assistant-request's transient assistant is not held by this process"
        return transient
    tenant_id, assistant_id = str(claims["tenant_id"]), str(claims.get("assistant_id", ""))
    record = await state.stores.assistants.get(tenant_id, assistant_id)
    if record is None:
        return f"assistant {assistant_id} no longer exists"
    try:
        return record.assistant()
    except ValidationError as exc:  # stored under an older, laxer schema
        return f"assistant {assistant_id} is no longer valid: {exc.errors()[0]['msg']}"


async def _number_server(state: AppState, metadata: dict[str, str]) -> dict[str, Any] | None:
    """The call's phone number's `server` (webhooks go there when the assistant has none)."""
    tenant_id, number_id = metadata.get("tenant_id"), metadata.get("phone_number_id")
    if not tenant_id or not number_id:
        return None
    number = await state.stores.phone_numbers.get(tenant_id, number_id)
    return None if number is None else number.server


async def _stream_signed(
    state: AppState, websocket: WebSocket, claims: dict[str, object], presigned: bool
) -> bool:
    """Whether the upgrade request carried a signature valid for the call's number."""
    if "phone_number_id" not in claims:
        return presigned or state.settings.dev_mode
    number = await state.stores.phone_numbers.get(
        str(claims["tenant_id"]), str(claims["phone_number_id"])
    )
    if number is None:
        return False
    token = await auth_token(state, number)
    if not token:
        return True
    url = external_url(state, websocket.headers, websocket.url.scheme, MEDIA_PATH, True)
    return validate_signature(token, url, {}, websocket.headers.get("x-twilio-signature", ""))


@router.websocket(MEDIA_PATH)
async def media_stream(websocket: WebSocket) -> None:
    state: AppState = websocket.app.state.ava
    settings = state.settings
    presigned = False
    if not settings.dev_mode:
        signature = websocket.headers.get("x-twilio-signature", "")
        url = external_url(state, websocket.headers, websocket.url.scheme, MEDIA_PATH, True)
        presigned = validate_signature(
            settings.twilio_auth_token.get_secret_value(), url, {}, signature
        )
        # Twilio signs every upgrade. One signed with another token may be a tenant's number
        # (known only from the start message's token); an unsigned one is nobody's.
        if not signature:
            log.warning("media stream without X-Twilio-Signature rejected")
            await websocket.close(CLOSE_POLICY)
            return
    await websocket.accept()
    transport = TwilioWebSocket(websocket)
    call_id = f"call_{uuid.uuid4().hex}"
    try:
        async with asyncio.timeout(START_TIMEOUT):
            start = await transport.wait_started()
    except TransportClosed as exc:
        state.calls.reject(
            call_id,
            EndedReason.MALFORMED_STREAM if exc.malformed else EndedReason.CUSTOMER_ENDED_CALL,
            exc.detail,
        )
        return
    except TimeoutError:
        state.calls.reject(call_id, EndedReason.MALFORMED_STREAM, "no start message")
        await transport.close("no start message (policy)")
        return
    ids = {"call_sid": start.call_sid, "stream_sid": start.stream_sid}
    outbound: OutboundStream | None = None
    try:
        claims = verify_token(
            settings.signing_key(), start.custom_parameters.get("ava_token", ""), now=time.time()
        )
        if claims.get("type") == OUTBOUND:
            # A call placed by POST /call: its record exists already and names the CallSid.
            outbound = await outbound_stream(state, claims, start.call_sid)
            call_id = outbound.call_id
        elif claims.get("call_sid") != start.call_sid:
            raise InvalidToken("stream token was issued for another call")
        if not await _stream_signed(state, websocket, claims, presigned):
            raise InvalidToken("bad X-Twilio-Signature on the media stream")
    except InvalidToken as exc:
        log.warning("media stream %s rejected: %s", start.stream_sid, exc)
        state.calls.reject(call_id, EndedReason.MALFORMED_STREAM, str(exc), **ids)
        await websocket.close(CLOSE_POLICY, str(exc))
        return
    metadata = {**ids, "from": str(claims.get("from", "")), "to": str(claims.get("to", ""))}
    assistant: Assistant | str
    if outbound is not None:
        assistant = outbound.assistant
        metadata |= outbound.metadata
    elif "tenant_id" in claims:
        assistant = await _tenant_assistant(state, claims, _pending(websocket.app))
        if claims.get("ar"):  # an assistant-request call keeps the id its server was told
            call_id = call_id_for(start.call_sid)
        metadata |= {
            "tenant_id": str(claims["tenant_id"]),
            "assistant_id": str(claims["assistant_id"]),
            "phone_number_id": str(claims["phone_number_id"]),
            "type": "inboundPhoneCall",
        }
    else:
        assistant = state.assistant_for(str(claims.get("assistant", "default")))
    try:
        if isinstance(assistant, str):
            raise ConfigError(assistant)
        assistant = await resolve_tools(
            assistant, metadata.get("tenant_id") or None, state.stores.tools
        )
        engines = state.engines.for_assistant(assistant)
    except ConfigError as exc:
        state.calls.reject(call_id, EndedReason.SERVER_ERROR, str(exc), **ids)
        if outbound is not None:  # its record was written by POST /call; close it too
            await state.stores.calls.finish_call(call_id, EndedReason.SERVER_ERROR, str(exc))
        await transport.close(EndedReason.SERVER_ERROR.value)
        return
    # The session's paced sends, timed for /metrics' frame lateness (control/metrics.py).
    clock, paced = websocket.app.state.metrics.pacing(transport)
    session = CallSession(
        call_id=call_id,
        assistant=assistant,
        transport=paced,
        clock=clock,
        engines=engines,
        sink=state.sink,
        metadata=metadata,
        call_control=await twilio_call_control(settings, state.stores, metadata),
    )
    webhooks: WebhookSender | None = getattr(websocket.app.state, "webhooks", None)
    if webhooks is not None:
        webhooks.register(call_id, assistant, await _number_server(state, metadata))
    await state.calls.run(session)
