"""The OpenAI adapters on one shared HTTP client (`control.providers.HttpPool`), against the
loopback OpenAI fake: per-request keys and timeouts, and one call's close leaving it usable."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import httpx
import pytest
from pydantic import SecretStr

from benchmarks.fakes.openai import OpenAiFake, OpenAiFakeConfig
from benchmarks.fakes.server import Fault, serve
from control.providers import CloudAdapters, HttpPool
from control.settings import Settings
from voice.assistant import ModelConfig, VoiceConfig
from voice.errors import ProviderError, ProviderTimeout
from voice.providers.openai_llm import OpenAiLlm
from voice.providers.openai_tts import OpenAiTts
from voice.types import ChatMessage

pytestmark = pytest.mark.timeout(30)

KEY = "sk-test"
HELLO = [ChatMessage("system", "You are a phone agent."), ChatMessage("user", "Hello?")]
TEXT = "Thanks for calling."


@asynccontextmanager
async def openai_fake(**config: Any) -> AsyncIterator[tuple[OpenAiFake, str]]:
    config.setdefault("first_token_latency", 0.02)
    config.setdefault("speech_first_byte_latency", 0.02)
    config.setdefault("speech_seconds_per_char", 0.01)
    config.setdefault("speech_realtime_factor", 50.0)
    fake = OpenAiFake(OpenAiFakeConfig(api_key=KEY, **config))
    async with serve(fake.app) as base:
        yield fake, f"{base}/v1"


@asynccontextmanager
async def shared_client() -> AsyncIterator[httpx.AsyncClient]:
    # A long client-wide timeout: any bound shorter than this must come from the request.
    async with httpx.AsyncClient(timeout=httpx.Timeout(60.0), trust_env=False) as client:
        yield client


async def reply(llm: OpenAiLlm) -> str:
    return "".join([d.text async for d in llm.stream(HELLO) if d.text])


async def speech(tts: OpenAiTts) -> bytes:
    return b"".join([c.audio async for c in tts.synthesize(TEXT)])


async def test_closing_one_calls_adapters_leaves_the_shared_client_usable() -> None:
    async with openai_fake(reply=lambda _: "Hi there.") as (fake, base), shared_client() as client:
        first_llm = OpenAiLlm(KEY, base_url=base, http_client=client)
        first_tts = OpenAiTts(KEY, base_url=base, http_client=client)
        async with asyncio.timeout(10):
            assert await reply(first_llm) == "Hi there."
            assert await speech(first_tts)
            await first_llm.aclose()
            await first_tts.aclose()
            assert not client.is_closed
            second_llm = OpenAiLlm(KEY, base_url=base, http_client=client)
            second_tts = OpenAiTts(KEY, base_url=base, http_client=client)
            assert await reply(second_llm) == "Hi there."
            assert len(await speech(second_tts)) == pytest.approx(len(TEXT) * 0.01 * 8000, rel=0.02)
    assert len(fake.chat_requests) == 2 and len(fake.speech_requests) == 2


async def test_an_adapter_without_a_shared_client_closes_its_own() -> None:
    async with openai_fake(reply=lambda _: "Hi.") as (_, base):
        llm = OpenAiLlm(KEY, base_url=base)
        tts = OpenAiTts(KEY, base_url=base)
        async with asyncio.timeout(10):
            assert await reply(llm) == "Hi."
            await llm.aclose()
            await tts.aclose()
        for call in (reply(llm), speech(tts)):  # its own client is closed: no more requests
            with pytest.raises(RuntimeError, match="closed"):
                await call


async def test_each_calls_key_goes_with_its_own_requests() -> None:
    async with openai_fake(reply=lambda _: "Hi.") as (fake, base), shared_client() as client:
        good = OpenAiTts(KEY, base_url=base, http_client=client)
        wrong = OpenAiTts("sk-wrong", base_url=base, http_client=client)
        wrong_llm = OpenAiLlm("sk-wrong", base_url=base, http_client=client)
        async with asyncio.timeout(10):
            with pytest.raises(ProviderError) as caught:
                await speech(wrong)
            assert "401" in str(caught.value) and not caught.value.retryable
            assert await speech(good)
            with pytest.raises(ProviderError) as caught:
                await reply(wrong_llm)
            assert not caught.value.retryable
            assert await reply(OpenAiLlm(KEY, base_url=base, http_client=client)) == "Hi."
    assert fake.unauthorized == 2  # the wrong key's two requests, and only those
    assert "authorization" not in {k.lower() for k in client.headers}


@pytest.mark.parametrize("after", [0, 3])
async def test_llm_stall_timeouts_hold_per_request_on_a_shared_client(after: int) -> None:
    config = {"fault": Fault.STALL, "fault_after_tokens": after, "reply": lambda _: "a b c d e"}
    async with openai_fake(**config) as (_, base), shared_client() as client:
        llm = OpenAiLlm(
            KEY, base_url=base, first_token_timeout=0.5, stall_timeout=0.5, http_client=client
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with asyncio.timeout(10):
            with pytest.raises(ProviderTimeout) as caught:
                await reply(llm)
        assert loop.time() - started < 2.0
        assert caught.value.stage == ("first_token" if after == 0 else "stream")
        assert not client.is_closed


async def test_tts_first_byte_timeout_holds_on_a_shared_client() -> None:
    async with openai_fake(speech_fault=Fault.STALL) as (_, base), shared_client() as client:
        tts = OpenAiTts(KEY, base_url=base, first_byte_timeout=0.4, http_client=client)
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with asyncio.timeout(10):
            with pytest.raises(ProviderTimeout) as caught:
                await speech(tts)
        assert loop.time() - started < 2.0 and caught.value.stage == "first_byte"


def cloud_settings(base: str) -> Settings:
    return Settings(
        openai_api_key=SecretStr(KEY),
        openai_base_url=base,
        secret_key=SecretStr("test-secret-key"),
        _env_file=None,  # type: ignore[call-arg]
    )


async def test_cloud_adapters_share_the_pool_across_calls() -> None:
    pool = HttpPool(max_calls=300)
    assert pool.limits.max_connections == 600 and pool.limits.max_keepalive_connections == 300
    async with openai_fake(reply=lambda _: "Hi.") as (fake, base):
        settings = cloud_settings(base)
        calls = [CloudAdapters(settings, http=pool) for _ in range(3)]
        llms = [c.llm(ModelConfig(provider="openai")) for c in calls]
        voices = [c.tts(VoiceConfig(provider="openai", voice_id="alloy")) for c in calls]
        client = pool.client()
        assert client is not None
        sdk_clients = [cast(Any, llm._client._client) for llm in llms if isinstance(llm, OpenAiLlm)]
        assert len(sdk_clients) == 3 and all(c is client for c in sdk_clients)
        assert all(v._client is client for v in voices if isinstance(v, OpenAiTts))
        async with asyncio.timeout(10):
            await calls[0].aclose()  # one call hangs up while the others talk
            answers = await asyncio.gather(
                *(reply(llm) for llm in llms[1:] if isinstance(llm, OpenAiLlm))
            )
            audio = await asyncio.gather(
                *(speech(v) for v in voices[1:] if isinstance(v, OpenAiTts))
            )
            for call in calls[1:]:
                await call.aclose()
        assert answers == ["Hi.", "Hi."] and all(audio)
        assert not client.is_closed and pool.client() is client
        await pool.aclose()
        assert client.is_closed
        rebuilt = pool.client()  # a use after shutdown (a restarted app) gets a fresh client
        assert rebuilt is not None and rebuilt is not client and not rebuilt.is_closed
        await pool.aclose()
    assert len(fake.chat_requests) == 2 and len(fake.speech_requests) == 2


def test_pool_outside_an_event_loop_lets_adapters_own_their_client() -> None:
    pool = HttpPool()
    assert pool.client() is None
    llm = CloudAdapters(cloud_settings("http://127.0.0.1:9/v1"), http=pool).llm(
        ModelConfig(provider="openai")
    )
    assert isinstance(llm, OpenAiLlm) and llm._owns_http
    asyncio.run(llm.aclose())


def test_pool_builds_a_new_client_on_a_new_event_loop() -> None:
    pool = HttpPool()

    async def use() -> httpx.AsyncClient:
        client = pool.client()
        assert client is not None and pool.client() is client  # one per loop
        return client

    first = asyncio.run(use())
    second = asyncio.run(use())
    assert second is not first
    asyncio.run(pool.aclose())
    assert second.is_closed
