"""Whisper log-mel features against pipecat's reference, and smart-turn on real speech."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soxr

from media.g711 import ulaw_silence, ulaw_to_float, ulaw_to_pcm16
from tests.voice.conftest import SpeechClip, truncated_copy
from voice.engines import SmartTurn, smart_turn_path
from voice.engines.mel import log_mel_spectrogram, mel_filterbank
from voice.errors import ConfigError

reference = pytest.importorskip("pipecat.audio.turn.smart_turn._whisper_features")


def as_16k_window(ulaw: bytes) -> np.ndarray:
    audio = soxr.resample(ulaw_to_float(ulaw), 8000, 16000)
    return np.pad(audio, (128000 - audio.size, 0))


def test_mel_filterbank_matches_pipecat() -> None:
    assert np.allclose(mel_filterbank(), reference._MEL_FILTERS.T)


@pytest.mark.parametrize("normalize", [True, False])
def test_log_mel_matches_pipecat_on_speech(
    engine_question_clip: SpeechClip, normalize: bool
) -> None:
    audio = as_16k_window(engine_question_clip.padded())
    ours = log_mel_spectrogram(audio, normalize=normalize)
    theirs = reference.compute_whisper_log_mel_features(audio, do_normalize=normalize)
    assert ours.shape == theirs.shape == (80, 800)
    assert ours.dtype == np.float32
    assert np.allclose(ours, theirs, atol=1e-5)


def test_log_mel_matches_pipecat_on_short_input() -> None:
    # Shorter than 8 s: both pad at the end.
    audio = np.random.default_rng(7).normal(scale=0.1, size=20000).astype(np.float32)
    ours = log_mel_spectrogram(audio)
    theirs = reference.compute_whisper_log_mel_features(audio)
    assert np.allclose(ours, theirs, atol=1e-5)


def cut_after(clip: SpeechClip, word: str) -> bytes:
    timing = next(w for w in clip.words if w.word == word)
    return clip.ulaw[: int(timing.end * 8000)]


def test_complete_question_scores_higher_than_cut_off_one(
    smart_turn_model: SmartTurn, engine_booking_clip: SpeechClip
) -> None:
    tail = ulaw_silence(1600)  # 200 ms: the VAD's stop delay before the model is asked
    complete = smart_turn_model.completion_probability(
        ulaw_to_pcm16(engine_booking_clip.ulaw + tail), 8000
    )
    # "I would like to book a table for" — mid-phrase.
    cut = smart_turn_model.completion_probability(
        ulaw_to_pcm16(cut_after(engine_booking_clip, "for") + tail), 8000
    )
    assert 0.0 <= cut < complete <= 1.0
    assert complete > 0.5


def test_probability_in_range_for_odd_inputs(
    smart_turn_model: SmartTurn, engine_question_clip: SpeechClip
) -> None:
    long_turn = ulaw_to_pcm16(engine_question_clip.ulaw * 6)  # > 8 s: only the tail is used
    for pcm, rate in [
        (b"", 8000),
        (ulaw_to_pcm16(ulaw_silence(4000)), 8000),
        (long_turn, 8000),
        (long_turn, 16000),  # already at the model's rate
    ]:
        assert 0.0 <= smart_turn_model.completion_probability(pcm, rate) <= 1.0


def test_corrupt_smart_turn_model_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="smart-turn"):
        SmartTurn(truncated_copy(smart_turn_path(), tmp_path))
