"""The engine hub: Silero with a webrtcvad fallback, cloud providers refused clearly, one HTTP
pool shared by every cloud call and closed at app shutdown."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

import pytest

from benchmarks.fakes.openai import OpenAiFake, OpenAiFakeConfig
from benchmarks.fakes.server import serve as serve_fake
from control.app import create_app
from control.engines import EngineHub
from tests.conftest import AssistantFactory, serve, settings_for
from voice.assistant import Assistant
from voice.engines import SileroVad, WebRtcVad
from voice.errors import ConfigError
from voice.vad import EnergyVad


def test_falls_back_to_webrtcvad_when_silero_is_unusable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "silero_vad.onnx"
    broken.write_bytes(b"not an onnx model")
    monkeypatch.setattr("control.engines.silero_vad_path", lambda: broken)
    settings = settings_for(Path("control/data/sample-assistant.json"), tmp_path)
    hub = EngineHub.load(settings)
    try:
        assert isinstance(hub.vad, WebRtcVad)
        assert hub.vad.stream().process(b"\x00\x00" * 160) == 0.0
    finally:
        hub.close()


def test_offline_hub_builds_engines_and_refuses_cloud_providers(tmp_path: Path) -> None:
    settings = settings_for(Path("control/data/sample-assistant.json"), tmp_path)
    hub = EngineHub.load(settings)
    try:
        assert isinstance(hub.vad, SileroVad)
        engines = hub.for_assistant(Assistant())
        assert (engines.stt.name, engines.llm.name, engines.tts.name) == (
            "faster-whisper",
            "local",
            "piper",
        )
        cloud = Assistant.model_validate({"voice": {"provider": "11labs", "voiceId": "x"}})
        with pytest.raises(ConfigError, match="voice.provider '11labs'"):
            hub.for_assistant(cloud)
    finally:
        hub.close()


async def test_cloud_calls_share_one_http_pool_closed_at_app_shutdown(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    fake = OpenAiFake(
        OpenAiFakeConfig(
            api_key="sk-test", speech_first_byte_latency=0.01, speech_realtime_factor=50
        )
    )
    async with serve_fake(fake.app) as fake_base:
        assistant = {
            "model": {"provider": "openai", "model": "gpt-4o-mini"},
            "voice": {"provider": "openai", "voiceId": "alloy"},
            "transcriber": {"provider": "deepgram"},
        }
        settings = settings_for(
            assistant_file(**assistant),
            tmp_path,
            openai_api_key="sk-test",
            openai_base_url=f"{fake_base}/v1",
            deepgram_api_key="dg-test",  # the transcriber is built, never connected here
        )
        hub = EngineHub(
            executor=cast(Any, None),
            vad=EnergyVad(),
            turn_detector=None,
            piper=cast(Any, None),
            whisper=cast(Any, None),
            settings=settings,
        )
        async with asyncio.timeout(20), serve(create_app(settings, engines=hub)):
            # Startup warmed the greeting and the apology through the pool's client.
            client = hub.http.client()
            assert client is not None and not client.is_closed
            assert len(fake.speech_requests) == 4  # both lines, phone and browser formats
            calls = [hub.for_assistant(Assistant.model_validate(assistant)) for _ in range(2)]
            for engines in calls[:1]:
                for close in engines.closers:
                    await close()  # one call ends; the other still has a usable pool
            assert not client.is_closed and hub.http.client() is client
            assert [c.audio async for c in calls[1].tts.synthesize("Still here.")]
            for close in calls[1].closers:
                await close()
        assert client.is_closed  # the app's shutdown closed it
