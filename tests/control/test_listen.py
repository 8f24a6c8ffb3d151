"""`monitor.listenUrl` on real sockets: an outbound call placed through (fake) Twilio, its media
stream on a real websocket with a phone that sends a caller tone; a listener with the tenant's
key (or a signed token) hears the start message, then stereo PCM whose caller channel carries
the tone; another tenant is refused like a 404; the end of the call closes the listener. Across
nodes: the call on node A, the listener on node B, relayed through the machine's Redis."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import websockets
from fastapi import FastAPI
from websockets.asyncio.client import ClientConnection

from benchmarks.fakes.server import serve as serve_fake
from benchmarks.fakes.twilio_rest import FakeTwilioRest, FakeTwilioRestConfig
from control.app import create_app
from control.listen import (
    CLOSE_ENDED,
    CLOSE_FORBIDDEN,
    CLOSE_NOT_FOUND,
    CLOSE_UNAUTHORIZED,
    sign_listen,
)
from media.twilio.caller import parse_twiml
from media.twilio.phone import PhoneLine
from media.twilio.signature import compute_signature
from tests.conftest import AssistantFactory, ScriptedEngines, migrated_sqlite, serve, settings_for
from tests.control.conftest import ASSISTANT, AUTH_TOKEN, NUMBER, Api, running_api
from voice.testing import tone_ulaw

pytestmark = pytest.mark.timeout(60)

ACCOUNT = NUMBER["twilioAccountSid"]
CUSTOMER = "+15557654321"
TONE_HZ = 600.0
TONE = tone_ulaw(30.0, frequency=TONE_HZ)  # the caller's side, sent until the call ends


@dataclass
class Call:
    id: str
    phone: ClientConnection  # Twilio's side of the media stream
    tasks: list[asyncio.Task[None]]


async def _phone(ws: ClientConnection, line: PhoneLine) -> None:
    """Twilio: the caller's tone every 20 ms; marks echoed once what came before has played."""
    loop = asyncio.get_running_loop()
    reading = asyncio.create_task(_read_phone(ws, line))
    try:
        start, sent = loop.time(), 0
        while sent + 160 <= len(TONE):
            for message in line.due_messages(loop.time()):
                await ws.send(message)
            await ws.send(line.media(TONE[sent : sent + 160], loop.time()))
            sent += 160
            await asyncio.sleep(max(0.0, start + sent / 8000 - loop.time()))
    finally:
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
            await reading


async def _read_phone(ws: ClientConnection, line: PhoneLine) -> None:
    loop = asyncio.get_running_loop()
    async for text in ws:
        assert isinstance(text, str)
        line.receive_text(text, loop.time())


@contextlib.asynccontextmanager
async def placed_call(api: Api, fake: FakeTwilioRest, **assistant: Any) -> AsyncIterator[Call]:
    """An outbound call of tenant A, its media stream connected and the caller's tone flowing."""
    created = await api.a.post("/assistant", json={**ASSISTANT, **assistant})
    number = await api.a.post("/phone-number", json=NUMBER)
    body = {
        "assistantId": created.json()["id"],
        "phoneNumberId": number.json()["id"],
        "customer": {"number": CUSTOMER},
    }
    call = (await api.a.post("/call", json=body)).json()
    sid = list(fake.calls)[-1]
    stream = parse_twiml(fake.calls[sid].twiml or "")
    headers = {"X-Twilio-Signature": compute_signature(AUTH_TOKEN, stream.url, {})}
    line = PhoneLine(call_sid=sid, custom_parameters=stream.parameters)
    async with websockets.connect(stream.url, additional_headers=headers) as ws:
        loop = asyncio.get_running_loop()
        await ws.send(line.connected(loop.time()))
        await ws.send(line.start(loop.time()))
        phone = asyncio.create_task(_phone(ws, line))
        try:
            await _until(lambda: call["id"] in api.app.state.ava.calls.live, "the call is live")
            yield Call(call["id"], ws, [phone])
        finally:
            phone.cancel()
            with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
                await phone


