"""Whole calls over real sockets: the app, the Twilio protocol on both sides, scripted engines.

The engines are scripted (tone "speech", an energy VAD, canned transcripts and replies) so these
tests exercise the call loop, pacing, marks, barge-in and endings quickly; tests/e2e repeats the
main paths with the real offline engines and real speech.
"""

from __future__ import annotations

import asyncio
import base64
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import httpx
import pytest
import websockets

from control.app import create_app
from control.twilio_routes import MAX_DRAIN_REDIRECTS
from media.twilio.caller import CallScript, parse_twiml, place_call
from media.twilio.phone import PhoneLine
from media.twilio.signature import compute_signature
from tests.conftest import (
    AssistantFactory,
    ScriptedEngines,
    heard_after_barge_in,
    serve,
    settings_for,
)
from voice.errors import ProviderError
from voice.testing import tone_ulaw
from voice.types import LlmDelta

pytestmark = pytest.mark.timeout(60)

SPEECH = tone_ulaw(0.8, frequency=300.0)  # "speech" for the energy VAD and scripted STT
LONG_REPLY = (
    "Our clinic offers cleanings, fillings, crowns, whitening and emergency care, and we take "
    "most insurance plans, so let me walk you through each of them in turn."
)


async def open_stream(base: str, call_sid: str = "CA" + "1" * 32) -> tuple[str, PhoneLine]:
    """Ask the voice webhook for a stream; returns its URL and a phone line for that call."""
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{base}/twilio/voice", data={"CallSid": call_sid, "From": "+15550001111"}
        )
    assert response.status_code == 200
    stream = parse_twiml(response.text)
    return stream.url, PhoneLine(call_sid=call_sid, custom_parameters=stream.parameters)


async def dev_record(base: str, key: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        for _ in range(50):
            response = await http.get(f"{base}/dev/calls/{key}")
            if response.status_code == 200 and response.json()["status"] == "ended":
                return dict(response.json())
            await asyncio.sleep(0.1)
    raise AssertionError(f"no ended record for {key}")


def call_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if "CallSession" in repr(t.get_coro())]


async def test_two_turn_conversation(tmp_path: Path, assistant_file: AssistantFactory) -> None:
    engines = ScriptedEngines(
        ["What are your opening hours?", "Where are you located?"],
        ["We open at nine.", "Twelve Main Street."],
        seconds_per_char=0.02,
    )
    app = create_app(settings_for(assistant_file(), tmp_path), engines=engines)
    async with serve(app) as base:
        report = await place_call(base, CallScript([SPEECH, SPEECH]))
        assert report.error is None, report.error
        assert report.greeting_latency is not None and report.greeting_latency < 0.15
        assert len(report.turns) == 2
        for turn in report.turns:
            assert turn.voice_to_voice is not None and 0.1 < turn.voice_to_voice < 1.0
        record = report.record
        assert record is not None
        assert record["ended_reason"] == "customer-ended-call"
        roles = [(m["role"], m["message"]) for m in record["messages"]]
        assert roles == [
            ("bot", "Hello, this is Ava. How can I help you today?"),
            ("user", "What are your opening hours?"),
            ("bot", "We open at nine."),
            ("user", "Where are you located?"),
            ("bot", "Twelve Main Street."),
        ]
        latency = record["turns"][0]["latency"]
        # At least the VAD's 0.2 s of silence, measured in audio: frames that arrive early or
        # in a burst make the clock's share a little shorter.
        assert latency["voice_to_voice"] >= latency["endpointing"] >= 0.15
        assert 0 <= latency["server"] < 0.1
        # the LLM saw the conversation so far, system prompt first
        second = engines.llm.requests[1]
        assert second[0].role == "system"
        assert [m.content for m in second[1:]] == [
            "Hello, this is Ava. How can I help you today?",
            "What are your opening hours?",
            "We open at nine.",
            "Where are you located?",
        ]
        assert app.state.ava.calls.live == {}
        assert call_tasks() == []


