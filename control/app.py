"""The FastAPI application: built from `Settings`, engines loaded once in the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response

from control.call_costs import PricedEvents
from control.call_slots import call_slots_for
from control.calls import CallManager
from control.email_summaries import email_summaries, running_emails
from control.engines import EngineHub, EngineSource
from control.errors import install_error_handlers
from control.listen import bind_listen, running_listen
from control.listen import router as listen_router
from control.live_control import running_control
from control.loop_lag import LagPolicy, LoopLag, running_loop_lag
from control.metrics import Metrics
from control.middleware import install_operations
from control.orphans import running_node
from control.post_call import post_call_analyzer, running_analysis
from control.recordings import open_recordings
from control.recordings import router as recordings_router
from control.routes import api_router
from control.routes.org import router as org_router
from control.scheduling import running_scheduler
from control.settings import Settings
from control.sinks import FanOut
from control.state import AppState
from control.stores import Stores, open_stores
from control.twilio_routes import router as twilio_router
from control.twilio_status import router as twilio_status_router
from control.voicemail import router as voicemail_router
from control.webhooks import WebhookSender, running_webhooks
from control.webrtc_routes import install_webrtc
from storage import CallRecorder, NotMigrated, display_url
from storage.keys import SecretKeyError
from voice.assistant import load_assistant

__all__ = ["create_app"]

log = logging.getLogger("ava")

_FLUSH_SECONDS = 10.0


def create_app(settings: Settings, *, engines: EngineSource | None = None) -> FastAPI:
    """`engines` may be passed in (tests share one set across apps); otherwise loaded here."""
    assistant = load_assistant(settings.assistant_file)
    prices = settings.price_table()  # built once; each call's costs are priced with it
    # Outside the lifespan so the server's signal handler can drain calls before uvicorn
    # closes their websockets (control/server.py).
    # Fed by its task in the lifespan; its verdict refuses new calls (CallManager.refusal).
    loop_lag = LoopLag(LagPolicy.from_ms(settings.shed_loop_lag_ms))
    calls = CallManager(settings.max_calls, saturated=lambda: loop_lag.saturated)
    metrics = Metrics(live_calls=lambda: len(calls.live), saturated=lambda: loop_lag.saturated)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The database first: an unmigrated one refuses startup (NotMigrated says to run
        # `ava db upgrade`) before minutes go into loading speech models.
        try:
            stores = await open_stores(settings)
        except (NotMigrated, SecretKeyError) as exc:
            log.error("refusing to start: %s", exc)
            raise
        try:
            # Webhooks pending from a previous run are claimed and sent as soon as this starts.
            sender = WebhookSender.from_settings(settings, stores.deliveries)
            async with (
                running_loop_lag(loop_lag, metrics.loop_lag.observe),
                running_node(settings, stores) as nodes,
                running_control(settings, nodes.node_id, calls) as live_control,
                # After the orphan sweep: spooled recordings of its calls are kept at startup.
                open_recordings(settings, stores, metrics) as recordings,
                running_listen(settings, nodes.node_id) as listen,
                _recording(stores, nodes.node_id) as recorder,
                running_webhooks(sender) as webhooks,
                # Outside the analysis: at shutdown its release hands the last mails their summary.
                running_emails(
                    email_summaries(settings, stores, calls.live, recorder, metrics)
                ) as emails,
                # Inside the sender: at shutdown the last reports are released before it stops.
                running_analysis(
                    post_call_analyzer(settings, stores, calls.live, recorder, metrics)
                ) as analyzer,
            ):
                app.state.webhooks = webhooks  # the media route registers each call's server
                app.state.live_control = live_control  # POST /call/{id}/control, any node
                app.state.node_id = nodes.node_id  # what the calls this node places carry
                webhooks.hold_reports = analyzer.hold  # end-of-call-reports wait for analysis
                emails.hold_analysis = analyzer.hold  # so do e-mail summaries (notificationPlan)
                app.state.analysis = analyzer
                app.state.recordings = recordings  # call recordings (control/recordings.py)
                app.state.listen = listen  # live listening (control/listen.py)
                bind_listen(recordings, listen)  # calls are tapped where they are recorded
                hub: EngineSource = (
                    engines if engines is not None else await EngineHub.load_async(settings)
                )
                # Priced in front of every listener: the report and the record get the same costs.
                sink = PricedEvents(
                    FanOut(calls, recorder, metrics, analyzer, emails, webhooks), prices, calls.live
                )
                state = AppState(settings, hub, calls, assistant, stores, sink)
                async with _serving(app, state, owns_engines=engines is None):
                    yield
        finally:
            await stores.close()
            if app.state.limiter is not None:
                await app.state.limiter.aclose()
            await app.state.call_slots.aclose()
            held = getattr(app.state, "held_assistants", None)
            if held is not None:
                await held.aclose()

    @asynccontextmanager
    async def _serving(app: FastAPI, state: AppState, owns_engines: bool) -> AsyncIterator[None]:
        hub = state.engines
        state.assistants["default"] = assistant
        app.state.ava = state
        if settings.dev_mode:
            log.warning(
                "DEV MODE: no TWILIO_AUTH_TOKEN set, so Twilio webhooks and media streams are "
                "NOT signature-checked and /dev/calls is open. Never expose this server publicly."
            )
        await hub.warm(assistant)
        state.ready = True
        log.info("serving assistant %r from %s", assistant.name, settings.assistant_file)
        try:
            # Scheduled and batch calls (POST /call) are placed by every serving node.
            node_id = app.state.node_id
            async with running_scheduler(state, app.state.call_slots, node_id) as sched:
                app.state.scheduler = sched
                yield
        finally:
            state.ready = False
            await state.calls.drain(settings.drain_seconds)
            await app.state.webrtc.aclose()  # browser calls still connecting
            if isinstance(hub, EngineHub):
                # Even a hub passed in: its pool belongs to this app's loop (rebuilt on reuse).
                await hub.aclose_http()
            if owns_engines:
                hub.close()

    app = FastAPI(title="AVA", version="0.1.0", lifespan=lifespan)
    app.state.calls = calls
    app.state.loop_lag = loop_lag
    app.state.call_slots = call_slots_for(settings)  # per-tenant concurrent phone calls
    install_error_handlers(app)
    install_operations(app, settings, metrics)
    app.include_router(twilio_router)
    app.include_router(twilio_status_router)
    app.include_router(voicemail_router)  # Twilio's answering-machine detection results
    app.include_router(api_router)
    app.include_router(recordings_router)
    app.include_router(org_router)  # GET/PATCH /org: the tenant's own settings
    app.include_router(listen_router)  # monitor.listenUrl: /call/{id}/listen, any node
    install_webrtc(app, settings)  # /webrtc/*, the page at /web/

    @app.get("/livez")
    async def livez() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request, response: Response) -> dict[str, Any]:
        state: AppState = request.app.state.ava
        # Ready means a new call would be taken (one decision: CallManager.refusal), so a
        # balancer or Kubernetes stops sending work while this node drains, is full or saturated.
        refusal = state.calls.refusal()
        ready = state.ready and refusal is None
        response.status_code = 200 if ready else 503
        body: dict[str, Any] = {"ready": ready, "liveCalls": len(state.calls.live)}
        if not ready:
            body["reason"] = refusal.value if refusal is not None else "starting"
        return body

    @app.get("/dev/calls/{key}")
    async def dev_call(key: str, request: Request) -> dict[str, Any]:
        """The in-memory call record, for `ava call` in dev mode only."""
        state: AppState = request.app.state.ava
        record = state.calls.find(key) if state.settings.dev_mode else None
        # Unauthenticated, so never a tenant's call: those are at GET /call/{id}, behind a key.
        if record is None or record.metadata.get("tenant_id"):
            raise HTTPException(404, "no such call")
        return record.to_json()

    return app


@asynccontextmanager
async def _recording(stores: Stores, node_id: str) -> AsyncIterator[CallRecorder]:
    """The call recorder's writer task, for the app's lifetime; flushed before it stops.
    Every call it records carries `node_id`, so only a dead node's calls are ever orphans."""
    log.info("call records in %s (node %s)", display_url(stores.engine.url), node_id)
    recorder = CallRecorder(stores.calls, node_id=node_id)
    writer = asyncio.create_task(recorder.run(), name="ava-call-recorder")
    try:
        yield recorder
    finally:
        try:
            # After the drain: the last calls' CallEnded events are queued; write them.
            async with asyncio.timeout(_FLUSH_SECONDS):
                await recorder.flush()
        except (TimeoutError, RuntimeError):
            log.error("call recorder did not flush; %d events unwritten", recorder.dropped)
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
