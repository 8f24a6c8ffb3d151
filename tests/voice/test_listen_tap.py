"""The listen tap's fan-out: every listener gets the call's audio in order, a slow one is dropped
at its bound without touching the others, the mono mix is the two sides summed and clipped."""

from __future__ import annotations

import asyncio

import numpy as np

from voice.clock import Clock
from voice.listen_tap import Listener, ListenTap, StereoTee, mix_to_mono
from voice.recording import RecordingTransport
from voice.simulation import SimulatedPhone

RATE = 8000
CHUNK = 160 * 4  # 20 ms of stereo PCM16 at 8 kHz


def stereo(left: list[int], right: list[int]) -> bytes:
    frames = np.stack([np.array(left, "<i2"), np.array(right, "<i2")], axis=1)
    return frames.astype("<i2").tobytes()


def chunk(n: int) -> bytes:
    return bytes([n % 256]) * CHUNK


def test_every_listener_gets_every_chunk_in_order() -> None:
    tap = ListenTap("call_1", "t1", RATE, max_seconds=2.0)
    one, two = tap.listen(), tap.listen()
    for n in range(10):
        tap.write(chunk(n))
    expected = b"".join(chunk(n) for n in range(10))
    assert one.take() == expected and two.take() == expected
    assert one.take() == b""  # nothing queued: not over either


def test_a_slow_listener_is_dropped_and_the_others_are_not() -> None:
    tap = ListenTap("call_1", "t1", RATE, max_seconds=0.2)  # 10 chunks of 20 ms
    assert tap.max_bytes == 10 * CHUNK
    slow, fast = tap.listen(), tap.listen()
    for n in range(30):
        tap.write(chunk(n))
        assert fast.take() == chunk(n)  # the fast one reads as it comes
    assert slow.overflowed and slow.queued_bytes == 0  # dropped on the 11th, its audio freed
    assert slow.take() is None
    assert slow not in tap.listeners and fast in tap.listeners
    assert tap.dropped == 1
    # exactly at the bound is still fine
    edge = tap.listen()
    for n in range(10):
        tap.write(chunk(n))
    assert not edge.overflowed and edge.queued_bytes == 10 * CHUNK


def test_the_mono_mix_is_both_sides_summed_and_clipped() -> None:
    pcm = stereo([100, -200, 30000, -30000, 0], [50, 200, 10000, -10000, -7])
    assert np.frombuffer(mix_to_mono(pcm), "<i2").tolist() == [150, 0, 32767, -32768, -7]
    tap = ListenTap("call_1", "t1", RATE)
    mono, both = tap.listen(mono=True), tap.listen()
    tap.write(pcm)
    assert mono.take() == mix_to_mono(pcm) and both.take() == pcm
    # a mono listener's bound is half the stereo one: the same seconds of audio
    assert mono.max_bytes * 2 == both.max_bytes


def test_the_end_hands_out_what_is_queued_first() -> None:
    tap = ListenTap("call_1", "t1", RATE)
    listener = tap.listen()
    tap.write(chunk(1))
    tap.close()
    assert listener.take() == chunk(1) and listener.take() is None
    late = tap.listen()  # after the end: over at once
    tap.write(chunk(2))
    assert late.take() is None


async def test_next_waits_for_audio_and_wakes_on_the_end() -> None:
    listener = Listener(10 * CHUNK)
    waiting = asyncio.create_task(listener.next())
    await asyncio.sleep(0)
    assert not waiting.done()
    listener.offer(chunk(1))
    assert await waiting == chunk(1)
    waiting = asyncio.create_task(listener.next())
    await asyncio.sleep(0)
    listener.end()
    assert await waiting is None


def test_a_relay_gets_the_stereo_chunks_too() -> None:
    tap = ListenTap("call_1", "t1", RATE)
    relayed: list[bytes] = []
    tap.relay = relayed.append
    tap.listen(mono=True)
    tap.write(chunk(3))
    assert relayed == [chunk(3)]


class _Clock(Clock):
    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    async def sleep_until(self, deadline: float) -> None:
        self.t = max(self.t, deadline)


async def test_a_recording_transport_feeds_the_tap_what_the_file_gets() -> None:
    class Kept:
        def __init__(self) -> None:
            self.pcm = bytearray()

        def write(self, pcm: bytes) -> None:
            self.pcm += pcm

    clock, kept = _Clock(), Kept()
    inner = SimulatedPhone()
    tap = ListenTap("call_1", "t1", inner.audio_format.sample_rate)
    listener = tap.listen()
    transport = RecordingTransport(inner, clock, StereoTee(kept, tap), start=0.0)
    tone = np.full(160, 1000, "<i2").tobytes()
    for n in range(1, 6):
        clock.t = n * 0.02
        await transport.send_audio(inner.audio_format.from_pcm16(tone))
    transport.finish()
    heard = listener.take()
    assert heard and heard == bytes(kept.pcm)
    right = np.frombuffer(heard, "<i2")[1::2]
    assert np.abs(right).max() > 500  # the assistant's tone, on the right


async def test_an_unrecorded_call_makes_stereo_audio_only_while_someone_listens() -> None:
    clock = _Clock()
    inner = SimulatedPhone()
    tap = ListenTap("call_1", "t1", inner.audio_format.sample_rate)
    remote = {"wanted": False}
    tap.remote = lambda: remote["wanted"]
    transport = RecordingTransport(inner, clock, tap, start=0.0, wanted=tap.wanted)
    tone = inner.audio_format.from_pcm16(np.full(160, 1000, "<i2").tobytes())

    async def play(frames: int) -> None:
        for _ in range(frames):
            clock.t += 0.02
            await transport.send_audio(tone)

    await play(5)
    assert transport.timeline is None  # nobody listens: no timeline, nothing made

    listener = tap.listen()
    await play(60)  # no caller frames: the assistant's side is final 1 s behind the clock
    assert transport.timeline is not None
    heard = listener.take()
    assert heard  # starts with the first listener, at that moment
    assert len(heard) <= 60 * 160 * 4

    tap.remove(listener)
    await play(1)
    assert transport.timeline is None  # the last one left: dropped again

    remote["wanted"] = True  # a listener on another node
    await play(3)
    assert transport.timeline is not None

    transport.finish()
    tap.close()
    assert not tap.wanted()
