"""DeepgramStt against the loopback Deepgram fake: streaming, Finalize, reconnect, faults."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from benchmarks.fakes.deepgram import DeepgramFake, DeepgramFakeConfig
from benchmarks.fakes.server import Fault, serve, ws_url
from media.g711 import ulaw_silence
from voice.errors import ProviderError, ProviderProtocolError, ProviderTimeout
from voice.providers.deepgram import DeepgramStream, DeepgramStt
from voice.providers.options import ReconnectPolicy
from voice.testing import tone_ulaw
from voice.types import Transcript

pytestmark = pytest.mark.timeout(30)

KEY = "dg-test-key"
FRAME = 160


@asynccontextmanager
async def deepgram(**config: Any) -> AsyncIterator[tuple[DeepgramFake, str]]:
    fake = DeepgramFake(DeepgramFakeConfig(api_key=KEY, **config))
    async with serve(fake.app) as base:
        yield fake, ws_url(base)


def stt(base: str, **options: Any) -> DeepgramStt:
    options.setdefault("endpointing_ms", 100)
    return DeepgramStt(KEY, base_url=base, **options)


def utterances(count: int, speech: float = 0.6, gap: float = 0.5) -> bytes:
    return (tone_ulaw(speech) + ulaw_silence(int(gap * 8000))) * count


async def feed(stream: DeepgramStream, audio: bytes, *, speedup: float = 4.0) -> None:
    """Send 20 ms frames at `speedup` times real time."""
    for i in range(0, len(audio), FRAME):
        await stream.send_audio(audio[i : i + FRAME])
        await asyncio.sleep(0.02 / speedup)


class Collector:
    """Reads `transcripts()` in the background, stamping each result with its arrival time."""

    def __init__(self, stream: DeepgramStream) -> None:
        self.stream = stream
        self.results: list[tuple[float, Transcript]] = []
        self.error: BaseException | None = None
        self.changed = asyncio.Event()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            async for transcript in self.stream.transcripts():
                self.results.append((loop.time(), transcript))
                self.changed.set()
        except ProviderError as exc:
            self.error = exc
            self.changed.set()

    @property
    def finals(self) -> list[Transcript]:
        return [t for _, t in self.results if t.is_final and t.text]

    async def wait_for_finals(self, count: int) -> list[Transcript]:
        """Callers bound this with their own deadline."""
        while len(self.finals) < count and self.error is None:
            self.changed.clear()
            await self.changed.wait()
        return self.finals


async def test_interims_stream_before_the_speech_final() -> None:
    script = ["hello there how are you doing today"]
    async with deepgram(script=script) as (fake, base), asyncio.timeout(10):
        stream = await stt(base).connect()
        collector = Collector(stream)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(collector.run())
            loop = asyncio.get_running_loop()
            await feed(stream, ulaw_silence(2400) + tone_ulaw(1.2) + ulaw_silence(4800))
            fed_at = loop.time()
            finals = await collector.wait_for_finals(1)
            await stream.aclose()  # ends transcripts(), so the task group can finish

    interims = [(at, t) for at, t in collector.results if not t.is_final]
    assert interims, "no interim results"
    assert interims[0][0] < fed_at, "the first result only came after all the audio was sent"
    assert script[0].startswith(interims[0][1].text)
    assert [t.text for t in finals] == script
    final = finals[0]
    assert final.speech_final
    assert final.start == pytest.approx(0.3, abs=0.03)
    assert final.end == pytest.approx(1.5, abs=0.03)
    record = fake.connections[0]
    assert record.headers["authorization"] == f"Token {KEY}"
    assert {
        "encoding": "mulaw",
        "sample_rate": "8000",
        "channels": "1",
        "interim_results": "true",
        "endpointing": "100",
        "utterance_end_ms": "1000",
        "vad_events": "true",
        "model": "nova-3",
        "language": "en",
    }.items() <= record.params.items()
    assert record.audio_bytes == 2400 + 9600 + 4800  # μ-law passed through byte for byte
    assert record.controls[-1] == "CloseStream"
    assert record.close_code == 1000


async def test_finalize_produces_a_from_finalize_final() -> None:
    async with deepgram(script=["one two three"]) as (fake, base), asyncio.timeout(10):
        stream = await stt(base).connect()
        collector = Collector(stream)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(collector.run())
            await feed(stream, tone_ulaw(0.6))  # still "speaking": no endpoint yet
            loop = asyncio.get_running_loop()
            asked = loop.time()
            await stream.finalize()
            async with asyncio.timeout(2):
                finals = await collector.wait_for_finals(1)
            answered = collector.results[-1][0]
            await stream.aclose()

    assert [t.text for t in finals] == ["one two three"]
    assert finals[0].speech_final  # the answer to our Finalize ends the utterance
    assert answered - asked < 0.5
    sent = [m for m in fake.connections[0].sent if m.get("type") == "Results" and m["is_final"]]
    assert sent[0]["from_finalize"] is True
    assert "Finalize" in fake.connections[0].controls


async def test_long_speech_is_finalised_in_pieces_before_the_speech_final() -> None:
    script = ["one two three four five six seven eight"]
    async with deepgram(script=script, final_every=1.0) as (_, base), asyncio.timeout(10):
        stream = await stt(base).connect()
        collector = Collector(stream)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(collector.run())
            await feed(stream, tone_ulaw(2.5) + ulaw_silence(2400), speedup=8.0)
            async with asyncio.timeout(3):
                while not any(t.speech_final for t in collector.finals):
                    collector.changed.clear()
                    await collector.changed.wait()
            await stream.aclose()

    finals = collector.finals
    assert len(finals) >= 2
    assert not any(t.speech_final for t in finals[:-1]) and finals[-1].speech_final
    assert " ".join(t.text for t in finals) == script[0]
    assert all(a.end <= b.start + 1e-6 for a, b in zip(finals, finals[1:], strict=False))


async def test_drop_mid_utterance_reconnects_and_replays_without_losing_words() -> None:
    script = ["alpha bravo", "charlie delta", "echo foxtrot"]
    # segments at 0-0.6, 1.1-1.7, 2.2-2.8 s; the first socket drops at 1.4 s, mid "charlie"
    config = {"fault": Fault.DROP, "fault_count": 1, "fault_after_audio": 1.4}
    reported: list[ProviderError] = []
    async with deepgram(script=script, **config) as (fake, base), asyncio.timeout(15):
        policy = ReconnectPolicy(backoff=0.02)
        stream = await stt(base, reconnect=policy, on_reconnect=reported.append).connect()
        collector = Collector(stream)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(collector.run())
            await feed(stream, utterances(3))
            finals = await collector.wait_for_finals(3)
            await stream.aclose()

    assert collector.error is None
    assert [t.text for t in finals] == script
    assert stream.reconnects == 1
    assert len(fake.connections) == 2
    # the recovery is reported (for the call's record), once, saying what happened
    (report,) = reported
    assert report.retryable and report.provider == "deepgram"
    assert "connection lost without a close frame; reconnected (reconnect 1, 1 attempt)" in str(
        report
    )
    # one timeline across both sockets
    assert [round(t.start, 1) for t in finals] == [0.0, 1.1, 2.2]
    assert all(a.end <= b.start for a, b in zip(finals, finals[1:], strict=False))


async def test_keepalive_keeps_an_idle_socket_open() -> None:
    async with deepgram(idle_timeout=0.5) as (fake, base), asyncio.timeout(10):
        stream = await stt(base, keepalive_interval=0.1).connect()
        await asyncio.sleep(1.0)
        record = fake.connections[0]
        assert record.close_code is None
        assert record.controls.count("KeepAlive") >= 5
        await stream.aclose()
    assert record.controls[-1] == "CloseStream"


@pytest.mark.parametrize(
    ("fault", "retryable"),
    [(Fault.UNAUTHORIZED, False), (Fault.RATE_LIMITED, True), (Fault.SERVER_ERROR, True)],
)
async def test_rejected_connect_maps_status_to_retryable(fault: Fault, retryable: bool) -> None:
    async with deepgram(fault=fault) as (_, base), asyncio.timeout(5):
        with pytest.raises(ProviderError) as caught:
            await stt(base).connect()
    assert type(caught.value) is ProviderError
    assert caught.value.retryable is retryable


async def test_wrong_key_is_not_retryable() -> None:
    async with deepgram() as (fake, base), asyncio.timeout(5):
        with pytest.raises(ProviderError) as caught:
            await DeepgramStt("wrong", base_url=base).connect()
    assert not caught.value.retryable
    assert "401" in str(caught.value)
    assert fake.rejected == [401]


async def test_connect_that_never_completes_is_a_timeout() -> None:
    writers: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)  # never answers the upgrade

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with asyncio.timeout(5):
            with pytest.raises(ProviderTimeout) as caught:
                await DeepgramStt(
                    KEY, base_url=f"ws://127.0.0.1:{port}", connect_timeout=0.3
                ).connect()
    finally:
        for writer in writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        server.close()
        await server.wait_closed()
    assert caught.value.stage == "connect"
    assert caught.value.retryable


async def test_garbage_from_the_server_is_a_protocol_error() -> None:
    async with deepgram(fault=Fault.GARBAGE) as (_, base), asyncio.timeout(5):
        stream = await stt(base).connect()
        with pytest.raises(ProviderProtocolError):
            async for _ in stream.transcripts():
                pass
        with pytest.raises(ProviderError):
            await stream.send_audio(ulaw_silence(FRAME))
        await stream.aclose()


async def test_a_stalled_server_is_a_timeout_while_audio_flows() -> None:
    async with deepgram(fault=Fault.STALL) as (_, base), asyncio.timeout(10):
        stream = await stt(base, result_timeout=0.4).connect()
        loop = asyncio.get_running_loop()
        started = loop.time()
        feeder = asyncio.create_task(feed(stream, utterances(10), speedup=1.0))
        try:
            with pytest.raises(ProviderTimeout) as caught:
                async for _ in stream.transcripts():
                    pass
        finally:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError, ProviderError):
                await feeder
        assert loop.time() - started < 1.5
        assert caught.value.stage == "results"
        await stream.aclose()


async def test_a_server_that_keeps_closing_gives_up_retryably() -> None:
    policy = ReconnectPolicy(attempts=2, backoff=0.01, max_reconnects=2)
    config = {"fault": Fault.BAD_CLOSE, "fault_after": 0.05}
    reported: list[ProviderError] = []
    async with deepgram(**config) as (fake, base), asyncio.timeout(10):
        stream = await stt(base, reconnect=policy, on_reconnect=reported.append).connect()
        feeder = asyncio.create_task(feed(stream, utterances(10), speedup=2.0))
        try:
            with pytest.raises(ProviderError) as caught:
                async for _ in stream.transcripts():
                    pass
        finally:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError, ProviderError):
                await feeder
        await stream.aclose()
    assert type(caught.value) is ProviderError
    assert caught.value.retryable
    assert len(fake.connections) == 3  # the first socket and two reconnects
    # each reconnect that worked was reported; the final failure is raised, not reported
    assert len(reported) == 2 and all("closed by the server with 4000" in str(r) for r in reported)


async def test_close_1008_means_our_audio_is_wrong_and_is_not_retried() -> None:
    config = {"fault": Fault.BAD_CLOSE, "fault_after": 0.05, "bad_close_code": 1008}
    async with deepgram(**config) as (fake, base), asyncio.timeout(5):
        stream = await stt(base).connect()
        with pytest.raises(ProviderProtocolError):
            async for _ in stream.transcripts():
                pass
        await stream.aclose()
    assert len(fake.connections) == 1
