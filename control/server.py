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
from control.settings import Settings
from control.stores import open_stores
from storage import NotMigrated
from storage.keys import SecretKeyError

__all__ = ["DrainingServer", "startup_refusal"]

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


async def startup_refusal(settings: Settings) -> str | None:
    """Why the server must not start with `settings`: no AVA_SECRET_KEY outside dev mode, a key
    the database was not set up with, an unmigrated database. Checked before the app is built,
    so the operator gets one line saying what to fix, not a traceback after models load."""
    try:
        stores = await open_stores(settings)
    except (NotMigrated, SecretKeyError) as exc:
        return str(exc)
    await stores.close()
    return None
