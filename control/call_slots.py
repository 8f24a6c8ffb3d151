"""Per-tenant concurrent phone calls: a slot per call, taken when Twilio asks, held while live.

The voice webhook takes a slot for the call it is about to accept (over the tenant's limit, the
caller hears `BUSY_SAY` and the attempt is recorded); the slot lapses after the stream token's
lifetime unless the media stream arrives and keeps it, renewing it every `RENEW_SECONDS` while
the call runs. A slot is released when the call ends; one whose process died lapses by itself.

The limit is the tenant's own (`ava tenant set-limit`) or the operator's `tenant_max_calls`.
With AVA_REDIS_URL the slots are shared by every process (`storage.redis_limits.RedisCallSlots`);
without it each process counts its own calls (`LocalCallSlots`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Protocol

from control.settings import Settings
from storage.redis_limits import RedisCallSlots

__all__ = [
    "BUSY_SAY",
    "LIVE_SLOT_SECONDS",
    "RENEW_SECONDS",
    "TENANT_LIMIT_REASON",
    "CallSlots",
    "LocalCallSlots",
    "call_slots_for",
    "holding_slot",
]

BUSY_SAY = "Sorry, all our lines are busy right now. Please try again later. Goodbye."
# Vapi's `call.start.error-*` family: the call was refused before it started.
TENANT_LIMIT_REASON = "call.start.error-tenant-concurrency-limit"
LIVE_SLOT_SECONDS = 60.0  # a live call's slot lapses this long after its last renewal
RENEW_SECONDS = 20.0


class CallSlots(Protocol):
    async def acquire(
        self, tenant_id: str, call_id: str, limit: int | None, ttl: float
    ) -> bool: ...

    async def release(self, tenant_id: str, call_id: str) -> None: ...

    async def count(self, tenant_id: str) -> int: ...

    async def aclose(self) -> None: ...


class LocalCallSlots:
    """`CallSlots` for one process (no Redis): the same semantics as `RedisCallSlots`."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._slots: dict[str, dict[str, float]] = {}  # tenant → call id → lapses at

    async def acquire(self, tenant_id: str, call_id: str, limit: int | None, ttl: float) -> bool:
        now = self._clock()
        slots = self._live(tenant_id, now)
        if limit is not None and call_id not in slots and len(slots) >= limit:
            return False
        slots[call_id] = now + ttl
        self._slots[tenant_id] = slots
        return True

    async def release(self, tenant_id: str, call_id: str) -> None:
        slots = self._slots.get(tenant_id)
        if slots is not None:
            slots.pop(call_id, None)
            if not slots:
                del self._slots[tenant_id]

    async def count(self, tenant_id: str) -> int:
        return len(self._live(tenant_id, self._clock()))

    async def aclose(self) -> None:
        self._slots.clear()

    def _live(self, tenant_id: str, now: float) -> dict[str, float]:
        slots = self._slots.get(tenant_id, {})
        return {call: until for call, until in slots.items() if until > now}


def call_slots_for(settings: Settings) -> CallSlots:
    if settings.redis_url:
        return RedisCallSlots(settings.redis_url)
    return LocalCallSlots()


@asynccontextmanager
async def holding_slot(
    slots: CallSlots, tenant_id: str, call_id: str, *, renew_every: float = RENEW_SECONDS
) -> AsyncIterator[None]:
    """Hold `call_id`'s slot (counted even over the limit: the call is already answered) for
    the block, renewing it; released when the block exits however it exits."""
    ttl = max(LIVE_SLOT_SECONDS, renew_every * 3)
    await slots.acquire(tenant_id, call_id, None, ttl)

    async def renew() -> None:
        while True:
            await asyncio.sleep(renew_every)
            await slots.acquire(tenant_id, call_id, None, ttl)

    try:
        async with asyncio.TaskGroup() as group:
            renewing = group.create_task(renew(), name=f"ava-slot-{call_id}")
            try:
                yield
            finally:
                renewing.cancel()
    finally:
        await slots.release(tenant_id, call_id)
