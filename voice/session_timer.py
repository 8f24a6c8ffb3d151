"""The session loop's one timer, armed for the earliest deadline.

Split from `voice.session` because the timer handle and the time it is armed for are state of
their own: the session computes its deadline, this keeps one loop timer for it and, when it
fires, wakes the loop (which then checks every deadline).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

__all__ = ["RECHECK_SECONDS", "LoopTimer"]

RECHECK_SECONDS = 0.02  # one frame


class LoopTimer:
    def __init__(self, on_fire: Callable[[], None]) -> None:
        self._on_fire = on_fire
        self._handle: asyncio.TimerHandle | None = None
        self._at = math.inf

    def arm(self, now: float, deadline: float) -> None:
        """One loop timer for the earliest deadline. A later deadline keeps the armed timer
        (it fires early, finds nothing due and re-arms): no re-arming on every frame."""
        # A deadline already passed is one the turn machine keeps open until its next input
        # (it has been ticked): look again shortly rather than spin.
        deadline = max(deadline, now + RECHECK_SECONDS)
        if deadline >= self._at and self._handle is not None:
            return
        if self._handle is not None:
            self._handle.cancel()
        self._at = deadline
        delay = deadline - now
        self._handle = asyncio.get_running_loop().call_later(delay, self._fired)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()

    def _fired(self) -> None:
        self._handle = None
        self._at = math.inf
        self._on_fire()
