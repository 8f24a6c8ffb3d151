"""Whole calls in virtual time for the turn-taking tests: the real session, Silero VAD and real
speech (Piper, synthesized once per test run), a transcriber that listens to that audio, scripted
LLM and TTS with realistic latencies, and a phone with Twilio's playout semantics."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from media.g711 import pcm16_to_ulaw, ulaw_to_pcm16
from voice.assistant import Assistant
from voice.clock import LoopClock
from voice.engines import PiperEngine, piper_voice_files
from voice.engines.models import silero_vad_path
from voice.engines.silero import SileroVad
from voice.engines.synthesize import synthesize_ulaw
from voice.events import (
    AssistantSpeechStarted,
    BargeIn,
    CallEnded,
    MessageAdded,
    TurnCompleted,
)
from voice.greeting import GreetingCache
from voice.session import CallSession, Engines
from voice.simulation import (
    CallerScript,
    Digits,
    Line,
    ListeningStt,
    SimulatedPhone,
    run_virtual,
)
from voice.testing import RecordingSink, ScriptedLlm, ToneTts
from voice.types import SAMPLE_RATE

__all__ = ["Digits", "SimResult", "clip", "line", "noise", "simulate", "speech_span"]

LLM_FIRST_TOKEN = 0.3
LLM_PER_TOKEN = 0.02  # 50 tokens/s
TTS_FIRST_BYTE = 0.15


@functools.cache
def _piper() -> PiperEngine:
    model_path, config_path = piper_voice_files()
    return PiperEngine(model_path, config_path, ThreadPoolExecutor(1))


@functools.cache
def clip(text: str) -> bytes:
    """Real speech: `text` said by the Piper voice (μ-law 8 kHz), synthesized once per run."""
    return synthesize_ulaw([text], _piper())[0]


def line(text: str) -> Line:
    """The transcriber's script line for `text`, timed by the speech in its clip (the
    transcriber counts voiced audio, as it reveals the words)."""
    pcm = np.frombuffer(ulaw_to_pcm16(clip(text)), dtype="<i2").astype(np.float64)
    frames = pcm[: len(pcm) // 160 * 160].reshape(-1, 160)
    voiced = np.sqrt(np.mean(frames * frames, axis=1)) >= 32768 * 10 ** (-40 / 20)
    return Line(text, float(np.count_nonzero(voiced)) * 0.02)


@functools.cache
def _vad() -> SileroVad:
    return SileroVad(silero_vad_path())


@dataclass
class SimResult:
    phone: SimulatedPhone
    sink: RecordingSink
    llm: ScriptedLlm
    stt: ListeningStt
    ended: CallEnded
    t0: float  # loop time the call started
    marks: dict[str, float]  # name → loop time of script marks (see `simulate`)

    def user_messages(self) -> list[str]:
        return [
            e.content
            for e in self.sink.of_type(MessageAdded)
            if isinstance(e, MessageAdded) and e.role == "user"
        ]

    def turns(self) -> list[TurnCompleted]:
        return [e for e in self.sink.of_type(TurnCompleted) if isinstance(e, TurnCompleted)]

    def barge_ins(self) -> list[BargeIn]:
        return [e for e in self.sink.of_type(BargeIn) if isinstance(e, BargeIn)]

    def assistant_starts(self) -> list[float]:
        """Loop times at which a reply's first audio was sent."""
        return [
            self.t0 + e.at
            for e in self.sink.of_type(AssistantSpeechStarted)
            if isinstance(e, AssistantSpeechStarted)
        ]


def simulate(
    steps: Sequence[bytes | float | Digits | str],
    lines: Sequence[Line],
    replies: Sequence[str],
    *,
    assistant: dict[str, Any] | None = None,
    tail: float = 4.0,
    stt_options: dict[str, Any] | None = None,
) -> SimResult:
    """Run one call: the caller's `steps` (audio, seconds of silence, keys pressed, or a string
    naming the moment, recorded in `marks`), then `tail` seconds of silence and a hang-up."""

    async def main() -> SimResult:
        loop = asyncio.get_running_loop()
        phone = SimulatedPhone()
        stt = ListeningStt(lines, **(stt_options or {}))
        llm = ScriptedLlm(replies, first_token=LLM_FIRST_TOKEN, per_token=LLM_PER_TOKEN)
        engines = Engines(
            stt=stt,
            llm=llm,
            tts=ToneTts(seconds_per_char=0.06, first_byte=TTS_FIRST_BYTE),
            vad=_vad(),
            turn_detector=None,
            greetings=GreetingCache(),
        )
        sink = RecordingSink()
        checked = Assistant.model_validate(assistant or {})
        if checked.first_message:  # as the server warms it before calls arrive
            await engines.greetings.get_or_synthesize(engines.tts, checked.first_message)
        session = CallSession(
            call_id="sim",
            assistant=checked,
            transport=phone,
            engines=engines,
            sink=sink,
            clock=LoopClock(),
        )
        t0 = loop.time()
        task = asyncio.create_task(session.run())
        marks: dict[str, float] = {}
        audio_steps: list[bytes | float | Digits] = []
        for step in steps:
            if isinstance(step, str):
                await CallerScript(audio_steps).run(phone)
                audio_steps = []
                marks[step] = loop.time()
            else:
                audio_steps.append(step)
        await CallerScript([*audio_steps, tail]).run(phone)
        await phone.hang_up()
        ended = await task
        return SimResult(phone, sink, llm, stt, ended, t0, marks)

    return run_virtual(main())


def speech_span(audio: bytes, dbfs: float = -40.0) -> tuple[float, float]:
    """(first, last) second of `audio` that is louder than `dbfs` (20 ms frames)."""
    pcm = np.frombuffer(ulaw_to_pcm16(audio), dtype="<i2").astype(np.float64)
    frames = pcm[: len(pcm) // 160 * 160].reshape(-1, 160)
    loud = np.sqrt(np.mean(frames * frames, axis=1)) >= 32768 * 10 ** (dbfs / 20)
    voiced = np.flatnonzero(loud)
    assert voiced.size, "no speech in the clip"
    return float(voiced[0]) * 0.02, float(voiced[-1] + 1) * 0.02


def noise(seconds: float, dbfs: float = -30.0, seed: int = 7) -> bytes:
    """White noise (a rustle, a bump on the line), μ-law."""
    rng = np.random.default_rng(seed)
    level = 32768 * 10 ** (dbfs / 20)
    pcm = np.clip(rng.normal(0, level, int(seconds * SAMPLE_RATE)), -32768, 32767)
    return pcm16_to_ulaw(pcm.astype("<i2").tobytes())
