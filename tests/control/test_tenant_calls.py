"""Tenant-safe calls (issue 9, finding 5) and per-tenant concurrent call limits (finding 6).

Call ids are random and travel in the stream token, so a CallSid (which another tenant's signed
webhook may repeat) never picks the record a call writes to; a write never crosses tenants; a
stream token starts one stream; a tenant over its limit of concurrent calls is told so."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from redis.asyncio import Redis

from control.call_slots import BUSY_SAY, TENANT_LIMIT_REASON, LocalCallSlots, holding_slot
from control.cli import main
from media.twilio.caller import parse_twiml
from media.twilio.phone import PhoneLine
from media.twilio.signature import compute_signature
from storage import CallRecorder
from storage.redis_limits import RedisCallSlots
from tests.conftest import AssistantFactory, ScriptedEngines
from tests.control.conftest import ASSISTANT, AUTH_TOKEN, NUMBER, Api, api_app, running_api
from tests.control.webhook_receiver import Answer, Receiver, receiver
from voice.events import CallStarted, MessageAdded

pytestmark = pytest.mark.timeout(60)

TOKEN_B = "tenant-b-twilio-auth-token"
NUMBER_B = {**NUMBER, "number": "+14155550102", "twilioAuthToken": TOKEN_B,
            "twilioAccountSid": "AC" + "b" * 32}  # fmt: skip
TRANSIENT = {
    "name": "Night shift",
    "firstMessage": "Night desk.",
    "model": {"provider": "local", "fallbackReply": "We open at nine."},
}


async def signed_webhook(api: Api, to: str, token: str, call_sid: str) -> httpx.Response:
    url = f"{api.base}/twilio/voice"
    form = {"CallSid": call_sid, "From": "+15550001111", "To": to}
    headers = {"X-Twilio-Signature": compute_signature(token, url, form)}
    async with httpx.AsyncClient() as http:
        return await http.post(url, data=form, headers=headers)


@asynccontextmanager
async def stream(
    url: str, parameters: dict[str, str], call_sid: str, token: str
) -> AsyncIterator[websockets.ClientConnection]:
    """A Twilio media stream that starts and stays (silent) until the block ends, then hangs up."""
    line = PhoneLine(call_sid=call_sid, custom_parameters=parameters)
    headers = {"X-Twilio-Signature": compute_signature(token, url, {})}
    async with websockets.connect(url, additional_headers=headers) as ws:
        await ws.send(line.connected())
        await ws.send(line.start(0.0))

        async def drain() -> None:  # read what the server plays, so its close gets through
            with contextlib.suppress(websockets.ConnectionClosed):
                async for _ in ws:
                    pass

        reader = asyncio.create_task(drain())
        try:
            yield ws
            with contextlib.suppress(websockets.ConnectionClosed):
                await ws.send(line.stop(1.0))
            await asyncio.wait_for(ws.wait_closed(), 5)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


async def until(predicate: Any, seconds: float = 10.0) -> None:
    async with asyncio.timeout(seconds):
        while True:
            if await predicate():
                return
            await asyncio.sleep(0.02)


async def ended_calls(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    calls = (await client.get("/call")).json()
    return [c for c in calls if c["status"] == "ended"]


async def import_number(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post("/phone-number", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


@pytest.fixture
async def two_tenants(
    tmp_path: Path, assistant_file: AssistantFactory, database_url: str
) -> AsyncIterator[tuple[Api, Receiver]]:
    """A and B, each with a number whose calls ask the same server (assistant-request)."""
    engines = ScriptedEngines([], [], seconds_per_char=0.002)
    app = api_app(tmp_path, assistant_file, database_url, engines)
    async with receiver() as hooks, running_api(app) as api:
        hooks.answers["assistant-request"] = Answer.json({"assistant": TRANSIENT})
        await import_number(api.a, {**NUMBER, "server": hooks.server()})
        await import_number(api.b, {**NUMBER_B, "server": hooks.server()})
        yield api, hooks


def _unsigned(call: dict[str, Any]) -> dict[str, Any]:
    """The call without its recording's signed URLs, which are signed anew at every read."""
    artifact = {k: v for k, v in call.get("artifact", {}).items() if not k.startswith("presigned")}
    return {**call, "artifact": artifact}


