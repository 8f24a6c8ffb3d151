"""The WebRTC transport's I/O shell with a fake clock: the outbound track's pacing, marks at
play time, `clear` silencing the next frame, inbound frames, and every way the media ends.

aiortc's own sender pulls `OutboundTrack.recv()` in a loop; here the test pulls it, so each
frame's time is exact.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame
from av.frame import Frame

from media.audio_format import MULAW_8K, PCM16_16K
from media.g711 import SILENCE_BYTE, pcm16_to_ulaw
from media.transport import AudioReceived, MarkReceived, StreamStopped, TransportClosed
from media.webrtc.peer import WebRtcTransport
from voice.testing import FakeClock

pytestmark = pytest.mark.timeout(10)


class BrowserMic(MediaStreamTrack):
    """What aiortc's receiver hands over: decoded 48 kHz stereo s16 frames, when fed."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.queue: asyncio.Queue[AudioFrame | None] = asyncio.Queue()

    def feed(self, samples: np.ndarray) -> None:
        data = np.stack([samples, samples], axis=1).reshape(1, -1).astype("<i2")
        frame = AudioFrame.from_ndarray(data, format="s16", layout="stereo")
        frame.sample_rate = 48000
        self.queue.put_nowait(frame)

    async def recv(self) -> Frame:
        frame = await self.queue.get()
        if frame is None:
            raise MediaStreamError
        return frame


@pytest.fixture
async def clock() -> FakeClock:
    return FakeClock(start=50.0)


@pytest.fixture
async def transport(clock: FakeClock) -> AsyncIterator[WebRtcTransport]:
    transport = WebRtcTransport(clock)
    yield transport
    await transport.close("test over")


async def pull(transport: WebRtcTransport) -> AudioFrame:
    frame = await transport.track.recv()
    assert isinstance(frame, AudioFrame)
    return frame


def pcm_of(frame: AudioFrame) -> bytes:
    data: bytes = frame.to_ndarray().astype("<i2").tobytes()
    return data


def ulaw_of(frame: AudioFrame) -> bytes:
    return pcm16_to_ulaw(pcm_of(frame))


@pytest.fixture
async def phone_transport(clock: FakeClock) -> AsyncIterator[WebRtcTransport]:
    """The same transport carrying telephone audio (the tests written for μ-law bytes)."""
    transport = WebRtcTransport(clock, audio_format=MULAW_8K)
    yield transport
    await transport.close("test over")


async def test_a_browser_call_declares_16_khz_pcm16(
    transport: WebRtcTransport, clock: FakeClock
) -> None:
    assert transport.audio_format == PCM16_16K
    pcm = (np.arange(320 * 3) % 200 - 100).astype("<i2").tobytes()  # 60 ms of a sawtooth
    await transport.send_audio(pcm)
    frames = []
    for _ in range(3):
        frames.append(await pull(transport))
        await clock.advance(0.02)
    assert all((f.sample_rate, f.samples) == (16000, 320) for f in frames)
    assert b"".join(pcm_of(f) for f in frames) == pcm  # handed to the encoder unchanged
    assert frames[1].pts == frames[0].pts + 320  # type: ignore[operator]


async def test_frames_leave_one_per_20_ms_of_the_clock(
    phone_transport: WebRtcTransport, clock: FakeClock
) -> None:
    transport = phone_transport
    first = await pull(transport)
    assert (first.sample_rate, first.samples, first.format.name) == (8000, 160, "s16")
    pending = asyncio.ensure_future(pull(transport))
    await clock.advance(0.019)
    assert not pending.done()  # not a moment early
    await clock.advance(0.0011)  # (not 0.001: 50.019 + 0.001 falls short in binary)
    second = await asyncio.wait_for(pending, 1)
    assert first.pts is not None and second.pts == first.pts + 160
    # A stall longer than 100 ms does not turn into a burst of late frames.
    await clock.advance(0.5)
    await pull(transport)
    pending = asyncio.ensure_future(pull(transport))
    await asyncio.sleep(0)
    assert not pending.done()
    await clock.advance(0.02)
    await asyncio.wait_for(pending, 1)
    assert transport.track.schedule.reanchored == 1


