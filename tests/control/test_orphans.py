"""Calls of dead nodes (issue 11): found through the heartbeats in the real Redis, closed once
by one survivor with the reason that says so, hung up at (fake) Twilio; live nodes' calls and
calls of no node are never touched, except by a lone process at startup."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from benchmarks.fakes.server import serve
from benchmarks.fakes.twilio_rest import FakeCall, FakeTwilioRest, FakeTwilioRestConfig
from control.orphans import OrphanSweeper, registry_for, running_node
from control.settings import Settings
from control.stores import Stores, open_stores
from storage.nodes import LocalNodes, NodesUnavailable, RedisNodes
from storage.orphans import NODE_DIED_REASON
from tests.conftest import AssistantFactory, settings_for

ACCOUNT = "AC" + "7" * 32
TOKEN = "orphans-auth-token"


@dataclass
class Cluster:
    settings: Settings
    stores: Stores
    twilio: FakeTwilioRest
    redis_url: str

    def node(self, name: str, *, ttl: float = 0.4) -> RedisNodes:
        """A node with an id no other test run uses."""
        return RedisNodes(
            self.redis_url, f"{name}-{uuid.uuid4().hex[:8]}", beat_seconds=0.1, ttl_seconds=ttl
        )

    async def live_call(self, node: str | None, *, status: str = "in-progress") -> tuple[str, str]:
        """A call row held by `node`, with a Twilio leg at the fake; returns (call id, sid)."""
        sid = "CA" + uuid.uuid4().hex
        self.twilio.calls[sid] = FakeCall(sid, ACCOUNT, "+15550001111", "+15550002222", None,
                                          None, None, [], status="in-progress")  # fmt: skip
        record = await self.stores.calls.create_call(
            None, type="inboundPhoneCall", status=status,  # type: ignore[arg-type]
            twilio_call_sid=sid, node_id=node,
        )  # fmt: skip
        return record.id, sid

    async def state(self, call_id: str) -> tuple[str, str | None]:
        record = await self.stores.calls.get_call(None, call_id, details=False)
        assert record is not None
        return record.status, record.ended_reason

    def hang_ups(self, sid: str) -> int:
        return sum(1 for u in self.twilio.calls[sid].updates if u.get("Status") == "completed")

    async def hung_up(self, sid: str, count: int = 1) -> None:
        """Until the (background) hang-up of `sid` has reached the fake."""
        async with asyncio.timeout(10):
            while True:
                self.twilio.call_updated.clear()  # before looking: no update slips between
                if self.hang_ups(sid) >= count:
                    return
                await self.twilio.call_updated.wait()


@asynccontextmanager
async def hanging_up(*sweepers: OrphanSweeper) -> AsyncIterator[None]:
    """The sweepers' hang-up workers, as `running_node` runs them; drained at the end."""
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(s.hanging_up()) for s in sweepers]
        try:
            yield
            for sweeper in sweepers:
                await sweeper.hung_up()
        finally:
            for task in tasks:
                task.cancel()


@pytest.fixture
async def cluster(
    tmp_path: Path, assistant_file: AssistantFactory, redis_url: str
) -> AsyncIterator[Cluster]:
    fake = FakeTwilioRest(FakeTwilioRestConfig(accounts={ACCOUNT: TOKEN}))
    async with serve(fake.app) as twilio_base:
        settings = settings_for(
            assistant_file(), tmp_path,
            twilio_account_sid=ACCOUNT, twilio_auth_token=TOKEN, twilio_api_base_url=twilio_base,
        )  # fmt: skip
        stores = await open_stores(settings)
        try:
            yield Cluster(settings, stores, fake, redis_url)
        finally:
            await stores.close()


@pytest.mark.redis
async def test_a_dead_nodes_calls_are_closed_and_hung_up_by_a_survivor(cluster: Cluster) -> None:
    alive, dead, survivor = cluster.node("a"), cluster.node("b"), cluster.node("c")
    try:
        await alive.beat()
        await dead.beat()
        theirs, _ = await cluster.live_call(alive.node_id)
        orphan, orphan_sid = await cluster.live_call(dead.node_id)
        ringing, _ = await cluster.live_call(None, status="ringing")
        sweeper = OrphanSweeper(survivor, cluster.stores, cluster.settings)
        async with hanging_up(sweeper):
            assert await sweeper.sweep() == []  # both nodes are alive
            await asyncio.sleep(0.5)  # b stops beating; a goes on
            await alive.beat()
            closed = await sweeper.sweep()
            assert [c.id for c in closed] == [orphan]
            assert await cluster.state(orphan) == ("ended", NODE_DIED_REASON)
            # the live node's call and the ringing call of no node are untouched
            assert await cluster.state(theirs) == ("in-progress", None)
            assert await cluster.state(ringing) == ("ringing", None)
            await alive.beat()
            assert await sweeper.sweep() == []  # nothing twice
            await cluster.hung_up(orphan_sid)
        assert cluster.hang_ups(orphan_sid) == 1
    finally:
        for node in (alive, dead, survivor):
            await node.aclose()


