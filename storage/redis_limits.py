"""Token buckets in Redis, shared by every AVA process: per-API-key rate limits across nodes.

One hash per key (`tokens`, `at`), updated by a Lua script so the refill-and-take is atomic
however many processes ask at once. The arithmetic is `control.limits.take`'s. Time comes from
the caller (wall clock by default, so processes on NTP-synced hosts agree; a host a little
ahead or behind only shifts its refill by that much, and a clock stepping back refills nothing).
Idle buckets expire once they would be full again, so Redis holds only active keys.

If Redis cannot answer within `timeout` seconds the request is let through (`on_error` is told):
a rate limiter that takes the API down with it when Redis blips does more harm than the burst
it would have stopped.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

__all__ = ["RedisRateLimiter"]

log = logging.getLogger("ava.limits")

# KEYS[1] bucket; ARGV: rate, burst, now, ttl_ms. Returns the wait as a string (Redis would
# truncate a Lua number to an integer).
_TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil or at == nil then
  tokens = burst
  at = now
end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
at = math.max(at, now)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens),
           'at', string.format('%.17g', at))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return string.format('%.17g', wait)
"""


class RedisRateLimiter:
    def __init__(
        self,
        url: str,
        rate: float,
        burst: int,
        *,
        prefix: str = "ava:ratelimit:",
        clock: Callable[[], float] = time.time,
        timeout: float = 0.25,
        on_error: Callable[[Exception], None] | None = None,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate must be > 0 and burst >= 1, got {rate} and {burst}")
        self.rate = rate
        self.burst = burst
        self.prefix = prefix
        self._clock = clock
        self._on_error = on_error
        # Connects lazily, on the first request; a short timeout bounds what a stuck Redis
        # adds to every API call.
        self._redis = Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, decode_responses=True
        )
        self._take = self._redis.register_script(_TAKE)
        # Once the bucket would be full again its state is the default: let Redis forget it.
        self._ttl_ms = math.ceil(burst / rate * 1000) + 1000
        self._failing = False

    async def acquire(self, key: str) -> float:
        try:
            wait = await self._take(
                keys=[self.prefix + key],
                args=[repr(self.rate), self.burst, repr(self._clock()), self._ttl_ms],
            )
        except (RedisError, OSError, TimeoutError) as exc:
            if not self._failing:  # once per outage, not once per request
                log.warning("rate limiter: Redis unavailable, not limiting: %r", exc)
            self._failing = True
            if self._on_error is not None:
                self._on_error(exc)
            return 0.0
        if self._failing:
            log.info("rate limiter: Redis is back")
            self._failing = False
        return float(wait)

    async def aclose(self) -> None:
        await self._redis.aclose()
