"""Browser calls: the WebRTC offer/answer, web tokens, the page and what it reads.

- `POST /webrtc/offer` `{sdp, type: "offer", assistantId, token?}` → `{sdp, type: "answer",
  pc_id}`. Non-trickle: the answer carries every candidate. Authorized by the tenant's API key
  (`Authorization: Bearer`) or by a web token from `POST /webrtc/token` (so a page can call
  without holding the key). In dev mode (no Twilio credentials) an offer without either may
  call the default assistant (the assistant file) only, as Twilio calls can; each such call is
  logged as a warning.
- The call runs in the same `CallSession` as a phone call, on a `WebRtcTransport`, and is
  recorded like one (`type: webCall`). Its events also go to the page over the data channel
  (`PageEvents`).
- Bad input is answered before anything runs: a malformed SDP 400, a wrong key or token 401,
  another tenant's assistant 404, more than `webrtc_max_calls_per_tenant` live web calls 429.
  With AVA_REDIS_URL the limit counts the tenant's web calls on every node (a slot per call in
  a Redis sorted set under `ava:webcalls:`, as control/call_slots.py does for phone calls).
  Every peer connection opened is closed and counted (`WebCalls.opened`/`closed`).
- `GET /webrtc/config` tells the page whether it is in dev mode and which ICE servers to use;
  `GET /dev/call[/{id}]` lists the dev scope's calls (no tenant) without a key, in dev mode only.
- `/web/` serves the page (`control/web`, plain HTML/JS, nothing fetched from elsewhere).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from aiortc import RTCIceServer
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from control.call_slots import LIVE_SLOT_SECONDS, CallSlots, LocalCallSlots, holding_slot
from control.calls import Refusal
from control.deps import StateDep, TenantDep, current_tenant
from control.errors import ApiError, not_found
from control.metrics import Metrics
from control.personal import personalize_for_call, record_personalized
from control.providers import provider_keys, resolve_tools
from control.recordings import CallRecording, recording_base_url
from control.settings import Settings
from control.sinks import FanOut
from control.state import AppState
from control.stream_token import InvalidToken, issue_token, verify_token
from control.webhooks import WebhookSender
from media.webrtc.audio import AUDIO_FORMAT
from media.webrtc.peer import WebRtcPeer
from media.webrtc.sdp import MAX_SDP_BYTES, OfferError
from storage import to_vapi
from storage.redis_limits import RedisCallSlots
from voice.assistant import Assistant
from voice.clock import MonotonicClock
from voice.errors import ConfigError
from voice.events import (
    BargeIn,
    CallEnded,
    CallEvent,
    CallStarted,
    MessageAdded,
    ProviderFailed,
    SpeechStarted,
    SpeechStopped,
    TranscriptReceived,
    TurnCompleted,
)
from voice.session import CallSession
from voice.types import EndedReason

__all__ = [
    "WEB_SLOTS_PREFIX",
    "PageEvents",
    "WebCalls",
    "install_webrtc",
    "page_event",
    "router",
    "web_call_slots_for",
]

log = logging.getLogger("ava.webrtc")
router = APIRouter(tags=["webrtc"])

WEB_DIR = Path(__file__).resolve().parent / "web"
DEV_ASSISTANT = "default"
_TOKEN_KIND = "web-call"
_DEV_SCOPE = "(dev)"  # the slot key of tenant-less calls
# Web calls' slots live apart from phone calls' (`ava:calls:`): each has its own limit.
WEB_SLOTS_PREFIX = "ava:webcalls:"


def web_call_slots_for(settings: Settings) -> CallSlots:
    """Every node's web calls in one count with Redis; this process's alone without it."""
    if settings.redis_url:
        return RedisCallSlots(settings.redis_url, prefix=WEB_SLOTS_PREFIX)
    return LocalCallSlots()


class OfferBody(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    sdp: str = Field(min_length=1, max_length=MAX_SDP_BYTES)
    type: Literal["offer"]
    assistant_id: str | None = Field(default=None, alias="assistantId", max_length=200)
    token: str | None = Field(default=None, max_length=4096)


class TokenBody(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    assistant_id: str = Field(alias="assistantId", min_length=1, max_length=200)


@dataclass(frozen=True, slots=True)
class _Caller:
    tenant_id: str | None  # None: the dev scope
    assistant_id: str | None
    assistant: Assistant

    @property
    def slot(self) -> str:
        return self.tenant_id or _DEV_SCOPE


class WebCalls:
    """The app's browser calls: per-tenant slots, each peer connection until it is closed, and
    the task each call runs in (cancelled and awaited when the app stops).

    `slots` counts this process's calls; the limit is enforced on `shared`, which counts the
    tenant's calls on every node when it is Redis-backed (member: the peer's id)."""

    def __init__(self, settings: Settings, shared: CallSlots | None = None) -> None:
        self.max_per_tenant = settings.webrtc_max_calls_per_tenant
        self.connect_timeout = settings.webrtc_connect_timeout_seconds
        self.ice_servers = [
            RTCIceServer(s.urls, s.username, s.credential) for s in settings.webrtc_ice_servers
        ]
        self.peers: dict[str, WebRtcPeer] = {}
        self.slots: Counter[str] = Counter()
        self.shared = shared if shared is not None else web_call_slots_for(settings)
        self.opened = 0
        self.closed = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def reserve(self, slot: str, pc_id: str) -> bool:
        # Lapses unless the call's task renews it (`_run_call`): a node that dies frees it.
        ttl = max(LIVE_SLOT_SECONDS, self.connect_timeout * 2)
        if not await self.shared.acquire(slot, pc_id, self.max_per_tenant, ttl):
            return False
        self.slots[slot] += 1
        return True

    async def release(self, slot: str, pc_id: str) -> None:
        self.slots[slot] -= 1
        if self.slots[slot] <= 0:
            del self.slots[slot]
        await self.shared.release(slot, pc_id)

    def open_peer(self, pc_id: str | None = None) -> WebRtcPeer:
        pc_id = pc_id or f"pc_{uuid.uuid4().hex}"
        peer = WebRtcPeer(pc_id, MonotonicClock(), self.ice_servers)
        self.peers[peer.pc_id] = peer
        self.opened += 1
        return peer

    async def close_peer(self, peer: WebRtcPeer, slot: str, grace: float = 1.0) -> None:
        try:
            await peer.close(grace)
        finally:
            if self.peers.pop(peer.pc_id, None) is not None:
                self.closed += 1
                await self.release(slot, peer.pc_id)

    def start(self, call: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(call, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """After the drain: whatever is left (calls still connecting) is cancelled and closed."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for peer in list(self.peers.values()):
            await peer.close(grace=0)
            self.peers.pop(peer.pc_id, None)
            self.closed += 1
        self.slots.clear()
        # Slots still held (no call ran on them) lapse by themselves in Redis.
        await self.shared.aclose()


