"""Twilio's two entry points: the voice webhook (TwiML) and the media websocket.

The voice webhook checks the signature first (twilio_auth), mints the call's id (random), takes
one of the tenant's concurrent-call slots (control/call_slots.py) and answers with a stream
token that carries the id. The media stream uses the token once: a second stream with it is
closed with 1008 and never becomes a call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request, Response, WebSocket
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from control.assistant_request import HeldAssistants, PendingAssistants, ask_for_assistant
from control.call_control import twilio_call_control
from control.call_slots import BUSY_SAY, TENANT_LIMIT_REASON, CallSlots, holding_slot
from control.calls import Refusal
from control.outbound import OUTBOUND, OutboundStream, outbound_stream
from control.personal import caller_as_customer, personalize_for_call, record_personalized
from control.providers import provider_keys, resolve_tools
from control.recordings import CallRecording, recording_base_url
from control.state import AppState
from control.stream_token import InvalidToken, issue_token, verify_token
from control.twilio_auth import (
    external_url,
    read_form,
    refused,
    signing_token,
    unknown_numbers,
    webhook_signed,
)
from control.webhooks import WebhookSender
from media.transport import TransportClosed
from media.twilio.messages import Start
from media.twilio.signature import validate_signature
from media.twilio.twiml import connect_stream, redirect, say_and_hangup
from media.twilio.websocket import CLOSE_POLICY, TwilioWebSocket
from storage import PhoneNumberRecord
from storage.redis_assistants import RedisAssistants
from voice.assistant import Assistant
from voice.errors import ConfigError
from voice.session import CallSession
from voice.types import EndedReason

__all__ = [
    "BUSY_SAY",
    "MAX_DRAIN_REDIRECTS",
    "NO_ASSISTANT_SAY",
    "UNKNOWN_NUMBER_SAY",
    "new_call_id",
    "router",
]

log = logging.getLogger("ava.twilio")
router = APIRouter()

MEDIA_PATH = "/twilio/media"
START_TIMEOUT = 10.0
UNKNOWN_NUMBER_SAY = "Sorry, this number is not in service. Goodbye."
NO_ASSISTANT_SAY = "Sorry, no one can take this call right now. Goodbye."
_MAX_NUMBER_CHARS = 64  # From/To as stored (a SIP From can be any length)
# A new call redirected this often found only nodes not taking calls: give up with a 503.
MAX_DRAIN_REDIRECTS = 3
_REDIRECTS = "ava_redirects"
# From/To as the stream token carries them: E.164 is 16 characters at most; a longer (SIP,
# client) address is cut so the token stays within Twilio's parameter size.
_MAX_CLAIMED_CHARS = 24
# Twilio's CallSids are "CA" and 32 hex digits; this bound keeps the stream token (500 characters
# at most in a <Parameter>) buildable whatever a signed webhook carries.
_CALL_SID = re.compile(r"[A-Za-z0-9_-]{0,64}")


def _twiml(xml: str) -> Response:
    return Response(xml, media_type="text/xml")


@router.post("/twilio/voice")
async def voice_webhook(request: Request) -> Response:
    state: AppState = request.app.state.ava
    refusal = state.calls.refusal()
    if refusal is not None:
        return _elsewhere(state, request, refusal)
    form = await read_form(request)
    if form is None:
        return Response("webhook body too large", status_code=413)
    number = await state.stores.phone_numbers.route(form.get("To", ""))
    # The signature before anything else, refused alike whether or not the number exists.
    if not await webhook_signed(state, request, form, number):
        log.warning("voice webhook with a bad X-Twilio-Signature rejected")
        return refused()
    call_sid = form.get("CallSid", "")
    if not _CALL_SID.fullmatch(call_sid):
        # Signed, so from the number's own account: still a request we cannot answer.
        return Response("CallSid must be at most 64 letters and digits", status_code=400)
    # Random, never derived from the CallSid: another tenant's signed webhook may repeat it.
    call_id = new_call_id()
    claims: dict[str, str] = {
        "call_id": call_id,
        "call_sid": call_sid,
        "from": form.get("From", "")[:_MAX_CLAIMED_CHARS],
        "to": form.get("To", "")[:_MAX_CLAIMED_CHARS],
    }
    if number is None:
        if unknown_numbers(state.settings) == "reject":
            log.info("call to %r, which no tenant imported: refused", form.get("To", ""))
            return _twiml(say_and_hangup(UNKNOWN_NUMBER_SAY))
        return _stream_twiml(state, request, claims | {"assistant": "default"})
    if number.assistant_id is None and not number.server:
        return _twiml(say_and_hangup(NO_ASSISTANT_SAY))
    slots: CallSlots = request.app.state.call_slots
    if not await _take_slot(state, slots, number.tenant_id, call_id):
        await _record_busy(state, number, form, call_id)
        return _twiml(say_and_hangup(BUSY_SAY))
    if number.assistant_id is None:
        # Vapi's assistant-request, while the caller hears ringing (control/assistant_request.py).
        routed = await ask_for_assistant(state, number, form, _pending(request.app), call_id)
        if routed.twiml is not None:
            await slots.release(number.tenant_id, call_id)
            return _twiml(routed.twiml)
        assert routed.claims is not None
        claims |= routed.claims
    else:
        claims |= {
            "tenant_id": number.tenant_id,
            "assistant_id": number.assistant_id,
            "phone_number_id": number.id,
        }
    return _stream_twiml(state, request, claims)


def _elsewhere(state: AppState, request: Request, refusal: Refusal) -> Response:
    """A new call reaching a node that takes none (draining for a rolling restart, at
    AVA_MAX_CALLS, or saturated): Twilio is redirected to the service's own URL, which the load
    balancer sends to a node that is still taking calls. A call redirected
    `MAX_DRAIN_REDIRECTS` times (every node it reached refused it) gets 503, which makes Twilio
    try the number's fallback URL. Checked before the signature: a refusal costs next to nothing,
    which is the point on a saturated node, and it reveals nothing about the number."""
    request.app.state.metrics.calls_refused.labels(reason=refusal.value).inc()
    try:
        hops = int(request.query_params.get(_REDIRECTS, "0"))
    except ValueError:
        hops = MAX_DRAIN_REDIRECTS
    if hops >= MAX_DRAIN_REDIRECTS:
        return Response(f"server not taking calls ({refusal.value})", status_code=503)
    url = external_url(state, request.headers, request.url.scheme, request.url.path, False)
    if refusal is not Refusal.SATURATED:  # saturation is logged once, when it starts
        log.info("%s: new call redirected to %s (hop %d)", refusal.value, url, hops + 1)
    return _twiml(redirect(f"{url}?{_REDIRECTS}={hops + 1}"))


def new_call_id() -> str:
    # 96 random bits: unguessable, and short enough for the stream token (control/stream_token).
    return f"call_{secrets.token_hex(12)}"


def _stream_twiml(state: AppState, request: Request, claims: dict[str, str]) -> Response:
    """`<Connect><Stream>` with a token for this call; the token is good for one stream."""
    settings = state.settings
    token = issue_token(
        settings.signing_key(), claims, now=time.time(), ttl=settings.stream_token_ttl_seconds
    )
    stream_url = external_url(state, request.headers, request.url.scheme, MEDIA_PATH, True)
    return _twiml(connect_stream(stream_url, {"ava_token": token}))


async def _take_slot(state: AppState, slots: CallSlots, tenant_id: str, call_id: str) -> bool:
    """Reserve one of the tenant's concurrent calls for `call_id` until its stream starts (the
    assistant-request wait, then the stream token's life); False when they are all in use."""
    settings = state.settings
    limit = await state.stores.tenants.max_calls(tenant_id)
    if limit is None:
        limit = settings.tenant_max_calls
    ttl = settings.stream_token_ttl_seconds + settings.assistant_request_timeout_seconds
    return await slots.acquire(tenant_id, call_id, limit, ttl)


