"""The FastAPI application: built from `Settings`, engines loaded once in the lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response

from control.calls import CallManager
from control.engines import EngineHub, EngineSource
from control.settings import Settings
from control.state import AppState
from control.twilio_routes import router as twilio_router
from voice.assistant import load_assistant

__all__ = ["create_app"]

log = logging.getLogger("ava")


def create_app(settings: Settings, *, engines: EngineSource | None = None) -> FastAPI:
    """`engines` may be passed in (tests share one set across apps); otherwise loaded here."""
    assistant = load_assistant(settings.assistant_file)
    # Outside the lifespan so the server's signal handler can drain calls before uvicorn
    # closes their websockets (control/server.py).
    calls = CallManager(settings.max_calls)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        hub: EngineSource = engines if engines is not None else await EngineHub.load_async(settings)
        state = AppState(settings, hub, calls, assistant)
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
            yield
        finally:
            state.ready = False
            await state.calls.drain(settings.drain_seconds)
            if engines is None:
                hub.close()

    app = FastAPI(title="AVA", version="0.1.0", lifespan=lifespan)
    app.state.calls = calls
    app.include_router(twilio_router)

    @app.get("/livez")
    async def livez() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request, response: Response) -> dict[str, Any]:
        state: AppState = request.app.state.ava
        ready = state.ready and not state.calls.draining
        response.status_code = 200 if ready else 503
        return {"ready": ready, "liveCalls": len(state.calls.live)}

    @app.get("/dev/calls/{key}")
    async def dev_call(key: str, request: Request) -> dict[str, Any]:
        """The in-memory call record, for `ava call` in dev mode only."""
        state: AppState = request.app.state.ava
        record = state.calls.find(key) if state.settings.dev_mode else None
        if record is None:
            raise HTTPException(404, "no such call")
        return record.to_json()

    return app