def page_event(event: CallEvent) -> dict[str, Any] | None:
    """The JSON the page gets for a call event (None: not shown)."""
    if isinstance(event, CallStarted):
        return {"type": "call-started", "callId": event.call_id, "assistant": event.assistant}
    if isinstance(event, SpeechStarted | SpeechStopped):
        kind = "speech-started" if isinstance(event, SpeechStarted) else "speech-stopped"
        return {"type": kind, "at": round(event.at, 3)}
    if isinstance(event, TranscriptReceived):
        return {
            "type": "transcript",
            "role": "user",
            "text": event.text,
            "final": event.is_final,
            "at": round(event.at, 3),
        }
    if isinstance(event, MessageAdded):
        if event.role not in ("user", "bot"):
            return None
        return {
            "type": "message",
            "role": event.role,
            "text": event.content,
            "at": round(event.at, 3),
            "duration": round(event.duration, 3),
            "interrupted": event.interrupted,
        }
    if isinstance(event, TurnCompleted):
        latency = event.latency
        return {
            "type": "turn",
            "index": event.index,
            "user": event.user_text,
            "assistant": event.assistant_text,
            "interrupted": event.interrupted,
            "at": round(event.at, 3),
            "latencyMs": None
            if latency is None
            else {
                "voiceToVoice": round(latency.voice_to_voice * 1000, 1),
                "endpointing": round(latency.endpointing * 1000, 1),
                "stt": round(latency.stt * 1000, 1),
                "llm": round(latency.llm_ttft * 1000, 1),
                "tts": round(latency.tts_ttfb * 1000, 1),
                "server": round(latency.server * 1000, 1),
                "held": round(latency.held * 1000, 1),
            },
        }
    if isinstance(event, BargeIn):
        return {
            "type": "barge-in",
            "at": round(event.at, 3),
            "reactionMs": round((event.at - event.onset) * 1000, 1),
            "heard": event.heard_text,
        }
    if isinstance(event, ProviderFailed):
        return {
            "type": "provider-failed",
            "stage": event.stage,
            "provider": event.provider,
            "error": event.error,
        }
    if isinstance(event, CallEnded):
        return {
            "type": "call-ended",
            "endedReason": event.reason.value,
            "detail": event.detail,
            "at": round(event.at, 3),
        }
    return None


