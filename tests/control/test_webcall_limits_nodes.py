"""Web-call limits across nodes (issue 11): `webrtc_max_calls_per_tenant` counts the tenant's
browser calls on every node sharing AVA_REDIS_URL, not per process.

Two apps in this process share one database and the machine's Redis, each as its own node. A
call connecting on node A holds the tenant's only slot, so node B refuses the tenant's next
offer with 429; another tenant is unaffected; once A's call has ended, B takes the tenant's call.
Without Redis each process keeps its own count (`LocalCallSlots`), as before.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from redis.asyncio import Redis

from control.app import create_app
from control.call_slots import LocalCallSlots
from control.webrtc_routes import WEB_SLOTS_PREFIX, WebCalls
from storage.redis_limits import RedisCallSlots
from tests.conftest import AssistantFactory, ScriptedEngines, migrated_sqlite, serve, settings_for
from tests.control.conftest import running_api
from tests.control.test_webrtc_api import auth, create_assistant, message, offer
from tests.control.test_webrtc_calls import browser

pytestmark = pytest.mark.timeout(60)


def _node_app(
    tmp_path: Path, assistant_file: AssistantFactory, database: str, name: str, **settings: Any
) -> FastAPI:
    config = settings_for(
        assistant_file(),
        tmp_path / name,
        database_url=database,
        node_id=f"{name}-{uuid.uuid4().hex[:8]}",
        webrtc_max_calls_per_tenant=1,
        **settings,
    )
    engines = ScriptedEngines(["Hello?"], ["Hi."], seconds_per_char=0.01)
    return create_app(config, engines=engines)


async def _until(predicate: Callable[[], bool], seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    assert predicate()


@pytest.mark.redis
async def test_two_nodes_sharing_redis_enforce_one_web_call_limit(
    tmp_path: Path, assistant_file: AssistantFactory, redis_url: str
) -> None:
    database = migrated_sqlite(tmp_path / "db")
    # Calls that never connect hold their slot for the connect timeout, then give it back.
    common = {"redis_url": redis_url, "webrtc_connect_timeout_seconds": 1.5}
    node_a = _node_app(tmp_path, assistant_file, database, "a", **common)
    node_b = _node_app(tmp_path, assistant_file, database, "b", **common)
    calls_a: WebCalls = node_a.state.webrtc
    calls_b: WebCalls = node_b.state.webrtc
    assert isinstance(calls_a.shared, RedisCallSlots)
    assert calls_a.shared.prefix == WEB_SLOTS_PREFIX != "ava:calls:"  # apart from phone calls
    client = Redis.from_url(redis_url, decode_responses=True)
    tenants: list[str] = []
    try:
        async with running_api(node_a) as api, serve(node_b) as base_b:
            tenants += [api.tenant_a, api.tenant_b]
            assistant_a = await create_assistant(api.a)
            assistant_b = await create_assistant(api.b)
            async with browser() as first, browser() as second, browser() as other:
                # The answer is never applied: A's call is connecting, holding the slot.
                response = await offer(
                    api.base, await first.offer(), auth(api.key_a), assistantId=assistant_a
                )
                assert response.status_code == 200, response.text
                pc_id = response.json()["pc_id"]
                held = await client.zrange(WEB_SLOTS_PREFIX + api.tenant_a, 0, -1)
                assert held == [pc_id]

                response = await offer(
                    base_b, await second.offer(), auth(api.key_a), assistantId=assistant_a
                )
                assert response.status_code == 429, response.text
                assert "too many concurrent web calls for this tenant (limit 1)" in message(
                    response
                )
                assert calls_b.opened == 0  # refused before a peer existed

                response = await offer(
                    base_b, await other.offer(), auth(api.key_b), assistantId=assistant_b
                )
                assert response.status_code == 200, response.text  # B's own tenant's slot

            # A's call never connects: it ends and its slot is freed on every node's count.
            await _until(lambda: calls_a.closed == 1 and calls_b.closed == 1)
            assert await client.zcard(WEB_SLOTS_PREFIX + api.tenant_a) == 0
            assert not calls_a.slots and not calls_b.slots

            async with browser() as again:
                response = await offer(
                    base_b, await again.offer(), auth(api.key_a), assistantId=assistant_a
                )
                assert response.status_code == 200, response.text  # the slot was given back
                assert await client.zcard(WEB_SLOTS_PREFIX + api.tenant_a) == 1
            await _until(lambda: calls_b.closed == 2)
        assert await client.zcard(WEB_SLOTS_PREFIX + api.tenant_a) == 0
    finally:
        if tenants:
            await client.delete(*(WEB_SLOTS_PREFIX + tenant for tenant in tenants))
        await client.aclose()


@pytest.mark.redis
async def test_the_shared_count_is_atomic_under_concurrent_offers(
    tmp_path: Path, assistant_file: AssistantFactory, redis_url: str
) -> None:
    """Many nodes reserving at once for one tenant: exactly the limit get a slot."""
    config = settings_for(assistant_file(), tmp_path, redis_url=redis_url)
    prefix = f"ava-test:{uuid.uuid4().hex}:"
    nodes = [WebCalls(config, RedisCallSlots(redis_url, prefix=prefix)) for _ in range(4)]
    limit = config.webrtc_max_calls_per_tenant
    try:
        taken = await asyncio.gather(
            *(nodes[i % len(nodes)].reserve("tenant", f"pc_{i}") for i in range(20))
        )
        assert sum(taken) == limit
        assert sum(sum(node.slots.values()) for node in nodes) == limit
    finally:
        for node in nodes:
            await node.aclose()
        client = Redis.from_url(redis_url)
        await client.delete(prefix + "tenant")
        await client.aclose()


async def test_without_redis_each_process_counts_its_own(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    config = settings_for(assistant_file(), tmp_path)
    one, two = WebCalls(config), WebCalls(config)
    assert isinstance(one.shared, LocalCallSlots) and one.shared is not two.shared
    limit = config.webrtc_max_calls_per_tenant
    assert all([await one.reserve("t", f"pc_{i}") for i in range(limit)])
    assert not await one.reserve("t", "pc_over")
    assert await two.reserve("t", "pc_elsewhere")  # another process: its own count
    await one.release("t", "pc_0")
    assert await one.reserve("t", "pc_over") and one.slots["t"] == limit
    await one.aclose()
    await two.aclose()
