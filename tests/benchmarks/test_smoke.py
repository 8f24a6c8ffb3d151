"""A short benchmark run in CI: 2 calls of 1 turn against a real server process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.latency import render_markdown, run_latency

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


async def test_latency_smoke_run(tmp_path: Path) -> None:
    """Provider fakes, server and callers each in a process of their own, as `ava bench` runs."""
    data = await run_latency(
        calls=2,
        command="pytest smoke",
        out_dir=tmp_path,
        barge_in_after=None,
        utterances=1,
        pin=False,
    )
    assert data["failedCalls"] == 0 and data["unansweredTurns"] == 0
    assert data["voiceToVoiceMs"]["count"] == 2
    # fakes: STT final ~150 ms after speech, LLM first token 300 ms, TTS first byte 150 ms. The
    # LLM starts on the STT's endpointed final (speculatively), so the caller hears at least
    # the LLM's and the TTS's share, and usually the STT's too (~600 ms; 599 seen in CI).
    assert 450 < data["voiceToVoiceMs"]["p50"] < 2000
    assert data["greetingMs"]["count"] == 2 and data["greetingMs"]["max"] < 100
    server = data["serverBreakdownMs"]
    assert server["server"]["count"] == 2 and server["server"]["max"] < 100
    assert server["tts_ttfb"]["p50"] >= 150
    assert 0 < data["serverCpuSecondsPerCallMinute"] and data["callerCpuSeconds"] > 0
    written = json.loads((tmp_path / "latency.json").read_text())
    assert written["voiceToVoiceMs"] == data["voiceToVoiceMs"]
    table = render_markdown(data)
    assert "| voice-to-voice (phone) | 2 |" in table
    work = tmp_path / "work"
    assert (work / "server-cli.log").exists() and (work / "providers.log").exists()