class PageEvents:
    """An `EventSink` for one call: its events, as JSON, to its page's data channel."""

    def __init__(self, peer: WebRtcPeer) -> None:
        self.peer = peer

    def emit(self, event: CallEvent) -> None:
        message = page_event(event)
        if message is not None:
            self.peer.send_event(message)


# --- authorization -------------------------------------------------------------------------------


def _assistant(record_assistant: Any, assistant_id: str) -> Assistant:
    try:
        assistant: Assistant = record_assistant()
    except ValidationError as exc:  # stored under an older, laxer schema
        raise ApiError(422, f"assistant {assistant_id} is no longer valid") from exc
    return assistant


async def _tenant_caller(state: AppState, tenant_id: str, assistant_id: str) -> _Caller:
    record = await state.stores.assistants.get(tenant_id, assistant_id)
    if record is None:
        raise not_found("assistant")
    return _Caller(tenant_id, assistant_id, _assistant(record.assistant, assistant_id))


async def _authorize(request: Request, state: AppState, body: OfferBody) -> _Caller:
    if body.token:
        claims = _web_token_claims(state, body.token)
        assistant_id = str(claims.get("assistant_id", ""))
        if body.assistant_id and body.assistant_id != assistant_id:
            raise ApiError(403, "this web token is for another assistant")
        return await _tenant_caller(state, str(claims.get("tenant_id", "")), assistant_id)
    if request.headers.get("authorization"):
        tenant_id = await current_tenant(request, state.stores)
        if not body.assistant_id:
            raise ApiError(422, ["assistantId: required with an API key"])
        return await _tenant_caller(state, tenant_id, body.assistant_id)
    if state.settings.dev_mode and body.assistant_id in (None, DEV_ASSISTANT):
        log.warning("DEV MODE: unauthenticated browser call on the default assistant")
        return _Caller(None, None, state.default_assistant)
    hint = " (without one, dev mode serves assistantId `default` only)"
    raise ApiError(
        401,
        "missing credentials: send `Authorization: Bearer <API key>` or a web token from "
        f"POST /webrtc/token{hint if state.settings.dev_mode else ''}",
    )


def _web_token_claims(state: AppState, token: str) -> dict[str, Any]:
    try:
        claims = verify_token(state.settings.signing_key(), token, now=time.time())
    except InvalidToken as exc:
        raise ApiError(401, f"invalid web token: {exc}") from exc
    if claims.get("kind") != _TOKEN_KIND:
        raise ApiError(401, "invalid web token: not a web-call token")
    return claims


# --- routes --------------------------------------------------------------------------------------


