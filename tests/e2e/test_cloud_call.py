"""Whole calls on the cloud adapters: Twilio media websocket in, Deepgram + OpenAI + ElevenLabs out.

The server is AVA's app with its real `EngineHub` (cloud path: `control.providers` builds the
adapters from the assistant) and every provider base URL pointed at the protocol-faithful fakes of
`benchmarks.fakes`. The caller is `media.twilio.caller`; its "speech" is tone bursts, which the
Deepgram fake hears by energy and answers from its script.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from benchmarks.fakes.deepgram import DeepgramFake, DeepgramFakeConfig
from benchmarks.fakes.elevenlabs import ElevenLabsFake, ElevenLabsFakeConfig
from benchmarks.fakes.openai import OpenAiFake, OpenAiFakeConfig, Reply
from benchmarks.fakes.server import Fault, ws_url
from benchmarks.fakes.server import serve as serve_fake
from control.app import create_app
from control.engines import EngineHub
from media.twilio.caller import CallReport, CallScript, place_call
from storage import to_vapi
from tests.conftest import AssistantFactory, conversation, serve, settings_for
from voice.session import APOLOGY
from voice.testing import tone_ulaw
from voice.vad import EnergyVad

pytestmark = pytest.mark.timeout(90)

SPEECH = tone_ulaw(0.8, frequency=300.0)
KEY = "test-key"
LONG_REPLY = (
    "Our clinic offers cleanings, fillings, crowns, whitening and emergency care, and we take "
    "most insurance plans, so let me walk you through each of them in turn."
)


@dataclass
class Fakes:
    deepgram: DeepgramFake
    openai: OpenAiFake
    elevenlabs: ElevenLabsFake
    openai_url: str  # http://127.0.0.1:port/v1
    backup: OpenAiFake  # a second OpenAI-compatible server, for model.fallbackModels
    backup_url: str
    deepgram_url: str  # ws://…
    elevenlabs_url: str  # ws://…


@asynccontextmanager
async def running_fakes(
    script: list[str],
    *,
    openai: OpenAiFakeConfig | None = None,
    backup: OpenAiFakeConfig | None = None,
    elevenlabs: ElevenLabsFakeConfig | None = None,
) -> AsyncIterator[Fakes]:
    deepgram = DeepgramFake(DeepgramFakeConfig(api_key=KEY, script=script))
    chat = OpenAiFake(openai or OpenAiFakeConfig(api_key=KEY))
    spare = OpenAiFake(backup or OpenAiFakeConfig(api_key=KEY))
    eleven = ElevenLabsFake(elevenlabs or ElevenLabsFakeConfig(api_key=KEY))
    async with AsyncExitStack() as stack:
        dg_url = await stack.enter_async_context(serve_fake(deepgram.app))
        oa_url = await stack.enter_async_context(serve_fake(chat.app))
        spare_url = await stack.enter_async_context(serve_fake(spare.app))
        el_url = await stack.enter_async_context(serve_fake(eleven.app))
        yield Fakes(
            deepgram,
            chat,
            eleven,
            f"{oa_url}/v1",
            spare,
            f"{spare_url}/v1",
            ws_url(dg_url),
            ws_url(el_url),
        )


class SlowTurnModel:
    """Stands in for smart-turn: says "complete" after a fixed inference time (in a thread)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def completion_probability(self, pcm16: bytes, sample_rate: int) -> float:
        time.sleep(self.seconds)
        return 0.95


def cloud_assistant(**overrides: Any) -> dict[str, Any]:
    model: dict[str, Any] = {
        "provider": "openai",
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": "You are Ava, a receptionist."}],
    }
    model.update(overrides.pop("model", {}))
    return {
        "model": model,
        "voice": {"provider": "11labs", "voiceId": "ava-voice"},
        "transcriber": {"provider": "deepgram", "model": "nova-3"},
        **overrides,
    }


