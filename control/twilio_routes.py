"""Twilio's two entry points: the voice webhook (TwiML) and the media websocket."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request, Response, WebSocket
from starlette.datastructures import Headers

from control.state import AppState
from control.stream_token import InvalidToken, issue_token, verify_token
from media.transport import TransportClosed
from media.twilio.signature import public_url, validate_signature
from media.twilio.twiml import connect_stream
from media.twilio.websocket import CLOSE_POLICY, TwilioWebSocket
from voice.errors import ConfigError
from voice.session import CallSession
from voice.types import EndedReason

__all__ = ["router"]

log = logging.getLogger("ava.twilio")
router = APIRouter()

MEDIA_PATH = "/twilio/media"
START_TIMEOUT = 10.0
_MAX_WEBHOOK_BYTES = 64 * 1024


def _external_url(state: AppState, headers: Headers, scheme: str, path: str, ws: bool) -> str:
    """The URL Twilio used (and signed), seen through any TLS-terminating proxy."""
    configured = state.settings.public_url.rstrip("/")
    if configured:
        base_scheme, _, host = configured.partition("://")
        if ws:
            base_scheme = {"https": "wss", "http": "ws"}.get(base_scheme, base_scheme)
        return f"{base_scheme}://{host}{path}"
    return public_url(
        scheme,
        headers.get("host", "localhost"),
        path,
        forwarded_proto=headers.get("x-forwarded-proto"),
        forwarded_host=headers.get("x-forwarded-host"),
        websocket=ws,
    )


@router.post("/twilio/voice")
async def voice_webhook(request: Request) -> Response:
    state: AppState = request.app.state.ava
    if state.calls.draining:
        # 503 makes Twilio try the number's fallback URL (another node) instead.
        return Response("server draining", status_code=503)
    body = await request.body()
    if len(body) > _MAX_WEBHOOK_BYTES:
        return Response("webhook body too large", status_code=413)
    form = dict(parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True))
    settings = state.settings
    if not settings.dev_mode:
        url = _external_url(state, request.headers, request.url.scheme, request.url.path, False)
        if request.url.query:
            url = f"{url}?{request.url.query}"
        signature = request.headers.get("x-twilio-signature", "")
        if not validate_signature(
            settings.twilio_auth_token.get_secret_value(), url, form, signature
        ):
            log.warning("voice webhook with a bad X-Twilio-Signature rejected")
            return Response("invalid signature", status_code=403)
    call_sid = form.get("CallSid", "")
    claims = {
        "call_sid": call_sid,
        "assistant": "default",
        "from": form.get("From", ""),
        "to": form.get("To", ""),
    }
    token = issue_token(
        settings.signing_key(), claims, now=time.time(), ttl=settings.stream_token_ttl_seconds
    )
    stream_url = _external_url(state, request.headers, request.url.scheme, MEDIA_PATH, True)
    twiml = connect_stream(stream_url, {"ava_token": token})
    return Response(twiml, media_type="text/xml")


@router.websocket(MEDIA_PATH)
async def media_stream(websocket: WebSocket) -> None:
    state: AppState = websocket.app.state.ava
    settings = state.settings
    if not settings.dev_mode:
        url = _external_url(state, websocket.headers, websocket.url.scheme, MEDIA_PATH, True)
        signature = websocket.headers.get("x-twilio-signature", "")
        if not validate_signature(
            settings.twilio_auth_token.get_secret_value(), url, {}, signature
        ):
            log.warning("media stream with a bad X-Twilio-Signature rejected")
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
    try:
        claims = verify_token(
            settings.signing_key(), start.custom_parameters.get("ava_token", ""), now=time.time()
        )
        if claims.get("call_sid") != start.call_sid:
            raise InvalidToken("stream token was issued for another call")
    except InvalidToken as exc:
        log.warning("media stream %s rejected: %s", start.stream_sid, exc)
        state.calls.reject(call_id, EndedReason.MALFORMED_STREAM, str(exc), **ids)
        await websocket.close(CLOSE_POLICY, str(exc))
        return
    assistant = state.assistant_for(str(claims.get("assistant", "default")))
    try:
        engines = state.engines.for_assistant(assistant)
    except ConfigError as exc:
        state.calls.reject(call_id, EndedReason.SERVER_ERROR, str(exc), **ids)
        await transport.close(EndedReason.SERVER_ERROR.value)
        return
    metadata = {**ids, "from": str(claims.get("from", "")), "to": str(claims.get("to", ""))}
    session = CallSession(
        call_id=call_id,
        assistant=assistant,
        transport=transport,
        engines=engines,
        sink=state.calls,
        metadata=metadata,
    )
    await state.calls.run(session)
