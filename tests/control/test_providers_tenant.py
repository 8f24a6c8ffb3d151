"""Issue 9, finding 1: a tenant's calls use the tenant's provider credentials.

The operator's keys never reach a URL a tenant chose (custom-llm, also through
`model.fallbackModels`), never reach a tenant the operator did not share them with, and groq /
together-ai / deepinfra keys go to their own hosts. The LLM servers here are one loopback
recorder answering OpenAI's streamed chat completions; what it was sent is what is asserted.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from benchmarks.fakes.openai import OpenAiFake, OpenAiFakeConfig
from benchmarks.fakes.server import serve as serve_fake
from control.app import create_app
from control.engines import EngineHub
from control.providers import OPERATOR_KEYS, provider_keys
from control.settings import Settings
from control.stores import Stores, open_stores
from tests.conftest import AssistantFactory, migrated_sqlite, settings_for
from tests.control.conftest import Api, running_api
from voice.assistant import Assistant
from voice.errors import ConfigError, ProviderError
from voice.ports import LanguageModel
from voice.providers import DeepgramStt
from voice.session import Engines
from voice.types import ChatMessage
from voice.vad import EnergyVad

pytestmark = pytest.mark.timeout(60)

OPERATOR_OPENAI = "sk-operator-openai-secret"
OPERATOR_DEEPGRAM = "dg-operator-secret"
OPERATOR_SECRETS = (OPERATOR_OPENAI, OPERATOR_DEEPGRAM)


@dataclass
class Recorder:
    """An OpenAI-compatible chat server that records each request's path and Authorization."""

    seen: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.app = Starlette(routes=[Route("/{path:path}", self._chat, methods=["POST"])])

    async def _chat(self, request: Request) -> Response:
        self.seen.append((request.url.path, request.headers.get("authorization", "")))
        chunk = {
            "id": "c1",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "m",
            "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": "ok"}, "finish_reason": None}
            ],
        }
        done = {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        body = f"data: {json.dumps(chunk)}\n\ndata: {json.dumps(done)}\n\ndata: [DONE]\n\n"
        return Response(body, media_type="text/event-stream")


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[Recorder, str]]:
    fake = Recorder()
    async with serve_fake(fake.app) as base:
        yield fake, base


def cloud_settings(tmp_path: Path, base: str, **overrides: Any) -> Settings:
    """The operator's keys are set; every provider host is the loopback recorder."""
    return Settings(
        data_dir=tmp_path / "var",
        _env_file=None,  # type: ignore[call-arg]
        **{
            "openai_api_key": OPERATOR_OPENAI,
            "deepgram_api_key": OPERATOR_DEEPGRAM,
            "openai_base_url": f"{base}/v1",
            "groq_base_url": f"{base}/groq/v1",
            **overrides,
        },
    )


def cloud_hub(settings: Settings) -> EngineHub:
    # Only cloud providers are chosen in these tests, so the offline engines are never touched.
    return EngineHub(
        executor=cast(Any, None),
        vad=EnergyVad(),
        turn_detector=None,
        piper=cast(Any, None),
        whisper=cast(Any, None),
        settings=settings,
    )


async def ask(llm: LanguageModel) -> str:
    with contextlib.suppress(ProviderError):
        return "".join([d.text async for d in llm.stream([ChatMessage("user", "hi")])])
    return ""


async def ask_all(engines: Engines) -> None:
    try:
        for llm in (engines.llm, *engines.llm_fallbacks):
            await ask(llm)
    finally:
        for close in engines.closers:
            await close()


# Cloud transcriber and voice (built, never connected here): no offline engine is loaded.
CLOUD = {"transcriber": {"provider": "deepgram"}, "voice": {"provider": "openai", "voiceId": "a"}}


async def tenant_assistant(api: Api, config: dict[str, Any]) -> Assistant:
    created = await api.a.post("/assistant", json={**CLOUD, **config})
    assert created.status_code == 201, created.text
    record = await api.stores.assistants.get(api.tenant_a, created.json()["id"])
    assert record is not None
    return record.assistant()


async def credential(api: Api, provider: str, key: str) -> str:
    created = await api.a.post("/credential", json={"provider": provider, "apiKey": key})
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def assert_no_operator_key(seen: list[tuple[str, str]]) -> None:
    for path, authorization in seen:
        assert all(secret not in authorization for secret in OPERATOR_SECRETS), path