async def test_another_tenants_call_with_the_same_call_sid_cannot_touch_it(
    two_tenants: tuple[Api, Receiver],
) -> None:
    api, hooks = two_tenants
    call_sid = "CA" + "5" * 32
    twiml = parse_twiml((await signed_webhook(api, NUMBER["number"], AUTH_TOKEN, call_sid)).text)
    async with stream(twiml.url, twiml.parameters, call_sid, AUTH_TOKEN):
        await until(lambda: _live(api))
    await until(lambda: _has_ended(api.a))
    (a_call,) = await ended_calls(api.a)
    a_before = _unsigned((await api.a.get(f"/call/{a_call['id']}")).json())

    # B's own number, B's own signature, A's CallSid: B's server is asked about B's call.
    twiml = parse_twiml((await signed_webhook(api, NUMBER_B["number"], TOKEN_B, call_sid)).text)
    async with stream(twiml.url, twiml.parameters, call_sid, TOKEN_B):
        await until(lambda: _live(api))
    await until(lambda: _has_ended(api.b))

    (b_call,) = await ended_calls(api.b)
    assert b_call["id"] != a_call["id"] and b_call["orgId"] == api.tenant_b
    a_after = _unsigned((await api.a.get(f"/call/{a_call['id']}")).json())
    assert a_after == a_before and a_after["orgId"] == api.tenant_a
    assert [c["id"] for c in (await api.a.get("/call")).json()] == [a_call["id"]]
    asked = [m["call"]["id"] for m in hooks.messages("assistant-request")]
    assert asked == [a_call["id"], b_call["id"]]


async def _live(api: Api) -> bool:
    return bool(api.app.state.calls.live)


async def _has_ended(client: httpx.AsyncClient) -> bool:
    return bool(await ended_calls(client))


async def test_a_stream_token_starts_one_stream(
    tmp_path: Path, assistant_file: AssistantFactory, database_url: str
) -> None:
    app = api_app(tmp_path, assistant_file, database_url, ScriptedEngines([], []))
    async with running_api(app) as api:
        assistant_id = (await api.a.post("/assistant", json=ASSISTANT)).json()["id"]
        await import_number(api.a, {**NUMBER, "assistantId": assistant_id})
        call_sid = "CA" + "6" * 32
        twiml = parse_twiml(
            (await signed_webhook(api, NUMBER["number"], AUTH_TOKEN, call_sid)).text
        )
        async with stream(twiml.url, twiml.parameters, call_sid, AUTH_TOKEN):
            await until(lambda: _live(api))
            (live_id,) = api.app.state.calls.live
            # The same token again (Twilio never does this; a replay does), with the first live.
            replay = PhoneLine(call_sid=call_sid, custom_parameters=twiml.parameters)
            headers = {"X-Twilio-Signature": compute_signature(AUTH_TOKEN, twiml.url, {})}
            async with websockets.connect(twiml.url, additional_headers=headers) as ws:
                await ws.send(replay.connected())
                await ws.send(replay.start(0.0))
                await asyncio.wait_for(ws.wait_closed(), 5)
                assert ws.close_code == 1008 and ws.close_reason == "stream token already used"
            assert list(api.app.state.calls.live) == [live_id]
            assert api.app.state.calls.records[live_id].status == "in-progress"
        await until(lambda: _has_ended(api.a))
        calls = (await api.a.get("/call")).json()
        assert [c["id"] for c in calls] == [live_id]


