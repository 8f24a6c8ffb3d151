"""End to end on the embedded defaults: real speech, the offline engines, a real websocket.

The caller's questions are synthesized at test time with the Piper voice; the server hears them
through Silero VAD, smart-turn and Whisper, answers with the local responder and Piper, and the
simulated Twilio caller measures what it hears.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import soxr

from control.app import create_app
from control.engines import EngineHub
from media.g711 import ulaw_to_float
from media.twilio.caller import CallScript, place_call
from tests.conftest import AssistantFactory, heard_after_barge_in, serve, settings_for
from voice.engines.synthesize import synthesize_ulaw

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def questions(hub: EngineHub) -> dict[str, bytes]:
    texts = {
        "hours": "What are your opening hours?",
        "where": "Where are you located?",
        "services": "Can I book an appointment please?",
        # No mid-sentence pause here: answering over one is issue 10's, tested on its own.
        "interrupt": "Where exactly are you located?",
    }
    audio = synthesize_ulaw(list(texts.values()), hub.piper)
    return dict(zip(texts, audio, strict=True))


@pytest.fixture(scope="module")
def whisper_seconds(hub: EngineHub, questions: dict[str, bytes]) -> float:
    """What one Whisper-base final costs on this machine. It varies ~6x between the machines
    this suite runs on (0.65 s on an AVX-512 Xeon, 3.8 s on an AVX2 EPYC with ctranslate2's
    DNNL backend), and the offline voice-to-voice is mostly that; the bound follows it."""
    audio = ulaw_to_float(questions["hours"])
    audio_16k = soxr.resample(audio, 8000, 16000).astype(np.float32)
    started = time.perf_counter()
    hub.whisper.transcribe(audio_16k, "en")
    return time.perf_counter() - started


@pytest.fixture
async def server(
    hub: EngineHub, tmp_path: Path, assistant_file: AssistantFactory
) -> AsyncIterator[str]:
    app = create_app(settings_for(assistant_file(), tmp_path), engines=hub)
    async with serve(app) as base:
        yield base


def spoken(record: dict[str, object]) -> list[tuple[str, str]]:
    messages = record["messages"]
    assert isinstance(messages, list)
    return [(m["role"], m["message"]) for m in messages]


async def test_two_turn_conversation(
    server: str, questions: dict[str, bytes], whisper_seconds: float
) -> None:
    report = await place_call(server, CallScript([questions["hours"], questions["where"]]))
    assert report.error is None, report.render()
    assert report.greeting_latency is not None and report.greeting_latency < 0.1
    record = report.record
    assert record is not None, report.render()
    said = spoken(record)
    assert said[0] == ("bot", "Hello, this is Ava. How can I help you today?")
    user = [text.lower() for role, text in said if role == "user"]
    assert len(user) == 2, said
    assert "hours" in user[0] and "located" in user[1]
    bot = [text for role, text in said if role == "bot"]
    assert bot[1].startswith("We are open from nine")
    assert bot[2].startswith("We are at twelve Main Street")
    # 3 s where Whisper takes 0.65 s; the rest of the turn (VAD, Piper, AVA) is ~0.5 s, so a
    # slower Whisper adds what it costs, twice over for a final still running at the endpoint.
    bound = 3.0 + 2 * max(0.0, whisper_seconds - 0.65)
    for turn in report.turns:
        assert turn.voice_to_voice is not None and turn.voice_to_voice < bound, whisper_seconds
    for turn in record["turns"]:
        latency = turn["latency"]
        assert latency["server"] < 0.1, latency
    assert record["ended_reason"] == "customer-ended-call"


async def test_barge_in_on_the_offline_engines(server: str, questions: dict[str, bytes]) -> None:
    script = CallScript([questions["services"], questions["interrupt"]], barge_in_after=1.0)
    report = await place_call(server, script)
    assert report.error is None, report.render()
    assert report.clears >= 1, report.render()
    # Whisper gives no interim words: the caller stops hearing the assistant at once (output
    # paused at the onset), and the clear comes at the no-words deadline (0.7 s).
    assert heard_after_barge_in(report) < 0.3, report.render()
    reaction = report.barge_in_reaction
    assert reaction is not None and reaction < 0.9, report.render()
    record = report.record
    assert record is not None
    interrupted = [m for m in record["messages"] if m["interrupted"]]
    assert len(interrupted) == 1
    full = "I can book that for you. Which day would suit you best?"
    assert full.startswith(interrupted[0]["message"]) and interrupted[0]["message"] != full
    last_user = [m["message"].lower() for m in record["messages"] if m["role"] == "user"][-1]
    assert "located" in last_user
    assert record["messages"][-1]["message"].startswith("We are at twelve Main Street")


async def test_hang_up_mid_reply_leaves_no_tasks(server: str, questions: dict[str, bytes]) -> None:
    report = await place_call(server, CallScript([questions["hours"]], hang_up_after=0.8))
    record = report.record
    assert record is not None
    assert record["ended_reason"] == "customer-ended-call"
    assert record["messages"][-1]["interrupted"] is True
    await asyncio.sleep(0.1)
    assert [t for t in asyncio.all_tasks() if "CallSession" in repr(t.get_coro())] == []