async def _record_busy(
    state: AppState, number: PhoneNumberRecord, form: dict[str, str], call_id: str
) -> None:
    """A call refused for the tenant's limit still leaves a record the tenant sees (GET /call)."""
    log.warning(
        "call %s to %s refused: tenant %s is at its call limit",
        call_id,
        number.number,
        number.tenant_id,
    )
    calls = state.stores.calls
    await calls.create_call(
        number.tenant_id,
        type="inboundPhoneCall",
        call_id=call_id,
        status="ringing",
        assistant_id=number.assistant_id,
        phone_number_id=number.id,
        twilio_call_sid=form.get("CallSid") or None,
        from_number=form.get("From", "")[:_MAX_NUMBER_CHARS] or None,
        to_number=number.number,
    )
    await calls.finish_call(
        call_id, TENANT_LIMIT_REASON, "all of the tenant's concurrent calls are in use"
    )


def _pending(app: Any) -> HeldAssistants:
    """Transient assistants from assistant-request answers (made on first use): this process's,
    and with AVA_REDIS_URL every node's (control/assistant_request.py)."""
    held: HeldAssistants | None = getattr(app.state, "held_assistants", None)
    if held is None:
        state: AppState = app.state.ava
        ttl = state.settings.stream_token_ttl_seconds
        local = app.state.pending_assistants = PendingAssistants(ttl)
        url = state.settings.redis_url
        shared = RedisAssistants(url, state.stores.box, ttl) if url else None
        held = app.state.held_assistants = HeldAssistants(local, shared)
    return held


