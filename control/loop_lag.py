"""Event-loop lag: how late this process runs a timer, and whether it is saturated.

Every call of this process shares one event loop. Past what a core can carry, every callback
waits in the ready queue, so every call's paced audio, STT and LLM streams degrade together
(the capacity benchmark at N=80 on one core: every call's voice-to-voice p50 at 3.4 s). A timer
due every `INTERVAL` seconds measures that wait directly: how long after its deadline it ran.

`LoopLag` is the sans-I/O core: fed (time, lag) samples, it says whether the node is saturated,
with hysteresis so the answer does not flap. `watch_loop_lag` is the thin task that feeds it;
`running_loop_lag` runs that task for a block. While saturated the node takes no new calls
(`control.calls.CallManager.refusal`); live calls are never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import statistics
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

__all__ = ["INTERVAL", "LagPolicy", "LoopLag", "running_loop_lag", "watch_loop_lag"]

log = logging.getLogger("ava.load")

# 20 samples a second: a sample costs a few microseconds, and a 2 s window holds enough of them.
INTERVAL = 0.05


@dataclass(frozen=True, slots=True)
class LagPolicy:
    """When lag means saturated. All in seconds.

    The statistic is the median lag over the last `window` seconds (at least the last
    `min_samples` samples): a loop past its capacity is late on every tick, one that only
    stalled once (a GC pause, one slow callback) is late on one, which the median ignores.
    `min_samples` keeps a single long stall, after which a 2 s window may hold one sample, from
    deciding alone; under heavy lag samples are sparse, and the last few still decide.
    """

    shed_above: float
    recover_below: float
    window: float = 2.0
    min_samples: int = 5
    # The median must stay under `recover_below` this long before new calls are taken again.
    recover_after: float = 5.0

    @classmethod
    def from_ms(cls, shed_ms: float) -> LagPolicy | None:
        """AVA_SHED_LOOP_LAG_MS: 0 turns shedding off; recovery at half the threshold."""
        if shed_ms <= 0:
            return None
        return cls(shed_above=shed_ms / 1000, recover_below=shed_ms / 2000)


class LoopLag:
    """Sans-I/O saturation detector. `observe(now, lag)` for each sample (`now` from one
    monotonic clock); `saturated` says whether new calls should go elsewhere. Without a policy
    it only keeps the samples and is never saturated."""

    def __init__(self, policy: LagPolicy | None) -> None:
        self.policy = policy
        self.saturated = False
        self._samples: deque[tuple[float, float]] = deque()
        self._calm_since: float | None = None

    def typical(self) -> float | None:
        """The window's median lag; None before there are enough samples to say."""
        if self.policy is None or len(self._samples) < self.policy.min_samples:
            return None
        return statistics.median(lag for _, lag in self._samples)

    def observe(self, now: float, lag: float) -> bool:
        """File one sample; True when it changed `saturated`."""
        policy = self.policy
        if policy is None:
            return False
        if self._samples and now < self._samples[-1][0]:
            # Only from a second feeder (a test injecting lag stamped ahead of the monitor):
            # the window is kept in time order.
            return False
        self._samples.append((now, lag))
        while len(self._samples) > policy.min_samples and self._samples[0][0] < now - policy.window:
            self._samples.popleft()
        typical = self.typical()
        if typical is None:
            return False
        if not self.saturated:
            if typical >= policy.shed_above:
                self.saturated, self._calm_since = True, None
                _log_change(policy, typical, saturated=True)
                return True
            return False
        if typical >= policy.recover_below:
            self._calm_since = None
            return False
        if self._calm_since is None:
            self._calm_since = now
        if now - self._calm_since >= policy.recover_after:
            self.saturated, self._calm_since = False, None
            _log_change(policy, typical, saturated=False)
            return True
        return False


def _log_change(policy: LagPolicy, typical: float, *, saturated: bool) -> None:
    """One line when the state changes, never one per refused call."""
    if saturated:
        log.warning(
            "event loop saturated: median lag %.0f ms >= %.0f ms; new calls are refused "
            "(sent to another node) until it stays under %.0f ms for %.0f s",
            typical * 1000,
            policy.shed_above * 1000,
            policy.recover_below * 1000,
            policy.recover_after,
        )
    else:
        log.info("event loop recovered: median lag %.0f ms; taking new calls", typical * 1000)


async def watch_loop_lag(
    lag: LoopLag, record: Callable[[float], None], interval: float = INTERVAL
) -> None:
    """Wake on an absolute schedule (every `interval` from the start, so one late wake does not
    shift the rest) and feed how late each wake was to `lag` and to `record` (the metrics)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time()
    while True:
        deadline += interval
        await asyncio.sleep(max(0.0, deadline - loop.time()))
        now = loop.time()
        late = max(0.0, now - deadline)
        record(late)
        lag.observe(now, late)
        if late >= interval:
            # Ticks missed while the loop was busy are not made up in a burst: the next is the
            # first one of the schedule still ahead.
            deadline += (late // interval) * interval


@contextlib.asynccontextmanager
async def running_loop_lag(
    lag: LoopLag, record: Callable[[float], None], interval: float = INTERVAL
) -> AsyncIterator[LoopLag]:
    """The lag monitor's task for the block (measured even with shedding off, for /metrics)."""
    task = asyncio.create_task(watch_loop_lag(lag, record, interval), name="ava-loop-lag")
    try:
        yield lag
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
