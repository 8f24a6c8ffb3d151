"""Circuit breakers: a provider that keeps failing is skipped quickly for new turns.

Pure state machines on explicit time (the caller passes `now`), one per provider key, shared by
every call of the process through a `BreakerBoard`:

    closed ──N consecutive failures──► open ──cool-down──► half-open ──success──► closed
                                         ▲                     │
                                         └──────failure────────┘

Half-open admits one trial at a time; its outcome closes or re-opens the breaker.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["BreakerBoard", "BreakerState", "CircuitBreaker"]


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclass(slots=True)
class CircuitBreaker:
    failure_threshold: int = 3
    cool_down: float = 30.0
    failures: int = 0  # consecutive
    opened_at: float | None = None
    trial_at: float | None = None  # a half-open trial is running since then

    def __post_init__(self) -> None:
        if self.failure_threshold < 1 or self.cool_down <= 0:
            raise ValueError("failure_threshold must be >= 1 and cool_down positive")

    def state(self, now: float) -> BreakerState:
        if self.opened_at is None:
            return BreakerState.CLOSED
        if now - self.opened_at >= self.cool_down:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def allow(self, now: float) -> bool:
        """May a new attempt use this provider? Half-open admits one trial per cool-down."""
        state = self.state(now)
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN:
            return False
        if self.trial_at is not None and now - self.trial_at < self.cool_down:
            return False  # a trial is already out; its outcome decides
        self.trial_at = now
        return True

    def record_success(self, now: float) -> None:
        self.failures = 0
        self.opened_at = None
        self.trial_at = None

    def record_failure(self, now: float) -> None:
        self.failures += 1
        if self.opened_at is not None or self.failures >= self.failure_threshold:
            self.opened_at = now  # (re-)open: a failed half-open trial restarts the cool-down
            self.trial_at = None


class BreakerBoard:
    """One breaker per provider key (e.g. "llm/openai/gpt-4o-mini"), created on first use."""

    def __init__(self, failure_threshold: int = 3, cool_down: float = 30.0) -> None:
        CircuitBreaker(failure_threshold, cool_down)  # validate once, here
        self.failure_threshold = failure_threshold
        self.cool_down = cool_down
        self._breakers: dict[str, CircuitBreaker] = {}

    def get(self, key: str) -> CircuitBreaker:
        breaker = self._breakers.get(key)
        if breaker is None:
            breaker = CircuitBreaker(self.failure_threshold, self.cool_down)
            self._breakers[key] = breaker
        return breaker

    def states(self, now: float) -> dict[str, BreakerState]:
        return {key: breaker.state(now) for key, breaker in self._breakers.items()}
