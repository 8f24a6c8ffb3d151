"""Settings and the provider factory: cloud adapters and fallbacks from Vapi-shaped configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest

from control.engines import EngineHub
from control.providers import CloudAdapters, fallback_models, openai_tools
from control.settings import Settings
from voice.assistant import Assistant, ModelConfig, TranscriberConfig, VoiceConfig
from voice.errors import ConfigError
from voice.providers import DeepgramStt, ElevenLabsTts, OpenAiLlm, OpenAiTts
from voice.vad import EnergyVad

KEYS = {
    "DEEPGRAM_API_KEY": "dg-key",
    "OPENAI_API_KEY": "oa-key",
    "ELEVENLABS_API_KEY": "el-key",
}


def settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for name in (
        *KEYS,
        "DEEPGRAM_BASE_URL",
        "OPENAI_BASE_URL",
        "ELEVENLABS_BASE_URL",
        "GROQ_API_KEY",
        "GROQ_BASE_URL",
    ):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings(_env_file=None)  # type: ignore[call-arg]


def test_conventional_names_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = settings(monkeypatch)
    assert defaults.deepgram_base_url == "wss://api.deepgram.com"
    assert defaults.elevenlabs_base_url == "wss://api.elevenlabs.io"
    assert defaults.openai_base_url is None
    assert not defaults.openai_api_key.get_secret_value()
    custom = settings(monkeypatch, **KEYS, OPENAI_BASE_URL="http://127.0.0.1:9/v1")
    assert custom.deepgram_api_key.get_secret_value() == "dg-key"
    assert custom.elevenlabs_api_key.get_secret_value() == "el-key"
    assert custom.openai_base_url == "http://127.0.0.1:9/v1"


def test_env_example_documents_every_provider_setting() -> None:
    text = Path(".env.example").read_text()
    for name in (*KEYS, "DEEPGRAM_BASE_URL", "OPENAI_BASE_URL", "ELEVENLABS_BASE_URL"):
        assert f"\n{name}=" in text, name


async def test_adapters_from_vapi_configs(monkeypatch: pytest.MonkeyPatch) -> None:
    cloud = CloudAdapters(
        settings(
            monkeypatch,
            **KEYS,
            GROQ_API_KEY="gq-key",
            DEEPGRAM_BASE_URL="ws://127.0.0.1:1",
            OPENAI_BASE_URL="http://h/v1",
        )
    )
    stt = cloud.stt(TranscriberConfig(provider="deepgram", model="nova-3", endpointing=300))
    assert isinstance(stt, DeepgramStt)
    assert stt.url.startswith("ws://127.0.0.1:1/v1/listen?") and "endpointing=300" in stt.url
    assert "model=nova-3" in stt.url and "encoding=mulaw" in stt.url
    llm = cloud.llm(
        ModelConfig.model_validate(
            {
                "provider": "groq",
                "model": "llama-3.1-8b-instant",
                "temperature": 0.2,
                "maxTokens": 99,
                "tools": [
                    {
                        "type": "function",
                        "function": {"name": "book", "description": "Book it.", "parameters": {}},
                        "server": {"url": "http://tools.example/x"},
                    },
                    {"type": "endCall"},
                ],
            }
        )
    )
    assert isinstance(llm, OpenAiLlm)
    assert (llm.model, llm.temperature, llm.max_tokens) == ("llama-3.1-8b-instant", 0.2, 99)
    # groq's own host and key, never OPENAI_BASE_URL with the OpenAI key
    assert str(llm._client.base_url) == "https://api.groq.com/openai/v1/"
    assert llm._client.api_key == "gq-key"
    schema = {"type": "object", "properties": {}}  # Vapi's empty parameters, made valid
    # built-in tools are offered as functions too (voice.tools): endCall here
    end_call = "End the call. Use it when the conversation is over."
    assert llm.tools == [
        {
            "type": "function",
            "function": {"name": "book", "description": "Book it.", "parameters": schema},
        },
        {
            "type": "function",
            "function": {"name": "endCall", "description": end_call, "parameters": schema},
        },
    ]
    eleven = cloud.tts(
        VoiceConfig.model_validate({"provider": "11labs", "voiceId": "v1", "model": "m2"})
    )
    assert isinstance(eleven, ElevenLabsTts)
    assert "/v1/text-to-speech/v1/multi-stream-input" in eleven.url and "model_id=m2" in eleven.url
    speech = cloud.tts(VoiceConfig(provider="openai", voice_id="alloy"))
    assert isinstance(speech, OpenAiTts) and speech.voice == "alloy"
    assert len(cloud.closers) == 3  # the LLM client, the ElevenLabs socket, the speech client
    await cloud.aclose()
    assert cloud.closers == []


def test_custom_llm_uses_model_url(monkeypatch: pytest.MonkeyPatch) -> None:
    cloud = CloudAdapters(settings(monkeypatch))  # no OpenAI key: a local server needs none
    llm = cloud.llm(ModelConfig(provider="custom-llm", model="m", url="http://127.0.0.1:7/v1"))
    assert isinstance(llm, OpenAiLlm)
    with pytest.raises(ConfigError, match="model.url"):
        cloud.llm(ModelConfig(provider="custom-llm", model="m"))


@pytest.mark.parametrize(
    ("build", "setting"),
    [
        (lambda c: c.stt(TranscriberConfig(provider="deepgram")), "DEEPGRAM_API_KEY"),
        (lambda c: c.llm(ModelConfig(provider="openai", model="gpt-4o-mini")), "OPENAI_API_KEY"),
        (lambda c: c.tts(VoiceConfig(provider="11labs", voice_id="v")), "ELEVENLABS_API_KEY"),
        (lambda c: c.tts(VoiceConfig(provider="openai", voice_id="alloy")), "OPENAI_API_KEY"),
    ],
)
def test_a_missing_key_names_the_setting(
    monkeypatch: pytest.MonkeyPatch, build: Any, setting: str
) -> None:
    with pytest.raises(ConfigError, match=setting):
        build(CloudAdapters(settings(monkeypatch)))


def test_fallback_models_override_the_primary() -> None:
    model = ModelConfig.model_validate(
        {
            "provider": "openai",
            "model": "gpt-4o",
            "temperature": 0.3,
            "fallbackModels": [
                {"model": "gpt-4o-mini"},
                {"provider": "custom-llm", "url": "http://x/v1"},
            ],
        }
    )
    first, second = fallback_models(model)
    assert (first.provider, first.model, first.temperature) == ("openai", "gpt-4o-mini", 0.3)
    assert (second.provider, second.url) == ("custom-llm", "http://x/v1")
    assert not first.fallback_models
    with pytest.raises(ConfigError, match=r"fallbackModels\[0\]"):
        fallback_models(ModelConfig(fallback_models=[{"temperature": 9}]))


def test_openai_tools_rejects_nameless_functions() -> None:
    with pytest.raises(ConfigError, match=r"tools\[0\]"):
        openai_tools([{"type": "function", "function": {}}])


def cloud_hub(monkeypatch: pytest.MonkeyPatch, **env: str) -> EngineHub:
    # Only cloud providers are chosen below, so the offline engines are never touched.
    return EngineHub(
        executor=cast(Any, None),
        vad=EnergyVad(),
        turn_detector=None,
        piper=cast(Any, None),
        whisper=cast(Any, None),
        settings=settings(monkeypatch, **env),
    )


CLOUD_ASSISTANT: dict[str, Any] = {
    "transcriber": {
        "provider": "deepgram",
        "fallbackPlan": {"transcribers": [{"provider": "deepgram", "model": "nova-2"}]},
    },
    "model": {
        "provider": "openai",
        "model": "gpt-4o-mini",
        "fallbackModels": [{"model": "gpt-4o"}],
    },
    "voice": {
        "provider": "11labs",
        "voiceId": "v1",
        "fallbackPlan": {"voices": [{"provider": "openai", "voiceId": "alloy"}]},
    },
}


async def test_engine_hub_builds_cloud_engines_with_fallbacks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hub = cloud_hub(monkeypatch, **KEYS)
    engines = hub.for_assistant(Assistant.model_validate(CLOUD_ASSISTANT))
    assert isinstance(engines.stt, DeepgramStt) and isinstance(engines.llm, OpenAiLlm)
    assert isinstance(engines.tts, ElevenLabsTts)
    assert [type(e) for e in engines.stt_fallbacks] == [DeepgramStt]
    assert [e.model for e in engines.llm_fallbacks if isinstance(e, OpenAiLlm)] == ["gpt-4o"]
    assert [type(e) for e in engines.tts_fallbacks] == [OpenAiTts]
    assert engines.breakers is hub.breakers  # one board per process
    for close in engines.closers:
        await close()


def test_engine_hub_refuses_a_fallback_without_its_key(monkeypatch: pytest.MonkeyPatch) -> None:
    hub = cloud_hub(monkeypatch, DEEPGRAM_API_KEY="k", OPENAI_API_KEY="k")
    data = {
        **CLOUD_ASSISTANT,
        "voice": {
            "provider": "openai",
            "voiceId": "alloy",
            "fallbackPlan": {"voices": [{"provider": "11labs", "voiceId": "v"}]},
        },
    }
    with pytest.raises(ConfigError, match="ELEVENLABS_API_KEY"):
        hub.for_assistant(Assistant.model_validate(data))
