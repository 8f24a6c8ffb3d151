"""A short benchmark run in CI: 2 calls of 1 turn against a real server process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.latency import render_markdown, run_latency
from voice.engines.synthesize import synthesize_ulaw

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def question() -> bytes:
    return synthesize_ulaw(["What are your opening hours?"])[0]


async def test_latency_smoke_run(question: bytes, tmp_path: Path) -> None:
    data = await run_latency(
        [question], calls=2, command="pytest smoke", barge_in_after=None, out_dir=tmp_path
    )
    assert data["failedCalls"] == 0 and data["unansweredTurns"] == 0
    assert data["voiceToVoiceMs"]["count"] == 2
    assert data["greetingMs"]["count"] == 2 and data["greetingMs"]["max"] < 100
    server = data["serverBreakdownMs"]
    assert server["server"]["count"] == 2 and server["server"]["max"] < 100
    assert 0 < data["serverCpuSecondsPerCallMinute"]
    written = json.loads((tmp_path / "latency.json").read_text())
    assert written["voiceToVoiceMs"] == data["voiceToVoiceMs"]
    table = render_markdown(data)
    assert "| voice-to-voice (phone) | 2 |" in table
    assert (tmp_path / "server.log").exists()