@router.post("/webrtc/offer")
async def offer(body: OfferBody, request: Request, state: StateDep) -> dict[str, str]:
    calls: WebCalls = request.app.state.webrtc
    caller = await _authorize(request, state, body)
    refused = _refused(state, request)
    if refused is not None:
        raise refused
    try:
        assistant = await resolve_tools(caller.assistant, caller.tenant_id, state.stores.tools)
        personal = await personalize_for_call(assistant, {})  # a browser has no number
        assistant = personal.assistant
        keys = await provider_keys(state.stores, state.settings, caller.tenant_id)
        # A browser call is wideband (16 kHz PCM16): an engine that only speaks telephone
        # audio is refused here, before a peer exists, rather than failing mid-call.
        engines = state.engines.for_assistant(assistant, keys).in_format(AUDIO_FORMAT)
    except ConfigError as exc:
        raise ApiError(422, f"the assistant cannot take calls: {exc}") from exc
    pc_id = f"pc_{uuid.uuid4().hex}"
    if not await calls.reserve(caller.slot, pc_id):
        raise ApiError(
            429,
            f"too many concurrent web calls for this tenant (limit {calls.max_per_tenant}); "
            "hang one up first",
        )
    peer = calls.open_peer(pc_id)
    call_id = f"call_{uuid.uuid4().hex}"
    metadata = {"type": "webCall", "pc_id": peer.pc_id}
    if caller.tenant_id is not None:
        metadata |= {"tenant_id": caller.tenant_id, "assistant_id": caller.assistant_id or ""}
    # The session's paced sends, timed for /metrics' frame lateness, as on the Twilio path.
    metrics: Metrics | None = getattr(request.app.state, "metrics", None)
    clock, transport = (
        metrics.pacing(peer.transport) if metrics is not None else (None, peer.transport)
    )
    recording = CallRecording.create(
        getattr(request.app.state, "recordings", None), call_id=call_id,
        tenant_id=caller.tenant_id, assistant=assistant, transport=transport,
        clock=clock or MonotonicClock(), metadata=metadata,
        base_url=recording_base_url(state, request.headers, request.url.scheme),
    )  # fmt: skip
    try:
        session = CallSession(
            call_id=call_id,
            assistant=assistant,
            transport=transport if recording is None else recording.transport,
            clock=clock,
            engines=engines,
            sink=FanOut(state.sink, PageEvents(peer)),
            metadata=metadata,
        )
        answer = await peer.answer(body.sdp)
        # Only a call that will run leaves a record of its variables (a refused offer none).
        await record_personalized(state, call_id, metadata, personal, None)
    except OfferError as exc:
        await calls.close_peer(peer, caller.slot, grace=0)
        raise ApiError(400, f"bad SDP offer: {exc}") from exc
    except BaseException:  # cancelled, or a bug: the peer must not outlive the request
        await calls.close_peer(peer, caller.slot, grace=0)
        raise
    webhooks: WebhookSender | None = getattr(request.app.state, "webhooks", None)
    run = _run_call(state, calls, peer, session, caller.slot, webhooks, recording)
    calls.start(run, name=f"web-{call_id}")
    log.info("web call %s: answered offer (peer %s)", call_id, peer.pc_id)
    return {"sdp": answer, "type": "answer", "pc_id": peer.pc_id}


_REFUSALS = {
    Refusal.DRAINING: "the server is not taking calls right now (draining)",
    Refusal.MAX_CALLS: "the server is at its call limit (AVA_MAX_CALLS)",
    Refusal.SATURATED: (
        "the server is overloaded (event-loop lag above AVA_SHED_LOOP_LAG_MS); try again shortly"
    ),
}


def _refused(state: AppState, request: Request) -> ApiError | None:
    """A 503 saying why this node takes no new call (CallManager.refusal), counted by reason."""
    refusal = state.calls.refusal()
    if refusal is not None:
        metrics: Metrics | None = getattr(request.app.state, "metrics", None)
        if metrics is not None:
            metrics.calls_refused.labels(reason=refusal.value).inc()
        return ApiError(503, _REFUSALS[refusal])
    if not state.ready:
        return ApiError(503, "the server is not taking calls right now (starting)")
    return None


