"""Work that follows a call's end (its analysis, its e-mail): one bounded job per call, all run in
one TaskGroup for the app's lifetime.

A sink's `emit` must never block nor raise, so it only `start`s a job; the job is the boundary of
that call's work (a bug in it must not end the TaskGroup, and with it every other call's job). At
shutdown `running_jobs` gives the jobs still running `grace_seconds`, then cancels them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any, Generic, TypeVar

__all__ = ["CallJobs", "running_jobs"]

log = logging.getLogger("ava.jobs")

J = TypeVar("J")


class CallJobs(Generic[J]):
    def __init__(self, name: str, max_jobs: int) -> None:
        self.name = name
        self.max_jobs = max_jobs
        self._jobs: dict[str, J] = {}
        self._tasks: asyncio.TaskGroup | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self.started = asyncio.Event()  # run() is taking jobs
        self.skipped_busy = 0

    @property
    def running(self) -> int:
        return len(self._jobs)

    @property
    def accepting(self) -> bool:
        return self._tasks is not None

    def _room_for(self, call_id: str) -> bool:
        """Bounded: past `max_jobs` in flight, the call's job is skipped (counted, logged)."""
        if len(self._jobs) < self.max_jobs:
            return True
        self.skipped_busy += 1
        log.error("call %s: no %s, %d already running", call_id, self.name, self.max_jobs)
        return False

    def _start(self, call_id: str, job: J, work: Coroutine[Any, Any, None]) -> None:
        assert self._tasks is not None
        self._jobs[call_id] = job
        self._idle.clear()
        self._tasks.create_task(self._guarded(call_id, work), name=f"ava-{self.name}-{call_id}")

    async def _guarded(self, call_id: str, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except Exception:
            log.exception("call %s: the %s failed", call_id, self.name)
        finally:
            self._jobs.pop(call_id, None)
            if not self._jobs:
                self._idle.set()

    async def run(self) -> None:
        """Run jobs until cancelled (then the running ones are cancelled too)."""
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            self.started.set()
            try:
                await asyncio.Event().wait()
            finally:
                self._tasks = None

    async def idle(self) -> None:
        """Wait until no job is running."""
        await self._idle.wait()


@asynccontextmanager
async def running_jobs(jobs: CallJobs[Any], grace_seconds: float) -> AsyncIterator[None]:
    """`jobs` running for the app's lifetime (taking jobs before the first call can end); at the
    end, the ones still running get `grace_seconds`, then are cancelled."""
    task = asyncio.create_task(jobs.run(), name=f"ava-{jobs.name}")
    await jobs.started.wait()
    try:
        yield
    finally:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace_seconds):
                await jobs.idle()
        if jobs.running:
            log.error("%d %s jobs cut short: the server stopped", jobs.running, jobs.name)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