async def test_barge_in_clears_and_truncates(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    engines = ScriptedEngines(
        ["Tell me about your services.", "Stop, what about the price?"],
        [LONG_REPLY, "Cleanings are eighty dollars."],
        seconds_per_char=0.03,
    )
    app = create_app(settings_for(assistant_file(), tmp_path), engines=engines)
    async with serve(app) as base:
        report = await place_call(base, CallScript([SPEECH, SPEECH], barge_in_after=1.5))
        assert report.error is None, report.error
        assert report.clears == 1
        # Output pauses at the onset: the caller stops hearing the assistant once the ≤ 0.2 s
        # queued at the phone has played, long before the words decide (this scripted STT has
        # no interim words, so the clear waits for the no-words deadline, 0.7 s).
        assert heard_after_barge_in(report) < 0.3
        reaction = report.barge_in_reaction
        assert reaction is not None and 0.6 < reaction < 0.9
        record = report.record
        assert record is not None
        bot = [m for m in record["messages"] if m["role"] == "bot"]
        interrupted = bot[1]
        assert interrupted["interrupted"] is True
        heard = interrupted["message"]
        assert heard and LONG_REPLY.startswith(heard) and len(heard) < len(LONG_REPLY) / 2
        assert 1.2 < interrupted["duration"] < 2.0  # ~1.5 s played before the caller cut in
        assert bot[2]["message"] == "Cleanings are eighty dollars."
        assert record["barge_ins"][0]["heard"] == heard
        # the next LLM request carries the truncated reply, not the whole one
        assert engines.llm.requests[1][-2].content == heard


async def test_hang_up_mid_reply(tmp_path: Path, assistant_file: AssistantFactory) -> None:
    engines = ScriptedEngines(["Tell me about your services."], [LONG_REPLY], seconds_per_char=0.03)
    app = create_app(settings_for(assistant_file(), tmp_path), engines=engines)
    async with serve(app) as base:
        report = await place_call(base, CallScript([SPEECH], hang_up_after=1.0))
        record = report.record
        assert record is not None
        assert record["ended_reason"] == "customer-ended-call"
        last = record["messages"][-1]
        assert last["role"] == "bot" and last["interrupted"] is True
        assert LONG_REPLY.startswith(last["message"]) and last["message"] != LONG_REPLY
        assert app.state.ava.calls.live == {}
        assert call_tasks() == []


async def test_assistant_ends_call_with_end_phrase(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    engines = ScriptedEngines(
        ["That's all, thanks."], ["Thank you for calling. Goodbye!"], seconds_per_char=0.02
    )
    app = create_app(settings_for(assistant_file(), tmp_path), engines=engines)
    async with serve(app) as base:
        url, line = await open_stream(base)
        closed: int | None = None
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        async with websockets.connect(url) as ws:
            await ws.send(line.connected())
            await ws.send(line.start(0.0))

            async def listen() -> None:
                async for text in ws:
                    assert isinstance(text, str)
                    line.receive_text(text, loop.time() - t0)

            listener = asyncio.create_task(listen())
            frames = [SPEECH[i : i + 160] for i in range(0, len(SPEECH), 160)]
            for n in range(400):
                now = loop.time() - t0
                frame = frames[n - 100] if 100 <= n < 100 + len(frames) else b"\xff" * 160
                try:
                    await ws.send(line.media(frame, now))
                    for message in line.due_messages(now):
                        await ws.send(message)
                except websockets.ConnectionClosed as exc:
                    closed = exc.rcvd.code if exc.rcvd else None
                    break
                await asyncio.sleep(max(0.0, (n + 1) * 0.02 - (loop.time() - t0)))
            listener.cancel()
        assert closed == 1000
        record = await dev_record(base, line.call_sid)
        assert record["ended_reason"] == "assistant-said-end-call-phrase"
        assert record["messages"][-1]["message"] == "Thank you for calling. Goodbye!"


MALFORMED = {
    "invalid json": lambda line: ["{not json"],
    "bad base64": lambda line: [
        json.dumps(
            {
                "event": "media",
                "sequenceNumber": "3",
                "streamSid": line.stream_sid,
                "media": {"track": "inbound", "chunk": "1", "timestamp": "0", "payload": "%%%"},
            }
        )
    ],
    "unknown streamSid": lambda line: [
        line.media(b"\xff" * 160, 0.0).replace(line.stream_sid, "MZx")
    ],
    "oversized frame": lambda line: [
        line.media(b"\xff" * 160, 0.0).replace('"payload":"', '"payload":"' + "A" * 70_000)
    ],
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
async def test_malformed_frames_close_with_1008_and_a_record(
    case: str, tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    engines = ScriptedEngines([], [])
    app = create_app(settings_for(assistant_file(), tmp_path), engines=engines)
    async with serve(app) as base:
        url, line = await open_stream(base)
        async with websockets.connect(url, max_size=None) as ws:
            await ws.send(line.connected())
            await ws.send(line.start(0.0))
            for text in MALFORMED[case](line):
                await ws.send(text)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                async with asyncio.timeout(5):
                    async for _ in ws:
                        pass
                    raise websockets.ConnectionClosed(ws.close_rcvd, ws.close_sent)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        record = await dev_record(base, line.call_sid)
        assert record["ended_reason"] == "call.in-progress.error-malformed-media-stream"
        assert "malformed" in record["ended_detail"]
        assert call_tasks() == []


async def test_media_before_start_is_rejected(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    app = create_app(settings_for(assistant_file(), tmp_path), engines=ScriptedEngines([], []))
    async with serve(app) as base:
        url, _ = await open_stream(base)
        async with websockets.connect(url) as ws:
            await ws.send(
                json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})
            )
            payload = base64.b64encode(b"\xff" * 160).decode()
            await ws.send(
                json.dumps(
                    {
                        "event": "media",
                        "sequenceNumber": "2",
                        "streamSid": "MZ1",
                        "media": {
                            "track": "inbound",
                            "chunk": "1",
                            "timestamp": "0",
                            "payload": payload,
                        },
                    }
                )
            )
            await asyncio.wait_for(ws.wait_closed(), 5)
            assert ws.close_code == 1008
        records = list(app.state.ava.calls.records.values())
        assert records[-1].ended_reason == "call.in-progress.error-malformed-media-stream"


async def test_stream_token_is_required(tmp_path: Path, assistant_file: AssistantFactory) -> None:
    app = create_app(settings_for(assistant_file(), tmp_path), engines=ScriptedEngines([], []))
    async with serve(app) as base:
        url, real = await open_stream(base, call_sid="CA" + "2" * 32)
        params = real.custom_parameters
        forged = {"ava_token": params["ava_token"][:-4] + "AAAA"}
        for parameters in ({}, forged, params):  # the real token is for another CallSid
            line = PhoneLine(custom_parameters=parameters)
            async with websockets.connect(url) as ws:
                await ws.send(line.connected())
                await ws.send(line.start(0.0))
                await asyncio.wait_for(ws.wait_closed(), 5)
                assert ws.close_code == 1008
        assert app.state.ava.calls.live == {}


async def test_twilio_signatures_checked_when_configured(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    token = "test-auth-token"
    # Outside dev mode the assistant file answers unknown numbers only when the operator says so.
    settings = settings_for(
        assistant_file(), tmp_path, twilio_auth_token=token, unknown_numbers="assistant-file"
    )
    engines = ScriptedEngines(["Hello?"], ["Hi there."], seconds_per_char=0.01)
    app = create_app(settings, engines=engines)
    async with serve(app) as base:
        async with httpx.AsyncClient() as http:
            form = {"CallSid": "CA" + "3" * 32, "From": "+15550001111"}
            unsigned = await http.post(f"{base}/twilio/voice", data=form)
            assert unsigned.status_code == 403
            wrong = compute_signature("other-token", f"{base}/twilio/voice", form)
            forged = await http.post(
                f"{base}/twilio/voice", data=form, headers={"X-Twilio-Signature": wrong}
            )
            assert forged.status_code == 403
            good = compute_signature(token, f"{base}/twilio/voice", form)
            signed = await http.post(
                f"{base}/twilio/voice", data=form, headers={"X-Twilio-Signature": good}
            )
            assert signed.status_code == 200
        ws_url = parse_twiml(signed.text).url
        with pytest.raises(websockets.InvalidStatus):
            async with websockets.connect(ws_url):
                pass
        report = await place_call(base, CallScript([SPEECH]), auth_token=token)
        assert report.error is None and report.ok


async def test_twiml_uses_public_url(tmp_path: Path, assistant_file: AssistantFactory) -> None:
    settings = settings_for(assistant_file(), tmp_path, public_url="https://voice.example.com")
    app = create_app(settings, engines=ScriptedEngines([], []))
    async with serve(app) as base:
        async with httpx.AsyncClient() as http:
            response = await http.post(f"{base}/twilio/voice", data={"CallSid": "CA1"})
        assert response.headers["content-type"].startswith("text/xml")
        stream = parse_twiml(response.text)
        assert stream.url == "wss://voice.example.com/twilio/media"
        assert set(stream.parameters) == {"ava_token"}
        assert "?" not in stream.url


async def test_sigterm_drains_then_hangs_up_with_server_shutdown(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    engines = ScriptedEngines(["Tell me everything."], [LONG_REPLY], seconds_per_char=0.05)
    app = create_app(settings_for(assistant_file(), tmp_path), engines=engines)
    async with serve(app, drain_seconds=0.5) as base:
        call = asyncio.create_task(place_call(base, CallScript([SPEECH]), fetch_record=False))
        await asyncio.sleep(2.0)  # the greeting, then the caller's question and the reply
        assert app.state.calls.live
        app.state.server.handle_exit(signal.SIGTERM, None)
        async with httpx.AsyncClient() as http:
            ready = await http.get(f"{base}/readyz")
            moved = await http.post(f"{base}/twilio/voice", data={"CallSid": "CA9"})
            again = await http.post(f"{base}/twilio/voice?ava_redirects=2", data={"CallSid": "CA9"})
            refused = await http.post(
                f"{base}/twilio/voice?ava_redirects={MAX_DRAIN_REDIRECTS}", data={"CallSid": "CA9"}
            )
        assert ready.status_code == 503
        # a new call goes back to the service's URL (the balancer sends it to a live node), a
        # bounded number of times; then Twilio's fallback URL (503)
        assert moved.status_code == 200 and moved.headers["content-type"].startswith("text/xml")
        target = ElementTree.fromstring(moved.text).find("Redirect")
        assert target is not None and target.get("method") == "POST"
        assert target.text == f"{base}/twilio/voice?ava_redirects=1"
        assert "ava_redirects=3" in again.text
        assert refused.status_code == 503
        report = await asyncio.wait_for(call, 10)
        assert report.error is None
    record = next(iter(app.state.calls.records.values()))
    assert record.ended_reason == "call.in-progress.error-server-shutdown"
    assert call_tasks() == []


async def test_max_duration_ends_the_call(tmp_path: Path, assistant_file: AssistantFactory) -> None:
    engines = ScriptedEngines([], [], seconds_per_char=0.01)
    app = create_app(settings_for(assistant_file(), tmp_path), engines=engines)
    async with serve(app) as base:
        state = app.state.ava
        # Vapi's lower bound is 10 s; a copy skips validation to keep the test short.
        state.assistants["default"] = state.default_assistant.model_copy(
            update={"max_duration_seconds": 1.5}
        )
        report = await place_call(base, CallScript([], max_seconds=10))
        assert report.record is not None
        assert report.record["ended_reason"] == "exceeded-max-duration"


class BrokenLlm:
    name = "broken-llm"

    async def stream(self, messages: object) -> AsyncIterator[LlmDelta]:
        raise ProviderError(self.name, "HTTP 500 from upstream", retryable=True)
        yield LlmDelta()  # an async generator that fails on first use


async def test_fatal_provider_error_closes_1011_with_a_record(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    engines = ScriptedEngines(["Hello?"], [], seconds_per_char=0.01)
    engines.llm = BrokenLlm()  # type: ignore[assignment]
    app = create_app(settings_for(assistant_file(), tmp_path), engines=engines)
    async with serve(app) as base:
        url, line = await open_stream(base)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        async with websockets.connect(url) as ws:
            await ws.send(line.connected())
            await ws.send(line.start(0.0))
            frames = [SPEECH[i : i + 160] for i in range(0, len(SPEECH), 160)]

            async def listen() -> None:
                async for text in ws:
                    assert isinstance(text, str)
                    line.receive_text(text, loop.time() - t0)

            listener = asyncio.create_task(listen())
            with pytest.raises(websockets.ConnectionClosed):
                for n in range(500):
                    now = loop.time() - t0
                    frame = frames[n - 80] if 80 <= n < 80 + len(frames) else b"\xff" * 160
                    await ws.send(line.media(frame, now))
                    for message in line.due_messages(now):
                        await ws.send(message)
                    await asyncio.sleep(max(0.0, (n + 1) * 0.02 - (loop.time() - t0)))
            listener.cancel()
            assert ws.close_code == 1011
        record = await dev_record(base, line.call_sid)
        assert record["ended_reason"] == "pipeline-error-model-failed"
        assert record["errors"][0]["stage"] == "llm"
        assert "HTTP 500" in record["errors"][0]["error"]
