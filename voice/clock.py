"""Injected time: every timing decision in the call loop reads a `Clock`.

Tests drive the turn machine and pacing with `voice.testing.FakeClock`; production uses the
monotonic clock. Deadlines are absolute (seconds on the clock's own timeline) so that pacing never
accumulates sleep error.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

__all__ = ["Clock", "LoopClock", "MonotonicClock"]


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic timeline."""
        ...

    async def sleep_until(self, deadline: float) -> None:
        """Return at (or just after) `deadline`; immediately if it has passed."""
        ...


class MonotonicClock:
    def now(self) -> float:
        return time.monotonic()

    async def sleep_until(self, deadline: float) -> None:
        delay = deadline - time.monotonic()
        # sleep(0) still yields, which keeps a busy producer from starving the loop.
        await asyncio.sleep(delay if delay > 0 else 0)


class LoopClock:
    """The running event loop's own time: under `voice.testing.VirtualTimeLoop` a whole call
    runs in virtual time, faster than real time, with every timer, sleep and timeout agreeing."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep_until(self, deadline: float) -> None:
        delay = deadline - asyncio.get_running_loop().time()
        await asyncio.sleep(delay if delay > 0 else 0)
