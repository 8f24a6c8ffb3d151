"""Voicemail on outbound calls: Twilio's asynchronous AMD asked for when the assistant wants it,
its signed result, the call's own `voicemailMessage` left whole and the call ended `voicemail`;
a human answer changes nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from benchmarks.fakes.server import serve
from benchmarks.fakes.twilio_rest import FakeTwilioRest, FakeTwilioRestConfig
from media.twilio.phone import PhoneLine
from media.twilio.signature import compute_signature
from tests.conftest import AssistantFactory, ScriptedEngines
from tests.control.conftest import ASSISTANT, AUTH_TOKEN, NUMBER, Api, api_app, running_api
from tests.control.test_live_control import eventually
from tests.control.twilio_phone import answered

pytestmark = pytest.mark.timeout(60)

ACCOUNT = NUMBER["twilioAccountSid"]
CUSTOMER = "+15557654321"
MESSAGE = "Hi {{customer.name}}, this is the front desk. Please call us back."
VOICEMAIL_ASSISTANT: dict[str, Any] = {
    **ASSISTANT,
    "voicemailDetection": {"provider": "twilio", "machineDetectionTimeout": 20},
    "voicemailMessage": MESSAGE,
}


@dataclass
class Placed:
    api: Api
    fake: FakeTwilioRest
    call_id: str
    sid: str
    line: PhoneLine
    amd_url: str

    async def amd(self, answered_by: str, *, token: str = AUTH_TOKEN) -> int:
        form = {
            "CallSid": self.sid, "AccountSid": ACCOUNT, "AnsweredBy": answered_by,
            "MachineDetectionDuration": "4180",
        }  # fmt: skip
        headers = {"X-Twilio-Signature": compute_signature(token, self.amd_url, form)}
        async with httpx.AsyncClient() as http:
            return (await http.post(self.amd_url, data=form, headers=headers)).status_code


@pytest.fixture
async def placed(
    tmp_path: Path, assistant_file: AssistantFactory, database_url: str
) -> AsyncIterator[Placed]:
    fake = FakeTwilioRest(FakeTwilioRestConfig(accounts={ACCOUNT: AUTH_TOKEN}))
    engines = ScriptedEngines([], [], seconds_per_char=0.01)
    async with serve(fake.app) as twilio_base:
        app = api_app(
            tmp_path, assistant_file, database_url, engines, twilio_api_base_url=twilio_base
        )
        async with running_api(app) as api:
            assistant = (await api.a.post("/assistant", json=VOICEMAIL_ASSISTANT)).json()["id"]
            number = (await api.a.post("/phone-number", json=NUMBER)).json()["id"]
            body = {
                "assistantId": assistant,
                "phoneNumberId": number,
                "customer": {"number": CUSTOMER, "name": "Ada"},
            }
            response = await api.a.post("/call", json=body)
            assert response.status_code == 201, response.text
            call = response.json()
            (request,) = fake.requests
            async with answered(fake, token=AUTH_TOKEN) as line:
                await eventually(lambda: call["id"] in app.state.ava.calls.live, "live")
                amd_url = request.field("AsyncAmdStatusCallback") or ""
                yield Placed(api, fake, call["id"], line.call_sid, line, amd_url)


async def test_amd_is_asked_for_and_a_machine_gets_the_message_then_the_call_ends(
    placed: Placed,
) -> None:
    api = placed.api
    (request,) = placed.fake.requests
    assert request.field("MachineDetection") == "DetectMessageEnd"
    assert request.field("AsyncAmd") == "true"
    assert request.field("MachineDetectionTimeout") == "20"
    assert request.field("MachineDetectionSpeechThreshold") == "2400"
    assert placed.amd_url.startswith(f"{api.base}/twilio/amd?call={placed.call_id}")

    assert await placed.amd("machine_end_beep") == 204
    live = api.app.state.ava.calls.live
    await eventually(lambda: placed.call_id not in live, "the call ended")
    record: dict[str, Any] = {}
    for _ in range(100):  # the recorder writes the end a moment after the session has ended
        record = (await api.a.get(f"/call/{placed.call_id}")).json()
        if record["status"] == "ended":
            break
        await asyncio.sleep(0.05)
    assert record["endedReason"] == "voicemail"
    assert "machine_end_beep" in record["endedMessage"]
    bot = [m["message"] for m in record["messages"] if m["role"] == "bot"]
    # rendered for this call, and heard whole (not cut by the machine)
    assert bot[-1] == "Hi Ada, this is the front desk. Please call us back."
    assert placed.line.marks_echoed == placed.line.marks_received
    events = await api.stores.calls.get_call(api.tenant_a, placed.call_id)
    assert events is not None
    amd = [e.data for e in events.events if e.kind == "twilio-amd"]
    assert amd == [{"answeredBy": "machine_end_beep", "machineDetectionDuration": "4180"}]


async def test_a_human_answer_or_a_forged_result_changes_nothing(placed: Placed) -> None:
    api = placed.api
    assert await placed.amd("machine_end_beep", token="not-the-numbers-token") in (401, 403)
    assert await placed.amd("human") == 204
    await asyncio.sleep(0.5)
    assert placed.call_id in api.app.state.ava.calls.live
    record = (await api.a.get(f"/call/{placed.call_id}")).json()
    assert record["status"] == "in-progress"


async def test_detectors_ava_cannot_run_are_refused_when_configured(
    tmp_path: Path, assistant_file: AssistantFactory, database_url: str
) -> None:
    app = api_app(tmp_path, assistant_file, database_url, ScriptedEngines([], []))
    async with running_api(app) as api:
        for body, field in [
            ({"voicemailDetection": {"provider": "google"}}, "voicemailDetection.provider"),
            (
                {"voicemailDetection": {"provider": "twilio", "voicemailDetectionTypes": ["x"]}},
                "voicemailDetection.voicemailDetectionTypes",
            ),
            (
                {"voicemailDetection": {"provider": "twilio", "machineDetectionTimeout": 600}},
                "voicemailDetection.machineDetectionTimeout",
            ),
        ]:
            response = await api.a.post("/assistant", json={**ASSISTANT, **body})
            assert response.status_code == 422, response.text
            assert any(m.startswith(field) for m in response.json()["message"]), response.json()
        off = await api.a.post("/assistant", json={**ASSISTANT, "voicemailDetection": "off"})
        assert off.status_code == 201, off.text
