"""Vapi's own Python server SDK (`vapi-server-sdk`) against a live AVA on 127.0.0.1.

The SDK is the contract: it builds Vapi's requests and parses the answers into its pydantic
models, so a field AVA names or shapes differently from Vapi fails here, not in a user's code.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from vapi import AsyncVapi
from vapi.core.api_error import ApiError as VapiApiError

from benchmarks.fakes.server import serve
from benchmarks.fakes.twilio_rest import FakeTwilioRest, FakeTwilioRestConfig
from media.twilio.caller import CallScript, place_call
from tests.conftest import AssistantFactory, ScriptedEngines
from tests.control.conftest import AUTH_TOKEN, NUMBER, Api, api_app, running_api
from voice.testing import tone_ulaw

pytestmark = pytest.mark.timeout(90)

SPEECH = tone_ulaw(0.8, frequency=300.0)


async def test_vapi_sdk_assistant_crud_and_calls(
    tmp_path: Path, assistant_file: AssistantFactory, database_url: str
) -> None:
    engines = ScriptedEngines(["What are your opening hours?"], ["We open at nine."])
    fake = FakeTwilioRest(FakeTwilioRestConfig(accounts={NUMBER["twilioAccountSid"]: AUTH_TOKEN}))
    async with serve(fake.app) as twilio_base:
        app = api_app(
            tmp_path, assistant_file, database_url, engines, twilio_api_base_url=twilio_base
        )
        async with running_api(app) as api:
            # The SDK never closes a client it made itself: give it ones this test closes.
            async with (
                httpx.AsyncClient(timeout=10) as http_a,
                httpx.AsyncClient(timeout=10) as http_b,
            ):
                vapi = AsyncVapi(token=api.key_a, base_url=api.base, httpx_client=http_a)
                other = AsyncVapi(token=api.key_b, base_url=api.base, httpx_client=http_b)
                await _exercise(api, fake, vapi, other)


async def _exercise(api: Api, fake: FakeTwilioRest, vapi: AsyncVapi, other: AsyncVapi) -> None:

    # --- assistants: create, get, update, list, delete
    created = await vapi.assistants.create(
        name="Front desk",
        first_message="Hello, this is the front desk.",
        model={
            "provider": "openai",
            "model": "gpt-4o-mini",
            "messages": [{"role": "system", "content": "You are a receptionist."}],
        },
        voice={"provider": "11labs", "voiceId": "rachel"},
        transcriber={"provider": "deepgram", "model": "nova-3"},
        end_call_phrases=["goodbye"],
    )
    assert created.id and created.org_id == api.tenant_a
    assert created.first_message == "Hello, this is the front desk."
    fetched = await vapi.assistants.get(created.id)
    assert fetched.name == "Front desk" and fetched.created_at == created.created_at
    updated = await vapi.assistants.update(created.id, name="Night desk")
    assert updated.name == "Night desk"
    assert updated.first_message == "Hello, this is the front desk."  # PATCH keeps it
    assert [a.id for a in await vapi.assistants.list()] == [created.id]
    assert await other.assistants.list() == []
    with pytest.raises(VapiApiError) as foreign:
        await other.assistants.get(created.id)
    assert foreign.value.status_code == 404

    # --- a real call to the tenant's number, then list and get it through the SDK
    number = await api.a.post("/phone-number", json={**NUMBER, "assistantId": created.id})
    assert number.status_code == 201
    report = await place_call(
        api.base,
        CallScript([SPEECH]),
        auth_token=AUTH_TOKEN,
        to_number=NUMBER["number"],
        fetch_record=False,
    )
    assert report.error is None, report.error
    for _ in range(100):  # the recorder writes CallEnded just after the socket closes
        calls = await vapi.calls.list(assistant_id=created.id)
        if calls and calls[0].status == "ended":
            break
        await asyncio.sleep(0.05)
    (call,) = calls
    assert call.type == "inboundPhoneCall" and call.ended_reason == "customer-ended-call"
    assert call.phone_call_provider_id == report.call_sid
    got = await vapi.calls.get(call.id)
    assert got.id == call.id and got.assistant_id == created.id
    assert got.artifact is not None and got.artifact.messages
    assert "User: What are your opening hours?" in (got.artifact.transcript or "")
    metrics = got.artifact.performance_metrics
    assert metrics is not None and metrics.turn_latencies
    assert (metrics.turn_latencies[0].turn_latency or 0) > 0
    assert got.monitor is not None
    assert got.monitor.control_url == f"{api.base}/call/{call.id}/control"
    assert await other.calls.list() == []

    # --- an outbound call placed through the SDK (Twilio is the loopback fake)
    placed = await vapi.calls.create(
        assistant_id=created.id,
        phone_number_id=number.json()["id"],
        customer={"number": "+15557654321"},
    )
    assert getattr(placed, "type", None) == "outboundPhoneCall"
    assert getattr(placed, "status", None) == "queued"
    (twilio_call,) = fake.calls.values()
    assert twilio_call.to == "+15557654321"

    # --- and the assistant is deleted
    deleted = await vapi.assistants.delete(created.id)
    assert deleted.id == created.id
    assert await vapi.assistants.list() == []
