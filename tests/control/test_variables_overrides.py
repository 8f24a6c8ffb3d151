"""`{{variables}}` and `assistantOverrides` through the API: templates refused at save time,
overrides on POST /call (placed through the loopback fake Twilio REST, the callee's side played
over the real media stream) and on `assistant-request` answers; the scripted LLM sees the
rendered prompt, the TTS is asked for the rendered greeting, and the call's record shows the
effective assistant, its variables and the unknown ones."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from benchmarks.fakes.server import serve
from benchmarks.fakes.twilio_rest import FakeTwilioRest, FakeTwilioRestConfig
from control.assistant_request import FAILED_SAY
from media.twilio.caller import CallReport, CallScript, _converse, place_call
from media.twilio.signature import compute_signature
from tests.conftest import AssistantFactory, ScriptedEngines
from tests.control.conftest import ASSISTANT, AUTH_TOKEN, NUMBER, Api, api_app, running_api
from tests.control.twilio_phone import placed_stream
from tests.control.webhook_receiver import Answer, Receiver, receiver
from voice.testing import tone_ulaw

pytestmark = pytest.mark.timeout(60)

ACCOUNT = NUMBER["twilioAccountSid"]
CUSTOMER = "+15557654321"
CALLER = "+15550001111"
SPEECH = tone_ulaw(0.8, frequency=300.0)
TEMPLATED = {
    **ASSISTANT,
    "firstMessage": (
        "Hi {{ name | capitalize }}, this is {{ company | default: 'the front desk' }}."
    ),
    "model": {
        **ASSISTANT["model"],
        "messages": [
            {
                "role": "system",
                "content": "You call {{ customer.number }} about order {{ order }} in {{ year }}.",
            }
        ],
    },
}


@dataclass
class Outbound:
    api: Api
    twilio: FakeTwilioRest
    engines: ScriptedEngines
    assistant: str
    number: str


@pytest.fixture
async def outbound(
    tmp_path: Path, assistant_file: AssistantFactory, database_url: str
) -> AsyncIterator[Outbound]:
    fake = FakeTwilioRest(FakeTwilioRestConfig(accounts={ACCOUNT: AUTH_TOKEN}))
    engines = ScriptedEngines(["Is it shipped?"], ["It shipped today."], seconds_per_char=0.01)
    async with serve(fake.app) as twilio_base:
        app = api_app(
            tmp_path, assistant_file, database_url, engines, twilio_api_base_url=twilio_base
        )
        async with running_api(app) as api:
            response = await api.a.post("/assistant", json=TEMPLATED)
            assert response.status_code == 201, response.text
            number = (await api.a.post("/phone-number", json=NUMBER)).json()["id"]
            yield Outbound(api, fake, engines, response.json()["id"], number)


def _body(o: Outbound, **fields: Any) -> dict[str, Any]:
    body = {"assistantId": o.assistant, "phoneNumberId": o.number, "customer": {"number": CUSTOMER}}
    return {**body, **fields}


async def _wait_ended(api: Api, call_id: str) -> dict[str, Any]:
    for _ in range(100):
        call: dict[str, Any] = (await api.a.get(f"/call/{call_id}")).json()
        if call["status"] == "ended" and call.get("messages"):
            return call
        await asyncio.sleep(0.05)
    raise AssertionError(f"call {call_id} never ended: {call}")


async def _answer(o: Outbound) -> CallReport:
    """The callee picks up the call Twilio placed and says one thing."""
    async with placed_stream(o.twilio, token=AUTH_TOKEN, start=False) as (ws, line):
        report = CallReport(line.call_sid)
        await _converse(ws, line, CallScript([SPEECH], await_greeting=True), report)
    assert report.error is None, report.error
    return report


async def test_templates_that_do_not_parse_are_refused_at_save(outbound: Outbound) -> None:
    api = outbound.api
    bad = {**ASSISTANT, "firstMessage": "Hi {{ name"}
    created = await api.a.post("/assistant", json=bad)
    assert created.status_code == 422
    assert created.json()["message"][0].startswith("firstMessage: ")
    assert "does not parse" in created.json()["message"][0]
    prompt = {
        "model": {**ASSISTANT["model"], "messages": [{"role": "system", "content": "{% if %}"}]}
    }
    patched = await api.a.patch(f"/assistant/{outbound.assistant}", json=prompt)
    assert patched.status_code == 422
    assert patched.json()["message"][0].startswith("model.messages: ")
    assert "messages[0].content: template does not parse" in patched.json()["message"][0]
    stored = (await api.a.get(f"/assistant/{outbound.assistant}")).json()
    assert stored["firstMessage"] == TEMPLATED["firstMessage"]  # unchanged by the refusal
    tool = {"type": "function", "function": {"name": "f", "description": "{{ a | nope }}"}}
    with_tool = {**ASSISTANT, "model": {**ASSISTANT["model"], "tools": [tool]}}
    response = await api.a.post("/assistant", json=with_tool)
    assert response.status_code == 422
    assert "tools[0].function.description: template uses unknown filter" in response.text


async def test_bad_overrides_are_422_naming_the_field(outbound: Outbound) -> None:
    api = outbound.api
    cases = [
        ({"assistantOverrides": {"firstMessage": "{{ oops"}}, "assistantOverrides.firstMessage"),
        ({"assistantOverrides": {"voice": {"speed": 99}}}, "assistantOverrides.voice.speed"),
        ({"assistantOverrides": {"model": {"provider": "nope"}}}, "assistantOverrides.model"),
        (
            {"assistantOverrides": {"model": {"toolIds": ["no-such-tool"]}}},
            "assistantOverrides.model.toolIds: tool no-such-tool not found",
        ),
        (
            {"assistantOverrides": {"variableValues": ["not", "an", "object"]}},
            "assistantOverrides.variableValues",
        ),
        (
            {"assistantOverrides": {"tools:append": {"type": "x"}}},
            "assistantOverrides.tools:append",
        ),
        (
            {
                "customer": {
                    "number": CUSTOMER,
                    "assistantOverrides": {"endCallMessage": "{% for %}"},
                }
            },
            "customer.assistantOverrides.endCallMessage",
        ),
        (
            {
                "assistantId": None,
                "assistant": {**ASSISTANT, "firstMessage": "{{ x"},
                "assistantOverrides": {"firstMessage": "fine"},
            },
            "assistant.firstMessage",
        ),
    ]
    for fields, field in cases:
        response = await api.a.post("/call", json=_body(outbound, **fields))
        assert response.status_code == 422, (fields, response.text)
        assert any(m.startswith(field) for m in response.json()["message"]), response.json()
    assert outbound.twilio.requests == []
    assert (await api.a.get("/call")).json() == []


async def test_outbound_call_renders_variables_and_keeps_the_effective_assistant(
    outbound: Outbound,
) -> None:
    api, engines = outbound.api, outbound.engines
    overrides = {
        "variableValues": {"name": "ada", "order": "A-1042"},
        "model": {"temperature": 0.9},
        "endCallMessage": "Goodbye {{ name }}",
        "voicemailMessage": "{{ customer.name }}, call us back.",
    }
    customer = {"number": CUSTOMER, "name": "Ada Lovelace"}
    body = _body(outbound, assistantOverrides=overrides, customer=customer)
    response = await api.a.post("/call", json=body)
    assert response.status_code == 201, response.text
    call = response.json()
    # The effective assistant is the call's from the start: the stored one with the overrides.
    effective = call["assistant"]
    assert effective["model"]["temperature"] == 0.9
    assert effective["model"]["messages"] == TEMPLATED["model"]["messages"]  # deep merge
    assert effective["variableValues"] == overrides["variableValues"]
    assert call["assistantId"] == outbound.assistant
    before = len(engines.tts.requests)  # the server's own default greeting, warmed at start
    await _answer(outbound)

    greeting = "Hi Ada, this is the front desk."
    assert engines.tts.requests[before] == greeting  # what the callee hears
    system = engines.llm.requests[0][0]
    assert system.role == "system"
    year = datetime.now(UTC).year
    assert system.content == f"You call +15557654321 about order A-1042 in {year}."
    record = await _wait_ended(api, call["id"])
    bot = [m["message"] for m in record["messages"] if m["role"] == "bot"]
    assert bot[0] == greeting
    assert record["assistant"]["endCallMessage"] == "Goodbye {{ name }}"  # as configured
    values = record["artifact"]["variableValues"]
    assert values["name"] == "ada"
    assert values["customer"] == {"number": CUSTOMER, "name": "Ada Lovelace"}
    assert record["customer"] == customer  # Vapi's call.customer, as POST /call gave it
    assert set(values) >= {"now", "date", "time", "month", "day", "year"}
    assert record["unknownVariables"] == ["company"]  # defaulted in the greeting, not given
    assert "metadata" not in record or "variableValues" not in record["metadata"]


async def test_stored_assistant_without_overrides_still_renders(outbound: Outbound) -> None:
    api, engines = outbound.api, outbound.engines
    call = (await api.a.post("/call", json=_body(outbound))).json()
    assert "assistant" not in call  # nothing of its own: the stored assistant, by id
    before = len(engines.tts.requests)
    await _answer(outbound)
    assert engines.tts.requests[before] == "Hi , this is the front desk."
    record = await _wait_ended(api, call["id"])
    assert record["unknownVariables"] == ["company", "name", "order"]
    assert record["artifact"]["variableValues"]["customer"] == {"number": CUSTOMER}


# --- assistant-request answers with overrides ---------------------------------------------------


@pytest.fixture
async def inbound(
    tmp_path: Path, assistant_file: AssistantFactory, database_url: str
) -> AsyncIterator[tuple[Api, Receiver, ScriptedEngines]]:
    engines = ScriptedEngines(["What are your hours?"], ["We open at nine."], seconds_per_char=0.01)
    app = api_app(
        tmp_path, assistant_file, database_url, engines, assistant_request_timeout_seconds=1.0
    )
    async with receiver() as hooks, running_api(app) as api:
        response = await api.a.post("/phone-number", json={**NUMBER, "server": hooks.server()})
        assert response.status_code == 201, response.text
        yield api, hooks, engines


async def test_assistant_request_answer_with_overrides(
    inbound: tuple[Api, Receiver, ScriptedEngines],
) -> None:
    api, hooks, engines = inbound
    assistant_id = (await api.a.post("/assistant", json=TEMPLATED)).json()["id"]
    before = len(engines.tts.requests)
    overrides = {
        "firstMessage": "Evening, {{ name }}! You called from {{ customer.number }}.",
        "variableValues": {"name": "Grace", "order": "B-7"},
    }
    hooks.answers["assistant-request"] = Answer.json(
        {"assistantId": assistant_id, "assistantOverrides": overrides}
    )
    report = await place_call(
        api.base, CallScript([SPEECH]), auth_token=AUTH_TOKEN, to_number=NUMBER["number"],
        from_number=CALLER, fetch_record=False,
    )  # fmt: skip
    assert report.error is None, report.error
    greeting = f"Evening, Grace! You called from {CALLER}."
    assert engines.tts.requests[before] == greeting
    assert engines.llm.requests[0][0].content.startswith(f"You call {CALLER} about order B-7 in")
    memory = api.app.state.calls.find(report.call_sid)
    assert memory is not None and memory.metadata["assistant_id"] == assistant_id
    for _ in range(100):
        (stored,) = (await api.a.get("/call")).json()
        if stored["status"] == "ended":
            break
        await asyncio.sleep(0.05)
    record = (await api.a.get(f"/call/{stored['id']}")).json()
    assert record["assistantId"] == assistant_id and record["type"] == "inboundPhoneCall"
    assert record["assistant"]["firstMessage"] == overrides["firstMessage"]  # the effective one
    assert record["assistant"]["model"]["messages"] == TEMPLATED["model"]["messages"]
    assert record["artifact"]["variableValues"]["customer"] == {"number": CALLER}
    assert record["unknownVariables"] == []
    bot = [m["message"] for m in record["messages"] if m["role"] == "bot"]
    assert bot[0] == greeting


async def test_assistant_request_overrides_that_break_the_assistant_refuse_the_call(
    inbound: tuple[Api, Receiver, ScriptedEngines],
) -> None:
    api, hooks, _ = inbound
    assistant_id = (await api.a.post("/assistant", json=TEMPLATED)).json()["id"]
    hooks.answers["assistant-request"] = Answer.json(
        {"assistantId": assistant_id, "assistantOverrides": {"firstMessage": "{{ broken"}}
    )
    url = f"{api.base}/twilio/voice"
    form = {"CallSid": "CA" + "5" * 32, "From": CALLER, "To": NUMBER["number"]}
    headers = {"X-Twilio-Signature": compute_signature(AUTH_TOKEN, url, form)}
    async with httpx.AsyncClient() as http:
        response = await http.post(url, data=form, headers=headers)
    # no stream: the caller hears an apology and a hang-up
    assert FAILED_SAY in response.text and "<Stream" not in response.text
    (call,) = (await api.a.get("/call")).json()
    assert call["endedReason"] == "assistant-request-returned-invalid-assistant"
    assert call["endedMessage"].startswith("assistantOverrides.firstMessage: ")


async def test_assistant_request_transient_assistant_with_overrides(
    inbound: tuple[Api, Receiver, ScriptedEngines],
) -> None:
    api, hooks, engines = inbound
    before = len(engines.tts.requests)
    transient = {
        "name": "Night shift",
        "firstMessage": "Night desk for {{ name }}.",
        "model": {"provider": "local", "fallbackReply": "We open at nine."},
    }
    hooks.answers["assistant-request"] = Answer.json(
        {
            "assistant": transient,
            "assistantOverrides": {"name": "Night shift 2", "variableValues": {"name": "Lin"}},
        }
    )
    report = await place_call(
        api.base, CallScript([SPEECH]), auth_token=AUTH_TOKEN, to_number=NUMBER["number"],
        from_number=CALLER, fetch_record=False,
    )  # fmt: skip
    assert report.error is None, report.error
    assert engines.tts.requests[before] == "Night desk for Lin."
    memory = api.app.state.calls.find(report.call_sid)
    assert memory is not None and memory.assistant == "Night shift 2"  # the override applied
    for _ in range(100):
        (stored,) = (await api.a.get("/call")).json()
        if stored["status"] == "ended":
            break
        await asyncio.sleep(0.05)
    record = (await api.a.get(f"/call/{stored['id']}")).json()
    assert record["assistant"]["name"] == "Night shift 2"
    assert record["assistant"]["variableValues"] == {"name": "Lin"}
    assert record["artifact"]["variableValues"]["name"] == "Lin"


async def test_a_template_past_its_limits_ends_the_call_saying_which(outbound: Outbound) -> None:
    # Parses (so POST /call takes it); the loop's bound comes from the call's own values.
    overrides = {
        "firstMessage": "{% for i in (1..n) %}hi {% endfor %}",
        "variableValues": {"n": 1_000_000},
    }
    body = _body(outbound, assistantOverrides=overrides)
    call = (await outbound.api.a.post("/call", json=body)).json()
    async with placed_stream(outbound.twilio, token=AUTH_TOKEN) as (ws, _):
        await asyncio.wait_for(ws.wait_closed(), 5)
    record = (await outbound.api.a.get(f"/call/{call['id']}")).json()
    assert record["status"] == "ended" and record["endedReason"] == "call.in-progress.error-server"
    assert record["endedMessage"].startswith("firstMessage: rendering stopped at a limit")
