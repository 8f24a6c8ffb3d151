"""OpenAiLlm against the loopback OpenAI fake: streamed text, parallel tool calls, usage (prompt
caching's cached tokens too, and compatible servers that garble them), faults."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from benchmarks.fakes.openai import (
    FakeToolCall,
    OpenAiFake,
    OpenAiFakeConfig,
    PromptCache,
    Reply,
)
from benchmarks.fakes.server import Fault, serve
from voice.errors import ProviderError, ProviderProtocolError, ProviderTimeout
from voice.providers.openai_llm import OpenAiLlm
from voice.types import ChatMessage, LlmDelta, ToolCall

pytestmark = pytest.mark.timeout(30)

KEY = "sk-test"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@asynccontextmanager
async def openai_llm(**config: Any) -> AsyncIterator[tuple[OpenAiFake, str]]:
    config.setdefault("first_token_latency", 0.05)
    fake = OpenAiFake(OpenAiFakeConfig(api_key=KEY, **config))
    async with serve(fake.app) as base:
        yield fake, f"{base}/v1"


async def run(llm: OpenAiLlm, messages: list[ChatMessage]) -> list[tuple[float, LlmDelta]]:
    loop = asyncio.get_running_loop()
    try:
        return [(loop.time(), delta) async for delta in llm.stream(messages)]
    finally:
        await llm.aclose()


CONVERSATION = [
    ChatMessage("system", "You are a phone agent."),
    ChatMessage("user", "Weather in NYC?"),
    ChatMessage(
        "assistant",
        "",
        tool_calls=[ToolCall("call_1", "get_weather", '{"city":"New York City"}')],
    ),
    ChatMessage("tool", '{"temp_f": 71}', tool_call_id="call_1"),
]


async def test_text_streams_incrementally_with_usage_last() -> None:
    reply = "It is seventy one degrees and sunny in New York City right now."
    async with openai_llm(reply=lambda _: reply, tokens_per_second=30) as (fake, base):
        llm = OpenAiLlm(KEY, base_url=base, model="gpt-test", tools=[WEATHER_TOOL])
        async with asyncio.timeout(10):
            deltas = await run(llm, CONVERSATION)

    texts = [(at, d.text) for at, d in deltas if d.text]
    assert "".join(t for _, t in texts) == reply
    assert len(texts) > 5
    assert texts[-1][0] - texts[0][0] > 0.2, "the first token waited for the whole answer"
    usage = deltas[-1][1]
    assert usage.prompt_tokens is not None and usage.prompt_tokens > 0
    assert usage.completion_tokens == len(texts)
    request = fake.chat_requests[0]
    assert request["messages"] == [m.to_openai() for m in CONVERSATION]
    assert request["stream"] is True
    assert request["stream_options"] == {"include_usage": True}
    assert request["model"] == "gpt-test"
    assert request["tools"] == [WEATHER_TOOL]
    assert request["tool_choice"] == "auto"
    assert request["max_completion_tokens"] == 250


async def test_parallel_tool_calls_are_assembled_and_yielded_once() -> None:
    calls = [
        FakeToolCall("get_weather", json.dumps({"city": "New York City"})),
        FakeToolCall("get_stock_price", json.dumps({"ticker": "ACME", "exchange": "NYSE"})),
    ]

    def reply(_: list[dict[str, Any]]) -> Reply:
        return calls

    async with openai_llm(reply=reply, tokens_per_second=200) as (_, base):
        llm = OpenAiLlm(KEY, base_url=base, tools=[WEATHER_TOOL])
        async with asyncio.timeout(10):
            deltas = [d for _, d in await run(llm, CONVERSATION[:2])]

    with_calls = [d for d in deltas if d.tool_calls]
    assert len(with_calls) == 1
    got = with_calls[0].tool_calls
    assert [(c.name, json.loads(c.arguments)) for c in got] == [
        (c.name, json.loads(c.arguments)) for c in calls
    ]
    assert all(c.id.startswith("call_") for c in got) and got[0].id != got[1].id
    assert not any(d.text for d in deltas)
    assert deltas[-1].completion_tokens is not None


@pytest.mark.parametrize(
    ("fault", "after", "error", "retryable"),
    [
        (Fault.UNAUTHORIZED, 0, ProviderError, False),
        (Fault.RATE_LIMITED, 0, ProviderError, True),
        (Fault.SERVER_ERROR, 0, ProviderError, True),
        (Fault.STALL, 0, ProviderTimeout, True),
        (Fault.STALL, 3, ProviderTimeout, True),
        (Fault.GARBAGE, 2, ProviderProtocolError, False),
        (Fault.DROP, 2, ProviderError, True),
    ],
)
async def test_faults_map_to_provider_errors(
    fault: Fault, after: int, error: type[ProviderError], retryable: bool
) -> None:
    config = {"fault": fault, "fault_after_tokens": after, "reply": lambda _: "one two three four"}
    async with openai_llm(**config) as (_, base):
        llm = OpenAiLlm(KEY, base_url=base, first_token_timeout=0.5, stall_timeout=0.5)
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with asyncio.timeout(10):
            with pytest.raises(ProviderError) as caught:
                await run(llm, CONVERSATION[:2])
    assert type(caught.value) is error
    assert caught.value.retryable is retryable
    assert loop.time() - started < 2.0
    if fault is Fault.STALL:
        assert isinstance(caught.value, ProviderTimeout)
        assert caught.value.stage == ("first_token" if after == 0 else "stream")


async def test_wrong_key_is_not_retryable() -> None:
    async with openai_llm() as (fake, base):
        async with asyncio.timeout(5):
            with pytest.raises(ProviderError) as caught:
                await run(OpenAiLlm("sk-wrong", base_url=base), CONVERSATION[:2])
    assert not caught.value.retryable
    assert fake.unauthorized == 1


async def test_closing_the_stream_early_releases_the_request() -> None:
    async with openai_llm(reply=lambda _: " ".join(["word"] * 200)) as (_, base):
        llm = OpenAiLlm(KEY, base_url=base)
        async with asyncio.timeout(5):
            stream = llm.stream(CONVERSATION[:2])
            first = await anext(stream)
            await stream.aclose()  # barge-in
            await llm.aclose()
    assert first.text == "word"


# OpenAI caches a prompt's prefix from 1024 tokens on, in 128-token blocks; the fake's tokens
# are the words of each message.
LONG_PROMPT = " ".join(f"rule{i}" for i in range(1500))


async def test_a_long_prompt_sent_again_reports_its_cached_prefix() -> None:
    system = ChatMessage("system", LONG_PROMPT)
    async with openai_llm(tokens_per_second=500) as (fake, base):
        usages = []
        for question in ("Weather in NYC?", "And in Boston?", "Weather in NYC?"):
            llm = OpenAiLlm(KEY, base_url=base)
            deltas = [d for _, d in await run(llm, [system, ChatMessage("user", question)])]
            usages.append(deltas[-1])
        short = [d for _, d in await run(OpenAiLlm(KEY, base_url=base), CONVERSATION[:2])]
        short_again = [d for _, d in await run(OpenAiLlm(KEY, base_url=base), CONVERSATION[:2])]
    # The first request had nothing cached; the second shares the system prompt (1500 tokens:
    # 11 whole blocks, 1408); the third repeats the first whole (1503: 1408 again, as the last
    # partial block is never cached).
    assert [u.prompt_tokens for u in usages] == [1503, 1503, 1503]
    assert [u.cached_prompt_tokens for u in usages] == [0, 1408, 1408]
    assert short[-1].cached_prompt_tokens == short_again[-1].cached_prompt_tokens == 0
    assert len(fake.chat_requests) == 5


async def test_a_changed_model_or_tool_list_misses_the_cache() -> None:
    messages = [ChatMessage("system", LONG_PROMPT), ChatMessage("user", "Hi")]
    async with openai_llm(tokens_per_second=500) as (_, base):
        cached = []
        for model, tools in (("gpt-a", None), ("gpt-b", None), ("gpt-a", [WEATHER_TOOL])):
            llm = OpenAiLlm(KEY, base_url=base, model=model, tools=tools)
            cached.append([d for _, d in await run(llm, messages)][-1].cached_prompt_tokens)
        again = OpenAiLlm(KEY, base_url=base, model="gpt-a")
        cached.append([d for _, d in await run(again, messages)][-1].cached_prompt_tokens)
    assert cached == [0, 0, 0, 1408]


def test_the_fakes_prompt_cache_stays_bounded() -> None:
    cache = PromptCache(capacity=16)
    for n in range(10):
        body = {"model": "m", "messages": [{"role": "user", "content": f"{n} {LONG_PROMPT}"}]}
        assert cache.admit(body) == 0
        assert len(cache) <= 16
    # the first prompt's blocks were forgotten, the last one's are remembered
    first = {"model": "m", "messages": [{"role": "user", "content": f"0 {LONG_PROMPT}"}]}
    last = {"model": "m", "messages": [{"role": "user", "content": f"9 {LONG_PROMPT}"}]}
    assert cache.admit(first) == 0
    assert cache.admit(last) == 1408


MISSING = object()


def usage_stream(details: Any) -> bytes:
    """A whole stream from an OpenAI-compatible server whose usage chunk carries `details` as
    `prompt_tokens_details` (`MISSING`: no such key)."""
    usage: dict[str, Any] = {"prompt_tokens": 40, "completion_tokens": 2, "total_tokens": 42}
    if details is not MISSING:
        usage["prompt_tokens_details"] = details
    chunks: list[dict[str, Any]] = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}}]},
        {"choices": [{"index": 0, "delta": {"content": "!"}, "finish_reason": "stop"}]},
        {"choices": [], "usage": usage},
    ]
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "compatible"}
    events = [f"data: {json.dumps({**head, **chunk})}\n\n" for chunk in chunks]
    return ("".join(events) + "data: [DONE]\n\n").encode()


@pytest.mark.parametrize(
    ("details", "cached"),
    [
        (MISSING, None),  # vLLM, llama.cpp and others leave it out
        (None, None),
        ({}, None),
        ({"cached_tokens": None}, None),
        ({"cached_tokens": 0, "audio_tokens": 0}, 0),
        ({"cached_tokens": 32}, 32),
        ({"cached_tokens": 4096}, 40),  # more than the prompt: clamped to it
        ({"cached_tokens": -3}, None),
        ({"cached_tokens": "32"}, None),
        ({"cached_tokens": 3.5}, None),
        ({"cached_tokens": True}, None),
        ({"cached_tokens": [32]}, None),
        ("garbage", None),
        ([{"cached_tokens": 32}], None),
    ],
)
async def test_a_compatible_servers_cached_count_is_read_defensively(
    details: Any, cached: int | None
) -> None:
    body = usage_stream(details)

    async def chat(_: Request) -> Response:
        return Response(body, media_type="text/event-stream")

    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    async with serve(app) as base, asyncio.timeout(10):
        deltas = [d for _, d in await run(OpenAiLlm(KEY, base_url=f"{base}/v1"), CONVERSATION)]
    assert "".join(d.text for d in deltas) == "Hi!"  # the reply stands whatever the usage says
    usage = deltas[-1]
    assert (usage.prompt_tokens, usage.completion_tokens) == (40, 2)
    assert usage.cached_prompt_tokens == cached