def make_app(
    fakes: Fakes,
    assistant_file: AssistantFactory,
    tmp_path: Path,
    *,
    turn_model: SlowTurnModel | None = None,
    env: dict[str, str] | None = None,
    **assistant: Any,
) -> Any:
    settings = settings_for(
        assistant_file(**cloud_assistant(**assistant)),
        tmp_path,
        **(env or {}),
        DEEPGRAM_API_KEY=KEY,
        DEEPGRAM_BASE_URL=fakes.deepgram_url,
        OPENAI_API_KEY=KEY,
        OPENAI_BASE_URL=fakes.openai_url,
        ELEVENLABS_API_KEY=KEY,
        ELEVENLABS_BASE_URL=fakes.elevenlabs_url,
    )
    # Cloud providers only: the offline engines are never used, so none are loaded.
    hub = EngineHub(
        executor=cast(Any, None),
        vad=EnergyVad(),
        turn_detector=cast(Any, turn_model),
        piper=cast(Any, None),
        whisper=cast(Any, None),
        settings=settings,
    )
    return create_app(settings, engines=hub)


def bot_messages(report: CallReport) -> list[str]:
    assert report.record is not None
    return [m["message"] for m in report.record["messages"] if m["role"] == "bot"]


def errors(report: CallReport) -> list[dict[str, Any]]:
    assert report.record is not None
    return list(report.record["errors"])


async def test_two_turn_conversation(tmp_path: Path, assistant_file: AssistantFactory) -> None:
    script = ["What are your opening hours?", "Where are you located?"]
    async with running_fakes(script) as fakes:
        app = make_app(fakes, assistant_file, tmp_path)
        async with serve(app) as base:
            report = await place_call(base, CallScript([SPEECH, SPEECH]))
    assert report.error is None, report.error
    assert report.greeting_latency is not None and report.greeting_latency < 0.3  # cached
    assert len(report.turns) == 2
    for turn in report.turns:
        assert turn.voice_to_voice is not None and 0.2 < turn.voice_to_voice < 1.5
    record = report.record
    assert record is not None and record["ended_reason"] == "customer-ended-call"
    assert [(m["role"], m["message"]) for m in record["messages"]] == [
        ("bot", "Hello, this is Ava. How can I help you today?"),
        ("user", script[0]),
        ("bot", f"You said: {script[0]}"),
        ("user", script[1]),
        ("bot", f"You said: {script[1]}"),
    ]
    assert record["errors"] == []
    # one Deepgram socket for the whole call, μ-law passed straight through
    assert len(fakes.deepgram.connections) == 1
    assert fakes.deepgram.connections[0].params["encoding"] == "mulaw"
    assert "CloseStream" in fakes.deepgram.connections[0].controls
    last = conversation(fakes.openai.chat_requests)[-1]
    assert last["model"] == "gpt-4o-mini" and last["stream"] is True
    assert last["messages"][0] == {"role": "system", "content": "You are Ava, a receptionist."}
    # greeting and apology were synthesized once at startup, for the phone and for the browser
    # (side by side); each reply phrase in its context
    spoken = [c.spoken.strip() for c in fakes.elevenlabs.contexts]
    warmed = ["Hello, this is Ava. How can I help you today?", APOLOGY] * 2
    assert sorted(spoken[:4]) == sorted(warmed)


def long_then_short(messages: list[dict[str, Any]]) -> Reply:
    users = [m for m in messages if m.get("role") == "user"]
    return LONG_REPLY if len(users) == 1 else "Cleanings are eighty dollars."


