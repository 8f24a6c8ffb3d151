"""The sans-I/O audio of the WebRTC path: browser frames in, playout with marks out, the frame
clock. Explicit times and synthetic signals; no event loop."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from media.g711 import SILENCE_BYTE, pcm16_to_ulaw, ulaw_to_pcm16
from media.webrtc.audio import FRAME_BYTES, FrameSchedule, InboundAudio, Playout

Samples = npt.NDArray[Any]
RATE = 48000
PACKET = 960  # 20 ms at 48 kHz, what Chrome's Opus packets decode to


def tone(frequency: float, seconds: float, rate: int = RATE, level: float = 0.5) -> Samples:
    t = np.arange(int(seconds * rate)) / rate
    return (level * 32767 * np.sin(2 * np.pi * frequency * t)).astype("<i2")


def stereo(mono: Samples, right: Samples | None = None) -> bytes:
    other = mono if right is None else right
    return np.stack([mono, other], axis=1).astype("<i2").tobytes()


def packets(samples: Samples, size: int = PACKET) -> list[Samples]:
    return [samples[i : i + size] for i in range(0, len(samples), size)]


def decoded(frames: list[bytes]) -> Samples:
    return np.frombuffer(ulaw_to_pcm16(b"".join(frames)), dtype="<i2").astype(np.float64)


def rms(x: Samples) -> float:
    return float(np.sqrt(np.mean(np.square(x.astype(np.float64)))))


# --- inbound: 48 kHz stereo → 20 ms μ-law frames ------------------------------------------------


def test_each_packet_yields_its_frame_without_hold_back() -> None:
    inbound = InboundAudio()
    emitted = 0
    for k, packet in enumerate(packets(tone(440, 1.0)), 1):
        frames = inbound.push(stereo(packet), RATE, 2)
        assert all(len(f) == FRAME_BYTES for f in frames)
        emitted += len(frames)
        # At most one 20 ms frame held back at any time: no resampler burst latency.
        assert emitted >= k - 1, f"after packet {k} only {emitted} frames"
    assert emitted in (49, 50)


def test_speech_band_passes_at_level_and_pitch() -> None:
    inbound = InboundAudio()
    frames = [f for p in packets(tone(440, 1.0)) for f in inbound.push(stereo(p), RATE, 2)]
    out = decoded(frames)[800:]  # past the filters' start
    spectrum = np.abs(np.fft.rfft(out))
    peak_hz = np.argmax(spectrum) * 8000 / len(out)
    assert abs(peak_hz - 440) < 5
    assert rms(out) == pytest.approx(0.5 * 32767 / np.sqrt(2), rel=0.1)


def test_content_above_4_khz_is_filtered_not_aliased() -> None:
    inbound = InboundAudio()
    frames = [f for p in packets(tone(6000, 1.0)) for f in inbound.push(stereo(p), RATE, 2)]
    out = decoded(frames)[800:]
    # Unfiltered, 6 kHz would fold to 2 kHz at full level (about 11,600 RMS).
    assert rms(out) < 0.1 * 0.5 * 32767 / np.sqrt(2)


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
    assert rms(decoded(b)[800:]) == pytest.approx(rms(decoded(a)[800:]) / 2, rel=0.05)


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


def audio(seconds: float, byte: int = 0x10) -> bytes:
    return bytes([byte]) * int(seconds * 8000)


def test_a_mark_is_released_one_frame_after_its_audio_was_handed_over() -> None:
    playout = Playout()
    playout.push_audio(audio(0.1))  # five frames
    playout.push_mark("1.1")
    for _ in range(5):
        tick = playout.tick()
        assert tick.marks == () and tick.audio_bytes == FRAME_BYTES
    # The fifth frame was handed over at the last tick; it has played by this one.
    tick = playout.tick()
    assert tick.marks == ("1.1",)
    assert tick.frame == bytes([SILENCE_BYTE]) * FRAME_BYTES and tick.audio_bytes == 0


def test_marks_come_in_order_each_at_its_own_audio() -> None:
    playout = Playout()
    for n in (1, 2, 3):
        playout.push_audio(audio(0.04, n))
        playout.push_mark(f"r.{n}")
    released = [playout.tick().marks for _ in range(7)]
    assert released == [(), (), ("r.1",), (), ("r.2",), (), ("r.3",)]


def test_a_short_last_chunk_is_padded_and_its_mark_follows_it() -> None:
    playout = Playout()
    playout.push_audio(audio(0.0125))  # 100 bytes
    playout.push_mark("end")
    tick = playout.tick()
    assert tick.audio_bytes == 100
    assert tick.frame[100:] == bytes([SILENCE_BYTE]) * (FRAME_BYTES - 100)
    assert playout.tick().marks == ("end",)


def test_audio_is_handed_over_unchanged_and_contiguous() -> None:
    playout = Playout()
    data = pcm16_to_ulaw(tone(300, 0.25, 8000).tobytes())
    for i in range(0, len(data), 333):  # chunk sizes that do not line up with frames
        playout.push_audio(data[i : i + 333])
    out = b"".join(playout.tick().frame for _ in range(13))
    assert out[: len(data)] == data


def test_a_mark_with_nothing_queued_is_released_at_the_next_frame() -> None:
    playout = Playout()
    playout.push_mark("empty")
    assert playout.tick().marks == ("empty",)


def test_clear_drops_the_queue_and_returns_pending_marks_at_once() -> None:
    playout = Playout()
    playout.push_audio(audio(0.5))
    playout.push_mark("a")
    playout.push_audio(audio(0.5))
    playout.push_mark("b")
    playout.tick()
    assert playout.clear() == ["a", "b"]
    assert playout.queued_seconds == 0.0 and playout.pending_marks == 0
    tick = playout.tick()  # barge-in: the very next frame is silence
    assert tick.audio_bytes == 0 and tick.marks == ()
    playout.push_audio(audio(0.02))
    playout.push_mark("c")
    assert playout.tick().audio_bytes == FRAME_BYTES
    assert playout.tick().marks == ("c",)


def test_overflow_drops_the_oldest_audio_and_counts_it() -> None:
    playout = Playout(max_seconds=0.1)
    playout.push_audio(audio(0.06, 1))
    playout.push_mark("old")
    playout.push_audio(audio(0.1, 2))
    assert playout.dropped_bytes == int(0.06 * 8000)
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