async def test_a_tenants_custom_llm_never_gets_the_operators_key(
    api: Api, tmp_path: Path, recorder: tuple[Recorder, str]
) -> None:
    fake, base = recorder
    # Even with the operator's keys shared with tenants: they are for the operator's URLs.
    settings = cloud_settings(tmp_path, base, tenants_use_operator_keys=True)
    hub = cloud_hub(settings)
    assistant = await tenant_assistant(
        api,
        {
            "model": {
                "provider": "custom-llm",
                "model": "mine",
                "url": f"{base}/tenant/v1",
                "fallbackModels": [{"model": "mine-small"}, {"url": f"{base}/backup/v1"}],
            }
        },
    )
    keys = await provider_keys(api.stores, settings, api.tenant_a)
    await ask_all(hub.for_assistant(assistant, keys))
    assert [path for path, _ in fake.seen] == [
        "/tenant/v1/chat/completions",
        "/tenant/v1/chat/completions",
        "/backup/v1/chat/completions",
    ]
    assert {auth for _, auth in fake.seen} == {"Bearer not-needed"}

    # With the tenant's own custom-llm credential, that is what its server gets.
    fake.seen.clear()
    await credential(api, "custom-llm", "tenant-llm-key")
    keys = await provider_keys(api.stores, settings, api.tenant_a)
    await ask_all(hub.for_assistant(assistant, keys))
    assert len(fake.seen) == 3
    assert {auth for _, auth in fake.seen} == {"Bearer tenant-llm-key"}
    await hub.aclose_http()


async def test_a_fallback_switching_to_custom_llm_never_gets_the_operators_key(
    api: Api, tmp_path: Path, recorder: tuple[Recorder, str]
) -> None:
    fake, base = recorder
    settings = cloud_settings(tmp_path, base, tenants_use_operator_keys=True)
    hub = cloud_hub(settings)
    assistant = await tenant_assistant(
        api,
        {
            "model": {
                "provider": "openai",
                "model": "gpt-4o-mini",
                "fallbackModels": [{"provider": "custom-llm", "url": f"{base}/tenant/v1"}],
            }
        },
    )
    keys = await provider_keys(api.stores, settings, api.tenant_a)
    await ask_all(hub.for_assistant(assistant, keys))
    # The primary goes to the operator's OpenAI URL with the shared key; the fallback to the
    # tenant's URL without it.
    assert fake.seen == [
        ("/v1/chat/completions", f"Bearer {OPERATOR_OPENAI}"),
        ("/tenant/v1/chat/completions", "Bearer not-needed"),
    ]
    await hub.aclose_http()


@pytest.mark.parametrize("allow", ["", "127.0.0.1"])
async def test_a_tenants_custom_llm_goes_through_the_egress_policy(
    api: Api, tmp_path: Path, recorder: tuple[Recorder, str], allow: str
) -> None:
    """Production mode (a Twilio token): the tenant's loopback URL is refused where it would be
    connected to, unless the operator allows it (AVA_EGRESS_ALLOW)."""
    fake, base = recorder
    settings = cloud_settings(
        tmp_path, base, twilio_auth_token="operator-twilio-token", egress_allow=allow
    )
    hub = cloud_hub(settings)
    assistant = await tenant_assistant(
        api, {"model": {"provider": "custom-llm", "model": "m", "url": f"{base}/tenant/v1"}}
    )
    await credential(api, "deepgram", "dg-tenant")
    await credential(api, "openai", "oa-tenant")
    keys = await provider_keys(api.stores, settings, api.tenant_a)
    await ask_all(hub.for_assistant(assistant, keys))
    assert fake.seen == ([("/tenant/v1/chat/completions", "Bearer not-needed")] if allow else [])
    await hub.aclose_http()


async def test_groq_uses_the_tenants_groq_credential_at_groqs_host(
    api: Api, tmp_path: Path, recorder: tuple[Recorder, str]
) -> None:
    fake, base = recorder
    settings = cloud_settings(tmp_path, base, tenants_use_operator_keys=True)
    hub = cloud_hub(settings)
    config = {"model": {"provider": "groq", "model": "llama-3.1-8b-instant"}}
    assistant = await tenant_assistant(api, config)

    # No groq credential, and the operator has no GROQ_API_KEY: refused, naming what is missing,
    # never sent to OPENAI_BASE_URL with the OpenAI key.
    keys = await provider_keys(api.stores, settings, api.tenant_a)
    with pytest.raises(ConfigError, match="credential for 'groq'") as refused:
        hub.for_assistant(assistant, keys)
    assert all(secret not in str(refused.value) for secret in OPERATOR_SECRETS)
    assert fake.seen == []

    await credential(api, "openai", "tenant-openai-key")
    await credential(api, "groq", "tenant-groq-key")
    keys = await provider_keys(api.stores, settings, api.tenant_a)
    await ask_all(hub.for_assistant(assistant, keys))
    assert fake.seen == [("/groq/v1/chat/completions", "Bearer tenant-groq-key")]

    # The newest credential for the provider wins, unless the model names one by credentialId.
    first = await credential(api, "groq", "tenant-groq-key-2")
    await credential(api, "groq", "tenant-groq-key-3")
    fake.seen.clear()
    keys = await provider_keys(api.stores, settings, api.tenant_a)
    await ask_all(hub.for_assistant(assistant, keys))
    named = await tenant_assistant(api, {"model": {**config["model"], "credentialId": first}})
    await ask_all(hub.for_assistant(named, keys))
    assert [auth for _, auth in fake.seen] == [
        "Bearer tenant-groq-key-3",
        "Bearer tenant-groq-key-2",
    ]
    # Tenant B's keys: none of A's credentials.
    keys_b = await provider_keys(api.stores, settings, api.tenant_b)
    with pytest.raises(ConfigError, match="credential for 'groq'"):
        hub.for_assistant(assistant, keys_b)
    with pytest.raises(ConfigError, match=f"credential {first} not found"):
        hub.for_assistant(named, keys_b)
    await hub.aclose_http()


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[Stores]:
    data = tmp_path / "own"
    migrated_sqlite(data)
    opened = await open_stores(
        Settings(data_dir=data, secret_key="k", _env_file=None)  # type: ignore[arg-type,call-arg]
    )
    try:
        yield opened
    finally:
        await opened.close()


