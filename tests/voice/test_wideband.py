"""A browser call's 16 kHz PCM16 through the voice layer: the offline engines in that format
(Piper out, Whisper in, both VADs natively) and a whole session whose transport declares it.

The speech is real (Piper, noise scales 0); the wideband clip is the same voice synthesized at
16 kHz, so it carries the 4–8 kHz band a phone call's clip cannot.
"""

from __future__ import annotations

import asyncio

import numpy as np
import numpy.typing as npt
import pytest

from media.audio_format import MULAW_8K, PCM16_16K, AudioFormat
from media.transport import (
    AudioReceived,
    InboundEvent,
    MarkReceived,
    TransportClosed,
)
from voice.assistant import Assistant
from voice.clock import LoopClock
from voice.engines import PiperEngine, SileroVad, WebRtcVad, WhisperEngine
from voice.errors import ConfigError
from voice.events import MessageAdded
from voice.greeting import GreetingCache
from voice.ports import VadModel
from voice.session import CallSession, Engines
from voice.simulation import run_virtual
from voice.testing import RecordingSink, ScriptedLlm, ScriptedStt, ToneTts, tone
from voice.types import TtsChunk
from voice.vad import EnergyVad

from .conftest import QUESTION, SpeechClip

Samples = npt.NDArray[np.float64]


def synthesize(piper: PiperEngine, text: str, fmt: AudioFormat) -> list[TtsChunk]:
    tts = piper.tts(noise_scale=0.0, noise_w_scale=0.0).for_format(fmt)

    async def run() -> list[TtsChunk]:
        return [chunk async for chunk in tts.synthesize(text)]

    return asyncio.run(run())


@pytest.fixture(scope="module")
def wide_question(piper_engine: PiperEngine) -> bytes:
    return b"".join(c.audio for c in synthesize(piper_engine, QUESTION, PCM16_16K))


def pcm(fmt: AudioFormat, audio: bytes) -> Samples:
    return np.frombuffer(fmt.to_pcm16(audio), dtype="<i2").astype(np.float64)


def high_band_share(samples: Samples, rate: int) -> float:
    power = np.abs(np.fft.rfft(samples)) ** 2
    freqs = np.fft.rfftfreq(len(samples), 1 / rate)
    return float(power[freqs > 4200].sum() / power.sum())


# --- Piper: the voice in the call's format -----------------------------------------------------


def test_piper_speaks_16_khz_pcm_with_the_band_a_phone_cannot_carry(
    piper_engine: PiperEngine, wide_question: bytes, engine_question_clip: SpeechClip
) -> None:
    chunks = synthesize(piper_engine, QUESTION, PCM16_16K)
    assert all(len(c.audio) % 2 == 0 for c in chunks)
    assert max(len(c.audio) for c in chunks) == PCM16_16K.bytes_for(0.2)  # ≤ 200 ms each
    seconds = PCM16_16K.seconds(len(wide_question))
    assert seconds == pytest.approx(len(engine_question_clip.ulaw) / 8000, abs=0.01)
    words = [w for c in chunks for w in c.words]
    assert [w.word for w in words] == [w.word for w in engine_question_clip.words]
    assert words[-1].end <= seconds + 0.01
    # Piper's 22 kHz voice has sibilants above 4 kHz: kept at 16 kHz (an 8 kHz call has none).
    # Measured: 0.36% of the clip's energy (speech energy is mostly below 1 kHz).
    assert high_band_share(pcm(PCM16_16K, wide_question), 16000) > 0.002


# --- the VADs natively at 16 kHz ---------------------------------------------------------------


def run_vad(vad: VadModel, fmt: AudioFormat, audio: bytes) -> Samples:
    stream = vad.stream(fmt.sample_rate)
    data = fmt.to_pcm16(audio)
    frame = fmt.sample_rate // 50 * 2
    out = [stream.process(data[i : i + frame]) for i in range(0, len(data), frame)]
    return np.array([p for p in out if p is not None])


@pytest.mark.parametrize("name", ["silero", "webrtc", "energy"])
def test_each_vad_hears_speech_and_silence_at_16_khz(
    name: str, silero_vad: SileroVad, wide_question: bytes
) -> None:
    vad: VadModel = {"silero": silero_vad, "webrtc": WebRtcVad(), "energy": EnergyVad()}[name]
    speech = run_vad(vad, PCM16_16K, wide_question)
    silence = run_vad(vad, PCM16_16K, PCM16_16K.silence(PCM16_16K.bytes_for(2.0)))
    assert speech.max() > 0.9
    assert np.mean(speech > 0.5) > 0.6  # pauses between words are legitimately low
    assert silence.max() < 0.1
    # One decision per window of the same duration at either rate.
    windows = len(run_vad(vad, PCM16_16K, PCM16_16K.silence(PCM16_16K.bytes_for(1.0))))
    assert windows == len(run_vad(vad, MULAW_8K, MULAW_8K.silence(8000)))


def test_silero_at_16_khz_agrees_with_8_khz_on_where_the_speech_is(
    silero_vad: SileroVad, wide_question: bytes, engine_question_clip: SpeechClip
) -> None:
    wide = run_vad(silero_vad, PCM16_16K, wide_question) > 0.5
    narrow = run_vad(silero_vad, MULAW_8K, engine_question_clip.ulaw) > 0.5
    n = min(len(wide), len(narrow))
    assert np.mean(wide[:n] == narrow[:n]) > 0.85


def test_vads_refuse_rates_they_do_not_take(silero_vad: SileroVad) -> None:
    with pytest.raises(ConfigError):
        silero_vad.stream(44100)
    with pytest.raises(ConfigError):
        WebRtcVad().stream(22050)


