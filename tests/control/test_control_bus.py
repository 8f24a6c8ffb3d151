"""The control bus on the machine's Redis: a command reaches the node that holds the call and its
outcome comes back; a node that is gone or silent is reported within the deadline; the listener
survives its connection being killed."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
from redis.asyncio import Redis

from control.control_bus import ControlRequest, LocalBus, RedisBus, client_name
from control.control_commands import ControlOutcome

pytestmark = [pytest.mark.redis, pytest.mark.timeout(30)]

SAY = {"type": "say", "content": "hello"}


def _node(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"  # no other test run listens on it


@asynccontextmanager
async def listening(
    redis_url: str, node_id: str, handler: Callable[[ControlRequest], ControlOutcome]
) -> AsyncIterator[RedisBus]:
    bus = RedisBus(redis_url, node_id, ttl_seconds=15)
    task = asyncio.create_task(bus.run(handler))
    try:
        async with asyncio.timeout(5):
            await bus.listening.wait()
        yield bus
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await bus.aclose()


def _owner(seen: list[ControlRequest]) -> Callable[[ControlRequest], ControlOutcome]:
    def handle(request: ControlRequest) -> ControlOutcome:
        seen.append(request)
        if request.call_id == "gone":
            return ControlOutcome(409, "call gone has ended")
        return ControlOutcome(200, f"say sent to call {request.call_id}")

    return handle


async def test_a_command_reaches_the_owner_and_its_outcome_comes_back(redis_url: str) -> None:
    seen: list[ControlRequest] = []
    a, b = _node("a"), _node("b")
    async with listening(redis_url, a, _owner(seen)), listening(redis_url, b, _owner([])) as bus:
        outcome = await bus.request(a, ControlRequest("call-1", "tenant-1", SAY), 1.0)
        assert outcome == ControlOutcome(200, "say sent to call call-1")
        assert seen == [ControlRequest("call-1", "tenant-1", SAY)]
        ended = await bus.request(a, ControlRequest("gone", "tenant-1", SAY), 1.0)
        assert ended == ControlOutcome(409, "call gone has ended")


async def test_a_node_that_is_gone_or_silent_is_reported_in_time(redis_url: str) -> None:
    async with listening(redis_url, _node("b"), _owner([])) as bus:
        gone = _node("dead")
        asked = time.monotonic()
        outcome = await bus.request(gone, ControlRequest("call-1", "t", SAY), 0.5)
        assert time.monotonic() - asked < 0.3  # nobody subscribed: no need to wait it out
        assert outcome.status == 504
        assert f"held by node {gone}, which is not answering (it is not listening)" in (
            outcome.message
        )
        assert "heartbeat expires within 15 s" in outcome.message

        # subscribed but never answering (a frozen process)
        frozen = _node("frozen")
        redis = Redis.from_url(redis_url)
        pubsub = redis.pubsub()
        await pubsub.subscribe(bus.channel(frozen))
        try:
            asked = time.monotonic()
            outcome = await bus.request(frozen, ControlRequest("call-1", "t", SAY), 0.3)
            waited = time.monotonic() - asked
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            await redis.aclose()
        assert outcome.status == 504 and "no answer within 0.3 s" in outcome.message
        assert 0.3 <= waited < 0.6


async def test_the_listener_survives_its_connection_being_killed(redis_url: str) -> None:
    seen: list[ControlRequest] = []
    a = _node("a")
    async with listening(redis_url, a, _owner(seen)) as owner:
        async with listening(redis_url, _node("b"), _owner([])) as bus:
            admin = Redis.from_url(redis_url)
            try:
                # only this listener's connection: other tests share this Redis
                clients = await admin.client_list(_type="pubsub")
                (mine,) = [c for c in clients if c.get("name") == client_name(a)]
                killed = await admin.client_kill_filter(_id=mine["id"])
            finally:
                await admin.aclose()
            assert killed == 1
            for _ in range(200):  # the listener notices, backs off 0.1 s and subscribes again
                if owner.reconnects and owner.listening.is_set():
                    break
                await asyncio.sleep(0.01)
            assert owner.reconnects == 1 and owner.listening.is_set()
            outcome = await bus.request(a, ControlRequest("call-1", "t", SAY), 1.0)
            assert outcome.ok and len(seen) == 1


async def test_alone_there_is_no_other_node_to_reach() -> None:
    outcome = await LocalBus().request("old-node", ControlRequest("call-1", "t", SAY), 1.0)
    assert outcome.status == 409 and "without AVA_REDIS_URL" in outcome.message
