"""Option objects, error mapping at the adapter edge, and the adapters' fit to the ports."""

from __future__ import annotations

import httpx
import pytest
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosedError, InvalidStatus
from websockets.frames import Close
from websockets.http11 import Response

import voice.providers
from voice.errors import ConfigError, ProviderError, ProviderTimeout
from voice.ports import LanguageModel, SpeechToText, TextToSpeech
from voice.providers import (
    DeepgramStt,
    ElevenLabsTts,
    ElevenLabsVoiceSettings,
    OpenAiLlm,
    OpenAiTts,
    ReconnectPolicy,
    StageTimeouts,
)
from voice.providers._http import map_httpx_errors
from voice.providers._ws import map_websocket_errors


def test_public_api_is_pinned() -> None:
    assert sorted(voice.providers.__all__) == [
        "DeepgramStream",
        "DeepgramStt",
        "ElevenLabsTts",
        "ElevenLabsVoiceSettings",
        "OpenAiLlm",
        "OpenAiTts",
        "ReconnectPolicy",
        "StageTimeouts",
    ]


async def test_adapters_satisfy_the_ports() -> None:
    stt: SpeechToText = DeepgramStt("k")
    llm: LanguageModel = OpenAiLlm("k")
    speech: TextToSpeech = OpenAiTts("k")
    voice: TextToSpeech = ElevenLabsTts("k", "v")
    assert (stt.name, llm.name, speech.name, voice.name) == (
        "deepgram",
        "openai",
        "openai-tts",
        "elevenlabs",
    )
    assert isinstance(llm, OpenAiLlm) and isinstance(speech, OpenAiTts)
    await llm.aclose()
    await speech.aclose()


def test_stage_timeouts_defaults_and_validation() -> None:
    assert StageTimeouts() == StageTimeouts(
        stt_connect=3.0, llm_first_token=4.0, tts_first_byte=3.0
    )
    with pytest.raises(ConfigError, match="llm_first_token"):
        StageTimeouts(llm_first_token=0)
    with pytest.raises(ConfigError, match="stt_connect"):
        StageTimeouts(stt_connect=-1.0)


def test_reconnect_policy_backs_off_to_a_cap() -> None:
    policy = ReconnectPolicy(attempts=5, backoff=0.1, max_backoff=0.3)
    assert [policy.delay(i) for i in range(5)] == [0.0, 0.1, 0.2, 0.3, 0.3]
    with pytest.raises(ConfigError):
        ReconnectPolicy(attempts=0)


def test_voice_settings_are_range_checked() -> None:
    assert ElevenLabsVoiceSettings().to_json()["similarity_boost"] == 0.75
    with pytest.raises(ConfigError):
        ElevenLabsVoiceSettings(speed=2.0)
    with pytest.raises(ConfigError):
        ElevenLabsVoiceSettings(stability=1.5)


def _rejected(status: int) -> InvalidStatus:
    return InvalidStatus(Response(status, "x", Headers({"dg-error": "nope"}), b""))


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(400, False), (401, False), (403, False), (408, True), (429, True), (500, True), (503, True)],
)
def test_websocket_rejections_are_retryable_by_status(status: int, retryable: bool) -> None:
    with pytest.raises(ProviderError) as caught, map_websocket_errors("p", stage="connect"):
        raise _rejected(status)
    assert caught.value.retryable is retryable
    assert isinstance(caught.value.__cause__, InvalidStatus)
    # the status only: what the server said ("nope") goes to the log, not the call record
    assert f"HTTP {status}" in str(caught.value) and "nope" not in str(caught.value)


def test_websocket_drops_and_timeouts() -> None:
    with pytest.raises(ProviderError) as dropped, map_websocket_errors("p"):
        raise ConnectionClosedError(Close(1011, "boom"), None)
    assert dropped.value.retryable and "1011" in str(dropped.value)
    with pytest.raises(ProviderTimeout) as late, map_websocket_errors("p", stage="x", timeout=2):
        raise TimeoutError
    assert (late.value.stage, late.value.seconds) == ("x", 2)
    with pytest.raises(ProviderError) as refused, map_websocket_errors("p"):
        raise ConnectionRefusedError
    assert refused.value.retryable


def test_httpx_errors() -> None:
    request = httpx.Request("POST", "http://127.0.0.1/x")
    response = httpx.Response(401, request=request)
    with pytest.raises(ProviderError) as status, map_httpx_errors("p"):
        raise httpx.HTTPStatusError("no", request=request, response=response)
    assert not status.value.retryable
    with pytest.raises(ProviderTimeout), map_httpx_errors("p", stage="read", timeout=1):
        raise httpx.ReadTimeout("slow", request=request)
    with pytest.raises(ProviderError) as reset, map_httpx_errors("p"):
        raise httpx.RemoteProtocolError("peer closed", request=request)
    assert reset.value.retryable
    with pytest.raises(ProviderError) as bad_url, map_httpx_errors("p"):
        raise httpx.UnsupportedProtocol("ftp", request=request)
    assert not bad_url.value.retryable