async def _tenant_assistant(
    state: AppState, claims: dict[str, object], call_id: str, pending: HeldAssistants
) -> Assistant | str:
    """The assistant a tenant's number answers with, or why there is none."""
    tenant_id = str(claims["tenant_id"])
    if claims.get("pending"):
        transient = await pending.take(tenant_id, call_id)
        if transient is None:
            return "the assistant-request's transient assistant was not found (expired or taken)"
        return transient
    assistant_id = str(claims.get("assistant_id", ""))
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
    """Whether the upgrade request carried a signature valid for the call's number: its own
    account's token only; a call without a number, the operator's (`presigned`)."""
    if not claims.get("phone_number_id"):
        return presigned or state.settings.dev_mode
    number = await state.stores.phone_numbers.get(
        str(claims.get("tenant_id", "")), str(claims["phone_number_id"])
    )
    token = None if number is None else await signing_token(state, number)
    if token is None:  # a deleted number, or one without an auth token: nothing vouches
        return False
    if not token:
        return True
    url = external_url(state, websocket.headers, websocket.url.scheme, MEDIA_PATH, True)
    return validate_signature(token, url, {}, websocket.headers.get("x-twilio-signature", ""))


async def _claimed_call(
    state: AppState, websocket: WebSocket, start: Start, presigned: bool
) -> tuple[str, dict[str, Any], OutboundStream | None]:
    """The call a stream's token is for: its id, the token's claims, and for a call placed by
    POST /call its record. Raises InvalidToken, also for a token already used once."""
    claims = verify_token(
        state.settings.signing_key(), start.custom_parameters.get("ava_token", ""), now=time.time()
    )
    call_id = str(claims.get("call_id", ""))
    if not call_id:
        raise InvalidToken("stream token names no call")
    outbound: OutboundStream | None = None
    if claims.get("type") == OUTBOUND:
        # A call placed by POST /call: its record exists already and names the CallSid.
        outbound = await outbound_stream(state, claims, start.call_sid)
    elif claims.get("call_sid") != start.call_sid:
        raise InvalidToken("stream token was issued for another call")
    if not await _stream_signed(state, websocket, claims, presigned):
        raise InvalidToken("bad X-Twilio-Signature on the media stream")
    # Last, so only a stream that passed every other check uses the token up. The call id is
    # random per token, so it serves as the token's id.
    expires = datetime.fromtimestamp(float(claims["exp"]), UTC)
    if not await state.stores.calls.use_stream_token(call_id, expires):
        raise InvalidToken("stream token already used")
    return call_id, claims, outbound


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
    # Audio faster than real time past this burst closes the stream (media.rate_guard).
    transport = TwilioWebSocket(websocket, burst_seconds=settings.media_burst_seconds)
    # A stream that never becomes a call is recorded under an id of its own: never under the
    # id its token names, which may be a live call's (a replayed token).
    rejected_id = new_call_id()
    try:
        async with asyncio.timeout(START_TIMEOUT):
            start = await transport.wait_started()
    except TransportClosed as exc:
        state.calls.reject(
            rejected_id,
            EndedReason.MALFORMED_STREAM if exc.malformed else EndedReason.CUSTOMER_ENDED_CALL,
            exc.detail,
        )
        return
    except TimeoutError:
        state.calls.reject(rejected_id, EndedReason.MALFORMED_STREAM, "no start message")
        await transport.close("no start message (policy)")
        return
    ids = {"call_sid": start.call_sid, "stream_sid": start.stream_sid}
    try:
        call_id, claims, outbound = await _claimed_call(state, websocket, start, presigned)
    except InvalidToken as exc:
        log.warning("media stream %s rejected: %s", start.stream_sid, exc)
        state.calls.reject(rejected_id, EndedReason.MALFORMED_STREAM, str(exc), **ids)
        await websocket.close(CLOSE_POLICY, str(exc))
        return
    except SQLAlchemyError as exc:
        # The token could not be checked off (the database is down, or SQLite stayed locked
        # past its busy timeout under load): the call cannot start safely, but it ends with a
        # reason and a 1011, never as an exception in the websocket handler.
        log.error("media stream %s: the database failed at start: %s", start.stream_sid, exc)
        detail = f"database unavailable at stream start: {type(exc).__name__}"
        state.calls.reject(rejected_id, EndedReason.SERVER_ERROR, detail, **ids)
        await transport.close(f"{EndedReason.SERVER_ERROR.value}: database unavailable")
        return
    metadata = {**ids, "from": str(claims.get("from", "")), "to": str(claims.get("to", ""))}
    assistant: Assistant | str
    transient = False  # an assistant-request's answer: recorded with the call
    if outbound is not None:
        assistant = outbound.assistant
        metadata |= outbound.metadata
    elif "tenant_id" in claims:
        assistant = await _tenant_assistant(state, claims, call_id, _pending(websocket.app))
        transient = bool(claims.get("pending"))
        metadata |= {
            "tenant_id": str(claims["tenant_id"]),
            "assistant_id": str(claims.get("assistant_id", "")),
            "phone_number_id": str(claims["phone_number_id"]),
            "type": "inboundPhoneCall",
        }
    else:
        assistant = state.assistant_for(str(claims.get("assistant", "default")))
    slots: CallSlots = websocket.app.state.call_slots
    tenant_id = metadata.get("tenant_id", "")
    try:
        if isinstance(assistant, str):
            raise ConfigError(assistant)
        effective = assistant
        assistant = await resolve_tools(assistant, tenant_id or None, state.stores.tools)
        # Once per call, before anything speaks: Vapi's {{variables}} (voice.variables). In a
        # thread: a 100k-character prompt full of variables takes ~0.1 s, which would stall
        # every other call's paced audio on this loop.
        customer = outbound.customer if outbound is not None else caller_as_customer(metadata)
        personal = await personalize_for_call(assistant, customer)
        assistant = personal.assistant
        keys = await provider_keys(state.stores, settings, tenant_id or None)
        engines = state.engines.for_assistant(assistant, keys)
    except ConfigError as exc:
        state.calls.reject(call_id, EndedReason.SERVER_ERROR, str(exc), **ids)
        if outbound is not None:  # its record was written by POST /call; close it too
            await state.stores.calls.finish_call(call_id, EndedReason.SERVER_ERROR, str(exc))
        if tenant_id:
            await slots.release(tenant_id, call_id)  # the voice webhook's reservation
        await transport.close(EndedReason.SERVER_ERROR.value)
        return
    await record_personalized(state, call_id, metadata, personal, effective if transient else None)
    # The session's paced sends, timed for /metrics' frame lateness (control/metrics.py).
    clock, paced = websocket.app.state.metrics.pacing(transport)
    recording = CallRecording.create(
        getattr(websocket.app.state, "recordings", None), call_id=call_id,
        tenant_id=tenant_id or None, assistant=assistant, transport=paced, clock=clock,
        base_url=recording_base_url(state, websocket.headers, websocket.url.scheme),
        metadata=metadata,
    )  # fmt: skip
    session = CallSession(
        call_id=call_id,
        assistant=assistant,
        transport=paced if recording is None else recording.transport,
        clock=clock,
        engines=engines,
        sink=state.sink,
        metadata=metadata,
        call_control=await twilio_call_control(settings, state.stores, metadata),
    )
    webhooks: WebhookSender | None = getattr(websocket.app.state, "webhooks", None)
    if webhooks is not None:
        webhooks.register(call_id, assistant, await _number_server(state, metadata))
    async with recording.running() if recording is not None else contextlib.nullcontext():
        if not tenant_id:
            await state.calls.run(session)
            return
        # The tenant's slot (reserved by the voice webhook; taken here for a call we placed) is
        # held and renewed while the call runs, and freed when it ends.
        async with holding_slot(slots, tenant_id, call_id):
            await state.calls.run(session)