async def _until(check: Any, what: str, seconds: float = 10.0) -> None:
    for _ in range(round(seconds / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never happened: {what}")


def _ws(base: str, call_id: str, query: str = "") -> str:
    return base.replace("http://", "ws://", 1) + f"/call/{call_id}/listen{query}"


async def _heard(ws: ClientConnection, seconds: float) -> tuple[dict[str, Any], bytes]:
    """The start message, then at least `seconds` of audio."""
    start = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert isinstance(start, dict)
    want = round(seconds * start["sampleRate"]) * 2 * start["channels"]
    audio = bytearray()
    async with asyncio.timeout(10):
        while len(audio) < want:
            frame = await ws.recv()
            assert isinstance(frame, bytes)
            audio += frame
    return start, bytes(audio)


def _peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64)))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(spectrum.argmax())])


async def _refused(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    async with websockets.connect(url, additional_headers=headers or {}) as ws:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
    rcvd = closed.value.rcvd
    assert rcvd is not None
    return rcvd.code, rcvd.reason


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def twilio() -> AsyncIterator[tuple[FakeTwilioRest, str]]:
    fake = FakeTwilioRest(FakeTwilioRestConfig(accounts={ACCOUNT: AUTH_TOKEN}))
    async with serve_fake(fake.app) as base:
        yield fake, base


async def test_a_live_call_is_heard_with_the_tenant_key_or_a_token(
    tmp_path: Path, assistant_file: AssistantFactory, twilio: tuple[FakeTwilioRest, str]
) -> None:
    fake, twilio_base = twilio
    settings = settings_for(
        assistant_file(), tmp_path, database_url=migrated_sqlite(tmp_path / "db"),
        twilio_api_base_url=twilio_base,
    )  # fmt: skip
    app = create_app(settings, engines=ScriptedEngines([], []))
    async with running_api(app) as api:
        # Not recorded: the call is tapped for listening all the same.
        async with placed_call(api, fake, artifactPlan={"recordingEnabled": False}) as call:
            shown = (await api.a.get(f"/call/{call.id}")).json()["monitor"]
            url = shown["listenUrl"]
            assert url == _ws(api.base, call.id)

            async with websockets.connect(url, additional_headers=_bearer(api.key_a)) as ws:
                start, audio = await _heard(ws, 1.0)
            assert start == {
                "type": "start", "callId": call.id, "sampleRate": 8000, "channels": 2,
                "encoding": "pcm_s16le", "layout": ["customer", "assistant"],
            }  # fmt: skip
            caller = np.frombuffer(audio, "<i2")[0::2]
            assert np.abs(caller).max() > 1000  # the tone, not silence
            assert abs(_peak_hz(caller, 8000) - TONE_HZ) < 20

            # the mono mix, by a signed token (browsers cannot send the key)
            minted = await api.a.post(f"/call/{call.id}/listen-token")
            assert minted.status_code == 200, minted.text
            token_url = minted.json()["listenUrl"]
            assert token_url.startswith(url + "?token=")
            async with websockets.connect(token_url + "&channels=mixed") as ws:
                start, audio = await _heard(ws, 0.5)
            assert start["channels"] == 1 and start["layout"] == ["mixed"]
            assert abs(_peak_hz(np.frombuffer(audio, "<i2"), 8000) - TONE_HZ) < 20

            # another tenant: as if there were no such call; no key, a bad or foreign token
            assert (await _refused(url, _bearer(api.key_b)))[0] == CLOSE_NOT_FOUND
            assert (await api.b.post(f"/call/{call.id}/listen-token")).status_code == 404
            assert (await _refused(url))[0] == CLOSE_UNAUTHORIZED
            assert (await _refused(url + "?token=x.y"))[0] == CLOSE_FORBIDDEN
            other, _ = sign_listen(settings, "call_other", api.tenant_a, time.time())
            assert (await _refused(url + f"?token={other}"))[0] == CLOSE_FORBIDDEN
            expired, _ = sign_listen(settings, call.id, api.tenant_a, time.time() - 10_000)
            assert (await _refused(url + f"?token={expired}"))[0] == CLOSE_UNAUTHORIZED
            assert (await _refused(_ws(api.base, "nope"), _bearer(api.key_a)))[0] == 4404

            # the call ends: a listener still connected is closed normally
            async with websockets.connect(url, additional_headers=_bearer(api.key_a)) as ws:
                await _heard(ws, 0.1)
                ended = await api.a.post(f"/call/{call.id}/control", json={"type": "end-call"})
                assert ended.status_code == 200, ended.text
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    async with asyncio.timeout(10):
                        while True:
                            await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == CLOSE_ENDED
        # and a listener arriving afterwards is told the call is not live
        code, reason = await _refused(url, _bearer(api.key_a))
        assert code == 4409 and "not live" in reason


@pytest.mark.redis
async def test_a_call_on_one_node_is_heard_through_another(
    tmp_path: Path,
    assistant_file: AssistantFactory,
    twilio: tuple[FakeTwilioRest, str],
    redis_url: str,
) -> None:
    fake, twilio_base = twilio
    assistant, database = assistant_file(), migrated_sqlite(tmp_path / "shared")

    def node(name: str) -> FastAPI:
        settings = settings_for(
            assistant, tmp_path / name, database_url=database, redis_url=redis_url,
            node_id=f"{name}-{uuid.uuid4().hex[:6]}", twilio_api_base_url=twilio_base,
        )  # fmt: skip
        return create_app(settings, engines=ScriptedEngines([], []))

    node_b = node("b")
    async with serve(node_b) as base_b, running_api(node("a")) as a:
        async with placed_call(a, fake) as call:
            async with httpx.AsyncClient(base_url=base_b, headers=_bearer(a.key_a)) as b:
                # B knows the call from the database once A has written it live
                for _ in range(250):
                    record = (await b.get(f"/call/{call.id}")).json()
                    if record.get("status") == "in-progress":
                        break
                    await asyncio.sleep(0.02)
                assert record["status"] == "in-progress"
            url = _ws(base_b, call.id)
            async with websockets.connect(url, additional_headers=_bearer(a.key_a)) as ws:
                start, audio = await _heard(ws, 1.0)
                assert start["sampleRate"] == 8000 and start["channels"] == 2
                caller = np.frombuffer(audio, "<i2")[0::2]
                assert abs(_peak_hz(caller, 8000) - TONE_HZ) < 20
                assert (await _refused(url, _bearer(a.key_b)))[0] == CLOSE_NOT_FOUND
                # A stops publishing to nobody: the end of the call reaches B's listener
                ended = await a.a.post(f"/call/{call.id}/control", json={"type": "end-call"})
                assert ended.status_code == 200, ended.text
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    async with asyncio.timeout(10):
                        while True:
                            await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == CLOSE_ENDED


class _StuckSocket:
    """Starlette's `WebSocket` as a listener that stopped reading: sends never complete."""

    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.closed: tuple[int, str] | None = None
        self.stuck = asyncio.Event()

    async def send_json(self, data: Any) -> None:
        self.sent.append(data)

    async def send_bytes(self, data: bytes) -> None:
        self.stuck.set()
        await asyncio.Event().wait()

    async def receive(self) -> dict[str, Any]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def close(self, code: int, reason: str = "") -> None:
        self.closed = (code, reason)


async def test_a_listener_that_stops_reading_is_dropped_and_the_call_never_waits() -> None:
    from control.listen import CLOSE_TOO_SLOW, _stream
    from voice.listen_tap import ListenTap

    tap = ListenTap("call_1", "t1", 8000, max_seconds=0.2)
    stuck, fine = tap.listen(), tap.listen()
    socket = _StuckSocket()
    streaming = asyncio.create_task(_stream(socket, stuck, "call_1", 8000))  # type: ignore[arg-type]
    chunk = b"\x01\x00" * 320  # 20 ms of stereo
    tap.write(chunk)
    assert fine.take() == chunk
    await asyncio.wait_for(socket.stuck.wait(), 5)  # the listener's socket takes no more
    started = time.monotonic()
    for _ in range(100):  # 2 s of the call's audio, written at once: never waits on anyone
        tap.write(chunk)
        assert fine.take() == chunk
    assert time.monotonic() - started < 0.5
    assert stuck.overflowed and stuck not in tap.listeners and fine in tap.listeners
    await asyncio.wait_for(streaming, 5)  # the blocked send gives up
    assert socket.sent[0]["type"] == "start"
    assert socket.closed is not None and socket.closed[0] == CLOSE_TOO_SLOW
