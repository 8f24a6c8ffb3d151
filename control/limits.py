"""Per-API-key rate limits: a token bucket per key, in this process or shared through Redis.

A bucket holds up to `burst` tokens and refills at `rate` tokens a second; each request takes
one. A request that finds no token is refused with the seconds until one is there (the 429's
`Retry-After`). The in-process limiter is exact for one process; with several processes behind
a load balancer each would allow the full rate, so `AVA_REDIS_URL` moves the buckets to Redis
(`storage.redis_limits`), where every process draws from the same one.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Bucket", "LocalRateLimiter", "RateLimiter", "take"]


class RateLimiter(Protocol):
    async def acquire(self, key: str) -> float:
        """Take a token from `key`'s bucket: 0.0 if granted, else the seconds until one is."""
        ...

    async def aclose(self) -> None: ...


@dataclass(slots=True)
class Bucket:
    tokens: float
    at: float  # when `tokens` was last brought up to date


def take(bucket: Bucket, now: float, rate: float, burst: float) -> float:
    """Refill `bucket` to `now` and take one token: 0.0, or the seconds until a token is there.

    The Lua script in `storage.redis_limits` is this same arithmetic; keep them in step.
    """
    # A clock that stepped back refills nothing rather than draining the bucket.
    elapsed = max(0.0, now - bucket.at)
    bucket.tokens = min(burst, bucket.tokens + elapsed * rate)
    bucket.at = max(bucket.at, now)
    if bucket.tokens >= 1.0:
        bucket.tokens -= 1.0
        return 0.0
    return (1.0 - bucket.tokens) / rate


class LocalRateLimiter:
    """Buckets in this process's memory, one per key, the least recently used dropped past
    `max_keys` (a dropped key comes back with a full bucket, which only ever errs generous)."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate must be > 0 and burst >= 1, got {rate} and {burst}")
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, Bucket] = OrderedDict()

    async def acquire(self, key: str) -> float:
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = Bucket(self.burst, now)
            while len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return take(bucket, now, self.rate, self.burst)

    async def aclose(self) -> None:
        return None
