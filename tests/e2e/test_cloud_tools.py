"""Whole calls that use tools, on the cloud adapters pointed at the fakes (see test_cloud_call).

A function tool round trip against a local tool server (signed, Vapi's `tool-calls` message), a
failing tool, a barge-in during a tool run, `endCall`, `transferCall` reaching the fake Twilio
REST API with the `<Dial>` TwiML (and without Twilio credentials), and the signed
`end-of-call-report` webhook received by a local server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from benchmarks.fakes.openai import FakeResponse, FakeToolCall, OpenAiFakeConfig, Reply
from benchmarks.fakes.server import REJECT_STATUS, Fault
from benchmarks.fakes.server import serve as serve_fake
from benchmarks.fakes.twilio_rest import FakeCall, FakeTwilioRest, FakeTwilioRestConfig
from media.twilio.caller import CallReport, CallScript, place_call
from media.twilio.twiml import dial
from storage import TwilioCredentials
from tests.conftest import AssistantFactory, conversation, serve
from tests.e2e.test_cloud_call import (
    KEY,
    SPEECH,
    bot_messages,
    cloud_assistant,
    make_app,
    running_fakes,
)
from tests.storage.conftest import database_text
from voice.server_messages import verify_signature
from voice.session_config import TRANSFER_FAILED

pytestmark = pytest.mark.timeout(90)

SECRET = "shared-secret"
Handler = Callable[[int, dict[str, Any]], Awaitable[Response]]


@dataclass
class Receiver:
    """A local HTTP server standing in for a tool server or a webhook receiver."""

    handler: Handler
    received: list[tuple[dict[str, Any], bool]] = field(default_factory=list)  # (msg, signed)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        signed = verify_signature(body, request.headers, SECRET, now=time.time())
        message = json.loads(body)["message"]
        self.received.append((message, signed))
        self.arrived.set()
        return await self.handler(len(self.received), message)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m, _ in self.received if m["type"] == kind]


@asynccontextmanager
async def receiver(handler: Handler) -> AsyncIterator[tuple[Receiver, str]]:
    server = Receiver(handler)
    app = Starlette(routes=[Route("/hook", server.handle, methods=["POST"])])
    async with serve_fake(app) as base:
        yield server, f"{base}/hook"


async def weather(_: int, message: dict[str, Any]) -> Response:
    (call,) = message["toolCallList"]
    city = call["function"]["arguments"]["city"]
    return JSONResponse({"results": [{"toolCallId": call["id"], "result": f"{city}: 62F"}]})


def weather_tool(
    url: str, *, filler: str = "Let me look that up.", timeout: float = 2
) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
        "server": {"url": url, "secret": SECRET, "timeoutSeconds": timeout},
        "messages": [{"type": "request-start", "content": filler}],
    }


def weather_model(messages: list[dict[str, Any]]) -> Reply:
    last = messages[-1]
    if last["role"] == "tool":
        return f"It says {last['content']}"
    if "weather" in last["content"]:
        return FakeResponse(tool_calls=[FakeToolCall("get_weather", '{"city": "Paris"}')])
    return "Anything else?"


async def test_a_tenants_encrypted_secrets_still_sign_its_calls(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    """The secrets are stored sealed (the database never holds them), yet the call that resolves
    the tenant's assistant and its stored tool signs the tool request and the webhooks."""

    async def ok(_: int, message: dict[str, Any]) -> Response:
        return Response("ok")

    chat = OpenAiFakeConfig(api_key=KEY, reply=weather_model)
    number_token, to_number = "number-auth-token", "+15557654321"
    async with (
        receiver(weather) as (tool_server, tool_url),
        receiver(ok) as (hooks, hook_url),
        running_fakes(["What's the weather in Paris?"], openai=chat) as fakes,
    ):
        app = make_app(fakes, assistant_file, tmp_path)
        async with serve(app) as base:
            stores = app.state.ava.stores
            tenant = (await stores.tenants.create_tenant("Acme")).id
            tool = await stores.tools.create(tenant, weather_tool(tool_url))
            config = cloud_assistant(
                model={"toolIds": [tool.id]}, server={"url": hook_url, "secret": SECRET}
            )
            assistant = await stores.assistants.create(tenant, config)
            await stores.phone_numbers.create(
                tenant,
                number=to_number,
                credentials=TwilioCredentials(ACCOUNT, auth_token=number_token),
                assistant_id=assistant.id,
            )
            stored = await database_text(
                stores.engine, app.state.ava.settings.resolved_database_url()
            )
            report = await place_call(
                base,
                CallScript([SPEECH], hang_up_after=5.0),
                auth_token=number_token,
                to_number=to_number,
                fetch_record=False,
            )
            record = await record_of(app, report.call_sid)
            async with asyncio.timeout(10):
                while not hooks.of_type("end-of-call-report"):
                    hooks.arrived.clear()
                    await hooks.arrived.wait()
    assert tool_url in stored and SECRET not in stored
    assert report.error is None, report.error
    assert record["errors"] == []
    ((message, signed),) = tool_server.received
    assert signed and message["type"] == "tool-calls"
    assert "secret" not in json.dumps(message)
    assert hooks.received and all(signed for _, signed in hooks.received)
    assert bot_messages_of(record)[-1] == "Let me look that up. It says Paris: 62F"