async def test_barge_in_closes_the_elevenlabs_context(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    script = ["Tell me about your services.", "Stop, what about the price?"]
    chat = OpenAiFakeConfig(api_key=KEY, reply=long_then_short, tokens_per_second=400)
    async with running_fakes(script, openai=chat) as fakes:
        app = make_app(fakes, assistant_file, tmp_path)
        async with serve(app) as base:
            report = await place_call(base, CallScript([SPEECH, SPEECH], barge_in_after=1.5))
    assert report.error is None, report.error
    assert report.clears == 1
    record = report.record
    assert record is not None
    interrupted = [m for m in record["messages"] if m["role"] == "bot"][1]
    assert interrupted["interrupted"] is True
    assert LONG_REPLY.startswith(interrupted["message"]) and interrupted["message"] != LONG_REPLY
    assert bot_messages(report)[-1] == "Cleanings are eighty dollars."
    # every context of the long reply was closed on the ElevenLabs socket
    long_contexts = [c for c in fakes.elevenlabs.contexts if c.spoken.strip() in LONG_REPLY]
    assert long_contexts and all(c.closed for c in long_contexts)
    assert set(fakes.elevenlabs.closed_contexts) >= {c.id for c in long_contexts}


async def test_an_llm_500_is_retried_and_the_call_goes_on(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    script = ["What are your opening hours?", "Where are you located?"]
    chat = OpenAiFakeConfig(api_key=KEY, fault=Fault.SERVER_ERROR, fault_count=1)
    async with running_fakes(script, openai=chat) as fakes:
        app = make_app(fakes, assistant_file, tmp_path)
        async with serve(app) as base:
            report = await place_call(base, CallScript([SPEECH, SPEECH]))
    assert report.error is None, report.error
    assert report.record is not None and report.record["ended_reason"] == "customer-ended-call"
    assert bot_messages(report)[1:] == [f"You said: {script[0]}", f"You said: {script[1]}"]
    (error,) = errors(report)
    assert error["stage"] == "llm" and error["retryable"] is True and "500" in error["error"]
    assert len(conversation(fakes.openai.chat_requests)) == 3


async def test_a_dead_llm_falls_back_to_the_fallback_model(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    script = ["What are your opening hours?", "Where are you located?"]
    dead = OpenAiFakeConfig(api_key=KEY, fault=Fault.SERVER_ERROR)
    async with running_fakes(script, openai=dead) as fakes:
        fallback = {"provider": "custom-llm", "url": fakes.backup_url, "model": "backup-model"}
        app = make_app(fakes, assistant_file, tmp_path, model={"fallbackModels": [fallback]})
        async with serve(app) as base:
            report = await place_call(base, CallScript([SPEECH, SPEECH]))
    assert report.error is None, report.error
    assert report.record is not None and report.record["ended_reason"] == "customer-ended-call"
    assert bot_messages(report)[1:] == [f"You said: {script[0]}", f"You said: {script[1]}"]
    assert [r["model"] for r in conversation(fakes.backup.chat_requests)] == ["backup-model"] * 2
    failures = errors(report)
    assert failures and all(e["stage"] == "llm" for e in failures)
    assert {e["provider"] for e in failures} == {"llm/openai/gpt-4o-mini"}
    # turn 1: the primary and its retry; turn 2: one more, which opens its breaker (3 failures)
    assert len(conversation(fakes.openai.chat_requests)) == 3


async def test_everything_failing_apologises_and_ends_the_call(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    dead = OpenAiFakeConfig(api_key=KEY, fault=Fault.SERVER_ERROR)
    also_dead = OpenAiFakeConfig(api_key=KEY, fault=Fault.RATE_LIMITED)
    async with running_fakes(["Hello?"], openai=dead, backup=also_dead) as fakes:
        fallback = {"provider": "custom-llm", "url": fakes.backup_url, "model": "backup-model"}
        app = make_app(fakes, assistant_file, tmp_path, model={"fallbackModels": [fallback]})
        async with serve(app) as base:
            report = await place_call(base, CallScript([SPEECH], max_seconds=20))
    record = report.record
    assert record is not None
    assert record["ended_reason"] == "pipeline-error-model-failed"
    assert "no llm provider left" in record["ended_detail"] and "429" in record["ended_detail"]
    # the caller heard the apology after their turn, not silence
    (turn,) = report.turns
    assert turn.reply_start is not None
    assert bot_messages(report) == ["Hello, this is Ava. How can I help you today?", APOLOGY]
    failures = errors(report)
    assert [e["provider"] for e in failures] == [
        "llm/openai/gpt-4o-mini",
        "llm/openai/gpt-4o-mini",
        "llm/openai/backup-model",
    ]
    assert "500" in failures[0]["error"] and "429" in failures[2]["error"]


async def voice_to_voice(
    tmp_path: Path, assistant_file: AssistantFactory, *, speculative: bool
) -> list[float]:
    # Unpunctuated, so Deepgram's endpoint does not settle the turn and the turn model must.
    script = ["Opening hours please", "Where are you"]
    chat = OpenAiFakeConfig(api_key=KEY, first_token_latency=0.3)
    async with running_fakes(script, openai=chat) as fakes:
        app = make_app(
            fakes,
            assistant_file,
            tmp_path,
            turn_model=SlowTurnModel(0.25),
            startSpeakingPlan={"speculative": speculative},
        )
        async with serve(app) as base:
            # Held until the greeting is heard: on a loaded machine the call's start can take
            # over a second, and a caller who spoke into that silence would be a turn behind.
            script_ = CallScript([SPEECH, SPEECH], await_greeting=True)
            report = await place_call(base, script_)
    assert report.error is None, report.error
    assert bot_messages(report)[1:] == [f"You said: {script[0]}", f"You said: {script[1]}"]
    values = [t.voice_to_voice for t in report.turns]
    assert all(v is not None for v in values)
    return [v for v in values if v is not None]


async def test_speculation_lowers_voice_to_voice(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    """LLM first token 300 ms, a 250 ms turn model: speculation overlaps the two."""
    on = await voice_to_voice(tmp_path / "on", assistant_file, speculative=True)
    off = await voice_to_voice(tmp_path / "off", assistant_file, speculative=False)
    mean_on, mean_off = sum(on) / len(on), sum(off) / len(off)
    measured = f"voice-to-voice: speculative {mean_on * 1e3:.0f} ms, off {mean_off * 1e3:.0f} ms"
    logging.getLogger("ava.test").warning(measured)
    assert mean_on < mean_off - 0.1, measured


async def test_a_stalled_llm_times_out_is_retried_and_the_record_says_so(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    script = ["What are your opening hours?", "Where are you located?"]
    chat = OpenAiFakeConfig(api_key=KEY, fault=Fault.STALL, fault_count=1)
    async with running_fakes(script, openai=chat) as fakes:
        app = make_app(fakes, assistant_file, tmp_path)
        async with serve(app) as base:
            report = await place_call(base, CallScript([SPEECH, SPEECH]))
    assert report.error is None, report.error
    assert report.record is not None and report.record["ended_reason"] == "customer-ended-call"
    assert bot_messages(report)[1:] == [f"You said: {script[0]}", f"You said: {script[1]}"]
    (error,) = errors(report)
    assert error["stage"] == "llm" and error["retryable"] is True
    assert "first_token took longer than 4.000s" in error["error"]
    assert len(conversation(fakes.openai.chat_requests)) == 3


async def test_a_dropped_deepgram_socket_is_reconnected_and_the_call_goes_on(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    script = ["What are your opening hours?", "Where are you located?"]
    async with running_fakes(script) as fakes:
        fakes.deepgram.config.fault = Fault.DROP
        fakes.deepgram.config.fault_count = 1
        fakes.deepgram.config.fault_after = 2.0
        app = make_app(fakes, assistant_file, tmp_path)
        async with serve(app) as base:
            report = await place_call(base, CallScript([SPEECH, SPEECH]))
            stored = await stored_call(app, report.call_sid)
            metrics = await scrape(base)
    assert report.error is None, report.error
    assert report.record is not None and report.record["ended_reason"] == "customer-ended-call"
    assert bot_messages(report)[1:] == [f"You said: {script[0]}", f"You said: {script[1]}"]
    assert len(fakes.deepgram.connections) == 2  # the adapter reconnected on its own
    # ... and the record explains it: in the live record, GET /call's and /metrics
    (error,) = errors(report)
    assert error["stage"] == "stt" and error["provider"] == "stt/deepgram"
    assert error["recovered"] is True and error["retryable"] is True
    assert "connection lost without a close frame; reconnected" in error["error"]
    assert stored["providerErrors"] == [
        {k: error[k] for k in ("stage", "provider", "error", "retryable", "recovered")}
        | {"secondsFromStart": error["at"]}
    ]
    assert _sample(metrics, "ava_provider_reconnects_total", error["provider"], "stt") == 1
    assert _sample(metrics, "ava_provider_errors_total", error["provider"], "stt") == 1


async def test_garbage_mid_answer_is_still_heard_and_the_call_goes_on(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    # The first answer streams two words ("You said:"), then an SSE event that is not JSON.
    script = ["What are your opening hours?", "Where are you located?"]
    chat = OpenAiFakeConfig(api_key=KEY, fault=Fault.GARBAGE, fault_count=1, fault_after_tokens=2)
    async with running_fakes(script, openai=chat) as fakes:
        app = make_app(fakes, assistant_file, tmp_path)
        async with serve(app) as base:
            report = await place_call(base, CallScript([SPEECH, SPEECH]))
    assert report.error is None, report.error
    assert report.record is not None and report.record["ended_reason"] == "customer-ended-call"
    # the words produced before the garbage were spoken, heard and recorded as said
    first, second = report.turns
    assert first.reply_start is not None and second.reply_start is not None
    assert bot_messages(report)[1:] == ["You said:", f"You said: {script[1]}"]
    (error,) = errors(report)
    assert error["stage"] == "llm" and error["retryable"] is False
    assert "undecodable event" in error["error"]
    # no retry after output: the partial answer stands (one request per turn)
    assert len(conversation(fakes.openai.chat_requests)) == 2


async def stored_call(app: Any, call_sid: str) -> dict[str, Any]:
    """The call as GET /call shows it (the database record, written by the recorder)."""
    stores = app.state.ava.stores
    for _ in range(100):
        record = await stores.calls.find_by_twilio_sid(None, call_sid)
        if record is not None and record.status == "ended":
            call = await stores.calls.get_call(None, record.id)
            assert call is not None
            return to_vapi(call)
        await asyncio.sleep(0.05)
    raise AssertionError("the call was not recorded as ended")


async def scrape(base: str) -> str:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{base}/metrics")
    assert response.status_code == 200, response.text
    return response.text


def _sample(metrics: str, name: str, provider: str, stage: str) -> float:
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith(name + "{") and f'provider="{provider}"' in line:
            if f'stage="{stage}"' in line:
                total += float(line.rsplit(" ", 1)[1])
    return total


async def test_an_elevenlabs_socket_dropped_while_idle_is_reopened_and_recorded(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    script = ["What are your opening hours?", "Where are you located?"]
    async with running_fakes(script) as fakes:
        app = make_app(fakes, assistant_file, tmp_path)
        async with serve(app) as base:
            # the call's first socket dies (no close frame) a second after it opened, after
            # the greeting and before the first answer (the startup warm-up is done by now)
            eleven = fakes.elevenlabs.config
            eleven.fault, eleven.fault_count, eleven.fault_after = Fault.DROP, 1, 1.0
            report = await place_call(base, CallScript([SPEECH, SPEECH]))
            stored = await stored_call(app, report.call_sid)
            metrics = await scrape(base)
    assert report.error is None, report.error
    assert report.record is not None and report.record["ended_reason"] == "customer-ended-call"
    assert bot_messages(report)[1:] == [f"You said: {script[0]}", f"You said: {script[1]}"]
    assert all(t.reply_start is not None for t in report.turns)
    (error,) = errors(report)
    assert error["stage"] == "tts" and error["recovered"] is True
    assert error["provider"].startswith("tts/elevenlabs/")
    assert "connection lost without a close frame; reconnected while idle" in error["error"]
    (shown,) = stored["providerErrors"]
    assert shown["recovered"] is True and shown["error"] == error["error"]
    assert _sample(metrics, "ava_provider_reconnects_total", error["provider"], "tts") == 1
