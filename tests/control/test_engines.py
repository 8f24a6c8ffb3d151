"""The engine hub: Silero with a webrtcvad fallback, cloud providers refused clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from control.engines import EngineHub
from tests.conftest import settings_for
from voice.assistant import Assistant
from voice.engines import SileroVad, WebRtcVad
from voice.errors import ConfigError


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
