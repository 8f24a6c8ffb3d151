"""Any node may take any leg: a transient assistant from `assistant-request`, answered on node A,
runs the call whose media stream lands on node B (both on one database and the machine's Redis);
in Redis it is sealed, single use and expires with the stream token."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from redis.asyncio import Redis

from control.app import create_app
from media.twilio.caller import CallScript, place_call
from storage.crypto import SecretBox
from storage.redis_assistants import RedisAssistants
from tests.conftest import (
    AssistantFactory,
    ScriptedEngines,
    migrated_sqlite,
    serve,
    settings_for,
)
from tests.control.conftest import AUTH_TOKEN, NUMBER, Api, running_api
from tests.control.webhook_receiver import Answer, Receiver, receiver
from voice.assistant import Assistant
from voice.testing import tone_ulaw

pytestmark = [pytest.mark.timeout(60), pytest.mark.redis]

SPEECH = tone_ulaw(0.8, frequency=300.0)
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


@dataclass
class TwoNodes:
    a: Api  # answers the voice webhook (and the tenant API)
    b: FastAPI  # takes the media stream
    base_b: str
    hooks: Receiver


@pytest.fixture
async def two_nodes(
    tmp_path: Path, assistant_file: AssistantFactory, redis_url: str
) -> AsyncIterator[TwoNodes]:
    """Node A answers the voice webhook naming B's URL as the public one (behind a balancer
    every node names the balancer's); the stream then reaches B. One database, one Redis."""
    assistant = assistant_file()
    database = migrated_sqlite(tmp_path / "shared")

    def node(name: str, **overrides: Any) -> FastAPI:
        engines = ScriptedEngines(["What are your hours?"], ["We open at nine."],
                                  seconds_per_char=0.01)  # fmt: skip
        settings = settings_for(
            assistant, tmp_path / name, database_url=database, redis_url=redis_url,
            node_id=f"{name}-{uuid.uuid4().hex[:6]}", assistant_request_timeout_seconds=2,
            **overrides,
        )  # fmt: skip
        return create_app(settings, engines=engines)

    node_b = node("b")
    async with serve(node_b) as base_b:
        async with receiver() as hooks, running_api(node("a", public_url=base_b)) as a:
            number = await a.a.post("/phone-number", json={**NUMBER, "server": hooks.server()})
            assert number.status_code == 201, number.text
            yield TwoNodes(a, node_b, base_b, hooks)


async def test_a_transient_assistant_answered_on_one_node_runs_the_call_on_another(
    two_nodes: TwoNodes,
) -> None:
    a, hooks = two_nodes.a, two_nodes.hooks
    hooks.answers["assistant-request"] = Answer.json(
        {"assistant": {**TRANSIENT, "server": hooks.server()}}
    )
    report = await place_call(
        two_nodes.base_b, CallScript([SPEECH]), auth_token=AUTH_TOKEN,
        to_number=NUMBER["number"], fetch_record=False, webhook_via=a.base,
    )  # fmt: skip
    assert report.error is None, report.error
    (request,) = hooks.messages("assistant-request")
    # the webhook was A's, the call B's, on the assistant A was given
    assert a.app.state.calls.find(report.call_sid) is None
    record = two_nodes.b.state.calls.find(report.call_sid)
    assert record is not None and record.id == request["call"]["id"]
    assert record.assistant == "Night shift" and record.ended_reason == "customer-ended-call"
    bot = [m["message"] for m in record.messages if m["role"] == "bot"]
    assert bot == ["Night desk, how can I help?", "We open at nine."]
    # taken from the shared store: nothing is left for a replayed stream on any node
    assert len(a.app.state.pending_assistants) == 0
    shared = a.app.state.held_assistants.shared
    assert shared is not None and await shared.take(a.tenant_a, record.id) is None
