"""Streaming resampler: audio out for every chunk, no drift in length, clean frequencies."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from media.resample import StreamingResampler, resample_once

RATE_PAIRS = [(48000, 8000), (24000, 8000), (16000, 8000), (8000, 16000), (8000, 48000)]


def tone(freq: float, rate: int, seconds: float, amplitude: float = 16000.0) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    return (np.sin(2 * np.pi * freq * t) * amplitude).astype("<i2").tobytes()


def stream(pcm: bytes, in_rate: int, out_rate: int) -> list[bytes]:
    """Feed `pcm` in 20 ms chunks, as a live call does."""
    resampler = StreamingResampler(in_rate, out_rate)
    step = in_rate // 50 * 2
    return [resampler.process(pcm[i : i + step]) for i in range(0, len(pcm), step)]


def samples(pcm: bytes) -> npt.NDArray[np.float64]:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64)


def peak_frequency(pcm: bytes, rate: int) -> float:
    x = samples(pcm)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum)) * rate / len(x)


def rms(x: npt.NDArray[np.float64]) -> float:
    return float(np.sqrt(np.mean(x**2)))


@pytest.mark.parametrize(("in_rate", "out_rate"), RATE_PAIRS)
def test_every_20ms_chunk_yields_audio(in_rate: int, out_rate: int) -> None:
    # The point of this resampler: soxr HQ would emit nothing for the first ~7 chunks.
    out = stream(tone(440, in_rate, 1.0), in_rate, out_rate)
    expected = out_rate // 50
    assert all(len(chunk) // 2 >= 0.9 * expected for chunk in out)


@pytest.mark.parametrize(("in_rate", "out_rate"), RATE_PAIRS)
def test_output_length_does_not_drift_over_many_chunks(in_rate: int, out_rate: int) -> None:
    seconds = 10.0
    out = stream(tone(440, in_rate, seconds), in_rate, out_rate)
    total = sum(len(chunk) for chunk in out) // 2
    # Only the filter's constant delay may be missing, never a growing error: within 2 ms.
    assert abs(total - out_rate * seconds) <= out_rate * 0.002


def test_last_flushes_the_held_back_tail() -> None:
    resampler = StreamingResampler(8000, 16000)
    pcm = tone(440, 8000, 1.0)
    step = 320
    total = sum(len(resampler.process(pcm[i : i + step])) for i in range(0, len(pcm), step))
    total += len(resampler.process(b"", last=True))
    assert abs(total // 2 - 16000) <= 2


@pytest.mark.parametrize(("in_rate", "out_rate"), RATE_PAIRS)
def test_1khz_tone_keeps_its_frequency_and_level(in_rate: int, out_rate: int) -> None:
    out = b"".join(stream(tone(1000, in_rate, 1.0), in_rate, out_rate))
    steady = out[out_rate // 10 * 2 :]  # skip the filter's start-up
    assert peak_frequency(steady, out_rate) == pytest.approx(1000, abs=5)
    level = rms(samples(steady)) / rms(samples(tone(1000, in_rate, 1.0)))
    assert level == pytest.approx(1.0, abs=0.1)


def test_7khz_is_strongly_attenuated_going_48k_to_8k() -> None:
    # 7 kHz is above the 4 kHz Nyquist of 8 kHz: without the low-pass it aliases to 1 kHz.
    src = tone(7000, 48000, 1.0)
    out = b"".join(stream(src, 48000, 8000))[1600:]
    attenuation_db = 20 * np.log10(rms(samples(out)) / rms(samples(src)))
    assert attenuation_db < -30


def test_same_rate_passes_through() -> None:
    pcm = tone(1000, 8000, 0.1)
    assert StreamingResampler(8000, 8000).process(pcm) == pcm


def test_resample_once_whole_clip() -> None:
    out = resample_once(tone(1000, 16000, 0.5), 16000, 8000)
    assert abs(len(out) // 2 - 4000) <= 4
    assert peak_frequency(out, 8000) == pytest.approx(1000, abs=5)


def test_rejects_bad_rates() -> None:
    with pytest.raises(ValueError):
        StreamingResampler(0, 8000)
    with pytest.raises(ValueError):
        StreamingResampler(8000, -1)
