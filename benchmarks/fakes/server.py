"""What every fake shares: running an ASGI app on loopback, the fault vocabulary, test signals.

`serve(app)` runs the app under uvicorn inside the current event loop on 127.0.0.1 with a free
port and yields its base URL; leaving the block stops the server. Faults are injected per fake
through its config; `FaultSwitch` applies one to the first N connections or requests only.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from enum import StrEnum

import numpy as np
import uvicorn
from starlette.types import ASGIApp

from media.g711 import pcm16_to_ulaw

__all__ = [
    "REJECT_STATUS",
    "Fault",
    "FaultSwitch",
    "serve",
    "speech_like_pcm16",
    "speech_like_ulaw",
    "ws_url",
]


class Fault(StrEnum):
    UNAUTHORIZED = "unauthorized"  # reject with 401 (as a wrong key would)
    RATE_LIMITED = "rate-limited"  # reject with 429
    SERVER_ERROR = "server-error"  # reject with 500
    STALL = "stall"  # accept, then stop answering (the connection stays open)
    GARBAGE = "garbage"  # send a frame or SSE event that is not JSON
    DROP = "drop"  # end the connection without a close frame / mid-body
    BAD_CLOSE = "bad-close"  # WebSocket fakes: close with an unexpected code


REJECT_STATUS = {Fault.UNAUTHORIZED: 401, Fault.RATE_LIMITED: 429, Fault.SERVER_ERROR: 500}


class FaultSwitch:
    """Hands out `fault` to the first `count` callers (all of them when `count` is None)."""

    def __init__(self) -> None:
        self.used = 0

    def take(self, fault: Fault | None, count: int | None) -> Fault | None:
        if fault is None or (count is not None and self.used >= count):
            return None
        self.used += 1
        return fault


@asynccontextmanager
async def serve(app: ASGIApp, *, startup_timeout: float = 10.0) -> AsyncIterator[str]:
    """Run `app` on 127.0.0.1:<free port>; yields "http://127.0.0.1:<port>"."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        log_level="warning",
        lifespan="off",
        ws="websockets-sansio",
        # a fake holding a stalled stream must not hold the test up at shutdown
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(), name="fake-server")
    try:
        async with asyncio.timeout(startup_timeout):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("fake server exited during startup")
                await asyncio.sleep(0.005)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        try:
            await asyncio.wait_for(task, 10)
        finally:
            if not task.done():
                task.cancel()


def ws_url(base_url: str) -> str:
    """The ws:// form of a base URL from `serve()`."""
    return "ws" + base_url.removeprefix("http")


def speech_like_pcm16(
    seconds: float, rate: int, *, pitch: float = 140.0, level: float = 0.3, phase: int = 0
) -> bytes:
    """A voiced, syllable-modulated signal (a few harmonics of `pitch` under a 4 Hz envelope).

    Speech-like enough to exercise energy detectors and resamplers; `phase` continues the
    envelope across calls so consecutive pieces join without clicks.
    """
    n = max(int(round(seconds * rate)), 0)
    t = (np.arange(n) + phase) / rate
    voice = sum(np.sin(2 * math.pi * pitch * k * t) / k for k in (1, 2, 3))
    envelope = 0.55 + 0.45 * np.sin(2 * math.pi * 4.0 * t)
    pcm = np.clip(level * 32767 * envelope * voice / 1.5, -32768, 32767).astype("<i2")
    return pcm.tobytes()


def speech_like_ulaw(seconds: float, *, pitch: float = 140.0, phase: int = 0) -> bytes:
    return pcm16_to_ulaw(speech_like_pcm16(seconds, 8000, pitch=pitch, phase=phase))
