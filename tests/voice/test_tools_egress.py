"""Tool calls to a tenant's `server.url` under the operator's egress policy (issue 9, findings 2
and 3): refused addresses, capped answers and `timeoutSeconds` honored end to end, each against
a real tool server on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.responses import JSONResponse, Response, StreamingResponse

from tests.voice.test_tools import CALL, tool_server, weather, weather_tools
from voice.assistant import Assistant
from voice.egress import EgressPolicy
from voice.events import CallEvent
from voice.history import Conversation
from voice.tool_turns import ToolTurns
from voice.tools import ToolRunner

pytestmark = pytest.mark.timeout(30)

PRODUCTION = EgressPolicy.from_setting("", dev_mode=False)
MB = 1024 * 1024
CHUNK = 64 * 1024


def turns_for(url: str, egress: EgressPolicy | None, **server: Any) -> ToolTurns:
    """The tool turns a session builds for an assistant whose tool lives at `url`."""
    tool = {
        "type": "function",
        "function": {"name": "get_weather", "parameters": {"type": "object"}},
        "server": {"url": url, **server},
    }
    assistant = Assistant.model_validate({"model": {"provider": "local", "tools": [tool]}})
    events: list[CallEvent] = []
    return ToolTurns.for_assistant(
        assistant,
        call_id="call_1",
        history=Conversation(assistant.model),
        emit=events.append,
        since_start=lambda: 0.0,
        finalize=lambda *_: None,
        call_control=None,
        context=lambda: {"call": {"id": "call_1"}},
        egress=egress,
    )


async def test_a_loopback_tool_server_is_refused_in_production() -> None:
    async with tool_server() as (server, url):
        turns = turns_for(url, PRODUCTION)
        try:
            (outcome,) = await turns.runner.run([CALL])
        finally:
            await turns.runner.aclose()
    assert server.received == []  # never connected to
    assert outcome.failed
    # only the fixed kind: no address, port, exception name or remote text
    assert outcome.error == "the tool server's address is not allowed (egress-denied)"
    assert "127.0.0.1" not in outcome.content


async def test_a_refused_port_and_a_non_http_port_look_the_same_as_any_refusal() -> None:
    """Probing closed or non-HTTP ports behind the operator's firewall tells a tenant nothing:
    both are refused before connecting, with the same text."""
    errors = set()
    for port in (1, 6379):
        turns = turns_for(f"http://127.0.0.1:{port}/", PRODUCTION)
        (outcome,) = await turns.runner.run([CALL])
        await turns.runner.aclose()
        errors.add(outcome.error)
    assert errors == {"the tool server's address is not allowed (egress-denied)"}


async def test_the_operators_allow_list_lets_the_tool_server_through() -> None:
    async with tool_server() as (server, url):
        turns = turns_for(url, EgressPolicy.from_setting("127.0.0.1", dev_mode=False))
        try:
            (outcome,) = await turns.runner.run([CALL])
        finally:
            await turns.runner.aclose()
    assert not outcome.failed and outcome.content == "San Francisco: 62F, cloudy"
    assert len(server.received) == 1


class CountingTransport(httpx.AsyncBaseTransport):
    """The network under the guarded transport, counting the body bytes handed up."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.read = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        upstream = response.stream
        assert isinstance(upstream, httpx.AsyncByteStream)
        stream: httpx.AsyncByteStream = upstream

        class Counted(httpx.AsyncByteStream):
            async def __aiter__(inner_self) -> AsyncIterator[bytes]:
                async for chunk in stream:
                    self.read += len(chunk)
                    yield chunk

            async def aclose(inner_self) -> None:
                await stream.aclose()

        return httpx.Response(
            response.status_code, headers=response.headers, stream=Counted(), request=request
        )

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_huge_tool_answer_is_cut_at_the_cap() -> None:
    """8 MB of answer against a 1 MB cap: reading stops at the cap (plus one network read)
    instead of the whole body going into memory."""

    async def huge(message: dict[str, Any]) -> Response:
        async def body() -> AsyncIterator[bytes]:
            yield b'{"results": [{"toolCallId": "call_abc", "result": "'
            for _ in range(8 * MB // CHUNK):
                yield b"x" * CHUNK
            yield b'"}]}'

        return StreamingResponse(body(), media_type="application/json")

    counting = CountingTransport()
    async with tool_server(huge) as (_, url):
        runner = ToolRunner(
            weather_tools(url),
            assistant_server=None,
            context=lambda: {"call": {"id": "call_1"}},
            policy=EgressPolicy("127.0.0.1"),
            max_response_bytes=MB,
            transport=counting,
        )
        try:
            (outcome,) = await runner.run([CALL])
        finally:
            await runner.aclose()
    assert outcome.failed
    assert outcome.error == "the tool server's answer is too large (response-too-large)"
    assert counting.read <= MB + CHUNK


async def test_timeout_seconds_above_five_is_honored() -> None:
    """`server.timeoutSeconds: 8` and a tool that answers after 5.5 s: the answer is used (a
    fixed 5 s client timeout used to cut it off)."""

    async def slow(message: dict[str, Any]) -> Response:
        await asyncio.sleep(5.5)
        return await weather(message)

    async with tool_server(slow) as (_, url):
        runner = ToolRunner(
            weather_tools(url, timeoutSeconds=8),
            assistant_server=None,
            context=lambda: {"call": {"id": "call_1"}},
            policy=EgressPolicy(allow_loopback=True),
        )
        try:
            (outcome,) = await runner.run([CALL])
        finally:
            await runner.aclose()
    assert not outcome.failed, outcome.error
    assert outcome.content == "San Francisco: 62F, cloudy"


async def test_a_failing_tool_server_is_described_by_status_only() -> None:
    async def internal_error(message: dict[str, Any]) -> Response:
        return JSONResponse({"trace": "at db.internal:5432 password=hunter2"}, status_code=500)

    async with tool_server(internal_error) as (_, url):
        runner = ToolRunner(
            weather_tools(url),
            assistant_server=None,
            context=lambda: {"call": {"id": "call_1"}},
            policy=EgressPolicy(allow_loopback=True),
        )
        try:
            (outcome,) = await runner.run([CALL])
        finally:
            await runner.aclose()
    assert outcome.error == "the tool server answered HTTP 500 (http-500)"
    assert "hunter2" not in outcome.content and "db.internal" not in outcome.content


async def test_without_a_policy_the_runner_is_strict() -> None:
    async with tool_server() as (server, url):
        runner = ToolRunner(
            weather_tools(url), assistant_server=None, context=lambda: {"call": {"id": "c"}}
        )
        try:
            (outcome,) = await runner.run([CALL])
        finally:
            await runner.aclose()
    assert outcome.failed and "egress-denied" in outcome.error and server.received == []
