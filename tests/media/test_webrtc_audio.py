"""The sans-I/O audio of the WebRTC path: browser frames in, playout with marks out, the frame
clock. Explicit times and synthetic signals; no event loop. A browser call is 16 kHz PCM16 (the
default); the same code runs μ-law 8 kHz, so most tests run in both formats."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from media.audio_format import MULAW_8K, PCM16_16K, AudioFormat
from media.webrtc.audio import AUDIO_FORMAT, FrameSchedule, InboundAudio, Playout

Samples = npt.NDArray[Any]
RATE = 48000
PACKET = 960  # 20 ms at 48 kHz, what Chrome's Opus packets decode to
FORMATS = pytest.mark.parametrize("fmt", [PCM16_16K, MULAW_8K], ids=lambda f: f.name)


def tone(frequency: float, seconds: float, rate: int = RATE, level: float = 0.5) -> Samples:
    t = np.arange(int(seconds * rate)) / rate
    return (level * 32767 * np.sin(2 * np.pi * frequency * t)).astype("<i2")


def stereo(mono: Samples, right: Samples | None = None) -> bytes:
    other = mono if right is None else right
    return np.stack([mono, other], axis=1).astype("<i2").tobytes()


def packets(samples: Samples, size: int = PACKET) -> list[Samples]:
    return [samples[i : i + size] for i in range(0, len(samples), size)]


def decoded(frames: list[bytes], fmt: AudioFormat = AUDIO_FORMAT) -> Samples:
    return np.frombuffer(fmt.to_pcm16(b"".join(frames)), dtype="<i2").astype(np.float64)


def level_at(out: Samples, rate: int, hz: float) -> float:
    """RMS of the signal's component within 50 Hz of `hz`."""
    spectrum = np.fft.rfft(out * np.hanning(len(out)))
    freqs = np.fft.rfftfreq(len(out), 1 / rate)
    band = np.abs(spectrum[np.abs(freqs - hz) < 50])
    return float(np.sqrt(np.sum(band**2)) * 2 / np.sum(np.hanning(len(out))) / np.sqrt(2))


def rms(x: Samples) -> float:
    return float(np.sqrt(np.mean(np.square(x.astype(np.float64)))))


# --- inbound: 48 kHz stereo → 20 ms frames of the call's format -----------------------------------


def test_a_browser_call_is_16_khz_pcm16() -> None:
    assert AUDIO_FORMAT == PCM16_16K
    assert InboundAudio().audio_format == Playout().audio_format == PCM16_16K


@FORMATS
def test_each_packet_yields_its_frame_without_hold_back(fmt: AudioFormat) -> None:
    inbound = InboundAudio(fmt)
    emitted = 0
    for k, packet in enumerate(packets(tone(440, 1.0)), 1):
        frames = inbound.push(stereo(packet), RATE, 2)
        assert all(len(f) == fmt.frame_bytes for f in frames)
        emitted += len(frames)
        # At most one 20 ms frame held back at any time: no resampler burst latency.
        assert emitted >= k - 1, f"after packet {k} only {emitted} frames"
    assert emitted in (49, 50)


