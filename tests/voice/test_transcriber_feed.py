"""The transcriber feed's bounded queue: overflow drops the oldest audio, never a request for a
final transcript (a turn would wait for a transcript nobody asked for)."""

from __future__ import annotations

import asyncio

from voice.clock import LoopClock
from voice.greeting import GreetingCache
from voice.session_config import Engines
from voice.testing import ScriptedLlm, ScriptedStt, ToneTts
from voice.transcriber import TranscriberFeed
from voice.types import Transcript
from voice.vad import EnergyVad


async def test_overflow_drops_the_oldest_audio_but_keeps_the_finalize_request() -> None:
    stt = ScriptedStt(["Hello?"])
    engines = Engines(
        stt=stt,
        llm=ScriptedLlm([]),
        tts=ToneTts(0.01),
        vad=EnergyVad(),
        turn_detector=None,
        greetings=GreetingCache(),
    )
    results: list[Transcript] = []
    got = asyncio.Event()

    async def on_result(result: Transcript) -> None:
        results.append(result)
        got.set()

    ended = asyncio.Event()
    feed = TranscriberFeed(
        call_id="feed",
        engines=engines,
        clock=LoopClock(),
        connect_timeout=1.0,
        queue_frames=4,
        on_result=on_result,
        on_failure=lambda *_: None,
        ended=ended,
    )
    # Everything is queued before any STT stream is up (it is connecting): the queue overflows.
    feed.feed(b"\x01" * 160)
    feed.feed(b"\x02" * 160)
    feed.finalize()
    for byte in (3, 4, 5, 6):
        feed.feed(bytes([byte]) * 160)
    assert feed.dropped_frames == 3  # frames 1, 2 and 3: four items fit, the request among them
    task = asyncio.create_task(feed.run())
    async with asyncio.timeout(5):
        await got.wait()
    ended.set()
    (stream,) = stt.streams
    assert stream.finalized == 1
    assert results == [Transcript("Hello?", is_final=True, speech_final=True)]
    # The newest audio went through, after the request (it asked about the audio before it).
    assert bytes(stream.received) == b"\x04" * 160 + b"\x05" * 160 + b"\x06" * 160
    await stream.aclose()
    async with asyncio.timeout(5):
        await task
