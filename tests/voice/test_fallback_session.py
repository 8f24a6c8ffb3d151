"""Fallbacks inside whole calls (real sockets, scripted engines): STT and TTS failover, give-up."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from control.app import create_app
from control.providers import OPERATOR_KEYS, ProviderKeys
from media.twilio.caller import CallScript, place_call
from tests.conftest import AssistantFactory, serve, settings_for
from voice.assistant import Assistant
from voice.errors import ProviderError
from voice.greeting import GreetingCache
from voice.ports import SpeechToText, TextToSpeech
from voice.session import APOLOGY, Engines
from voice.testing import ScriptedLlm, ScriptedStt, ToneTts, tone_ulaw
from voice.types import Transcript, TtsChunk
from voice.vad import EnergyVad

pytestmark = pytest.mark.timeout(60)

SPEECH = tone_ulaw(0.8, frequency=300.0)
GREETING = "Hello, this is Ava. How can I help you today?"


class DyingStream:
    """Works for `lifetime` seconds, then fails as Deepgram does after its own reconnects."""

    def __init__(self, lifetime: float) -> None:
        self.lifetime = lifetime
        self.closed = False

    async def send_audio(self, audio: bytes) -> None:
        return None

    async def finalize(self) -> None:
        return None

    async def transcripts(self) -> AsyncIterator[Transcript]:
        await asyncio.sleep(self.lifetime)
        raise ProviderError("deepgram", "closed 1011 after 3 reconnects", retryable=True)
        yield Transcript("")  # an async generator

    async def aclose(self) -> None:
        self.closed = True


class DyingStt:
    name = "deepgram"

    def __init__(self, lifetime: float | None) -> None:
        self.lifetime = lifetime  # None: connecting fails
        self.streams: list[DyingStream] = []
        self.connects = 0

    async def connect(self) -> DyingStream:
        self.connects += 1
        if self.lifetime is None:
            raise ProviderError(self.name, "connect: HTTP 503", retryable=True)
        stream = DyingStream(self.lifetime)
        self.streams.append(stream)
        return stream


class DeadTts:
    name = "elevenlabs"
    voice_key = "dead-voice"

    def __init__(self) -> None:
        self.requests = 0

    async def synthesize(self, text: str) -> AsyncIterator[TtsChunk]:
        self.requests += 1
        raise ProviderError(self.name, "closed 1011", retryable=True)
        yield TtsChunk(b"")


class Source:
    """An engine source with explicit primaries and fallbacks."""

    def __init__(
        self,
        stt: SpeechToText,
        tts: TextToSpeech,
        *,
        stt_fallbacks: Sequence[SpeechToText] = (),
        tts_fallbacks: Sequence[TextToSpeech] = (),
        replies: Sequence[str] = (),
    ) -> None:
        self.stt, self.tts = stt, tts
        self.stt_fallbacks, self.tts_fallbacks = stt_fallbacks, tts_fallbacks
        self.llm = ScriptedLlm(list(replies))
        self.greetings = GreetingCache()

    def for_assistant(self, assistant: Assistant, keys: ProviderKeys = OPERATOR_KEYS) -> Engines:
        return Engines(
            stt=self.stt,
            llm=self.llm,
            tts=self.tts,
            vad=EnergyVad(),
            turn_detector=None,
            greetings=self.greetings,
            stt_fallbacks=self.stt_fallbacks,
            tts_fallbacks=self.tts_fallbacks,
        )

    async def warm(self, assistant: Assistant) -> None:
        return None

    def close(self) -> None:
        return None


async def test_stt_failing_mid_call_moves_to_the_fallback_transcriber(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    primary = DyingStt(lifetime=0.5)
    backup = ScriptedStt(["What are your opening hours?", "Where are you located?"])
    source = Source(
        primary,
        ToneTts(0.02),
        stt_fallbacks=[backup],
        replies=["We open at nine.", "Twelve Main Street."],
    )
    app = create_app(settings_for(assistant_file(), tmp_path), engines=source)
    async with serve(app) as base:
        report = await place_call(base, CallScript([SPEECH, SPEECH]))
    assert report.error is None, report.error
    record = report.record
    assert record is not None and record["ended_reason"] == "customer-ended-call"
    assert [m["message"] for m in record["messages"] if m["role"] == "user"] == [
        "What are your opening hours?",
        "Where are you located?",
    ]
    (error,) = record["errors"]
    assert error["stage"] == "stt" and "1011" in error["error"]
    # the adapter had already reconnected on its own: no second connect, straight to the backup
    assert primary.connects == 1 and primary.streams[0].closed
    assert len(backup.streams) == 1


async def test_a_dead_voice_falls_back_and_the_breaker_skips_it(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    dead = DeadTts()
    backup = ToneTts(0.02)
    source = Source(
        ScriptedStt(["What are your opening hours?", "Where are you located?"]),
        dead,
        tts_fallbacks=[backup],
        replies=["We open at nine.", "Twelve Main Street."],
    )
    app = create_app(settings_for(assistant_file(), tmp_path), engines=source)
    async with serve(app) as base:
        report = await place_call(base, CallScript([SPEECH, SPEECH]))
    assert report.error is None, report.error
    assert report.greeting_latency is not None  # the greeting was heard, in the backup voice
    record = report.record
    assert record is not None and record["ended_reason"] == "customer-ended-call"
    assert [m["message"] for m in record["messages"] if m["role"] == "bot"] == [
        GREETING,
        "We open at nine.",
        "Twelve Main Street.",
    ]
    # greeting: the voice and its retry; first reply: once more, which opens its breaker
    assert dead.requests == 3
    assert [e["stage"] for e in record["errors"]] == ["tts"] * 3
    assert backup.requests == [GREETING, "We open at nine.", "Twelve Main Street."]


async def test_no_transcriber_left_apologises_and_ends_the_call(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    primary = DyingStt(lifetime=None)
    tts = ToneTts(0.02)
    source = Source(primary, tts)
    app = create_app(settings_for(assistant_file(), tmp_path), engines=source)
    async with serve(app) as base:
        report = await place_call(base, CallScript([SPEECH], max_seconds=15))
    record = report.record
    assert record is not None
    assert record["ended_reason"] == "pipeline-error-transcriber-failed"
    assert primary.connects == 2  # one retry
    assert [e["stage"] for e in record["errors"]] == ["stt", "stt"]
    bot = [m["message"] for m in record["messages"] if m["role"] == "bot"]
    assert bot == [GREETING, APOLOGY]
    assert tts.requests == [GREETING, APOLOGY]