async def test_a_start_never_writes_into_another_tenants_call(api: Api) -> None:
    calls = api.stores.calls
    theirs = await calls.create_call(api.tenant_a, type="inboundPhoneCall", status="ringing")
    now = datetime.now(UTC)
    async with calls.batch() as writes:
        started = await writes.start_call(
            theirs.id, started_at=now, type="inboundPhoneCall", tenant_id=api.tenant_b,
            metadata={"tenant_id": api.tenant_b}, twilio_call_sid="CA" + "9" * 32,
        )  # fmt: skip
    assert started is False
    # Through the recorder, as a session's events: the start and what follows go nowhere.
    recorder = CallRecorder(calls)
    writer = asyncio.create_task(recorder.run())
    try:
        meta = {"tenant_id": api.tenant_b, "call_sid": "CA" + "9" * 32}
        recorder.emit(CallStarted(theirs.id, 0.0, now.timestamp(), "twilio", "B's", meta))
        recorder.emit(MessageAdded(theirs.id, 0.5, "assistant", "B's words"))
        await recorder.flush()
    finally:
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
    after = await calls.get_call(api.tenant_a, theirs.id)
    assert after is not None and after.tenant_id == api.tenant_a
    assert after.status == "ringing" and after.messages == () and after.twilio_call_sid is None
    assert after.metadata == {}
    assert await calls.get_call(api.tenant_b, theirs.id) is None


async def test_a_tenant_over_its_call_limit_is_told_so_and_the_attempt_recorded(
    tmp_path: Path, assistant_file: AssistantFactory, database_url: str
) -> None:
    app = api_app(tmp_path, assistant_file, database_url, ScriptedEngines([], []))
    async with running_api(app) as api:
        await api.stores.tenants.set_max_calls(api.tenant_a, 1)  # B keeps the default (20)
        for client, body in ((api.a, NUMBER), (api.b, NUMBER_B)):
            assistant_id = (await client.post("/assistant", json=ASSISTANT)).json()["id"]
            await import_number(client, {**body, "assistantId": assistant_id})
        first = parse_twiml(
            (await signed_webhook(api, NUMBER["number"], AUTH_TOKEN, "CA" + "1" * 32)).text
        )
        async with stream(first.url, first.parameters, "CA" + "1" * 32, AUTH_TOKEN):
            await until(lambda: _live(api))
            busy = await signed_webhook(api, NUMBER["number"], AUTH_TOKEN, "CA" + "2" * 32)
            assert busy.status_code == 200
            assert BUSY_SAY in busy.text and "<Hangup" in busy.text and "<Stream" not in busy.text
            # Another tenant is not held back by A's limit.
            other = await signed_webhook(api, NUMBER_B["number"], TOKEN_B, "CA" + "3" * 32)
            assert "<Stream" in other.text
        listed = (await api.a.get("/call")).json()
        refused = [c for c in listed if c.get("endedReason") == TENANT_LIMIT_REASON]
        assert len(refused) == 1
        assert refused[0]["phoneCallProviderId"] == "CA" + "2" * 32
        assert refused[0]["type"] == "inboundPhoneCall" and refused[0]["status"] == "ended"
        # The first call's end frees its slot.
        await until(lambda: _has_ended(api.a))
        again = await signed_webhook(api, NUMBER["number"], AUTH_TOKEN, "CA" + "4" * 32)
        assert "<Stream" in again.text


async def test_local_slots_count_renew_release_and_lapse() -> None:
    now = [100.0]
    slots = LocalCallSlots(clock=lambda: now[0])
    assert await slots.acquire("t", "c1", 2, 10)
    assert await slots.acquire("t", "c2", 2, 10)
    assert not await slots.acquire("t", "c3", 2, 10)
    assert await slots.acquire("t", "c1", 2, 10)  # renewing a held slot is not a new call
    assert await slots.acquire("other", "c3", 2, 10)
    assert await slots.acquire("t", "c3", None, 10)  # no limit: counted all the same
    assert await slots.count("t") == 3
    await slots.release("t", "c3")
    now[0] += 11  # nobody renewed: the slots lapse (a process that died)
    assert await slots.count("t") == 0 and await slots.acquire("t", "c4", 1, 10)


