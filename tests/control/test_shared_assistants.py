"""A transient assistant (from `assistant-request`) in Redis, as nodes hand it to each other: it
is sealed, single use and expires with the stream token. The call itself, answered on one real
`ava serve` process and run on another, is in tests/control/test_nodes_nginx.py (one cluster of
processes serves all of those tests).
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.asyncio import Redis

from storage.crypto import SecretBox
from storage.redis_assistants import RedisAssistants
from voice.assistant import Assistant

pytestmark = [pytest.mark.timeout(60), pytest.mark.redis]

SECRET = "night-shift-webhook-secret-31"
TRANSIENT = {
    "name": "Night shift",
    "firstMessage": "Night desk, how can I help?",
    "model": {"provider": "local", "fallbackReply": "We open at nine."},
}


async def test_redis_holds_a_sealed_assistant_once_and_not_for_long(redis_url: str) -> None:
    box = SecretBox.from_secret("node-key")
    prefix = f"ava:test:{uuid.uuid4().hex[:8]}:"
    one = RedisAssistants(redis_url, box, ttl=1, prefix=prefix)
    other = RedisAssistants(redis_url, box, ttl=1, prefix=prefix)
    assistant = Assistant.model_validate({**TRANSIENT, "server": {"url": "https://h.example",
                                                                   "secret": SECRET}})  # fmt: skip
    client = Redis.from_url(redis_url)
    try:
        await one.put("t1", "call_1", assistant)
        raw = await client.get(f"{prefix}t1:call_1")
        assert raw is not None and SECRET.encode() not in raw and b"Night" not in raw
        assert await other.take("t2", "call_1") is None  # another tenant's key: nothing
        taken = await other.take("t1", "call_1")
        assert taken is not None and taken.server is not None
        assert taken.server["secret"] == SECRET
        assert await one.take("t1", "call_1") is None  # single use
        # sealed with another node's key: not an assistant
        stranger = RedisAssistants(redis_url, SecretBox.from_secret("other"), 1, prefix=prefix)
        await stranger.put("t1", "call_2", assistant)
        assert await one.take("t1", "call_2") is None
        await one.put("t1", "call_3", assistant)
        await asyncio.sleep(1.3)
        assert await other.take("t1", "call_3") is None  # expired with the stream token
    finally:
        await client.aclose()
        for store in (one, other, stranger):
            await store.aclose()