def bot_messages_of(record: dict[str, Any]) -> list[str]:
    return [m["message"] for m in record["messages"] if m["role"] == "bot"]


def roles(report: CallReport) -> list[str]:
    assert report.record is not None
    return [m["role"] for m in report.record["messages"]]


async def test_a_tool_call_round_trip(tmp_path: Path, assistant_file: AssistantFactory) -> None:
    chat = OpenAiFakeConfig(api_key=KEY, reply=weather_model)
    async with (
        receiver(weather) as (tool_server, url),
        running_fakes(["What's the weather in Paris?"], openai=chat) as fakes,
    ):
        app = make_app(fakes, assistant_file, tmp_path, model={"tools": [weather_tool(url)]})
        async with serve(app) as base:
            report = await place_call(base, CallScript([SPEECH], hang_up_after=5.0))
    assert report.error is None, report.error
    record = report.record
    assert record is not None and record["errors"] == []
    # the tool server got Vapi's tool-calls message, signed
    ((message, signed),) = tool_server.received
    assert signed and message["type"] == "tool-calls"
    (call,) = message["toolCallList"]
    assert call["function"] == {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert message["call"]["id"] == record["id"]
    assert message["call"]["phoneCallProviderId"] == report.call_sid
    assert "secret" not in message["toolWithToolCallList"][0]["server"]
    assert "secret" not in json.dumps(message["assistant"])
    # OpenAI was offered the tool, then given the call and its result in OpenAI's shapes
    first, second = conversation(fakes.openai.chat_requests)
    assert [t["function"]["name"] for t in first["tools"]] == ["get_weather"]
    assistant_turn, tool_turn = second["messages"][-2:]
    assert assistant_turn["role"] == "assistant" and assistant_turn["content"] is None
    (sent_call,) = assistant_turn["tool_calls"]
    assert sent_call["id"] == call["id"] and sent_call["function"]["name"] == "get_weather"
    assert json.loads(sent_call["function"]["arguments"]) == {"city": "Paris"}
    assert tool_turn == {"role": "tool", "content": "Paris: 62F", "tool_call_id": call["id"]}
    # the caller heard the filler, then the answer; the record has Vapi's tool messages
    assert roles(report) == ["bot", "user", "tool_calls", "tool_call_result", "bot"]
    tool_calls, result = record["messages"][2:4]
    assert tool_calls["toolCalls"][0]["id"] == call["id"]
    assert (result["toolCallId"], result["name"], result["result"]) == (
        call["id"], "get_weather", "Paris: 62F",
    )  # fmt: skip
    assert bot_messages(report)[-1] == "Let me look that up. It says Paris: 62F"
    (turn,) = report.turns
    assert turn.voice_to_voice is not None
    logging.getLogger("ava.test").warning(
        "tool turn: voice-to-voice to the filler %.0f ms", turn.voice_to_voice * 1e3
    )


async def test_a_failing_tool_is_told_to_the_model_and_the_call_goes_on(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    async def broken(_: int, message: dict[str, Any]) -> Response:
        return JSONResponse({"detail": "down"}, status_code=500)

    chat = OpenAiFakeConfig(api_key=KEY, reply=weather_model)
    async with (
        receiver(broken) as (_, url),
        running_fakes(["What's the weather in Paris?"], openai=chat) as fakes,
    ):
        app = make_app(fakes, assistant_file, tmp_path, model={"tools": [weather_tool(url)]})
        async with serve(app) as base:
            report = await place_call(base, CallScript([SPEECH], hang_up_after=5.0))
    assert report.error is None, report.error
    record = report.record
    assert record is not None and record["ended_reason"] == "customer-ended-call"
    (error,) = record["errors"]
    assert error["stage"] == "tool" and error["name"] == "get_weather"
    assert "HTTP 500" in error["error"]
    told = conversation(fakes.openai.chat_requests)[1]["messages"][-1]
    assert told["role"] == "tool" and "failed" in told["content"] and "500" in told["content"]
    assert bot_messages(report)[-1].startswith("Let me look that up. It says Error")


async def test_barge_in_during_a_tool_run_cancels_it(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    async def slow(_: int, message: dict[str, Any]) -> Response:
        await asyncio.sleep(3)
        return await weather(0, message)

    # The filler plays ~2.6 s, so the interruption is decided while it is still audible however
    # loaded the machine (a one-second filler could finish before the caller's words arrived:
    # then nothing is left to clear and the test measured the machine, not the server).
    filler = "Let me look that up for you, it takes just a moment."
    chat = OpenAiFakeConfig(api_key=KEY, reply=weather_model)
    script = ["What's the weather in Paris?", "Never mind, thanks."]
    async with receiver(slow) as (tool_server, url), running_fakes(script, openai=chat) as fakes:
        tool = weather_tool(url, filler=filler, timeout=5)
        app = make_app(fakes, assistant_file, tmp_path, model={"tools": [tool]})
        async with serve(app) as base:
            report = await place_call(base, CallScript([SPEECH, SPEECH], barge_in_after=0.4))
    assert report.error is None, report.error
    record = report.record
    assert record is not None and report.clears == 1
    assert len(tool_server.received) == 1
    (error,) = record["errors"]
    assert error["stage"] == "tool" and "cancelled" in error["error"]
    # the next request carries no half-done tool call (the API would reject it)
    last = conversation(fakes.openai.chat_requests)[-1]["messages"]
    assert all(m["role"] != "tool" and not m.get("tool_calls") for m in last)
    assert last[-1] == {"role": "user", "content": script[1]}
    assert bot_messages(report)[-1] == "Anything else?"


async def test_the_end_call_tool_hangs_up_after_the_goodbye(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    def goodbye(messages: list[dict[str, Any]]) -> Reply:
        return FakeResponse("Goodbye, have a nice day!", [FakeToolCall("endCall", "{}")])

    chat = OpenAiFakeConfig(api_key=KEY, reply=goodbye)
    async with running_fakes(["That's all, bye."], openai=chat) as fakes:
        app = make_app(fakes, assistant_file, tmp_path, model={"tools": [{"type": "endCall"}]})
        async with serve(app) as base:
            report = await place_call(base, CallScript([SPEECH], hang_up_after=20))
    assert report.error is None, report.error
    record = report.record
    assert record is not None and record["ended_reason"] == "assistant-ended-call"
    assert bot_messages(report)[-1] == "Goodbye, have a nice day!"
    assert roles(report)[-3:] == ["tool_calls", "tool_call_result", "bot"]
    # the goodbye was heard whole before the line went down, well before the caller gave up
    (turn,) = report.turns
    assert turn.reply_start is not None and report.trace.ended - turn.reply_start < 5
    assert len(conversation(fakes.openai.chat_requests)) == 1  # nothing more was asked of the model


ACCOUNT, TOKEN = "AC" + "1" * 32, "twilio-token"


class InboundCalls(dict[str, FakeCall]):
    """Twilio knows every call to the account: an inbound CallSid is looked up as in progress."""

    def get(self, sid: str, default: Any = None) -> Any:
        if sid.startswith("CA") and sid not in self:
            self[sid] = FakeCall(
                sid, ACCOUNT, "+15557654321", "+15551230000", None, None, None, [], "in-progress"
            )
        return super().get(sid, default)


async def record_of(app: Any, call_sid: str) -> dict[str, Any]:
    for _ in range(100):
        record = app.state.calls.find(call_sid)
        if record is not None and record.status == "ended":
            return dict(record.to_json())
        await asyncio.sleep(0.05)
    raise AssertionError("the call did not end")


def transfer_model(messages: list[dict[str, Any]]) -> Reply:
    if messages[-1]["role"] == "tool":
        return "I can't transfer you right now, sorry."
    return FakeResponse(tool_calls=[FakeToolCall("transferCall", '{"destination":"+15551112222"}')])


TRANSFER_TOOL = {
    "type": "transferCall",
    "destinations": [{"type": "number", "number": "+15551112222", "description": "billing"}],
}


async def test_transfer_call_redirects_the_live_call_to_dial(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    twilio = FakeTwilioRest(FakeTwilioRestConfig(accounts={ACCOUNT: TOKEN}), calls=InboundCalls())
    chat = OpenAiFakeConfig(api_key=KEY, reply=transfer_model)
    async with (
        serve_fake(twilio.app) as twilio_url,
        running_fakes(["Put me through to billing."], openai=chat) as fakes,
    ):
        env = {
            "TWILIO_ACCOUNT_SID": ACCOUNT,
            "TWILIO_AUTH_TOKEN": TOKEN,
            "TWILIO_API_BASE_URL": twilio_url,
            # Calls to the assistant file's number, which no tenant imported (issue 9).
            "unknown_numbers": "assistant-file",
        }
        app = make_app(fakes, assistant_file, tmp_path, env=env, model={"tools": [TRANSFER_TOOL]})
        async with serve(app) as base:
            report = await place_call(
                base, CallScript([SPEECH], hang_up_after=20), auth_token=TOKEN, fetch_record=False
            )
            record = await record_of(app, report.call_sid)
    assert report.error is None, report.error
    assert record["ended_reason"] == "assistant-forwarded-call"
    assert "+15551112222" in record["ended_detail"]
    (update,) = [r for r in twilio.requests if r.method == "POST"]
    assert update.path == f"/2010-04-01/Accounts/{ACCOUNT}/Calls/{report.call_sid}.json"
    assert update.field("Twiml") == dial("+15551112222")
    assert update.username == ACCOUNT
    said = [m["message"] for m in record["messages"] if m["role"] == "bot"]
    assert said[-1] == "Transferring the call now"
    # the transfer waited for the message to be heard: the phone played its audio first
    (turn,) = report.turns
    assert turn.reply_start is not None


async def test_without_twilio_credentials_transfer_is_declined_and_the_call_goes_on(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    chat = OpenAiFakeConfig(api_key=KEY, reply=transfer_model)
    async with running_fakes(["Put me through to billing."], openai=chat) as fakes:
        app = make_app(fakes, assistant_file, tmp_path, model={"tools": [TRANSFER_TOOL]})
        async with serve(app) as base:
            report = await place_call(base, CallScript([SPEECH]))
    assert report.error is None, report.error
    record = report.record
    assert record is not None and record["ended_reason"] == "customer-ended-call"
    assert bot_messages(report)[-1] == "I can't transfer you right now, sorry."
    (error,) = record["errors"]
    assert error["stage"] == "tool" and error["error"] == "no call control"


def transfer_then_chat(messages: list[dict[str, Any]]) -> Reply:
    last = messages[-1]
    if last["role"] == "user" and "billing" in last["content"]:
        return FakeResponse(
            tool_calls=[FakeToolCall("transferCall", '{"destination":"+15551112222"}')]
        )
    return "Our opening hours are nine to five."


@pytest.mark.parametrize("fault", [Fault.UNAUTHORIZED, Fault.SERVER_ERROR])
async def test_a_transfer_twilio_refuses_is_apologised_for_and_the_call_goes_on(
    tmp_path: Path, assistant_file: AssistantFactory, fault: Fault
) -> None:
    # Twilio answers the redirect with a 4xx or 5xx (every time: no retry can rescue it)
    twilio = FakeTwilioRest(
        FakeTwilioRestConfig(accounts={ACCOUNT: TOKEN}, fault=fault, fault_paths=("/Calls/",)),
        calls=InboundCalls(),
    )
    chat = OpenAiFakeConfig(api_key=KEY, reply=transfer_then_chat)
    script = ["Put me through to billing.", "What are your opening hours?"]
    async with (
        serve_fake(twilio.app) as twilio_url,
        running_fakes(script, openai=chat) as fakes,
    ):
        env = {
            "TWILIO_ACCOUNT_SID": ACCOUNT,
            "TWILIO_AUTH_TOKEN": TOKEN,
            "TWILIO_API_BASE_URL": twilio_url,
            # Calls to the assistant file's number, which no tenant imported (issue 9).
            "unknown_numbers": "assistant-file",
        }
        app = make_app(fakes, assistant_file, tmp_path, env=env, model={"tools": [TRANSFER_TOOL]})
        async with serve(app) as base:
            report = await place_call(
                base, CallScript([SPEECH, SPEECH]), auth_token=TOKEN, fetch_record=False
            )
            record = await record_of(app, report.call_sid)
    assert report.error is None, report.error
    # the redirect was really attempted, and refused
    attempts = [r for r in twilio.requests if r.method == "POST"]
    assert attempts and all(r.field("Twiml") == dial("+15551112222") for r in attempts)
    # the call was not ended by the failed transfer: the caller hung up after a second turn
    assert record["ended_reason"] == "customer-ended-call"
    said = [m["message"] for m in record["messages"] if m["role"] == "bot"]
    transferring = said.index("Transferring the call now")
    assert said[transferring + 1] == TRANSFER_FAILED
    assert said[-1] == "Our opening hours are nine to five."
    users = [m["message"] for m in record["messages"] if m["role"] == "user"]
    assert users == script
    # both later replies were heard by the caller
    assert len(report.turns) == 2 and all(t.reply_start is not None for t in report.turns)
    (error,) = record["errors"]
    assert error["stage"] == "tool" and error["name"] == "transferCall"
    assert str(REJECT_STATUS[fault]) in error["error"]


async def test_the_end_of_call_report_is_delivered_signed(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    async def flaky(count: int, message: dict[str, Any]) -> Response:
        # the first delivery attempt fails: the sender must retry it
        return Response("busy", status_code=503) if count == 1 else Response("ok")

    script = ["What are your opening hours?"]
    async with receiver(flaky) as (hooks, url), running_fakes(script) as fakes:
        server = {"url": url, "secret": SECRET}
        app = make_app(fakes, assistant_file, tmp_path, server=server)
        async with serve(app) as base:
            report = await place_call(base, CallScript([SPEECH]))
            async with asyncio.timeout(10):
                while not hooks.of_type("end-of-call-report"):
                    hooks.arrived.clear()
                    await hooks.arrived.wait()
    assert report.error is None, report.error
    assert all(signed for _, signed in hooks.received)
    statuses = [m["status"] for m in hooks.of_type("status-update")]
    assert statuses[0] == "in-progress" and statuses[-1] == "ended"
    assert len(statuses) == 3  # "in-progress" answered 503 the first time and was sent again
    (eocr,) = hooks.of_type("end-of-call-report")
    record = report.record
    assert record is not None
    assert eocr["call"]["id"] == record["id"] and eocr["endedReason"] == "customer-ended-call"
    assert eocr["call"]["phoneCallProviderId"] == report.call_sid
    assert [(m["role"], m["message"]) for m in eocr["messages"]] == [
        (m["role"], m["message"]) for m in record["messages"]
    ]
    assert eocr["transcript"].splitlines()[1] == f"User: {script[0]}"
    assert eocr["artifact"]["transcript"] == eocr["transcript"]
    assert eocr["durationSeconds"] > 1 and eocr["startedAt"] < eocr["endedAt"]
    model_cost = next(c for c in eocr["costs"] if c["type"] == "model")
    assert model_cost["completionTokens"] > 0
    assert "secret" not in json.dumps(eocr["assistant"])
