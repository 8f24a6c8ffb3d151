"""Whole browser calls over real WebRTC on this host: a live AVA, an aiortc peer as the browser.

The engines are scripted (tone "speech", an energy VAD, canned transcripts and replies), as in
test_twilio_calls, so these exercise the transport, its pacing, marks, clear and the data
channel quickly; tests/e2e/test_browser.py repeats the main path with Chromium and the offline
engines. The browser side measures what it actually receives (decoded RTP audio).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame
from av.frame import Frame

from control.app import create_app
from media.audio_format import PCM16_16K
from media.g711 import ulaw_to_pcm16
from media.resample import resample_once
from tests.conftest import AssistantFactory, ScriptedEngines, serve, settings_for
from tests.control.conftest import ASSISTANT, api_app, running_api
from tests.control.webhook_receiver import receiver, sdk_parse
from voice.testing import ToneTts, tone_ulaw

pytestmark = pytest.mark.timeout(60)

SPEECH = tone_ulaw(0.8, frequency=300.0)  # "speech" for the energy VAD and the scripted STT
GREETING = "Hello, this is Ava. How can I help you today?"
LONG_REPLY = (
    "Our clinic offers cleanings, fillings, crowns, whitening and emergency care, and we take "
    "most insurance plans, so let me walk you through each of them in turn."
)


class Mic(MediaStreamTrack):
    """The browser's microphone: 48 kHz stereo 20 ms frames in real time, silence unless
    `say` queued something."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._pending = np.zeros(0, dtype="<i2")
        self._start: float | None = None
        self._frames = 0

    def say(self, ulaw: bytes) -> None:
        pcm = np.frombuffer(resample_once(ulaw_to_pcm16(ulaw), 8000, 48000), dtype="<i2")
        self.say_48k(pcm)

    def say_48k(self, pcm: np.ndarray) -> None:
        """Mono 48 kHz int16, as the microphone captures it (no telephone band limit)."""
        self._pending = np.concatenate([self._pending, np.repeat(pcm.astype("<i2"), 2)])

    async def recv(self) -> Frame:
        if self._start is None:
            self._start = time.monotonic()
        await asyncio.sleep(max(0.0, self._start + self._frames * 0.02 - time.monotonic()))
        chunk, self._pending = self._pending[:1920], self._pending[1920:]
        chunk = np.concatenate([chunk, np.zeros(1920 - len(chunk), dtype="<i2")])
        frame = AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate = 48000
        frame.pts = self._frames * 960
        self._frames += 1
        return frame


class Browser:
    """A WebRTC peer doing what the page does: mic track, `events` channel, non-trickle offer."""

    def __init__(self) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.mic = Mic()
        self.pc.addTrack(self.mic)
        self.channel = self.pc.createDataChannel("events")
        self.events: list[dict[str, Any]] = []
        self.heard: list[tuple[float, float]] = []  # (monotonic time, RMS) per received frame
        self.received: list[np.ndarray] = []  # the first 10 s of decoded audio, mono float
        self.received_rate = 0
        self._reader: asyncio.Task[None] | None = None
        self.channel.on("message", lambda m: self.events.append(json.loads(m)))
        self.pc.on("track", self._on_track)

    def _on_track(self, track: MediaStreamTrack) -> None:
        self._reader = asyncio.ensure_future(self._read(track))

    async def _read(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            assert isinstance(frame, AudioFrame)
            samples = frame.to_ndarray().astype(np.float64) / 32768.0
            self.heard.append((time.monotonic(), float(np.sqrt(np.mean(samples**2)))))
            if len(self.received) < 500:
                channels = len(frame.layout.channels)
                self.received.append(samples.reshape(-1, channels).mean(axis=1))
                self.received_rate = frame.sample_rate

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        assert self.pc.localDescription is not None
        return self.pc.localDescription.sdp

    async def call(
        self, base: str, headers: dict[str, str] | None = None, **fields: Any
    ) -> httpx.Response:
        body = {"sdp": await self.offer(), "type": "offer", **fields}
        async with httpx.AsyncClient(base_url=base, headers=headers or {}) as http:
            response = await http.post("/webrtc/offer", json=body)
        if response.status_code == 200:
            answer = response.json()
            await self.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
        return response

    async def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], seconds: float = 10.0
    ) -> dict[str, Any]:
        async with asyncio.timeout(seconds):
            while True:
                for event in self.events:
                    if predicate(event):
                        return event
                await asyncio.sleep(0.01)

    async def wait_type(self, kind: str, seconds: float = 10.0, **match: Any) -> dict[str, Any]:
        return await self.wait_for(
            lambda e: e["type"] == kind and all(e.get(k) == v for k, v in match.items()), seconds
        )

    def loud_seconds(self, after: float = 0.0, before: float = float("inf")) -> float:
        return 0.02 * sum(1 for t, level in self.heard if after <= t < before and level > 0.05)

    def hang_up(self) -> None:
        self.channel.send(json.dumps({"type": "hangup"}))

    async def close(self) -> None:
        await self.pc.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


