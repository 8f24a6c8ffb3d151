"""A whole phone call with a barge-in, recorded: the real session, VAD and pacing in virtual time
(tests/voice/sim_kit.py), its transport wrapped by `RecordingTransport` into a real spool file."""

from __future__ import annotations

import asyncio
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np

from media.g711 import ulaw_to_pcm16
from storage.wav_spool import SpoolWriter
from tests.voice.sim_kit import _vad, clip, line, speech_span
from voice.assistant import Assistant
from voice.clock import LoopClock
from voice.events import AssistantSpeechStarted, CallEnded
from voice.greeting import GreetingCache
from voice.recording import RecordingTransport
from voice.session import CallSession, Engines
from voice.simulation import CallerScript, ListeningStt, SimulatedPhone, run_virtual
from voice.testing import RecordingSink, ScriptedLlm, ToneTts

QUESTION = "What time do you open on Saturday?"
STOP = "Stop."
LONG = (
    "Sure, I can help you with that. Our clinic offers cleanings, fillings, crowns, whitening "
    "and emergency care, and we take most insurance plans, so let me walk you through each."
)
ANSWER = "Okay."
RATE = 8000
FRAME = 160


async def inline(work: Callable[[], None]) -> None:
    work()


def test_a_recorded_call_with_a_barge_in(tmp_path: Path) -> None:
    path = tmp_path / "call.wav"
    question, stop = clip(QUESTION), clip(STOP)  # synthesized before the virtual loop runs
    lines = [line(QUESTION), line(STOP)]

    async def main() -> tuple[SimulatedPhone, RecordingSink, CallEnded, float, float]:
        loop = asyncio.get_running_loop()
        phone = SimulatedPhone()
        engines = Engines(
            stt=ListeningStt(lines),
            llm=ScriptedLlm([LONG, ANSWER], first_token=0.3, per_token=0.02),
            tts=ToneTts(seconds_per_char=0.06, first_byte=0.15),
            vad=_vad(),
            turn_detector=None,
            greetings=GreetingCache(),
        )
        # File work inline: worker threads do not mix with the virtual clock.
        writer = SpoolWriter(path, RATE, flush_seconds=0.5, offload=inline)
        await writer.open({"callId": "sim"})
        writing = asyncio.create_task(writer.run())
        sink = RecordingSink()
        t0 = loop.time()
        transport = RecordingTransport(phone, LoopClock(), writer, start=t0)
        session = CallSession(
            call_id="sim", assistant=Assistant.model_validate({}), transport=transport,
            engines=engines, sink=sink, clock=LoopClock(),
        )  # fmt: skip
        task = asyncio.create_task(session.run())
        await CallerScript([0.5, question, 2.8]).run(phone)
        over = loop.time()
        await CallerScript([stop, 4.0]).run(phone)
        await phone.hang_up()
        ended = await task
        await writer.aclose(writing)
        assert writer.dropped_bytes == 0
        return phone, sink, ended, t0, over

    phone, sink, ended, t0, over = run_virtual(main())
    assert len(phone.clears) == 1, "the caller's 'Stop.' did not barge in"
    with wave.open(str(path), "rb") as w:
        assert (w.getnchannels(), w.getframerate()) == (2, RATE)
        frames = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, 2)
    seconds = len(frames) / RATE
    # The file is as long as the call (to a frame).
    assert abs(seconds - ended.at) <= 0.02, (seconds, ended.at)

    # The caller's channel holds exactly what the caller said, where they said it.
    left = frames[:, 0].tobytes()
    for audio, at in ((question, 0.5), (stop, over - t0)):
        expected = ulaw_to_pcm16(audio[: len(audio) // FRAME * FRAME])
        assert left.find(expected) == round(at * RATE) * 2

    # The assistant's channel is what the caller heard: audio exactly while the phone played
    # it (20 ms frames, one frame of slack at each edge), silent after the clear until the
    # answer to "Stop." began.
    right = frames[: len(frames) // FRAME * FRAME, 1].astype(np.float64).reshape(-1, FRAME)
    loud = np.sqrt((right * right).mean(axis=1)) > 50
    mismatched = [
        i
        for i in range(len(loud))
        if loud[i] != phone.hearing(t0 + (i + 0.5) * FRAME / RATE)
        and not any(
            abs(t0 + i * FRAME / RATE - edge) < 0.03
            for p in phone.heard
            for edge in (p.start, p.end)
        )
    ]
    assert mismatched == []
    clear = phone.clears[0] - t0
    starts = [e.at for e in sink.of_type(AssistantSpeechStarted) if e.at > clear]
    assert starts, "the assistant never answered after the barge-in"
    cut = slice(round(clear * RATE / FRAME) + 1, round(starts[0] * RATE / FRAME))
    assert cut.stop - cut.start > 10 and not loud[cut].any()
    assert loud[: round(clear * RATE / FRAME)].sum() * FRAME / RATE > 1.0  # LONG was heard
    speaking, _ = speech_span(stop)
    assert clear - (over - t0 + speaking) < 0.5  # cut soon after the caller's onset