async def test_a_held_slot_is_renewed_and_released() -> None:
    slots = LocalCallSlots()
    async with holding_slot(slots, "t", "c1", renew_every=0.01):
        await asyncio.sleep(0.05)
        assert await slots.count("t") == 1
        assert not await slots.acquire("t", "c2", 1, 10)
    assert await slots.count("t") == 0


@pytest.mark.redis
async def test_redis_slots_are_shared_by_processes_and_lapse(redis_url: str) -> None:
    now = [1_700_000_000.0]
    prefix = f"ava-test:{uuid.uuid4().hex}:"
    # Two limiters on one Redis: two AVA processes counting the same tenant's calls.
    one = RedisCallSlots(redis_url, prefix=prefix, clock=lambda: now[0])
    two = RedisCallSlots(redis_url, prefix=prefix, clock=lambda: now[0])
    client = Redis.from_url(redis_url, decode_responses=True)
    try:
        assert await one.acquire("tenant-a", "call_1", 2, 60)
        assert await two.acquire("tenant-a", "call_2", 2, 60)
        assert not await one.acquire("tenant-a", "call_3", 2, 60)
        assert not await two.acquire("tenant-a", "call_3", 2, 60)
        assert await two.acquire("tenant-a", "call_1", 2, 60)  # a renewal, not a third call
        assert await one.acquire("tenant-b", "call_3", 2, 60)  # another tenant's own count
        assert await one.count("tenant-a") == 2 and await two.count("tenant-b") == 1
        await two.release("tenant-a", "call_1")  # ended on the other process
        assert await one.acquire("tenant-a", "call_3", 2, 60)
        now[0] += 61  # the process holding them died: nobody renewed, the slots lapse
        assert await two.count("tenant-a") == 0
        assert await two.acquire("tenant-a", "call_4", 1, 60)
        assert 0 < await client.ttl(prefix + "tenant-a") <= 61
    finally:
        await client.delete(prefix + "tenant-a", prefix + "tenant-b")
        await client.aclose()
        await one.aclose()
        await two.aclose()


async def test_unreachable_redis_lets_calls_through() -> None:
    slots = RedisCallSlots("redis://127.0.0.1:1/0", timeout=0.5)  # nothing listens on port 1
    try:
        assert await slots.acquire("t", "c1", 0, 60)
        assert await slots.count("t") == 0
        await slots.release("t", "c1")
    finally:
        await slots.aclose()


async def test_the_stream_token_fits_twilios_parameter_size(api: Api) -> None:
    assistant_id = (await api.a.post("/assistant", json=ASSISTANT)).json()["id"]
    await import_number(api.a, {**NUMBER, "assistantId": assistant_id})
    url = f"{api.base}/twilio/voice"
    form = {"CallSid": "CA" + "7" * 32, "From": "sip:" + "x" * 200 + "@example.com",
            "To": NUMBER["number"]}  # fmt: skip
    headers = {"X-Twilio-Signature": compute_signature(AUTH_TOKEN, url, form)}
    async with httpx.AsyncClient() as http:
        twiml = parse_twiml((await http.post(url, data=form, headers=headers)).text)
    # protocols.md: a <Parameter>'s name and value together under 500 characters.
    assert len("ava_token") + len(twiml.parameters["ava_token"]) < 500


def test_the_operator_sets_and_clears_a_tenants_call_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AVA_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("AVA_DATABASE_URL", raising=False)
    monkeypatch.setenv("AVA_SECRET_KEY", "cli-test-secret-key")
    monkeypatch.setenv("AVA_TENANT_MAX_CALLS", "7")
    assert main(["db", "upgrade"]) == 0
    assert main(["tenant", "create", "Acme"]) == 0
    tenant = capsys.readouterr().out.strip()
    assert main(["tenant", "set-limit", tenant, "2"]) == 0
    assert "at most 2 concurrent calls" in capsys.readouterr().err
    assert main(["tenant", "set-limit", tenant, "-1"]) == 2
    assert main(["tenant", "set-limit", "no-such-tenant", "2"]) == 1
    assert main(["tenant", "set-limit", tenant, "default"]) == 0
    assert "at most 7 concurrent calls" in capsys.readouterr().err
