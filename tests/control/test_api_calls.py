"""Calls to a tenant's number: filed under the tenant, served in Vapi's Call shape at /call."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from control.routes.calls import NEXT_CURSOR_HEADER
from media.twilio.caller import CallScript, place_call
from tests.conftest import AssistantFactory, ScriptedEngines
from tests.control.conftest import ASSISTANT, AUTH_TOKEN, NUMBER, Api, api_app, running_api
from voice.testing import tone_ulaw

pytestmark = pytest.mark.timeout(90)

SPEECH = tone_ulaw(0.8, frequency=300.0)


async def ended_call(client: httpx.AsyncClient, **params: str) -> dict[str, Any]:
    for _ in range(100):  # the recorder writes CallEnded just after the socket closes
        calls = (await client.get("/call", params=params)).json()
        if calls and calls[0]["status"] == "ended":
            return dict(calls[0])
        await asyncio.sleep(0.05)
    raise AssertionError(f"no ended call for {params}")


async def test_call_to_a_tenant_number_is_recorded_for_the_tenant(
    tmp_path: Path, assistant_file: AssistantFactory, database_url: str
) -> None:
    engines = ScriptedEngines(
        ["What are your opening hours?", "Where are you located?"],
        ["We open at nine.", "Twelve Main Street."],
        seconds_per_char=0.02,
    )
    app = api_app(tmp_path, assistant_file, database_url, engines)
    async with running_api(app) as api:
        assistant = (await api.a.post("/assistant", json=ASSISTANT)).json()
        number = (
            await api.a.post("/phone-number", json={**NUMBER, "assistantId": assistant["id"]})
        ).json()
        report = await place_call(
            api.base,
            CallScript([SPEECH, SPEECH]),
            auth_token=AUTH_TOKEN,
            to_number=NUMBER["number"],
            fetch_record=False,
        )
        assert report.error is None, report.error
        assert len(report.turns) == 2

        await ended_call(api.a, phoneNumberId=number["id"])
        # Its analysis (here: recorded as impossible, no OpenAI key) is written after the call:
        # read both once it has been, or they differ by it.
        await app.state.analysis.idle()
        listed = await ended_call(api.a, phoneNumberId=number["id"])
        call = (await api.a.get(f"/call/{listed['id']}")).json()
        # The single call adds only its signed recording URLs (signed when read) to the listed one.
        signed = ("presignedRecordingUrl", "presignedStereoRecordingUrl", "presignedUrlsExpiresAt")
        artifact = {k: v for k, v in call["artifact"].items() if k not in signed}
        assert {**call, "artifact": artifact} == listed
        assert all(key in call["artifact"] for key in signed)
        assert call["orgId"] == api.tenant_a and call["type"] == "inboundPhoneCall"
        assert call["assistantId"] == assistant["id"] and call["phoneNumberId"] == number["id"]
        assert call["endedReason"] == "customer-ended-call"
        assert call["phoneCallProviderId"] == report.call_sid
        assert call["startedAt"] <= call["endedAt"]
        messages = [(m["role"], m["message"]) for m in call["messages"]]
        assert messages == [
            ("bot", "Hello, this is the front desk."),
            ("user", "What are your opening hours?"),
            ("bot", "We open at nine."),
            ("user", "Where are you located?"),
            ("bot", "Twelve Main Street."),
        ]
        for message in call["messages"]:
            assert message["time"] > 0 and message["secondsFromStart"] >= 0
            assert message["duration"] > 0 or message["role"] == "user"
        latencies = call["artifact"]["performanceMetrics"]["turnLatencies"]
        assert len(latencies) == 2
        for latency in latencies:
            assert latency["turnLatency"] >= latency["endpointingLatency"] > 0
            assert set(latency) >= {
                "modelLatency", "voiceLatency", "transcriberLatency", "endpointingLatency",
            }  # fmt: skip
        assert "User: Where are you located?" in call["artifact"]["transcript"]
        assert call["metadata"]["tenant_id"] == api.tenant_a

        assert (await api.b.get(f"/call/{call['id']}")).status_code == 404
        assert (await api.b.get("/call")).json() == []
        # The live record is kept alongside the database one, but the unauthenticated dev
        # endpoint never shows a tenant's call.
        assert app.state.calls.find(report.call_sid) is not None
        async with httpx.AsyncClient() as http:
            dev = await http.get(f"{api.base}/dev/calls/{report.call_sid}")
        assert dev.status_code == 404


async def test_list_filters_and_cursor(api: Api) -> None:
    calls = api.stores.calls
    assistant = (await api.a.post("/assistant", json=ASSISTANT)).json()["id"]
    made = []
    for n in range(5):
        record = await calls.create_call(
            api.tenant_a,
            type="inboundPhoneCall",
            status="in-progress" if n % 2 else "queued",
            assistant_id=assistant if n < 3 else None,
        )
        made.append(record)
        await asyncio.sleep(0.01)  # distinct createdAt, so the order is certain
    newest_first = [r.id for r in reversed(made)]

    seen: list[str] = []
    cursor: str | None = None
    for _ in range(5):
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        response = await api.a.get("/call", params=params)
        seen += [c["id"] for c in response.json()]
        cursor = response.headers.get(NEXT_CURSOR_HEADER)
        if cursor is None:
            break
    assert seen == newest_first

    by_assistant = (await api.a.get("/call", params={"assistantId": assistant})).json()
    assert {c["id"] for c in by_assistant} == {r.id for r in made[:3]}
    queued = (await api.a.get("/call", params={"status": "queued"})).json()
    assert {c["id"] for c in queued} == {made[0].id, made[2].id, made[4].id}

    middle = made[2].created_at
    gt = (await api.a.get("/call", params={"createdAtGt": middle.isoformat()})).json()
    assert {c["id"] for c in gt} == {made[3].id, made[4].id}
    naive_utc = middle.astimezone(UTC).replace(tzinfo=None).isoformat()
    lt = (await api.a.get("/call", params={"createdAtLt": naive_utc})).json()
    assert {c["id"] for c in lt} == {made[0].id, made[1].id}
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert (await api.a.get("/call", params={"createdAtGt": future})).json() == []

    for params, field in (
        ({"status": "exploded"}, "status"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"createdAtGt": "yesterday"}, "createdAtGt"),
        ({"limit": "0"}, "limit"),
    ):
        response = await api.a.get("/call", params=params)
        assert response.status_code == 422, params
        assert response.json()["message"][0].startswith(f"{field}: "), response.json()
