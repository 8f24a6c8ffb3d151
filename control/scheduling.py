"""Calls placed later: Vapi's `schedulePlan` and `customers[]` batches, durable and shared.

`POST /call` with a `schedulePlan {earliestAt, latestAt}`, or with `customers[]` (a batch: one
call per customer), stores each call as `scheduled` with the time it may be placed; nothing of
it lives only in memory, so a restart loses none. Every node runs a `CallScheduler`: it asks the
database for due calls, takes each with a conditional UPDATE (exactly one node wins a call) and
places it through the number's Twilio account, as `POST /call` places an immediate one.

A tenant's concurrent-call limit paces its batch: a due call is placed only when one of the
tenant's call slots is free (the slot is held while the callee's phone rings and then by the
live call), so a batch of 100 on a limit of 5 goes out five at a time as calls end. A call not
placed by its `latestAt` ends with `SCHEDULE_EXPIRED` and is never placed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel
from sqlalchemy.exc import SQLAlchemyError

from control.call_slots import CallSlots
from control.outbound import RING_SECONDS, TWILIO_FAILED, PlacementFailed, place_outbound
from control.state import AppState
from storage import CallRecord
from storage.vapi import PLACE_URLS, SCHEDULE_PLAN, iso

__all__ = [
    "MAX_AHEAD",
    "MAX_BATCH",
    "SCHEDULE_EXPIRED",
    "CallScheduler",
    "SchedulePlan",
    "checked_window",
    "running_scheduler",
    "schedule_metadata",
]

log = logging.getLogger("ava.scheduler")

# AVA's reason (Vapi has none for it): the window closed before the call could be placed.
SCHEDULE_EXPIRED = "call.start.error-schedule-expired"
MAX_BATCH = 100  # customers in one POST /call; larger lists go in several requests
MAX_AHEAD = timedelta(days=90)  # the furthest a call may be scheduled
_DUE_PER_ROUND = 50  # due calls looked at per round, the longest-waiting first


class SchedulePlan(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    earliest_at: datetime
    latest_at: datetime | None = None


def _utc(value: datetime) -> datetime:
    # A timestamp without an offset is taken as UTC, as Vapi does.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def checked_window(plan: SchedulePlan, now: datetime) -> tuple[datetime, datetime | None]:
    """(earliest, latest) in UTC. Raises ValueError naming the field for a window that can never
    be kept: latest before earliest or already past, earliest beyond `MAX_AHEAD`."""
    earliest = _utc(plan.earliest_at)
    latest = None if plan.latest_at is None else _utc(plan.latest_at)
    if earliest > now + MAX_AHEAD:
        raise ValueError(f"schedulePlan.earliestAt: at most {MAX_AHEAD.days} days ahead")
    if latest is not None:
        if latest <= earliest:
            raise ValueError("schedulePlan.latestAt: must be after earliestAt")
        if latest <= now:
            raise ValueError("schedulePlan.latestAt: already past")
    return earliest, latest


def schedule_metadata(
    earliest: datetime,
    latest: datetime | None,
    *,
    stream_url: str,
    status_url: str,
    amd_url: str,
) -> dict[str, Any]:
    """What a scheduled call keeps besides its row: the plan as the Call shows it, and the URLs
    its placing needs (seen through the proxy of the request that scheduled it)."""
    plan = {"earliestAt": iso(earliest)}
    if latest is not None:
        plan["latestAt"] = iso(latest)
    urls = {"stream": stream_url, "status": status_url, "amd": amd_url}
    return {SCHEDULE_PLAN: plan, PLACE_URLS: urls}


def _latest(call: CallRecord) -> datetime | None:
    plan = call.metadata.get(SCHEDULE_PLAN)
    value = plan.get("latestAt") if isinstance(plan, dict) else None
    if not isinstance(value, str):
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


class CallScheduler:
    """Places this node's share of the due scheduled calls; one per node, in the lifespan."""

    def __init__(
        self,
        state: AppState,
        slots: CallSlots,
        *,
        node_id: str | None,
        poll_seconds: float = 1.0,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.state = state
        self.slots = slots
        self.node_id = node_id
        self.poll_seconds = poll_seconds
        self._now = now
        self._wake = asyncio.Event()

    def poke(self) -> None:
        """Calls are due now (an immediate batch): look without waiting for the next round."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                await self.round()
            except SQLAlchemyError as exc:
                # The database blipped: the calls stay scheduled and the next round retries.
                log.warning("scheduler round failed, retried: %s", exc)
            try:
                async with asyncio.timeout(self.poll_seconds):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()

    async def round(self) -> list[str]:
        """One look at the due calls; returns the ids of those placed."""
        stores = self.state.stores
        now = self._now()
        placed: list[str] = []
        full: set[str | None] = set()  # tenants at their limit this round: their calls wait
        for call in await stores.calls.due_calls(now, _DUE_PER_ROUND):
            latest = _latest(call)
            if latest is not None and now >= latest:
                detail = f"not placed by schedulePlan.latestAt ({iso(latest)})"
                if await stores.calls.finish_call(call.id, SCHEDULE_EXPIRED, detail):
                    log.info("scheduled call %s expired", call.id)
                continue
            if call.tenant_id in full:
                continue
            if not await self._take_slot(call):
                full.add(call.tenant_id)
                continue
            if not await stores.calls.claim_scheduled(call.id, self.node_id):
                await self._release_slot(call)  # another node took it (or it was ended)
                continue
            if await self._place(call):
                placed.append(call.id)
        return placed

    async def _take_slot(self, call: CallRecord) -> bool:
        if call.tenant_id is None:
            return True
        limit = await self.state.stores.tenants.max_calls(call.tenant_id)
        if limit is None:
            limit = self.state.settings.tenant_max_calls
        # Held while the phone rings; the media stream then holds it for the live call.
        ttl = self.state.settings.stream_token_ttl_seconds + RING_SECONDS
        return await self.slots.acquire(call.tenant_id, call.id, limit, ttl)

    async def _release_slot(self, call: CallRecord) -> None:
        if call.tenant_id is not None:
            await self.slots.release(call.tenant_id, call.id)

    async def _place(self, call: CallRecord) -> bool:
        urls = call.metadata.get(PLACE_URLS)
        if not isinstance(urls, dict):
            urls = {}
        try:
            await place_outbound(
                self.state,
                call,
                stream_url=str(urls.get("stream", "")),
                status_url=str(urls.get("status", "")),
                amd_url=str(urls.get("amd", "")),
            )
        except PlacementFailed as exc:
            await self._release_slot(call)
            log.warning("scheduled call %s: %s", call.id, exc)
            return False
        except Exception as exc:
            # Claimed but not placed: without an end it would sit `queued` on a live node,
            # which no sweep closes. End it with the reason, and keep the scheduler going.
            log.exception("scheduled call %s could not be placed", call.id)
            await self.state.stores.calls.finish_call(
                call.id, TWILIO_FAILED, f"AVA could not place the call: {type(exc).__name__}"
            )
            await self._release_slot(call)
            return False
        log.info("scheduled call %s placed", call.id)
        return True


@asynccontextmanager
async def running_scheduler(
    state: AppState, slots: CallSlots, node_id: str | None
) -> AsyncIterator[CallScheduler]:
    """The node's scheduler for the block (started once the node serves: a placed call's
    media stream may come straight back to it)."""
    scheduler = CallScheduler(
        state, slots, node_id=node_id, poll_seconds=state.settings.scheduler_poll_seconds
    )
    task = asyncio.create_task(scheduler.run(), name="ava-scheduler")
    try:
        yield scheduler
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