@FORMATS
def test_speech_band_passes_at_level_and_pitch(fmt: AudioFormat) -> None:
    inbound = InboundAudio(fmt)
    frames = [f for p in packets(tone(440, 1.0)) for f in inbound.push(stereo(p), RATE, 2)]
    out = decoded(frames, fmt)[fmt.sample_rate // 10 :]  # past the filters' start
    spectrum = np.abs(np.fft.rfft(out))
    peak_hz = np.argmax(spectrum) * fmt.sample_rate / len(out)
    assert abs(peak_hz - 440) < 5
    assert rms(out) == pytest.approx(0.5 * 32767 / np.sqrt(2), rel=0.1)


def test_a_browser_call_keeps_6_khz_that_a_phone_call_cannot_carry() -> None:
    full = 0.5 * 32767 / np.sqrt(2)
    wide, narrow = InboundAudio(PCM16_16K), InboundAudio(MULAW_8K)
    out = decoded([f for p in packets(tone(6000, 1.0)) for f in wide.push(stereo(p), RATE, 2)])
    assert level_at(out[1600:], 16000, 6000) == pytest.approx(full, rel=0.15)
    phone = [f for p in packets(tone(6000, 1.0)) for f in narrow.push(stereo(p), RATE, 2)]
    # Unfiltered, 6 kHz would fold to 2 kHz at full level (about 11,600 RMS).
    assert rms(decoded(phone, MULAW_8K)[800:]) < 0.1 * full


def test_content_above_8_khz_is_filtered_not_aliased_at_16_khz() -> None:
    inbound = InboundAudio(PCM16_16K)
    frames = [f for p in packets(tone(11000, 1.0)) for f in inbound.push(stereo(p), RATE, 2)]
    # Unfiltered, 11 kHz would fold to 5 kHz at full level.
    assert rms(decoded(frames)[1600:]) < 0.1 * 0.5 * 32767 / np.sqrt(2)


def test_channels_are_averaged() -> None:
    both, left_only = InboundAudio(), InboundAudio()
    signal = tone(440, 0.5)
    silent = np.zeros_like(signal)
    a = [f for p in packets(signal) for f in both.push(stereo(p), RATE, 2)]
    b = [
        f
        for p, q in zip(packets(signal), packets(silent), strict=True)
        for f in left_only.push(stereo(p, q), RATE, 2)
    ]
    assert rms(decoded(b)[1600:]) == pytest.approx(rms(decoded(a)[1600:]) / 2, rel=0.05)


def test_mono_and_other_rates_are_taken_too() -> None:
    inbound = InboundAudio()
    frames = [
        f for p in packets(tone(440, 0.5, 16000), 320) for f in inbound.push(p.tobytes(), 16000, 1)
    ]
    assert len(frames) in (24, 25)
    # A rate change mid-stream (renegotiation) keeps producing 20 ms frames.
    more = [f for p in packets(tone(440, 0.5)) for f in inbound.push(stereo(p), RATE, 2)]
    assert len(frames) + len(more) in (48, 49, 50)


@pytest.mark.parametrize(
    ("data", "rate", "channels"), [(b"\x00" * 3, RATE, 1), (b"\x00" * 6, RATE, 2), (b"", 0, 1)]
)
def test_malformed_audio_is_refused(data: bytes, rate: int, channels: int) -> None:
    with pytest.raises(ValueError):
        InboundAudio().push(data, rate, channels)


# --- outbound: playout with Twilio's mark and clear semantics ----------------------------------


def audio(fmt: AudioFormat, seconds: float, byte: int = 0x10) -> bytes:
    return bytes([byte]) * fmt.bytes_for(seconds)


@FORMATS
def test_a_mark_is_released_one_frame_after_its_audio_was_handed_over(fmt: AudioFormat) -> None:
    playout = Playout(audio_format=fmt)
    playout.push_audio(audio(fmt, 0.1))  # five frames
    playout.push_mark("1.1")
    for _ in range(5):
        tick = playout.tick()
        assert tick.marks == () and tick.audio_bytes == fmt.frame_bytes
    # The fifth frame was handed over at the last tick; it has played by this one.
    tick = playout.tick()
    assert tick.marks == ("1.1",)
    assert tick.frame == fmt.silence(fmt.frame_bytes) and tick.audio_bytes == 0


@FORMATS
def test_marks_come_in_order_each_at_its_own_audio(fmt: AudioFormat) -> None:
    playout = Playout(audio_format=fmt)
    for n in (1, 2, 3):
        playout.push_audio(audio(fmt, 0.04, n))
        playout.push_mark(f"r.{n}")
    released = [playout.tick().marks for _ in range(7)]
    assert released == [(), (), ("r.1",), (), ("r.2",), (), ("r.3",)]


@FORMATS
def test_a_short_last_chunk_is_padded_and_its_mark_follows_it(fmt: AudioFormat) -> None:
    playout = Playout(audio_format=fmt)
    playout.push_audio(audio(fmt, 0.0125))  # 12.5 of the frame's 20 ms
    playout.push_mark("end")
    tick = playout.tick()
    short = fmt.bytes_for(0.0125)
    assert tick.audio_bytes == short
    assert tick.frame[short:] == fmt.silence(fmt.frame_bytes - short)
    assert len(tick.frame) == fmt.frame_bytes
    assert playout.tick().marks == ("end",)


def test_pcm16_silence_is_zero_and_mulaw_silence_is_0xff() -> None:
    assert set(Playout(audio_format=PCM16_16K).tick().frame) == {0}
    assert set(Playout(audio_format=MULAW_8K).tick().frame) == {0xFF}
    assert len(Playout(audio_format=PCM16_16K).tick().frame) == 640


@FORMATS
def test_audio_is_handed_over_unchanged_and_contiguous(fmt: AudioFormat) -> None:
    playout = Playout(audio_format=fmt)
    data = fmt.from_pcm16(tone(300, 0.25, fmt.sample_rate).tobytes())
    for i in range(0, len(data), 334):  # chunk sizes that do not line up with frames
        playout.push_audio(data[i : i + 334])
    out = b"".join(playout.tick().frame for _ in range(13))
    assert out[: len(data)] == data


def test_a_mark_with_nothing_queued_is_released_at_the_next_frame() -> None:
    playout = Playout()
    playout.push_mark("empty")
    assert playout.tick().marks == ("empty",)


@FORMATS
def test_clear_drops_the_queue_and_returns_pending_marks_at_once(fmt: AudioFormat) -> None:
    playout = Playout(audio_format=fmt)
    playout.push_audio(audio(fmt, 0.5))
    playout.push_mark("a")
    playout.push_audio(audio(fmt, 0.5))
    playout.push_mark("b")
    playout.tick()
    assert playout.clear() == ["a", "b"]
    assert playout.queued_seconds == 0.0 and playout.pending_marks == 0
    tick = playout.tick()  # barge-in: the very next frame is silence
    assert tick.audio_bytes == 0 and tick.marks == ()
    playout.push_audio(audio(fmt, 0.02))
    playout.push_mark("c")
    assert playout.tick().audio_bytes == fmt.frame_bytes
    assert playout.tick().marks == ("c",)


@FORMATS
def test_overflow_drops_the_oldest_audio_and_counts_it(fmt: AudioFormat) -> None:
    playout = Playout(max_seconds=0.1, audio_format=fmt)
    playout.push_audio(audio(fmt, 0.06, 1))
    playout.push_mark("old")
    playout.push_audio(audio(fmt, 0.1, 2))
    assert playout.dropped_bytes == fmt.bytes_for(0.06)
    assert playout.queued_seconds == pytest.approx(0.1)
    tick = playout.tick()
    assert tick.marks == ("old",)  # its audio is gone: echoed as if cleared
    assert set(tick.frame) == {2}


def test_pending_marks_are_bounded_oldest_first() -> None:
    playout = Playout(max_marks=3)
    for n in range(5):
        playout.push_mark(str(n))
    assert playout.tick().marks == ("2", "3", "4")


# --- the frame clock -------------------------------------------------------------------------


def test_frames_are_due_on_an_absolute_grid() -> None:
    schedule = FrameSchedule()
    now = 100.0
    for n in range(1000):
        due = schedule.next_due(now)
        assert due == pytest.approx(100.0 + n * 0.02, abs=1e-9)
        now = due + 0.003  # each wake-up a little late: no drift accumulates
    assert schedule.reanchored == 0


def test_a_long_stall_re_anchors_instead_of_bursting() -> None:
    schedule = FrameSchedule(max_lag=0.1)
    assert schedule.next_due(0.0) == 0.0
    assert schedule.next_due(0.0) == pytest.approx(0.02)
    assert schedule.next_due(0.5) == 0.5  # 480 ms late: start again from now
    assert schedule.reanchored == 1
    assert schedule.next_due(0.5) == pytest.approx(0.52)


def test_a_short_delay_is_caught_up() -> None:
    schedule = FrameSchedule(max_lag=0.1)
    schedule.next_due(0.0)
    assert schedule.next_due(0.05) == pytest.approx(0.02)  # 30 ms late: sent at once
    assert schedule.next_due(0.05) == pytest.approx(0.04)
    assert schedule.reanchored == 0