async def test_audio_plays_in_order_and_marks_echo_once_played(
    phone_transport: WebRtcTransport, clock: FakeClock
) -> None:
    transport = phone_transport
    speech = bytes(range(0, 250, 2)) * 7  # 875 bytes: five frames and a bit
    await transport.send_audio(speech)
    await transport.send_mark("1.1")
    receiving = asyncio.ensure_future(transport.receive())
    played = b""
    for _ in range(6):
        played += ulaw_of(await pull(transport))
        await clock.advance(0.02)
        assert not receiving.done(), "mark echoed before its audio had played"
    assert played[: len(speech)] == speech
    await pull(transport)  # the frame time after the last of its audio
    assert await asyncio.wait_for(receiving, 1) == MarkReceived("1.1")


async def test_clear_silences_the_next_frame_and_echoes_pending_marks(
    phone_transport: WebRtcTransport, clock: FakeClock
) -> None:
    transport = phone_transport
    await transport.send_audio(b"\x10" * 8000)
    await transport.send_mark("2.1")
    await transport.send_audio(b"\x10" * 800)
    await transport.send_mark("2.2")
    assert set(ulaw_of(await pull(transport))) == {0x10}
    await transport.send_clear()
    assert await transport.receive() == MarkReceived("2.1")
    assert await transport.receive() == MarkReceived("2.2")
    await clock.advance(0.02)
    assert set(ulaw_of(await pull(transport))) == {SILENCE_BYTE}
    assert transport.playout.queued_seconds == 0


async def test_browser_audio_arrives_as_20_ms_pcm16_frames(transport: WebRtcTransport) -> None:
    mic = BrowserMic()
    transport.attach_remote(mic)
    t = np.arange(960 * 10) / 48000
    samples = (8000 * np.sin(2 * np.pi * 440 * t)).astype("<i2")
    for i in range(10):
        mic.feed(samples[i * 960 : (i + 1) * 960])
    frames = [await asyncio.wait_for(transport.receive(), 1) for _ in range(9)]
    assert all(isinstance(f, AudioReceived) and len(f.audio) == 640 for f in frames)


async def test_a_mark_is_not_held_up_by_a_silent_microphone(
    transport: WebRtcTransport, clock: FakeClock
) -> None:
    transport.attach_remote(BrowserMic())  # sends nothing at all
    await transport.send_mark("3.1")
    receiving = asyncio.ensure_future(transport.receive())
    await pull(transport)
    assert await asyncio.wait_for(receiving, 1) == MarkReceived("3.1")


async def test_the_browser_hanging_up_stops_the_stream(transport: WebRtcTransport) -> None:
    transport.attach_remote(BrowserMic())
    receiving = asyncio.ensure_future(transport.receive())
    await asyncio.sleep(0)
    transport.hang_up()
    assert await asyncio.wait_for(receiving, 1) == StreamStopped()


async def test_the_track_ending_closes_the_transport(transport: WebRtcTransport) -> None:
    mic = BrowserMic()
    transport.attach_remote(mic)
    mic.queue.put_nowait(None)
    with pytest.raises(TransportClosed, match="audio track ended"):
        await asyncio.wait_for(transport.receive(), 1)
    assert transport.track.readyState == "live"  # our side stays until close()


async def test_close_stops_the_audio_and_refuses_more(transport: WebRtcTransport) -> None:
    await transport.send_audio(b"\x10" * 1600)
    await transport.close("assistant-said-end-call-phrase")
    with pytest.raises(MediaStreamError):
        await transport.track.recv()
    with pytest.raises(TransportClosed):
        await transport.send_audio(b"\x10" * 160)
    with pytest.raises(TransportClosed, match="call ended"):
        await transport.receive()


async def test_a_connection_lost_mid_receive_ends_it(transport: WebRtcTransport) -> None:
    transport.attach_remote(BrowserMic())
    receiving = asyncio.ensure_future(transport.receive())
    await asyncio.sleep(0)
    transport.lost("connection failed")
    with pytest.raises(TransportClosed, match="connection failed"):
        await asyncio.wait_for(receiving, 1)