@contextlib.asynccontextmanager
async def browser() -> AsyncIterator[Browser]:
    peer = Browser()
    try:
        yield peer
    finally:
        await peer.close()


def call_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if "CallSession" in repr(t.get_coro())]


async def dev_call(base: str, call_id: str) -> dict[str, Any]:
    """The stored call (Vapi's shape) once the recorder has written its end."""
    async with httpx.AsyncClient(base_url=base) as http:
        for _ in range(100):
            response = await http.get(f"/dev/call/{call_id}")
            if response.status_code == 200 and response.json()["status"] == "ended":
                return dict(response.json())
            await asyncio.sleep(0.05)
    raise AssertionError(f"call {call_id} was not recorded as ended")


async def test_a_dev_mode_browser_call(tmp_path: Path, assistant_file: AssistantFactory) -> None:
    engines = ScriptedEngines(["What are your hours?"], ["We open at nine."], seconds_per_char=0.02)
    app = create_app(settings_for(assistant_file(), tmp_path), engines=engines)
    async with serve(app) as base, browser() as peer:
        response = await peer.call(base)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["type"] == "answer" and answer["pc_id"].startswith("pc_")
        assert "a=candidate" in answer["sdp"] and "a=sendrecv" in answer["sdp"]
        started = await peer.wait_type("call-started")
        greeting = await peer.wait_type("message", role="bot")
        assert greeting["text"] == GREETING and not greeting["interrupted"]
        # The greeting's mark echoes came from the track's clock: it "played" in real time.
        assert greeting["duration"] == pytest.approx(len(GREETING) * 0.02, abs=0.03)
        assert 0.6 < peer.loud_seconds() <= 1.2  # and it arrived here, decoded

        peer.mic.say(SPEECH)
        partial = await peer.wait_type("transcript")
        assert partial["text"] == "What are your hours?"
        turn = await peer.wait_type("turn")
        assert (turn["user"], turn["assistant"]) == ("What are your hours?", "We open at nine.")
        latency = turn["latencyMs"]
        # The 200 ms of silence count in audio or on the wall clock, whichever is longer
        # (frames can arrive in a burst), so the wall-clock wait may come in a little under.
        assert latency["voiceToVoice"] >= latency["endpointing"] >= 150
        assert 0 <= latency["server"] < 50
        assert latency["held"] == 0  # no barge-in, so no backoff held the reply

        peer.hang_up()
        ended = await peer.wait_type("call-ended")
        assert ended["endedReason"] == "customer-ended-call"
        record = await dev_call(base, started["callId"])
        assert record["type"] == "webCall"
        assert [(m["role"], m["message"]) for m in record["messages"]] == [
            ("bot", GREETING),
            ("user", "What are your hours?"),
            ("bot", "We open at nine."),
        ]
        assert record["metadata"]["transport"] == "webrtc"
        assert len(record["artifact"]["performanceMetrics"]["turnLatencies"]) == 1
    calls = app.state.webrtc
    assert calls.opened == calls.closed == 1 and calls.peers == {} and not calls.slots
    assert call_tasks() == []


def band_share(samples: np.ndarray, rate: int, low: float, high: float) -> float:
    """The share of the signal's energy between `low` and `high` Hz."""
    power = np.abs(np.fft.rfft(samples * np.hanning(len(samples)))) ** 2
    freqs = np.fft.rfftfreq(len(samples), 1 / rate)
    return float(power[(freqs >= low) & (freqs <= high)].sum() / power.sum())


