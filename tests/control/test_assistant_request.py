"""Vapi's `assistant-request`: a number with no assistant but a server asks it on every call.

A real AVA (scripted engines) and the customer's server as a real HTTP receiver on 127.0.0.1;
the calls are placed the way Twilio places them (signed voice webhook, TwiML, media stream)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from control.assistant_request import FAILED_SAY, PendingAssistants
from media.twilio.caller import CallScript, parse_twiml, place_call
from media.twilio.signature import compute_signature
from tests.conftest import AssistantFactory, ScriptedEngines
from tests.control.conftest import ASSISTANT, AUTH_TOKEN, NUMBER, Api, api_app, running_api
from tests.control.webhook_receiver import Answer, Receiver, receiver, sdk_parse
from voice.assistant import Assistant
from voice.testing import tone_ulaw

pytestmark = pytest.mark.timeout(60)

SPEECH = tone_ulaw(0.8, frequency=300.0)
CALLER = "+15550001111"
TRANSIENT = {
    "name": "Night shift",
    "firstMessage": "Night desk, how can I help?",
    "model": {"provider": "local", "fallbackReply": "We open at nine."},
}


@pytest.fixture
async def setup(
    tmp_path: Path, assistant_file: AssistantFactory, database_url: str
) -> AsyncIterator[tuple[Api, Receiver]]:
    engines = ScriptedEngines(["What are your hours?"], ["We open at nine."], seconds_per_char=0.01)
    app = api_app(
        tmp_path, assistant_file, database_url, engines, assistant_request_timeout_seconds=0.5
    )
    async with receiver() as hooks, running_api(app) as api:
        body = {**NUMBER, "server": hooks.server()}
        response = await api.a.post("/phone-number", json=body)
        assert response.status_code == 201, response.text
        yield api, hooks


async def voice_webhook(api: Api, token: str | None = AUTH_TOKEN) -> httpx.Response:
    url = f"{api.base}/twilio/voice"
    form = {"CallSid": "CA" + "4" * 32, "From": CALLER, "To": NUMBER["number"]}
    headers = {} if token is None else {"X-Twilio-Signature": compute_signature(token, url, form)}
    async with httpx.AsyncClient() as http:
        return await http.post(url, data=form, headers=headers)


async def recorded(api: Api) -> list[dict[str, Any]]:
    return list((await api.a.get("/call")).json())


async def test_a_transient_assistant_takes_the_call(setup: tuple[Api, Receiver]) -> None:
    api, hooks = setup
    # The transient assistant sends its own call's webhooks to the same receiver.
    hooks.answers["assistant-request"] = Answer.json(
        {"assistant": {**TRANSIENT, "server": hooks.server()}}
    )
    report = await place_call(
        api.base, CallScript([SPEECH]), auth_token=AUTH_TOKEN, to_number=NUMBER["number"],
        from_number=CALLER, fetch_record=False,
    )  # fmt: skip
    assert report.error is None, report.error
    (request,) = hooks.messages("assistant-request")
    assert all(signed for _, signed in hooks.received)
    assert sdk_parse(request).phone_number.number == NUMBER["number"]
    call = request["call"]
    assert call["type"] == "inboundPhoneCall" and call["phoneCallProviderId"] == report.call_sid
    assert request["customer"] == {"number": CALLER}
    assert request["phoneNumber"]["number"] == NUMBER["number"]
    assert "secret" not in request["phoneNumber"]["server"]
    # The call ran on the transient assistant, under the id its server was told.
    record = api.app.state.calls.find(report.call_sid)
    assert record is not None and record.id == call["id"]
    assert record.assistant == "Night shift" and record.ended_reason == "customer-ended-call"
    bot = [m["message"] for m in record.messages if m["role"] == "bot"]
    assert bot == ["Night desk, how can I help?", "We open at nine."]
    ended = await hooks.wait_for(lambda m: m["type"] == "end-of-call-report")
    assert ended["call"]["id"] == call["id"]
    (stored,) = await recorded(api)
    assert stored["id"] == call["id"] and stored["status"] == "ended"
    pending = api.app.state.pending_assistants
    assert pending.take(api.tenant_a, call["id"]) is None and len(pending) == 0  # taken, not left


async def test_an_assistant_id_takes_the_call(setup: tuple[Api, Receiver]) -> None:
    api, hooks = setup
    assistant_id = (await api.a.post("/assistant", json=ASSISTANT)).json()["id"]
    hooks.answers["assistant-request"] = Answer.json({"assistantId": assistant_id})
    report = await place_call(
        api.base, CallScript([SPEECH]), auth_token=AUTH_TOKEN, to_number=NUMBER["number"],
        fetch_record=False,
    )  # fmt: skip
    assert report.error is None, report.error
    record = api.app.state.calls.find(report.call_sid)
    assert record is not None and record.assistant == ASSISTANT["name"]
    assert record.metadata["assistant_id"] == assistant_id
    # The stored assistant has no server: its webhooks go to the number's (Vapi's precedence).
    report_message = await hooks.wait_for(lambda m: m["type"] == "end-of-call-report")
    assert report_message["call"]["id"] == record.id


async def test_another_tenants_assistant_id_is_refused(setup: tuple[Api, Receiver]) -> None:
    api, hooks = setup
    theirs = (await api.b.post("/assistant", json=ASSISTANT)).json()["id"]
    hooks.answers["assistant-request"] = Answer.json({"assistantId": theirs})
    response = await voice_webhook(api)
    assert FAILED_SAY in response.text and "<Stream" not in response.text
    (call,) = await recorded(api)
    assert call["endedReason"] == "assistant-request-returned-invalid-assistant"


async def test_an_error_is_spoken_and_the_call_hung_up(setup: tuple[Api, Receiver]) -> None:
    api, hooks = setup
    hooks.answers["assistant-request"] = Answer.json({"error": "Sorry, we are closed today."})
    response = await voice_webhook(api)
    assert response.status_code == 200
    assert "<Say>Sorry, we are closed today.</Say>" in response.text
    assert "<Hangup" in response.text and "<Stream" not in response.text
    (call,) = await recorded(api)
    assert call["status"] == "ended"
    assert call["endedReason"] == "assistant-request-returned-error"
    assert call["id"] == hooks.messages("assistant-request")[0]["call"]["id"]
    assert api.app.state.calls.live == {}
    # Twilio's fallback URL asking again for the same CallSid: same answer, one record.
    again = await voice_webhook(api)
    assert again.text == response.text and len(await recorded(api)) == 1


async def test_no_answer_in_time_is_a_failure(setup: tuple[Api, Receiver]) -> None:
    api, hooks = setup
    hooks.answers["assistant-request"] = Answer.json({"assistant": TRANSIENT}, delay=3.0)
    started = time.perf_counter()
    response = await voice_webhook(api)
    elapsed = time.perf_counter() - started
    assert 0.5 <= elapsed < 1.5  # the 0.5 s budget, not the receiver's 3 s
    assert FAILED_SAY in response.text and "<Stream" not in response.text
    (call,) = await recorded(api)
    assert call["endedReason"] == "assistant-request-failed"
    assert "no answer within 0.5s" in call["endedMessage"]


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (Answer(b"<html>oops</html>"), "assistant-request-failed"),
        (Answer(b"[1, 2]"), "assistant-request-failed"),
        (Answer(b'{"assistant": "' + b"x" * 300_000 + b'"}'), "assistant-request-failed"),
        (Answer.json({"assistant": TRANSIENT}, status=500), "assistant-request-failed"),
        (Answer.json({}), "assistant-request-returned-no-assistant"),
        (Answer.json({"error": ""}), "assistant-request-returned-unspeakable-error"),
        (
            Answer.json({"assistant": {"firstMessageMode": "sing"}}),
            "assistant-request-returned-invalid-assistant",
        ),
        (Answer.json({"squadId": "sq_1"}), "assistant-request-returned-invalid-assistant"),
    ],
)
async def test_garbage_answers_end_the_call_with_vapis_reasons(
    setup: tuple[Api, Receiver], answer: Answer, reason: str
) -> None:
    api, hooks = setup
    hooks.answers["assistant-request"] = answer
    response = await voice_webhook(api)
    assert response.status_code == 200
    assert FAILED_SAY in response.text and "<Stream" not in response.text
    (call,) = await recorded(api)
    assert call["endedReason"] == reason


async def test_a_destination_forwards_the_call(setup: tuple[Api, Receiver]) -> None:
    api, hooks = setup
    hooks.answers["assistant-request"] = Answer.json(
        {"destination": {"type": "number", "number": "+15557770000"}}
    )
    response = await voice_webhook(api)
    assert "<Dial" in response.text and "+15557770000" in response.text
    (call,) = await recorded(api)
    assert call["endedReason"] == "assistant-request-returned-forwarding-phone-number"


async def test_a_badly_signed_call_never_reaches_the_server(setup: tuple[Api, Receiver]) -> None:
    api, hooks = setup
    hooks.answers["assistant-request"] = Answer.json({"assistant": TRANSIENT})
    assert (await voice_webhook(api, token=None)).status_code == 403
    assert (await voice_webhook(api, token="not-the-numbers-token")).status_code == 403
    assert hooks.received == [] and await recorded(api) == []
    # the same call, signed, does ask
    signed = await voice_webhook(api)
    assert parse_twiml(signed.text).parameters.keys() == {"ava_token"}
    assert len(hooks.messages("assistant-request")) == 1


def test_pending_assistants_are_bounded_in_number_and_time() -> None:
    now = [0.0]
    pending = PendingAssistants(ttl=60, max_entries=2, clock=lambda: now[0])
    one, two, three = (Assistant(name=n) for n in ("one", "two", "three"))
    pending.put("tenant-a", "call_1", one)
    pending.put("tenant-a", "call_2", two)
    pending.put("tenant-a", "call_3", three)  # over the bound: the oldest goes
    assert len(pending) == 2 and pending.take("tenant-a", "call_1") is None
    assert pending.take("tenant-b", "call_2") is None  # another tenant's key: not theirs
    assert pending.take("tenant-a", "call_2") is two
    assert pending.take("tenant-a", "call_2") is None  # taken once
    now[0] = 61.0
    assert pending.take("tenant-a", "call_3") is None and len(pending) == 0  # expired
