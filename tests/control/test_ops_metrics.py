"""/metrics: scraped from a live server after real calls over websockets, and the sink and the
frame-lateness probe on their own with explicit time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from control.app import create_app
from control.metrics import LatenessClock, Metrics, ObservedTransport
from media.audio_format import MULAW_8K
from media.transport import InboundEvent, StreamStopped
from media.twilio.caller import CallScript, place_call
from tests.conftest import AssistantFactory, ScriptedEngines, serve, settings_for
from voice.errors import ProviderError
from voice.events import BargeIn, CallEnded, CallStarted, ProviderFailed, TurnCompleted, TurnLatency
from voice.testing import tone_ulaw
from voice.types import ChatMessage, EndedReason, LlmDelta

pytestmark = pytest.mark.timeout(60)

SPEECH = tone_ulaw(0.8, frequency=300.0)
LONG_REPLY = (
    "Our clinic offers cleanings, fillings, crowns, whitening and emergency care, and we take "
    "most insurance plans, so let me walk you through each of them in turn."
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape(base: str, **headers: str) -> Samples:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{base}/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


async def until_live(app: FastAPI) -> None:
    for _ in range(1000):
        if app.state.calls.live:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no call went live")


async def test_a_call_with_a_barge_in_shows_in_metrics(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    engines = ScriptedEngines(
        ["Tell me about your services.", "Stop, what about the price?"],
        [LONG_REPLY, "Cleanings are eighty dollars."],
        seconds_per_char=0.03,
    )
    app = create_app(settings_for(assistant_file(), tmp_path), engines=engines)
    async with serve(app) as base:
        before = await scrape(base)
        assert value(before, "ava_active_calls") == 0
        assert value(before, "ava_turn_latency_seconds_count", stage="voice_to_voice") == 0
        # every stage is exported (at zero) before the first turn, held too
        assert ("ava_turn_latency_seconds_count", frozenset({("stage", "held")})) in before

        call = asyncio.create_task(
            place_call(base, CallScript([SPEECH, SPEECH], barge_in_after=1.5))
        )
        await until_live(app)
        during = await scrape(base)
        report = await call
        assert report.error is None, report.error
        after = await scrape(base)

    assert value(during, "ava_active_calls") == 1
    assert value(after, "ava_active_calls") == 0
    assert value(after, "ava_calls_started_total", transport="twilio") == 1
    record = report.record
    assert record is not None
    assert value(after, "ava_calls_ended_total", reason=record["ended_reason"]) == 1
    assert value(after, "ava_barge_ins_total") == len(record["barge_ins"]) == 1

    # Every turn's latencies, as the call record has them, are in the histograms.
    latencies = [t["latency"] for t in record["turns"] if "latency" in t]
    assert len(latencies) >= 2
    stages = ("voice_to_voice", "endpointing", "stt", "llm_ttft", "tts_ttfb", "server", "held")
    for stage in stages:
        count = value(after, "ava_turn_latency_seconds_count", stage=stage)
        total = value(after, "ava_turn_latency_seconds_sum", stage=stage)
        assert count == len(latencies), stage
        expected = sum(max(0.0, lat[stage]) for lat in latencies)
        assert total == pytest.approx(expected, abs=1e-3 * len(latencies)), stage
    interrupted = sum(1 for t in record["turns"] if t["interrupted"])
    assert value(after, "ava_turns_total", interrupted="true") == interrupted == 1

    # One lateness sample per paced chunk of audio: the greeting and both replies, 100 ms each.
    chunks = value(after, "ava_outbound_frame_lateness_seconds_count")
    assert chunks >= report.audio_received_seconds / 0.1 - 1
    # A loop with nothing else to do releases chunks within a few ms of their schedule (loose:
    # this machine is shared).
    on_time = value(after, "ava_outbound_frame_lateness_seconds_bucket", le="0.04")
    assert on_time >= 0.8 * chunks


async def test_a_blocked_event_loop_shows_as_frame_lateness(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    engines = ScriptedEngines([], [], seconds_per_char=0.05)  # the greeting is ~2.2 s of audio
    app = create_app(settings_for(assistant_file(), tmp_path), engines=engines)
    async with serve(app) as base:
        call = asyncio.create_task(place_call(base, CallScript([], max_seconds=1.5)))
        await until_live(app)
        await asyncio.sleep(0.5)  # the greeting is playing, a chunk paced every 100 ms
        time.sleep(0.3)  # noqa: ASYNC251 - the point: starve the loop as a CPU hog would
        await call
        samples = await scrape(base)
    count = value(samples, "ava_outbound_frame_lateness_seconds_count")
    within = value(samples, "ava_outbound_frame_lateness_seconds_bucket", le="0.1")
    # A chunk was due inside the 300 ms stall: it left at least 200 ms late.
    assert count - within >= 1
    assert value(samples, "ava_outbound_frame_lateness_seconds_sum") >= 0.2


class BrokenLlm:
    name = "broken-llm"

    async def stream(self, messages: Sequence[ChatMessage]) -> AsyncIterator[LlmDelta]:
        raise ProviderError(self.name, "HTTP 500 from upstream", retryable=True)
        yield LlmDelta()  # an async generator that fails on first use


async def test_provider_failures_are_counted(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    engines = ScriptedEngines(["Hello?"], [], seconds_per_char=0.01)
    engines.llm = BrokenLlm()  # type: ignore[assignment]
    app = create_app(settings_for(assistant_file(), tmp_path), engines=engines)
    async with serve(app) as base:
        report = await place_call(base, CallScript([SPEECH], max_seconds=10))
        samples = await scrape(base)
    record = report.record
    assert record is not None
    failures = record["errors"]
    assert failures and all("broken-llm" in e["provider"] for e in failures)
    for failure in failures:
        labels = {
            "provider": failure["provider"],
            "stage": failure["stage"],
            "retryable": str(failure["retryable"]).lower(),
        }
        same = [f for f in failures if f["provider"] == failure["provider"]]
        assert value(samples, "ava_provider_errors_total", **labels) == len(same)
    assert value(samples, "ava_calls_ended_total", reason=record["ended_reason"]) == 1


async def test_metrics_need_the_token_when_one_is_set(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    settings = settings_for(assistant_file(), tmp_path, metrics_token="scrape-me")
    app = create_app(settings, engines=ScriptedEngines([], []))
    async with serve(app) as base, httpx.AsyncClient(base_url=base) as http:
        missing = await http.get("/metrics")
        wrong = await http.get("/metrics", headers={"Authorization": "Bearer nope"})
        right = await http.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
    assert missing.status_code == wrong.status_code == 401
    assert missing.json()["statusCode"] == 401 and "Bearer" in missing.json()["message"]
    assert right.status_code == 200 and "ava_active_calls" in right.text


async def test_metrics_are_refused_outside_dev_mode_without_a_token(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    settings = settings_for(assistant_file(), tmp_path, twilio_auth_token="twilio-secret")
    app = create_app(settings, engines=ScriptedEngines([], []))
    async with serve(app) as base, httpx.AsyncClient(base_url=base) as http:
        response = await http.get("/metrics")
    assert response.status_code == 403
    assert "AVA_METRICS_TOKEN" in response.json()["message"]


def test_sink_files_each_event() -> None:
    metrics = Metrics(live_calls=lambda: 3)
    latency = TurnLatency(
        voice_to_voice=1.3, endpointing=0.6, stt=0.55, llm_ttft=0.2, tts_ttfb=0.097, server=0.003,
        held=0.4,
    )  # fmt: skip
    metrics.emit(CallStarted("c1", 0.0, 0.0, "twilio", "Demo"))
    metrics.emit(TurnCompleted("c1", 1.0, 1, "hi", "hello", False, latency))
    metrics.emit(TurnCompleted("c1", 2.0, 2, "stop", "hel", True, None))
    metrics.emit(BargeIn("c1", 2.0, 1.8, "hel"))
    metrics.emit(ProviderFailed("c1", 2.1, "tts", "elevenlabs", "503", True))
    metrics.emit(ProviderFailed("c1", 2.2, "tts", "elevenlabs", "401", False))
    metrics.emit(CallEnded("c1", 3.0, EndedReason.SILENCE_TIMED_OUT))
    samples = parse(metrics.render().decode())

    assert value(samples, "ava_active_calls") == 3  # read from the call manager at scrape time
    assert value(samples, "ava_calls_started_total", transport="twilio") == 1
    assert value(samples, "ava_calls_ended_total", reason="silence-timed-out") == 1
    assert value(samples, "ava_turns_total", interrupted="false") == 1
    assert value(samples, "ava_turns_total", interrupted="true") == 1
    assert value(samples, "ava_barge_ins_total") == 1
    for retryable in ("true", "false"):
        labels = {"provider": "elevenlabs", "stage": "tts", "retryable": retryable}
        assert value(samples, "ava_provider_errors_total", **labels) == 1
    # A turn without latency (interrupted before any audio) is not a latency sample.
    assert value(samples, "ava_turn_latency_seconds_count", stage="server") == 1
    # 3 ms of server time lands in the 5 ms bucket, not the 2.5 ms one.
    assert value(samples, "ava_turn_latency_seconds_bucket", stage="server", le="0.0025") == 0
    assert value(samples, "ava_turn_latency_seconds_bucket", stage="server", le="0.005") == 1
    assert value(samples, "ava_turn_latency_seconds_bucket", stage="tts_ttfb", le="0.075") == 0
    assert value(samples, "ava_turn_latency_seconds_bucket", stage="tts_ttfb", le="0.1") == 1
    assert value(samples, "ava_turn_latency_seconds_bucket", stage="voice_to_voice", le="5.0") == 1
    # The backoff a reply waited out is its own stage, not server time.
    assert value(samples, "ava_turn_latency_seconds_bucket", stage="held", le="0.3") == 0
    assert value(samples, "ava_turn_latency_seconds_bucket", stage="held", le="0.4") == 1


def test_each_app_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()
    a.barge_ins.inc()
    assert value(parse(a.render().decode()), "ava_barge_ins_total") == 1
    assert value(parse(b.render().decode()), "ava_barge_ins_total") == 0


class LaggingClock:
    """Explicit time: each sleep wakes `lag` seconds after its deadline."""

    def __init__(self) -> None:
        self.t = 100.0
        self.lag = 0.0

    def now(self) -> float:
        return self.t

    async def sleep_until(self, deadline: float) -> None:
        await asyncio.sleep(0)
        self.t = max(self.t, deadline) + self.lag


class RecordingTransport:
    kind = "test"
    audio_format = MULAW_8K

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def receive(self) -> InboundEvent:
        return StreamStopped()

    async def send_audio(self, audio: bytes) -> None:
        self.sent.append(audio)

    async def send_mark(self, name: str) -> None: ...

    async def send_clear(self) -> None: ...

    async def close(self, reason: str) -> None: ...


async def test_lateness_is_the_paced_sleep_overshoot_of_the_sending_task() -> None:
    inner = LaggingClock()
    observed: list[float] = []
    clock = LatenessClock(inner)
    wire = RecordingTransport()
    transport = ObservedTransport(wire, observed.append)

    await transport.send_audio(b"a")  # not released by a paced sleep: no sample
    inner.lag = 0.03
    await clock.sleep_until(inner.t + 0.1)
    await transport.send_audio(b"b")
    inner.lag = 0.0
    await clock.sleep_until(inner.t - 5)  # already due: sent at once, on time
    await transport.send_audio(b"c")
    await transport.send_audio(b"d")  # a second send after one sleep: no sample
    assert observed == pytest.approx([0.03, 0.0])
    assert wire.sent == [b"a", b"b", b"c", b"d"]

    # Another task's late timer (a silence timeout, another call) is not this task's lateness.
    async def other_timer() -> None:
        inner.lag = 0.5
        await clock.sleep_until(inner.t + 1)
        inner.lag = 0.0

    await asyncio.create_task(other_timer())
    await transport.send_audio(b"e")
    assert observed == pytest.approx([0.03, 0.0])