@pytest.mark.parametrize(
    ("setting", "tenants", "shared"),
    [
        (None, 1, True),  # a single-tenant setup: the operator's tenant uses the operator's keys
        (None, 2, False),
        (False, 1, False),
        (False, 2, False),
        (True, 2, True),
    ],
)
async def test_operator_keys_reach_tenants_only_where_the_operator_allows(
    stores: Stores, tmp_path: Path, setting: bool | None, tenants: int, shared: bool
) -> None:
    settings = cloud_settings(tmp_path, "http://127.0.0.1:9", tenants_use_operator_keys=setting)
    tenant = (await stores.tenants.create_tenant("first")).id
    for i in range(1, tenants):
        await stores.tenants.create_tenant(f"other {i}")
    keys = await provider_keys(stores, settings, tenant)
    assert keys.operator is shared
    # The assistant file's calls (no tenant) always may use them.
    assert await provider_keys(stores, settings, None) is OPERATOR_KEYS

    hub = cloud_hub(settings)
    assistant = Assistant.model_validate(
        {
            **CLOUD,
            "model": {"provider": "openai", "model": "gpt-4o-mini"},
        }
    )
    if shared:
        engines = hub.for_assistant(assistant, keys)
        assert isinstance(engines.stt, DeepgramStt)
        assert engines.stt._api_key == OPERATOR_DEEPGRAM
        for close in engines.closers:
            await close()
    else:
        with pytest.raises(ConfigError) as refused:
            hub.for_assistant(assistant, keys)
        assert "needs a credential for 'deepgram' (POST /credential)" in str(refused.value)
        assert all(secret not in str(refused.value) for secret in OPERATOR_SECRETS)
        # The tenant's own credentials make the call possible.
        await stores.credentials.create(tenant, provider="deepgram", api_key="dg-tenant")
        await stores.credentials.create(tenant, provider="openai", api_key="oa-tenant")
        engines = hub.for_assistant(assistant, await provider_keys(stores, settings, tenant))
        assert isinstance(engines.stt, DeepgramStt) and engines.stt._api_key == "dg-tenant"
        for close in engines.closers:
            await close()
    await hub.aclose_http()


async def test_a_web_call_without_the_tenants_credential_is_refused_at_once(
    tmp_path: Path, assistant_file: AssistantFactory, database_url: str
) -> None:
    """Through the API: two tenants, AVA_TENANTS_USE_OPERATOR_KEYS unset, the operator's keys
    set. Tenant A's call cannot start on them, and the answer says what A must add."""
    fake = OpenAiFake(
        OpenAiFakeConfig(
            api_key=OPERATOR_OPENAI, speech_first_byte_latency=0.01, speech_realtime_factor=50
        )
    )
    cloud = {
        "model": {"provider": "groq", "model": "llama-3.1-8b-instant"},
        "voice": {"provider": "openai", "voiceId": "alloy"},
        "transcriber": {"provider": "deepgram"},
    }
    async with serve_fake(fake.app) as base:
        settings = settings_for(
            assistant_file(
                model={"provider": "openai", "model": "gpt-4o-mini"},
                voice=cloud["voice"],
                transcriber=cloud["transcriber"],
            ),
            tmp_path,
            database_url=database_url,
            openai_api_key=OPERATOR_OPENAI,
            openai_base_url=f"{base}/v1",
            deepgram_api_key=OPERATOR_DEEPGRAM,
        )
        hub = cloud_hub(settings)
        async with running_api(create_app(settings, engines=hub)) as api:
            created = await api.a.post("/assistant", json=cloud)
            assert created.status_code == 201, created.text
            offer = {"sdp": "v=0\r\n", "type": "offer", "assistantId": created.json()["id"]}
            refused = await api.a.post("/webrtc/offer", json=offer)
            assert refused.status_code == 422, refused.text
            assert "needs a credential for 'deepgram'" in refused.text
            assert all(secret not in refused.text for secret in OPERATOR_SECRETS)

            for provider in ("deepgram", "groq", "openai"):
                await credential(api, provider, f"{provider}-tenant-key")
            accepted = await api.a.post("/webrtc/offer", json=offer)
            # The engines are built now; the made-up SDP is what is refused.
            assert accepted.status_code == 400, accepted.text
            assert "bad SDP offer" in accepted.text