# --- Whisper takes the 16 kHz PCM as is --------------------------------------------------------


async def test_whisper_transcribes_a_browser_calls_pcm(
    whisper_engine: WhisperEngine, wide_question: bytes
) -> None:
    stt = whisper_engine.stt().for_format(PCM16_16K)
    assert whisper_engine.stt().for_format(MULAW_8K).audio_format == MULAW_8K
    stream = await stt.connect()
    results = stream.transcripts()
    audio = PCM16_16K.silence(9600) + wide_question + PCM16_16K.silence(16000)
    for i in range(0, len(audio), PCM16_16K.frame_bytes):
        await stream.send_audio(audio[i : i + PCM16_16K.frame_bytes])
    await stream.finalize()
    async with asyncio.timeout(15):
        final = await anext(results)
        while not final.is_final:
            final = await anext(results)
    await stream.aclose()
    text = final.text.lower()
    assert "weather" in text and "paris" in text
    speech_end = 0.3 + PCM16_16K.seconds(len(wide_question))
    assert 0.05 <= final.start <= 0.3  # seconds, not bytes
    assert speech_end - 0.4 <= final.end <= speech_end + 0.3


# --- a whole session in the browser's format ---------------------------------------------------


class BrowserLine:
    """A `CallTransport` declaring 16 kHz PCM16: plays what it is sent in real (loop) time,
    echoing each mark once the audio before it has played."""

    kind = "webrtc"
    audio_format = PCM16_16K

    def __init__(self) -> None:
        self.inbound: asyncio.Queue[InboundEvent | None] = asyncio.Queue(maxsize=256)
        self.sent: list[bytes] = []
        self._play_end = 0.0

    async def say(self, audio: bytes) -> None:
        for i in range(0, len(audio), PCM16_16K.frame_bytes):
            await self.inbound.put(AudioReceived(audio[i : i + PCM16_16K.frame_bytes]))
            await asyncio.sleep(0.02)

    async def receive(self) -> InboundEvent:
        event = await self.inbound.get()
        if event is None:
            raise TransportClosed("browser hung up")
        return event

    async def send_audio(self, audio: bytes) -> None:
        now = asyncio.get_running_loop().time()
        self._play_end = max(now, self._play_end) + PCM16_16K.seconds(len(audio))
        self.sent.append(audio)

    async def send_mark(self, name: str) -> None:
        loop = asyncio.get_running_loop()
        delay = max(0.0, self._play_end - loop.time())
        loop.call_later(delay, self.inbound.put_nowait, MarkReceived(name))

    async def send_clear(self) -> None:
        self._play_end = asyncio.get_running_loop().time()

    async def close(self, reason: str) -> None:
        pass


class RecordingTurnModel:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []  # (bytes, sample rate)

    def completion_probability(self, pcm16: bytes, sample_rate: int) -> float:
        self.calls.append((len(pcm16), sample_rate))
        return 0.99


async def _browser_call() -> tuple[BrowserLine, Engines, RecordingSink, RecordingTurnModel]:
    line = BrowserLine()
    detector = RecordingTurnModel()
    engines = Engines(
        stt=ScriptedStt(["What are your hours?"]),
        llm=ScriptedLlm(["We open at nine."]),
        tts=ToneTts(0.02, frequency=6000.0),
        vad=EnergyVad(),
        turn_detector=detector,
        greetings=GreetingCache(),
    )
    sink = RecordingSink()
    assistant = Assistant.model_validate({"firstMessage": "Hello there."})
    session = CallSession(
        call_id="wide",
        assistant=assistant,
        transport=line,
        engines=engines,
        sink=sink,
        clock=LoopClock(),  # the format: the one `line` declares
    )
    assert session.audio_format == PCM16_16K
    call = asyncio.create_task(session.run())
    await asyncio.sleep(1.0)  # the greeting
    await line.say(tone(0.8, 300.0, audio_format=PCM16_16K) + PCM16_16K.silence(32000))
    await asyncio.sleep(3.0)
    await line.inbound.put(None)
    await call
    return line, engines, sink, detector


def test_a_session_in_the_browsers_format_end_to_end() -> None:
    line, engines, sink, detector = run_virtual(_browser_call())
    assert isinstance(engines.stt, ScriptedStt)
    (stream,) = engines.stt.streams
    assert stream.audio_format == PCM16_16K and stream.chunk_sizes == {640}
    # The turn model got the 16 kHz PCM as it came (no resampling), told its rate.
    assert detector.calls and all(rate == 16000 for _, rate in detector.calls)
    assert all(size % 640 == 0 for size, _ in detector.calls)
    said = [(e.role, e.content) for e in sink.of_type(MessageAdded) if isinstance(e, MessageAdded)]
    assert said == [
        ("bot", "Hello there."),
        ("user", "What are your hours?"),
        ("bot", "We open at nine."),
    ]
    # Playout sized its chunks by the format: 100 ms of PCM16 16 kHz is 3,200 bytes.
    sizes = [len(c) for c in line.sent]
    assert max(sizes) == 3200 and all(size % 2 == 0 for size in sizes)
    assert sizes.count(3200) >= len(sizes) - 2  # a shorter last chunk per reply at most
    sent = pcm(PCM16_16K, b"".join(line.sent))
    assert high_band_share(sent, 16000) > 0.9  # the voice's 6 kHz reached the line intact
    seconds = PCM16_16K.seconds(sum(len(c) for c in line.sent))
    assert seconds == pytest.approx((len("Hello there.") + len("We open at nine.")) * 0.02, abs=0.2)
