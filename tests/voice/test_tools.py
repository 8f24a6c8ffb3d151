"""The tool runner against a real HTTP tool server on 127.0.0.1, and the tool set's schemas."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from benchmarks.fakes.server import serve
from voice.assistant import ModelConfig
from voice.egress import EgressPolicy
from voice.errors import ConfigError
from voice.server_messages import ServerTarget, sign, verify_signature
from voice.tools import DEFAULT_FILLERS, ToolRunner, ToolSet
from voice.types import ToolCall

pytestmark = pytest.mark.timeout(30)

SECRET = "tool-secret"
Answer = Callable[[dict[str, Any]], Awaitable[Response]]


async def weather(message: dict[str, Any]) -> Response:
    results = [
        {"toolCallId": c["id"], "name": c["function"]["name"],
         "result": f"{c['function']['arguments']['city']}: 62F, cloudy"}
        for c in message["toolCallList"]
    ]  # fmt: skip
    return JSONResponse({"results": results})


@dataclass
class ToolServer:
    answer: Answer = weather
    received: list[tuple[bytes, dict[str, str]]] = field(default_factory=list)

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        self.received.append((body, dict(request.headers)))
        return await self.answer(json.loads(body)["message"])

    def messages(self) -> list[dict[str, Any]]:
        return [json.loads(body)["message"] for body, _ in self.received]


@asynccontextmanager
async def tool_server(answer: Answer = weather) -> AsyncIterator[tuple[ToolServer, str]]:
    server = ToolServer(answer)
    app = Starlette(routes=[Route("/tools", server.handle, methods=["POST"])])
    async with serve(app) as base:
        yield server, f"{base}/tools"


def weather_tools(url: str | None, **server: Any) -> ToolSet:
    tool: dict[str, Any] = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
        "messages": [{"type": "request-start", "content": "Checking the weather."}],
    }
    if url is not None:
        tool["server"] = {"url": url, **server}
    return ToolSet.from_model(ModelConfig(tools=[tool]))


def runner(tools: ToolSet, assistant_url: str | None = None) -> ToolRunner:
    assistant = ServerTarget.from_config({"url": assistant_url}) if assistant_url else None
    return ToolRunner(
        tools,
        assistant_server=assistant,
        context=lambda: {"call": {"id": "call_1"}, "assistant": {"name": "Ava"}},
        policy=EgressPolicy(allow_loopback=True),  # dev mode: the tool server is on 127.0.0.1
    )


CALL = ToolCall("call_abc", "get_weather", '{"city": "San Francisco"}')


async def test_a_tool_call_round_trip_is_vapis_message_signed() -> None:
    async with tool_server() as (server, url):
        tools = runner(weather_tools(url, secret=SECRET, headers={"X-Team": "ops"}))
        try:
            (outcome,) = await tools.run([CALL])
        finally:
            await tools.aclose()
    assert not outcome.failed
    assert outcome.content == "San Francisco: 62F, cloudy"
    ((body, headers),) = server.received
    message = json.loads(body)["message"]
    assert message["type"] == "tool-calls" and isinstance(message["timestamp"], int)
    expected = {
        "id": "call_abc",
        "type": "function",
        "function": {"name": "get_weather", "arguments": {"city": "San Francisco"}},
    }
    assert message["toolCallList"] == [expected]
    (paired,) = message["toolWithToolCallList"]
    assert paired["toolCall"] == expected and paired["function"]["name"] == "get_weather"
    assert message["call"] == {"id": "call_1"} and message["assistant"] == {"name": "Ava"}
    # the receiver's side: the legacy secret header, and an HMAC it can check
    assert headers["x-vapi-secret"] == SECRET and headers["x-team"] == "ops"
    assert headers["content-type"] == "application/json"
    assert verify_signature(body, headers, SECRET, now=time.time())
    assert not verify_signature(body + b" ", headers, SECRET, now=time.time())
    assert not verify_signature(body, headers, "another-secret", now=time.time())
    assert not verify_signature(body, headers, SECRET, now=time.time() + 3600)  # replayed


def test_the_signature_is_vapis_hmac_scheme() -> None:
    import hashlib
    import hmac

    body = b'{"message":{}}'
    expected = hmac.new(b"k", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign(body, "k", 1_700_000_000) == expected
    headers = ServerTarget("http://x", secret="k").request_headers(body, 1_700_000_000)
    assert headers["x-timestamp"] == "1700000000" and headers["x-signature"] == expected
    unsigned = ServerTarget("http://x").request_headers(body, 1_700_000_000)
    assert "x-signature" not in unsigned and "x-vapi-secret" not in unsigned


async def test_without_a_tool_server_the_assistants_server_is_used() -> None:
    async with tool_server() as (server, url):
        tools = runner(weather_tools(None), assistant_url=url)
        try:
            (outcome,) = await tools.run([CALL])
        finally:
            await tools.aclose()
    assert outcome.content == "San Francisco: 62F, cloudy" and len(server.received) == 1
    assert "x-signature" not in server.received[0][1]  # no secret: unsigned, as Vapi


async def test_parallel_calls_run_concurrently_and_keep_their_order() -> None:
    async def slow_for_paris(message: dict[str, Any]) -> Response:
        call = message["toolCallList"][0]
        await asyncio.sleep(1.0 if call["function"]["arguments"]["city"] == "Paris" else 0.5)
        return await weather(message)

    calls = [ToolCall("call_1", "get_weather", '{"city": "Paris"}'), CALL]
    async with tool_server(slow_for_paris) as (server, url):
        tools = runner(weather_tools(url))
        started = time.perf_counter()
        try:
            outcomes = await tools.run(calls)
        finally:
            await tools.aclose()
        elapsed = time.perf_counter() - started
    assert [o.content for o in outcomes] == ["Paris: 62F, cloudy", "San Francisco: 62F, cloudy"]
    assert len(server.received) == 2 and elapsed < 1.4  # not 1.5 s one after the other


async def hang(message: dict[str, Any]) -> Response:
    await asyncio.sleep(10)
    return await weather(message)


async def server_error(message: dict[str, Any]) -> Response:
    return JSONResponse({"error": "boom"}, status_code=500)


async def garbage(message: dict[str, Any]) -> Response:
    return Response("<html>oops", media_type="text/html")


async def no_result(message: dict[str, Any]) -> Response:
    return JSONResponse({"results": [{"toolCallId": "someone-else", "result": "x"}]})


async def tool_error(message: dict[str, Any]) -> Response:
    call_id = message["toolCallList"][0]["id"]
    return JSONResponse({"results": [{"toolCallId": call_id, "error": "City not found"}]})


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (hang, "did not answer within 1s"),
        (server_error, "answered HTTP 500"),
        (garbage, "answer is not JSON"),
        (no_result, "no result for call_abc"),
        (tool_error, "City not found"),
    ],
)
async def test_a_failing_tool_becomes_a_result_that_says_so(answer: Answer, why: str) -> None:
    async with tool_server(answer) as (_, url):
        tools = runner(weather_tools(url, timeoutSeconds=1))
        started = time.perf_counter()
        try:
            (outcome,) = await tools.run([CALL])
        finally:
            await tools.aclose()
        elapsed = time.perf_counter() - started
    assert outcome.failed and why in outcome.error
    assert outcome.content.startswith("Error") and why in outcome.content  # the model is told
    assert elapsed < 2.5


async def test_an_unreachable_server_and_an_unknown_tool_fail_cleanly() -> None:
    async with tool_server() as (_, url):
        pass  # the server is gone now: connection refused
    tools = runner(weather_tools(url))
    try:
        refused, unknown = await tools.run([CALL, ToolCall("call_2", "nope", "{}")])
    finally:
        await tools.aclose()
    assert refused.failed and "could not be reached" in refused.error
    assert unknown.failed and "no tool named 'nope'" in unknown.error


def test_built_in_tools_are_offered_as_functions() -> None:
    tools = ToolSet.from_model(
        ModelConfig(
            tools=[
                {"type": "endCall"},
                {
                    "type": "transferCall",
                    "destinations": [
                        {"type": "number", "number": "+15551112222", "description": "billing"},
                        {"type": "number", "number": "+15553334444", "message": ""},
                    ],
                },
                {"type": "dtmf"},  # not supported: not offered
            ]
        )
    )
    names = [s["function"]["name"] for s in tools.schemas]
    assert names == ["endCall", "transferCall"]
    (_, transfer) = tools.schemas
    destination = transfer["function"]["parameters"]["properties"]["destination"]
    assert destination["enum"] == ["+15551112222", "+15553334444"]
    assert "+15551112222: billing" in destination["description"]
    assert tools.end_call == "endCall" and tools.transfer == "transferCall"
    chosen = tools.destination_for(ToolCall("c", "transferCall", '{"destination":"+15553334444"}'))
    assert chosen is not None and chosen.message == ""  # "" = silent transfer
    default = tools.destination_for(ToolCall("c", "transferCall", '{"destination":"+15551112222"}'))
    assert default is not None and default.message == "Transferring the call now"
    assert tools.destination_for(ToolCall("c", "transferCall", '{"destination":"+1"}')) is None


@pytest.mark.parametrize(
    ("tool", "message"),
    [
        ({"type": "function", "function": {}}, r"tools\[0\]: a function tool needs"),
        (
            {"type": "function", "function": {"name": "f"}, "server": {"url": "ftp://x"}},
            r"tools\[0\]\.server\.url must be (http|an http)",
        ),
        (
            {"type": "transferCall", "destinations": [{"type": "number", "number": "555"}]},
            r"destinations\[0\]\.number must be an E\.164",
        ),
        *(
            (
                {"type": "transferCall", "destinations": [{"type": "number", **destination}]},
                rf"destinations\[0\]\.{field} ",
            )
            for field, destination in [
                ("number", {"number": "+0123456"}),  # no country code starts with 0
                ("number", {"number": "+1555 123 4567"}),
                ("number", {"number": "+1234567890123456"}),  # 16 digits
                ("number", {"number": "+15551112222</Number><Dial>"}),
                ("callerId", {"number": "+15551112222", "callerId": "client:alice"}),
                ("extension", {"number": "+15551112222", "extension": "12&34"}),
            ]
        ),
    ],
)
def test_unusable_tools_are_config_errors(tool: dict[str, Any], message: str) -> None:
    # a URL that is not http(s) is refused when the assistant is validated, before any ToolSet
    with pytest.raises((ConfigError, ValidationError), match=message):
        ToolSet.from_model(ModelConfig(tools=[tool]))


def test_request_start_fillers() -> None:
    def with_messages(messages: list[dict[str, Any]]) -> ToolRunner:
        tool = {"type": "function", "function": {"name": "f"}, "messages": messages}
        return runner(ToolSet.from_model(ModelConfig(tools=[tool])))

    call = ToolCall("c", "f", "{}")
    assert with_messages([{"type": "request-start", "content": "One sec."}]).filler([call]) == (
        "One sec."
    )
    defaults = with_messages([{"type": "request-start"}])  # Vapi's default fillers, in turn
    assert [defaults.filler([call]) for _ in range(2)] == list(DEFAULT_FILLERS[:2])
    assert with_messages([]).filler([call]) is None  # none configured: nothing said
