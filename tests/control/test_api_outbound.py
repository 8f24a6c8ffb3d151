"""POST /call through Twilio's REST API (the loopback fake), the outbound media stream, live
end-call, DELETE /call, status callbacks of placed calls, and webhook configuration on import."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from benchmarks.fakes.server import Fault, serve
from benchmarks.fakes.twilio_rest import FakeTwilioRest, FakeTwilioRestConfig
from control.outbound import outbound_stream
from media.twilio.caller import parse_twiml
from media.twilio.phone import PhoneLine
from media.twilio.signature import compute_signature
from tests.conftest import AssistantFactory, ScriptedEngines
from tests.control.conftest import ASSISTANT, AUTH_TOKEN, NUMBER, Api, api_app, running_api
from voice.assistant import Assistant

pytestmark = pytest.mark.timeout(60)

ACCOUNT = NUMBER["twilioAccountSid"]
CUSTOMER = "+15557654321"


@dataclass
class Outbound:
    api: Api
    twilio: FakeTwilioRest
    assistant: str
    number: str


@pytest.fixture
async def outbound(
    tmp_path: Path, assistant_file: AssistantFactory, database_url: str
) -> AsyncIterator[Outbound]:
    fake = FakeTwilioRest(FakeTwilioRestConfig(accounts={ACCOUNT: AUTH_TOKEN}))
    engines = ScriptedEngines([], [], seconds_per_char=0.01)
    async with serve(fake.app) as twilio_base:
        app = api_app(
            tmp_path, assistant_file, database_url, engines, twilio_api_base_url=twilio_base
        )
        async with running_api(app) as api:
            assistant = (await api.a.post("/assistant", json=ASSISTANT)).json()["id"]
            number = (await api.a.post("/phone-number", json=NUMBER)).json()["id"]
            yield Outbound(api, fake, assistant, number)


def _body(o: Outbound, **overrides: Any) -> dict[str, Any]:
    body = {"assistantId": o.assistant, "phoneNumberId": o.number, "customer": {"number": CUSTOMER}}
    return {**body, **overrides}


async def test_post_call_places_it_through_twilio(outbound: Outbound) -> None:
    api, fake = outbound.api, outbound.twilio
    response = await api.a.post("/call", json=_body(outbound))
    assert response.status_code == 201, response.text
    call = response.json()
    (sid,) = fake.calls
    assert call["type"] == "outboundPhoneCall" and call["status"] == "queued"
    assert call["phoneCallProviderId"] == sid and call["customer"] == {"number": CUSTOMER}
    assert call["assistantId"] == outbound.assistant
    assert call["phoneNumberId"] == outbound.number
    ws_base = api.base.replace("http://", "ws://", 1)
    assert call["monitor"] == {
        "listenUrl": f"{ws_base}/call/{call['id']}/listen",
        "controlUrl": f"{api.base}/call/{call['id']}/control",
    }
    (request,) = fake.requests
    assert request.username == ACCOUNT
    assert request.field("To") == CUSTOMER and request.field("From") == NUMBER["number"]
    status = f"{api.base}/twilio/status?call={call['id']}&tenant={api.tenant_a}"
    assert request.field("StatusCallback") == status
    stream = parse_twiml(request.field("Twiml") or "")
    assert stream.url == "ws" + api.base.removeprefix("http") + "/twilio/media"
    assert set(stream.parameters) == {"ava_token"}
    assert (await api.a.get(f"/call/{call['id']}")).json()["phoneCallProviderId"] == sid


@pytest.mark.parametrize(
    ("fault", "status", "words"),
    [(Fault.UNAUTHORIZED, 400, "20003"), (Fault.SERVER_ERROR, 502, "20500")],
)
async def test_twilio_refusal_is_a_clear_error_and_an_ended_record(
    outbound: Outbound, fault: Fault, status: int, words: str
) -> None:
    outbound.twilio.config.fault = fault
    response = await outbound.api.a.post("/call", json=_body(outbound))
    assert response.status_code == status, response.text
    assert "Twilio did not place the call" in response.json()["message"]
    assert words in response.json()["message"]
    (call,) = (await outbound.api.a.get("/call")).json()
    assert call["status"] == "ended"
    assert call["endedReason"] == "twilio-failed-to-connect-call"
    assert words in call["endedMessage"]


async def test_bad_requests_reach_neither_twilio_nor_the_records(outbound: Outbound) -> None:
    api = outbound.api
    theirs = (await api.b.post("/phone-number", json={**NUMBER, "number": "+14155550177"})).json()
    cases = [
        (_body(outbound, phoneNumberId=None), "phoneNumberId"),
        (_body(outbound, phoneNumberId=theirs["id"]), "phoneNumberId"),
        (_body(outbound, assistantId="no-such-assistant"), "assistantId"),
        (_body(outbound, assistant=ASSISTANT), "assistantId"),  # both
        (_body(outbound, assistantId=None), "assistantId"),  # neither
        (_body(outbound, customer={"number": "555-1234"}), "customer.number"),
        (_body(outbound, customer=None), "customer.number"),
        (
            _body(outbound, assistantId=None, assistant={"model": {"provider": "nope"}}),
            "assistant.model",
        ),
    ]
    for body, field in cases:
        response = await api.a.post("/call", json=body)
        assert response.status_code == 422, (body, response.text)
        assert any(m.startswith(field) for m in response.json()["message"]), response.json()
    assert outbound.twilio.requests == []
    assert (await api.a.get("/call")).json() == []


async def test_transient_assistant_is_kept_with_the_call(outbound: Outbound) -> None:
    secret = "transient-webhook-secret-42"
    server = {"url": "http://127.0.0.1:9/hooks", "secret": secret}
    inline = {**ASSISTANT, "name": "Transient", "server": server}
    body = _body(outbound, assistantId=None, assistant=inline)
    call = (await outbound.api.a.post("/call", json=body)).json()
    fetched = (await outbound.api.a.get(f"/call/{call['id']}")).json()
    assert fetched["assistant"]["name"] == "Transient" and "assistantId" not in fetched
    assert "metadata" not in fetched
    assert secret not in json.dumps(fetched)  # write-only, as on /assistant
    # Sealed at rest like a stored assistant's secret, and opened for the call itself.
    state = outbound.api.app.state.ava
    async with state.stores.engine.connect() as conn:
        rows = (await conn.exec_driver_sql("SELECT metadata FROM calls")).all()
    assert rows and all(secret not in str(row[0]) for row in rows)
    (sid,) = outbound.twilio.calls
    stream = await outbound_stream(
        state, {"call_id": call["id"], "tenant_id": outbound.api.tenant_a}, sid
    )
    assert isinstance(stream.assistant, Assistant)
    assert stream.assistant.server is not None and stream.assistant.server["secret"] == secret


async def _wait_status(api: Api, call_id: str, status: str) -> dict[str, Any]:
    for _ in range(100):
        call: dict[str, Any] = (await api.a.get(f"/call/{call_id}")).json()
        if call["status"] == status:
            return call
        await asyncio.sleep(0.05)
    raise AssertionError(f"call {call_id} never became {status}: {call}")


async def test_outbound_stream_runs_and_end_call_hangs_up_both_legs(outbound: Outbound) -> None:
    api, fake = outbound.api, outbound.twilio
    call = (await api.a.post("/call", json=_body(outbound))).json()
    (sid,) = fake.calls
    stream = parse_twiml(fake.calls[sid].twiml or "")
    headers = {"X-Twilio-Signature": compute_signature(AUTH_TOKEN, stream.url, {})}

    # the token is bound to this call's CallSid: another call's stream cannot use it
    stranger = PhoneLine(call_sid="CA" + "9" * 32, custom_parameters=stream.parameters)
    async with websockets.connect(stream.url, additional_headers=headers) as ws:
        await ws.send(stranger.connected())
        await ws.send(stranger.start(0.0))
        await asyncio.wait_for(ws.wait_closed(), 5)
        assert ws.close_code == 1008

    line = PhoneLine(call_sid=sid, custom_parameters=stream.parameters)
    async with websockets.connect(stream.url, additional_headers=headers) as ws:
        await ws.send(line.connected())
        await ws.send(line.start(0.0))
        first = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert first["event"] in ("media", "mark")  # the greeting is playing
        live = await _wait_status(api, call["id"], "in-progress")
        assert live["type"] == "outboundPhoneCall" and live["startedAt"]
        assert call["id"] in api.app.state.ava.calls.live

        ended = await api.a.post(live["monitor"]["controlUrl"], json={"type": "end-call"})
        assert ended.status_code == 200, ended.text
        assert ended.json()["endedReason"] == "manually-canceled"
        await asyncio.wait_for(ws.wait_closed(), 5)
    assert fake.calls[sid].updates == [{"Status": "completed"}]
    assert fake.calls[sid].status == "completed"
    for _ in range(100):
        if not api.app.state.ava.calls.live:
            break
        await asyncio.sleep(0.05)
    assert api.app.state.ava.calls.live == {}
    # the session itself ended with the API's reason (what webhooks and /metrics see)
    memory = api.app.state.ava.calls.find(call["id"])
    assert memory is not None and memory.ended_reason == "manually-canceled"
    record = (await api.a.get(f"/call/{call['id']}")).json()
    # the session's own ending does not overwrite the API's
    assert record["endedReason"] == "manually-canceled"
    # the session ran the call's assistant, on the call's record
    assert record["metadata"]["assistantName"] == ASSISTANT["name"]
    assert record["metadata"]["call_sid"] == sid and record["startedAt"]

    # ended: the stream cannot be reopened with the same token
    again = PhoneLine(call_sid=sid, custom_parameters=stream.parameters)
    async with websockets.connect(stream.url, additional_headers=headers) as ws:
        await ws.send(again.connected())
        await ws.send(again.start(0.0))
        await asyncio.wait_for(ws.wait_closed(), 5)
        assert ws.close_code == 1008


async def test_end_call_before_answer_cancels_twilios_leg(outbound: Outbound) -> None:
    api, fake = outbound.api, outbound.twilio
    call = (await api.a.post("/call", json=_body(outbound))).json()
    ended = await api.a.post(f"/call/{call['id']}/control", json={"type": "end-call"})
    assert ended.status_code == 200 and ended.json()["status"] == "ended"
    (twilio_call,) = fake.calls.values()
    assert twilio_call.updates == [{"Status": "completed"}]
    # again: already ended, nothing more sent to Twilio
    assert (await api.a.post(f"/call/{call['id']}/control", json={"type": "end-call"})).is_success
    assert len(fake.requests) == 2


async def test_end_call_when_twilio_fails_says_so(outbound: Outbound) -> None:
    api, fake = outbound.api, outbound.twilio
    call = (await api.a.post("/call", json=_body(outbound))).json()
    fake.config.fault, fake.config.fault_paths = Fault.SERVER_ERROR, ("/Calls/",)
    response = await api.a.post(f"/call/{call['id']}/control", json={"type": "end-call"})
    assert response.status_code == 502 and "Twilio did not end" in response.json()["message"]


async def test_control_and_delete_rules(outbound: Outbound) -> None:
    api = outbound.api
    call = (await api.a.post("/call", json=_body(outbound))).json()
    control = f"/call/{call['id']}/control"
    early = await api.a.post(control, json={"type": "say", "content": "hi"})
    assert early.status_code == 409 and "not connected yet" in early.json()["message"]
    assert (await api.a.post(control, json={"content": "no type"})).status_code == 422
    live = await api.a.delete(f"/call/{call['id']}")
    assert live.status_code == 409
    await api.a.post(control, json={"type": "end-call"})
    deleted = await api.a.delete(f"/call/{call['id']}")
    assert deleted.status_code == 200 and deleted.json()["id"] == call["id"]
    assert (await api.a.get(f"/call/{call['id']}")).status_code == 404
    assert (await api.a.delete(f"/call/{call['id']}")).status_code == 404


async def _status(api: Api, sid: str, status: str, sequence: int) -> int:
    # On a call we placed, our number is From.
    form = {
        "CallSid": sid,
        "AccountSid": ACCOUNT,
        "From": NUMBER["number"],
        "To": CUSTOMER,
        "Direction": "outbound-api",
        "CallStatus": status,
        "SequenceNumber": str(sequence),
        "CallbackSource": "call-progress-events",
    }
    url = f"{api.base}/twilio/status"
    headers = {"X-Twilio-Signature": compute_signature(AUTH_TOKEN, url, form)}
    async with httpx.AsyncClient() as http:
        return (await http.post(url, data=form, headers=headers)).status_code


async def test_status_callbacks_move_and_end_a_placed_call(outbound: Outbound) -> None:
    api = outbound.api
    call = (await api.a.post("/call", json=_body(outbound))).json()
    sid = call["phoneCallProviderId"]
    assert await _status(api, sid, "ringing", 2) == 204
    assert (await api.a.get(f"/call/{call['id']}")).json()["status"] == "ringing"
    assert await _status(api, sid, "initiated", 1) == 204  # late: does not move it back
    assert await _status(api, sid, "busy", 3) == 204
    assert await _status(api, sid, "ringing", 2) == 204  # Twilio's retry: recorded once
    fetched = (await api.a.get(f"/call/{call['id']}")).json()
    assert fetched["status"] == "ended" and fetched["endedReason"] == "customer-busy"
    callbacks = fetched["transport"]["statusCallbacks"]
    assert [(c["sequenceNumber"], c["callStatus"]) for c in callbacks] == [
        (1, "initiated"),
        (2, "ringing"),
        (3, "busy"),
    ]


async def test_import_can_point_the_numbers_webhook_at_us(outbound: Outbound) -> None:
    api, fake = outbound.api, outbound.twilio
    mine = fake.add_number(ACCOUNT, "+14155550123")
    body = {**NUMBER, "number": "+14155550123", "configureTwilioWebhook": True}
    wrong = await api.a.post("/phone-number", json={**body, "twilioAuthToken": "wrong"})
    assert wrong.status_code == 400 and "20003" in wrong.json()["message"]
    absent = await api.a.post("/phone-number", json={**body, "number": "+14155550124"})
    assert absent.status_code == 400 and "has no number" in absent.json()["message"]
    assert mine.voice_url == "" and len((await api.a.get("/phone-number")).json()) == 1

    imported = await api.a.post("/phone-number", json=body)
    assert imported.status_code == 201, imported.text
    assert mine.voice_url == f"{api.base}/twilio/voice" and mine.voice_method == "POST"
    assert mine.status_callback == f"{api.base}/twilio/status"
    assert "configureTwilioWebhook" not in imported.json()
    # already imported: refused before Twilio is touched
    before = len(fake.requests)
    assert (await api.a.post("/phone-number", json=body)).status_code == 409
    assert len(fake.requests) == before


async def _callbacks(fake: FakeTwilioRest, count: int) -> list[tuple[int, str, int]]:
    for _ in range(100):
        if len(fake.callbacks) >= count:
            break
        await asyncio.sleep(0.02)
    return [(c.sequence, c.status, c.response_status) for c in fake.callbacks]


async def test_twilios_own_signed_callbacks_are_recorded_in_order(outbound: Outbound) -> None:
    api, fake = outbound.api, outbound.twilio
    fake.config.status_callbacks = True
    call = (await api.a.post("/call", json=_body(outbound))).json()
    sid = call["phoneCallProviderId"]
    assert await _callbacks(fake, 1) == [(0, "initiated", 204)]
    await fake.send_status(sid, "ringing")
    assert (await api.a.get(f"/call/{call['id']}")).json()["status"] == "ringing"
    await api.a.post(f"/call/{call['id']}/control", json={"type": "end-call"})
    assert await _callbacks(fake, 3) == [
        (0, "initiated", 204),
        (1, "ringing", 204),
        (2, "completed", 204),
    ]
    fetched = (await api.a.get(f"/call/{call['id']}")).json()
    assert [c["callStatus"] for c in fetched["transport"]["statusCallbacks"]] == [
        "initiated",
        "ringing",
        "completed",
    ]
    assert fetched["endedReason"] == "manually-canceled"  # the first end wins

    # a callback signed with another token is refused and leaves no trace
    fake.config.accounts[ACCOUNT] = "not-the-numbers-token"
    forged = await fake.send_status(sid, "in-progress")
    assert forged is not None and forged.response_status == 403
    after = (await api.a.get(f"/call/{call['id']}")).json()
    assert len(after["transport"]["statusCallbacks"]) == 3