async def test_a_browser_call_is_wideband_both_ways(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    """16 kHz PCM16 from the microphone to the STT and from the TTS to the speaker: a 6 kHz
    tone, which an 8 kHz (telephone) path cannot carry, arrives at both ends."""
    engines = ScriptedEngines(["Can you hear this?"], ["Yes, loud and clear."])
    # The voice: a 6 kHz tone, the greeting 0.02 s per character (about 0.9 s).
    engines.tts = ToneTts(0.02, frequency=6000.0)
    app = create_app(settings_for(assistant_file(), tmp_path), engines=engines)
    async with serve(app) as base, browser() as peer:
        assert (await peer.call(base)).status_code == 200
        await peer.wait_type("message", role="bot")
        await asyncio.sleep(0.2)  # the greeting's last frames through the jitter buffer
        heard = np.concatenate(peer.received)
        loud = heard[np.abs(heard) > 0.05]
        assert peer.received_rate == 48000 and len(loud) > 0.5 * 48000
        # The TTS made 6 kHz at 16 kHz; the browser decoded it (Opus, 48 kHz) at level.
        share = band_share(heard, peer.received_rate, 5800, 6200)
        assert share > 0.8, f"only {share:.0%} of what the browser heard is the 6 kHz tone"

        t = np.arange(int(0.8 * 48000)) / 48000
        peer.mic.say_48k((0.3 * 32767 * np.sin(2 * np.pi * 6000 * t)).astype("<i2"))
        await peer.wait_type("turn")
        (stream,) = engines.stt.streams
        # The STT was connected for 16 kHz PCM16 and fed 20 ms frames of it (640 bytes).
        assert stream.audio_format == PCM16_16K
        assert stream.chunk_sizes == {640}
        said = np.frombuffer(bytes(stream.received), dtype="<i2").astype(np.float64)
        assert band_share(said, 16000, 5800, 6200) > 0.8
        frames = said[: len(said) // 320 * 320].reshape(-1, 320)
        levels = np.sqrt(np.mean(frames**2, axis=1))
        voiced = levels[levels > 1000]
        assert len(voiced) >= 30  # most of the 0.8 s, at the level it was said
        assert float(np.median(voiced)) == pytest.approx(0.3 * 32767 / np.sqrt(2), rel=0.3)
        peer.hang_up()
        await peer.wait_type("call-ended")
    # The greeting was cached in the browser's format, apart from the phone's (warmed at start).
    wide = engines.greetings.get(engines.tts, GREETING, PCM16_16K)
    phone = engines.greetings.get(engines.tts, GREETING)
    assert wide is not None and phone is not None
    assert len(wide.audio) == 4 * len(phone.audio)  # twice the rate, twice the bytes a sample


async def test_barge_in_silences_the_assistant_at_once(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    engines = ScriptedEngines(
        ["Tell me about your services.", "Stop, what about the price?"],
        [LONG_REPLY, "Cleanings are eighty dollars."],
        seconds_per_char=0.03,
    )
    app = create_app(settings_for(assistant_file(), tmp_path), engines=engines)
    async with serve(app) as base, browser() as peer:
        assert (await peer.call(base)).status_code == 200
        await peer.wait_type("message", role="bot")
        peer.mic.say(SPEECH)
        await peer.wait_type("message", role="user")
        await asyncio.sleep(1.5)  # well into the long reply
        peer.mic.say(SPEECH)
        spoke = time.monotonic()
        barge = await peer.wait_type("barge-in")
        cut = time.monotonic()
        # Output paused at the onset (audio stops once the ≤ 0.2 s queued has played, plus
        # what a loaded machine's outbound track fell behind: up to ~0.4 s seen in CI); the
        # clear waits for words, and this scripted STT has none: the 0.7 s no-words deadline.
        assert 600 < barge["reactionMs"] < 900
        assert peer.loud_seconds(after=spoke + 0.6, before=cut) == 0.0
        interrupted = await peer.wait_type("message", role="bot", interrupted=True)
        assert LONG_REPLY.startswith(interrupted["text"]) and interrupted["text"] != LONG_REPLY
        # What reaches the browser after the clear is only what was in flight (the receiver's
        # jitter buffer), not what was queued for the track.
        await peer.wait_type("message", role="user", text="Stop, what about the price?")
        reply = await peer.wait_type("message", role="bot", text="Cleanings are eighty dollars.")
        # Without the clear the queued ~200 ms would still arrive (measured: until cut + 0.2 s);
        # with it, the last loud frame arrives about 0.09 s after the event.
        assert peer.loud_seconds(after=cut + 0.15, before=cut + 0.6) == 0.0
        assert reply["duration"] == pytest.approx(29 * 0.03, abs=0.03)
        peer.hang_up()
        await peer.wait_type("call-ended")
    assert app.state.webrtc.opened == app.state.webrtc.closed == 1


async def test_the_assistant_ending_the_call_reaches_the_page(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    engines = ScriptedEngines(
        ["That's all, thanks."], ["Thank you for calling. Goodbye!"], seconds_per_char=0.02
    )
    app = create_app(settings_for(assistant_file(), tmp_path), engines=engines)
    async with serve(app) as base, browser() as peer:
        assert (await peer.call(base)).status_code == 200
        await peer.wait_type("message", role="bot")
        peer.mic.say(SPEECH)
        ended = await peer.wait_type("call-ended")
        assert ended["endedReason"] == "assistant-said-end-call-phrase"
        last = [e for e in peer.events if e["type"] == "message"][-1]
        assert last["text"] == "Thank you for calling. Goodbye!"
        # The server closes the peer connection once the page had time to read the event.
        for _ in range(250):
            if app.state.webrtc.closed == 1:
                break
            await asyncio.sleep(0.02)
        assert app.state.webrtc.closed == 1
    assert call_tasks() == []


async def test_the_browser_going_away_ends_the_call(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    """A closed tab or a reload sends no hangup: the connection's end is the hang-up."""
    engines = ScriptedEngines([], [], seconds_per_char=0.02)
    app = create_app(settings_for(assistant_file(), tmp_path), engines=engines)
    async with serve(app) as base:
        async with browser() as peer:
            assert (await peer.call(base)).status_code == 200
            started = await peer.wait_type("call-started")
            await peer.wait_type("message", role="bot")
        record = await dev_call(base, started["callId"])
        assert record["endedReason"] == "customer-ended-call"
        assert app.state.webrtc.opened == app.state.webrtc.closed == 1
    assert call_tasks() == []


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_web_call_gets_the_webhooks_and_ends_through_the_control_api(
    tmp_path: Path, assistant_file: AssistantFactory, database_url: str
) -> None:
    """Parity with phone calls: the assistant's server gets the same messages and report, and
    `POST /call/{id}/control` `end-call` ends the live call (its tenant only)."""
    engines = ScriptedEngines(["What are your hours?"], ["We open at nine."], seconds_per_char=0.02)
    app = api_app(tmp_path, assistant_file, database_url, engines)
    async with receiver() as hooks, running_api(app) as api, browser() as peer:
        body = {**ASSISTANT, "server": hooks.server()}
        assistant_id = (await api.a.post("/assistant", json=body)).json()["id"]
        key = {"Authorization": f"Bearer {api.key_a}"}
        response = await peer.call(api.base, key, assistantId=assistant_id)
        assert response.status_code == 200, response.text
        call_id = (await peer.wait_type("call-started"))["callId"]
        await peer.wait_type("message", role="bot")
        peer.mic.say(SPEECH)
        await peer.wait_type("turn")
        control = f"/call/{call_id}/control"
        assert (await api.b.post(control, json={"type": "end-call"})).status_code == 404
        assert call_id in api.app.state.calls.live  # another tenant's request changed nothing
        answer = await api.a.post(control, json={"type": "end-call"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "ended"
        assert answer.json()["endedReason"] == "manually-canceled"
        page = await peer.wait_type("call-ended")
        assert page["endedReason"] == "manually-canceled"
        report = await hooks.wait_for(lambda m: m["type"] == "end-of-call-report")
    assert all(signed for _, signed in hooks.received)
    messages = hooks.messages(call_id=call_id)
    assert messages == [m for m, _ in hooks.received]  # every message was about this call
    for message in messages:  # each in the shape Vapi's SDK reads
        assert sdk_parse(message).type == message["type"]
    kinds = [m["type"] for m in messages]
    assert kinds[0] == "status-update" and kinds[-2:] == ["status-update", "end-of-call-report"]
    assert {"speech-update", "conversation-update"} <= set(kinds)
    assert report["endedReason"] == "manually-canceled"
    assert (
        report["transcript"] == f"AI: {ASSISTANT['firstMessage']}\nUser: What are your hours?"
        "\nAI: We open at nine."
    )
    call = report["call"]
    assert call["type"] == "webCall" and call["orgId"] == api.tenant_a
    assert call["assistantId"] == assistant_id and "phoneCallProvider" not in call
    assert report["costs"][0]["provider"] == "webrtc"
    assert app.state.webrtc.opened == app.state.webrtc.closed == 1
    assert call_tasks() == []


async def test_a_browser_call_renders_the_assistants_variables(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    engines = ScriptedEngines([], [], seconds_per_char=0.01)
    assistant = assistant_file(
        firstMessage="Hi {{ name }}, it is {{ year }}.{{ nobody }}",
        variableValues={"name": "Ada"},
    )
    app = create_app(settings_for(assistant, tmp_path), engines=engines)
    async with serve(app) as base, browser() as peer:
        assert (await peer.call(base)).status_code == 200
        started = await peer.wait_type("call-started")
        greeting = await peer.wait_type("message", role="bot")
        year = str(datetime.now(UTC).year)
        assert greeting["text"] == f"Hi Ada, it is {year}."
        assert engines.tts.requests[-1] == f"Hi Ada, it is {year}."
        peer.hang_up()
        await peer.wait_type("call-ended")
        record = await dev_call(base, started["callId"])
    # said, not kept: a per-call greeting would crowd the shared cache out
    assert engines.greetings.get(engines.tts, greeting["text"], PCM16_16K) is None
    assert record["messages"][0]["message"] == f"Hi Ada, it is {year}."
