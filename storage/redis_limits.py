"""Limits shared by every AVA process through Redis: per-API-key rate limits (token buckets)
and per-tenant concurrent calls (`RedisCallSlots`, see its docstring).

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

__all__ = ["RedisCallSlots", "RedisRateLimiter"]

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


# KEYS[1] the tenant's sorted set (member: call id, score: when its slot lapses); ARGV: call id,
# now, lapses-at, limit (-1: none), key ttl in seconds. Returns 1 if the call holds a slot.
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
local limit = tonumber(ARGV[4])
if limit >= 0 and not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  if redis.call('ZCARD', KEYS[1]) >= limit then
    return 0
  end
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""


class RedisCallSlots:
    """Each tenant's concurrent calls, counted across processes.

    One sorted set per tenant: a member per call holding a slot, scored with the time its slot
    lapses. Taking a slot (a Lua script: drop lapsed members, count, add) is atomic however many
    processes ask at once. A live call renews its slot (`acquire` again) well before it lapses;
    a process that dies stops renewing, so its calls' slots lapse instead of leaking forever.

    If Redis does not answer, the call is let through (logged once per outage): a limit that
    drops every call when Redis blips does more harm than the extra calls it would stop."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "ava:calls:",
        clock: Callable[[], float] = time.time,
        timeout: float = 0.25,
    ) -> None:
        self.prefix = prefix
        self._clock = clock
        self._redis = Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, decode_responses=True
        )
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._failing = False

    async def acquire(self, tenant_id: str, call_id: str, limit: int | None, ttl: float) -> bool:
        """Take (or renew) `call_id`'s slot for `ttl` seconds; False if the tenant already has
        `limit` calls (None: no limit, the call is only counted)."""
        now = self._clock()
        try:
            held = await self._acquire(
                keys=[self.prefix + tenant_id],
                args=[call_id, repr(now), repr(now + ttl), -1 if limit is None else limit,
                      math.ceil(ttl) + 1],
            )  # fmt: skip
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
            return True
        self._recovered()
        return bool(held)

    async def release(self, tenant_id: str, call_id: str) -> None:
        try:
            await self._redis.zrem(self.prefix + tenant_id, call_id)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)  # the slot lapses by itself

    async def count(self, tenant_id: str) -> int:
        key = self.prefix + tenant_id
        try:
            return int(await self._redis.zcount(key, f"({self._clock()!r}", "+inf"))
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
            return 0

    async def aclose(self) -> None:
        await self._redis.aclose()

    def _failed(self, exc: BaseException) -> None:
        if not self._failing:
            log.warning("call limits: Redis unavailable, not limiting: %r", exc)
        self._failing = True

    def _recovered(self) -> None:
        if self._failing:
            log.info("call limits: Redis is back")
            self._failing = False
