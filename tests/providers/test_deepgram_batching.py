"""DeepgramStream sends caller audio in 40 ms binary messages, not one per 20 ms frame, and loses
or holds back none of it: a partial batch goes out before Finalize and before CloseStream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from websockets.asyncio.server import ServerConnection, serve

from benchmarks.fakes.deepgram import DeepgramFake, DeepgramFakeConfig
from benchmarks.fakes.server import serve as serve_fake
from benchmarks.fakes.server import ws_url
from voice.providers.deepgram import DeepgramStt
from voice.testing import tone_ulaw

pytestmark = pytest.mark.timeout(30)

FRAME = 160  # 20 ms of μ-law


class Recorder:
    """A bare websocket server that records what a client sends, in order."""

    def __init__(self) -> None:
        self.messages: list[str | bytes] = []
        self.closed = asyncio.Event()
        self.arrived = asyncio.Event()

    async def handler(self, ws: ServerConnection) -> None:
        async for message in ws:
            self.messages.append(message)
            self.arrived.set()
            if message == '{"type": "CloseStream"}':
                await ws.close()
        self.closed.set()

    @property
    def audio(self) -> list[bytes]:
        return [m for m in self.messages if isinstance(m, bytes)]


@asynccontextmanager
async def recorder() -> AsyncIterator[tuple[Recorder, str]]:
    rec = Recorder()
    async with serve(rec.handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield rec, f"ws://127.0.0.1:{port}"


def frames(audio: bytes) -> list[bytes]:
    return [audio[i : i + FRAME] for i in range(0, len(audio), FRAME)]


async def settle(rec: Recorder, count: int) -> None:
    while len(rec.messages) < count:
        rec.arrived.clear()
        await rec.arrived.wait()


async def test_frames_go_out_in_40_ms_messages_in_order() -> None:
    audio = tone_ulaw(0.5)  # 25 frames
    async with recorder() as (rec, base), asyncio.timeout(10):
        stream = await DeepgramStt("k", base_url=base).connect()
        for frame in frames(audio):
            await stream.send_audio(frame)
        await settle(rec, 12)
        # 24 frames make 12 messages of 320 bytes; the 25th waits for its partner
        assert [len(m) for m in rec.audio] == [320] * 12
        assert stream.audio_messages == 12
        await stream.aclose()
        await rec.closed.wait()
    # the odd frame went out before CloseStream: every byte arrived, in order
    assert b"".join(rec.audio) == audio
    assert rec.messages[-1] == '{"type": "CloseStream"}' and len(rec.audio[-1]) == FRAME


async def test_finalize_sends_the_partial_batch_first() -> None:
    audio = tone_ulaw(0.06)  # 3 frames: one full batch and half of the next
    async with recorder() as (rec, base), asyncio.timeout(10):
        stream = await DeepgramStt("k", base_url=base).connect()
        for frame in frames(audio):
            await stream.send_audio(frame)
        await stream.finalize()
        await settle(rec, 3)
        assert rec.messages == [audio[:320], audio[320:], '{"type": "Finalize"}']
        await stream.aclose()


async def test_a_zero_batch_sends_every_frame_at_once() -> None:
    audio = tone_ulaw(0.1)
    async with recorder() as (rec, base), asyncio.timeout(10):
        stream = await DeepgramStt("k", base_url=base, batch_seconds=0).connect()
        for frame in frames(audio):
            await stream.send_audio(frame)
        await settle(rec, 5)
        assert rec.audio == frames(audio)
        await stream.aclose()


def test_a_negative_batch_is_refused() -> None:
    with pytest.raises(ValueError, match="batch_seconds"):
        DeepgramStt("k", batch_seconds=-0.02)


async def test_batched_audio_is_transcribed_as_fast() -> None:
    """Against the Deepgram fake: the final of a batched stream comes no later than one batch
    (40 ms) after that of a frame-by-frame stream."""

    async def time_to_final(batch_seconds: float) -> float:
        fake = DeepgramFake(DeepgramFakeConfig(api_key="k", script=["hello there"]))
        audio = tone_ulaw(0.6) + bytes([0xFF]) * 8000
        async with serve_fake(fake.app) as base, asyncio.timeout(10):
            stream = await DeepgramStt(
                "k", base_url=ws_url(base), endpointing_ms=100, batch_seconds=batch_seconds
            ).connect()
            loop = asyncio.get_running_loop()
            start = loop.time()
            speech_end = start + 0.6

            async def feed() -> None:
                for i, frame in enumerate(frames(audio)):
                    await asyncio.sleep(max(0.0, start + i * 0.02 - loop.time()))
                    await stream.send_audio(frame)

            feeder = asyncio.create_task(feed())
            async for transcript in stream.transcripts():
                if transcript.is_final and transcript.text:
                    break
            arrived = loop.time()
            feeder.cancel()
            await stream.aclose()
            assert transcript.text == "hello there"
            return arrived - speech_end

    framewise = await time_to_final(0.0)
    batched = await time_to_final(0.04)
    assert batched <= framewise + 0.04 + 0.03  # one batch, plus scheduling slack
