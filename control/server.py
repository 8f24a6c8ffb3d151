"""uvicorn with a call-aware drain.

uvicorn's own shutdown closes every websocket (1012) before the app's lifespan shutdown runs, so a
plain SIGTERM would cut live calls off mid-sentence and record them as the caller hanging up.
Here the first SIGTERM/SIGINT first drains: readiness goes false, new calls are refused, live
calls get `drain_seconds` to end by themselves, the rest are hung up with
`call.in-progress.error-server-shutdown`; only then does uvicorn shut down. A second signal
skips the wait.
"""

from __future__ import annotations

import asyncio
import logging
from types import FrameType

import uvicorn

from control.calls import CallManager

__all__ = ["DrainingServer"]

log = logging.getLogger("ava")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, calls: CallManager, drain_seconds: float) -> None:
        super().__init__(config)
        self.calls = calls
        self.drain_seconds = drain_seconds
        self._drain_task: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain_task is not None:  # a second signal: stop waiting
            super().handle_exit(sig, frame)
            return
        log.info("signal %s: draining %d live calls", sig, len(self.calls.live))
        self._drain_task = asyncio.get_running_loop().create_task(self.drain())

    async def drain(self) -> None:
        try:
            await self.calls.drain(self.drain_seconds)
        finally:
            self.should_exit = True