async def _run_call(
    state: AppState,
    calls: WebCalls,
    peer: WebRtcPeer,
    session: CallSession,
    slot: str,
    webhooks: WebhookSender | None,
    recording: CallRecording | None = None,
) -> None:
    """Start the call once the media path is up (so the greeting is not sent into a void and
    no audio piles up before the track is pulled); close the peer whatever happens."""
    try:
        try:
            async with asyncio.timeout(calls.connect_timeout):
                connected = await peer.wait_connected()
        except TimeoutError:
            connected = False
        if not connected:
            log.warning("web call %s: the connection never came up", session.call_id)
            state.calls.reject(
                session.call_id,
                EndedReason.CUSTOMER_ENDED_CALL,
                "WebRTC connection not established",
                pc_id=peer.pc_id,
            )
            return
        if webhooks is not None:  # the assistant's server gets this call's messages
            webhooks.register(session.call_id, session.assistant)
        # Renewed while the call runs: a long call keeps its slot on every node's count.
        async with (
            holding_slot(calls.shared, slot, peer.pc_id),
            recording.running() if recording is not None else contextlib.nullcontext(),
        ):
            await state.calls.run(session)
    finally:
        await calls.close_peer(peer, slot)


@router.post("/webrtc/token")
async def web_token(body: TokenBody, tenant_id: TenantDep, state: StateDep) -> dict[str, Any]:
    """A short-lived token that lets a page call one of the tenant's assistants."""
    await _tenant_caller(state, tenant_id, body.assistant_id)
    now, ttl = time.time(), state.settings.webrtc_token_ttl_seconds
    claims = {"kind": _TOKEN_KIND, "tenant_id": tenant_id, "assistant_id": body.assistant_id}
    token = issue_token(state.settings.signing_key(), claims, now=now, ttl=ttl)
    expires = datetime.fromtimestamp(now + ttl, UTC).isoformat().replace("+00:00", "Z")
    return {"token": token, "assistantId": body.assistant_id, "expiresAt": expires}


@router.get("/webrtc/config")
async def web_config(
    request: Request, state: StateDep, token: Annotated[str | None, Query()] = None
) -> dict[str, Any]:
    """What the page needs before it makes an offer. ICE servers (TURN credentials included)
    are given in dev mode or to a caller with a key or a web token."""
    settings = state.settings
    allowed = settings.dev_mode
    if token:
        _web_token_claims(state, token)
        allowed = True
    elif request.headers.get("authorization"):
        await current_tenant(request, state.stores)
        allowed = True
    default = state.default_assistant
    return {
        "devMode": settings.dev_mode,
        "defaultAssistant": {"id": DEV_ASSISTANT, "name": default.name}
        if settings.dev_mode
        else None,
        "iceServers": [s.model_dump(exclude_none=True) for s in settings.webrtc_ice_servers]
        if allowed
        else [],
    }


def _dev_only(state: AppState) -> None:
    if not state.settings.dev_mode:
        raise ApiError(404, "not found (dev mode only: use GET /call with an API key)")


@router.get("/dev/call")
async def dev_calls(
    state: StateDep, limit: Annotated[int, Query(ge=1, le=100)] = 20
) -> list[dict[str, Any]]:
    """The dev scope's calls (made without a tenant), newest first: dev mode only."""
    _dev_only(state)
    page = await state.stores.calls.list_calls(None, limit=limit, details=True)
    return [to_vapi(call) for call in page.items]


@router.get("/dev/call/{call_id}")
async def dev_call(call_id: str, state: StateDep) -> dict[str, Any]:
    _dev_only(state)
    record = await state.stores.calls.get_call(None, call_id)
    if record is None:
        raise not_found("call")
    return to_vapi(record)


@router.get("/", include_in_schema=False)
async def home() -> RedirectResponse:
    return RedirectResponse("/web/")


def install_webrtc(app: FastAPI, settings: Settings) -> WebCalls:
    """Browser calls on `app`: the routes, the page at /web/, `app.state.webrtc`."""
    calls = WebCalls(settings)
    app.state.webrtc = calls
    if settings.dev_mode:
        log.warning(
            "DEV MODE: browser calls (POST /webrtc/offer) to the default assistant need no key "
            "and GET /dev/call lists its calls. Never expose this server publicly."
        )
    app.include_router(router)
    app.mount("/web", StaticFiles(directory=WEB_DIR, html=True), name="web")
    return calls