@pytest.mark.redis
async def test_one_survivor_closes_a_dead_node_however_many_notice(cluster: Cluster) -> None:
    dead = cluster.node("dead")
    survivors = [cluster.node(f"s{i}") for i in range(3)]
    try:
        orphan, sid = await cluster.live_call(dead.node_id)
        sweepers = [OrphanSweeper(s, cluster.stores, cluster.settings) for s in survivors]
        async with hanging_up(*sweepers):
            results = await asyncio.gather(*(s.sweep() for s in sweepers))
        assert sorted(len(r) for r in results) == [0, 0, 1]
        assert await cluster.state(orphan) == ("ended", NODE_DIED_REASON)
        assert cluster.hang_ups(sid) == 1
    finally:
        for node in (dead, *survivors):
            await node.aclose()


@pytest.mark.redis
async def test_a_node_starting_never_touches_other_live_nodes_calls(cluster: Cluster) -> None:
    other = cluster.node("other", ttl=5.0)
    try:
        await other.beat()
        theirs, sid = await cluster.live_call(other.node_id)
        settings = cluster.settings.model_copy(
            update={"redis_url": cluster.redis_url, "node_id": f"new-{uuid.uuid4().hex[:8]}"}
        )
        async with running_node(settings, cluster.stores) as nodes:
            assert nodes.shared and nodes.node_id == settings.node_id
        assert await cluster.state(theirs) == ("in-progress", None)
        assert cluster.hang_ups(sid) == 0
        # and once it has left, its own heartbeat is gone at once
        assert await other.alive([settings.node_id, other.node_id]) == {other.node_id}
    finally:
        await other.aclose()


async def test_a_lone_process_closes_every_unfinished_call_at_startup(cluster: Cluster) -> None:
    previous, sid = await cluster.live_call("host-123")
    ringing, _ = await cluster.live_call(None, status="ringing")
    async with running_node(cluster.settings, cluster.stores) as nodes:
        assert isinstance(nodes, LocalNodes) and not nodes.shared
        mine, _ = await cluster.live_call(nodes.node_id)
        assert await cluster.state(previous) == ("ended", NODE_DIED_REASON)
        assert await cluster.state(ringing) == ("ended", NODE_DIED_REASON)
        await cluster.hung_up(sid)  # in the background: startup does not wait on Twilio
        # alone, nothing sweeps while it runs: its own calls are safe
        assert await OrphanSweeper(nodes, cluster.stores, cluster.settings).sweep() == []
        assert await cluster.state(mine) == ("in-progress", None)


async def test_an_unreachable_registry_closes_nothing(cluster: Cluster) -> None:
    settings = cluster.settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    nodes = registry_for(settings)
    call, _ = await cluster.live_call("somebody")
    try:
        with pytest.raises(NodesUnavailable):
            await OrphanSweeper(nodes, cluster.stores, settings).sweep()
        async with running_node(settings, cluster.stores):
            pass  # starts anyway, says so, closes nothing
        assert await cluster.state(call) == ("in-progress", None)
    finally:
        await nodes.aclose()


def test_the_heartbeat_must_be_shorter_than_its_ttl(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="HEARTBEAT"):
        Settings(
            data_dir=tmp_path, node_heartbeat_seconds=20, node_ttl_seconds=15,
            _env_file=None,  # type: ignore[call-arg]
        )  # fmt: skip


@pytest.mark.redis
async def test_hang_ups_never_hold_the_sweep_or_the_heartbeat(cluster: Cluster) -> None:
    # Twilio answering slowly (0.5 s a request) and a dead node with 24 calls: hung up one by one
    # inside the sweep that would take 12 s, far past a heartbeat's TTL, and the sweeping node
    # would be taken for dead itself. The sweep closes the rows and returns; the hang-ups go on
    # beside it, 8 at a time.
    cluster.twilio.config.latency = 0.5
    dead, survivor = cluster.node("dead"), cluster.node("survivor")
    try:
        orphans = [await cluster.live_call(dead.node_id) for _ in range(24)]
        sweeper = OrphanSweeper(survivor, cluster.stores, cluster.settings)
        async with hanging_up(sweeper):
            started = asyncio.get_running_loop().time()
            closed = await sweeper.sweep()
            swept = asyncio.get_running_loop().time() - started
            assert len(closed) == 24
            assert swept < 2.0, swept  # not 24 x 0.5 s
            await survivor.beat()  # the heartbeat is not queued behind Twilio either
            for call_id, _ in orphans:
                assert await cluster.state(call_id) == ("ended", NODE_DIED_REASON)
            await sweeper.hung_up()
            hung_up = asyncio.get_running_loop().time() - started
        assert all(cluster.hang_ups(sid) == 1 for _, sid in orphans)
        assert hung_up < 24 * 0.5, hung_up  # in parallel, not one after another
    finally:
        for node in (dead, survivor):
            await node.aclose()
