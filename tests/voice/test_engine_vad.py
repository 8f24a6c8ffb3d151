"""Silero and WebRTC VAD on real synthesized speech and on μ-law digital silence."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from media.g711 import ulaw_silence, ulaw_to_pcm16
from tests.voice.conftest import SpeechClip, truncated_copy
from voice.engines import SileroVad, WebRtcVad, silero_vad_path
from voice.errors import ConfigError
from voice.ports import VadModel

FRAME = 320  # 20 ms of 8 kHz PCM16, what the call loop feeds


def run_frames(vad: VadModel, ulaw: bytes) -> list[float | None]:
    stream = vad.stream()
    pcm = ulaw_to_pcm16(ulaw)
    return [stream.process(pcm[i : i + FRAME]) for i in range(0, len(pcm), FRAME)]


def scores(results: list[float | None]) -> np.ndarray:
    return np.array([r for r in results if r is not None])


@pytest.fixture(scope="module", params=["silero", "webrtc"])
def any_vad(request: pytest.FixtureRequest, silero_vad: SileroVad) -> VadModel:
    return silero_vad if request.param == "silero" else WebRtcVad()


def test_speech_scores_high_and_ulaw_silence_low(
    any_vad: VadModel, engine_question_clip: SpeechClip
) -> None:
    speech = scores(run_frames(any_vad, engine_question_clip.ulaw))
    silence = scores(run_frames(any_vad, ulaw_silence(8000 * 2)))  # 0xFF bytes
    assert speech.max() > 0.9
    assert np.mean(speech > 0.5) > 0.6  # pauses between words are legitimately low
    assert silence.max() < 0.1


def test_silero_returns_none_until_a_window_completes(silero_vad: SileroVad) -> None:
    stream = silero_vad.stream()
    assert stream.process(b"\x00\x00" * 200) is None  # < 256 samples
    assert isinstance(stream.process(b"\x00\x00" * 100), float)  # 300 ≥ 256
    assert stream.process(b"") is None


def test_webrtc_returns_one_result_per_complete_20ms_frame() -> None:
    stream = WebRtcVad().stream()
    assert stream.process(b"\x00\x00" * 100) is None
    assert stream.process(b"\x00\x00" * 60) == 0.0


def test_silero_still_hears_speech_after_long_silence(
    silero_vad: SileroVad, engine_question_clip: SpeechClip
) -> None:
    stream = silero_vad.stream()
    pcm = ulaw_to_pcm16(ulaw_silence(8000 * 20) + engine_question_clip.ulaw)
    results = [stream.process(pcm[i : i + FRAME]) for i in range(0, len(pcm), FRAME)]
    # state cleared once the quiet began (then not run at all while it lasts)
    assert stream.resets >= 1 and stream.skipped > 8000 * 20 // 256 - 10
    tail = scores(results[-len(engine_question_clip.ulaw) // 160 :])
    assert tail.max() > 0.9


def test_silero_streams_keep_separate_state(
    silero_vad: SileroVad, engine_question_clip: SpeechClip
) -> None:
    talking, quiet = silero_vad.stream(), silero_vad.stream()
    speech = ulaw_to_pcm16(engine_question_clip.ulaw)
    silence = ulaw_to_pcm16(ulaw_silence(len(engine_question_clip.ulaw)))
    high, low = [], []
    for i in range(0, len(speech), FRAME):
        high.append(talking.process(speech[i : i + FRAME]))
        low.append(quiet.process(silence[i : i + FRAME]))
    assert scores(high).max() > 0.9 and scores(low).max() < 0.1


def test_silero_is_cheap_enough_for_the_event_loop(silero_vad: SileroVad) -> None:
    stream = silero_vad.stream()
    frame = ulaw_to_pcm16(ulaw_silence(160))
    started = time.perf_counter()
    for _ in range(500):
        stream.process(frame)
    per_frame = (time.perf_counter() - started) / 500
    assert per_frame < 1e-3  # measured ~65 µs; a 20 ms frame budget has room for 10x noise


def test_corrupt_silero_model_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Silero VAD"):
        SileroVad(truncated_copy(silero_vad_path(), tmp_path))


def test_webrtc_rejects_bad_aggressiveness() -> None:
    with pytest.raises(ConfigError):
        WebRtcVad(aggressiveness=5)
