"""`monitor.listenUrl` on real sockets: an outbound call placed through (fake) Twilio, its media
stream on a real websocket with a phone that sends a caller tone; a listener with the tenant's
key (or a signed token) hears the start message, then stereo PCM whose caller channel carries
the tone; another tenant is refused like a 404; the end of the call closes the listener. Across
nodes: the call on node A, the listener on node B, relayed through the machine's Redis. Node B's
remote listeners share one subscription connection (seen in CLIENT LIST and PUBSUB NUMSUB): each
hears only its call, a slow one is dropped while a fast one hears everything, the last to leave
unsubscribes, and a killed connection closes them with 4503 before the next listener reconnects."""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest
import websockets
from fastapi import FastAPI
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection

from benchmarks.fakes.server import serve as serve_fake
from benchmarks.fakes.twilio_rest import FakeTwilioRest, FakeTwilioRestConfig
from control.app import create_app
from control.listen import (
    CLOSE_ENDED,
    CLOSE_FORBIDDEN,
    CLOSE_NOT_FOUND,
    CLOSE_TOO_SLOW,
    CLOSE_UNAUTHORIZED,
    CLOSE_UNAVAILABLE,
    ListenHub,
    _close,
    _listen_elsewhere,
    _Refused,
    sign_listen,
)
from control.listen_relay import AUDIO, END, subscriber_name
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
    from control.listen import _stream
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


# --- the shared subscription: a node's remote listeners on one Redis connection -----------------


class _Client:
    """Starlette's `WebSocket` as a listener's client: keeps what it is sent. A `stuck` one stops
    reading (its sends never complete); `hang_up` is the client closing the socket."""

    def __init__(self, *, stuck: bool = False) -> None:
        self.start: dict[str, Any] | None = None
        self.audio = bytearray()
        self.closed: tuple[int, str] | None = None
        self.stuck = stuck
        self._gone = asyncio.Event()

    async def send_json(self, data: Any) -> None:
        self.start = data

    async def send_bytes(self, data: bytes) -> None:
        if self.stuck:
            await asyncio.Event().wait()
        self.audio += data

    async def receive(self) -> dict[str, Any]:
        await self._gone.wait()
        return {"type": "websocket.disconnect", "code": 1000}

    def hang_up(self) -> None:
        self._gone.set()

    async def close(self, code: int, reason: str = "") -> None:
        self.closed = (code, reason)

    def samples(self) -> set[int]:
        return {int(s) for s in np.frombuffer(bytes(self.audio), "<i2")}


class _Calls:
    """The call store of a node that does not hold the call: live on node A."""

    async def get_call(self, tenant_id: str | None, call_id: str, *, details: bool) -> Any:
        return SimpleNamespace(status="in-progress", node_id="node-a")


_STATE = SimpleNamespace(stores=SimpleNamespace(calls=_Calls()))


async def _listen_remote(hub: ListenHub, call_id: str, client: _Client) -> None:
    """The listen route, past authentication, for a call held by node A."""
    try:
        await _listen_elsewhere(client, _STATE, hub, call_id, "t1", False)  # type: ignore[arg-type]
    except _Refused as refused:
        await _close(client, refused.code, refused.reason)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def relay_hub(redis_url: str, buffer_seconds: float = 2.0) -> AsyncIterator[ListenHub]:
    """Node B's hub, its relay tasks running, on a key prefix of its own (Redis is shared)."""
    hub = ListenHub(
        f"b-{uuid.uuid4().hex[:8]}", buffer_seconds=buffer_seconds, redis_url=redis_url,
        prefix=f"ava-test:{uuid.uuid4().hex}:",
    )  # fmt: skip
    running = asyncio.create_task(hub.run())
    try:
        assert hub.subscriber is not None
        subscriber = hub.subscriber
        await _until(lambda: subscriber.running, "the relay runs")
        yield hub
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await hub.aclose()


@contextlib.asynccontextmanager
async def admin_redis(redis_url: str) -> AsyncIterator[Redis]:
    admin = Redis.from_url(redis_url)
    try:
        yield admin
    finally:
        await admin.aclose()


def _chunk(value: int, frames: int = 160) -> bytes:
    """20 ms of stereo audio at 8 kHz as node A publishes it, every sample `value`."""
    return AUDIO + struct.pack("<I", 8000) + np.full(frames * 2, value, "<i2").tobytes()


async def _subscribers(admin: Redis, hub: ListenHub, call_id: str) -> int:
    ((_, count),) = await admin.pubsub_numsub(hub.channel(call_id))
    return int(count)


async def _until_subscribers(admin: Redis, hub: ListenHub, call_id: str, want: int) -> None:
    for _ in range(250):
        if await _subscribers(admin, hub, call_id) == want:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"NUMSUB of {call_id} never became {want}")


async def _connections(admin: Redis, hub: ListenHub) -> list[dict[str, Any]]:
    """The node's subscriber connections as Redis sees them (CLIENT LIST)."""
    name = subscriber_name(hub.node_id)
    return [c for c in await admin.client_list() if c.get("name") == name]


@pytest.mark.redis
async def test_remote_listeners_share_one_connection_and_hear_only_their_call(
    redis_url: str,
) -> None:
    async with relay_hub(redis_url) as hub, admin_redis(redis_url) as admin:
        one, two = "call_one", "call_two"
        clients = {one: [_Client() for _ in range(5)], two: [_Client() for _ in range(3)]}
        listening = {
            call: [asyncio.create_task(_listen_remote(hub, call, c)) for c in group]
            for call, group in clients.items()
        }
        await _until(lambda: hub.remote_listeners == 8, "all eight joined")
        await _until_subscribers(admin, hub, one, 1)
        await _until_subscribers(admin, hub, two, 1)
        (connection,) = await _connections(admin, hub)  # eight listeners, one connection
        assert connection["sub"] == "2"  # subscribed to the two calls' channels, once each

        for _ in range(10):
            await admin.publish(hub.channel(one), _chunk(100))
            await admin.publish(hub.channel(two), _chunk(-200))
            await asyncio.sleep(0.02)
        everyone = [c for group in clients.values() for c in group]
        await _until(lambda: all(len(c.audio) == 10 * 640 for c in everyone), "all audio")
        for call, value in ((one, 100), (two, -200)):
            for client in clients[call]:
                assert client.start is not None and client.start["callId"] == call
                assert client.start["sampleRate"] == 8000 and client.start["channels"] == 2
                assert client.samples() == {value}  # its own call's audio, nothing else

        # node A ends call one: its listeners are closed, and the last one out unsubscribes
        await admin.publish(hub.channel(one), END)
        async with asyncio.timeout(5):
            await asyncio.gather(*listening[one])
        assert all(c.closed == (CLOSE_ENDED, "call ended") for c in clients[one])
        await _until_subscribers(admin, hub, one, 0)
        assert await _subscribers(admin, hub, two) == 1

        # call two's listeners hang up one by one; it stays subscribed until the last is gone
        for client, task in zip(clients[two], listening[two], strict=True):
            assert await _subscribers(admin, hub, two) == 1
            client.hang_up()
            await asyncio.wait_for(task, 5)
        await _until_subscribers(admin, hub, two, 0)
        assert hub.remote_listeners == 0
        (idle,) = await _connections(admin, hub)  # kept for the next listener
        assert idle["id"] == connection["id"] and idle["sub"] == "0"


@pytest.mark.redis
async def test_a_slow_remote_listener_is_dropped_while_a_fast_one_keeps_hearing(
    redis_url: str,
) -> None:
    async with relay_hub(redis_url, buffer_seconds=0.2) as hub, admin_redis(redis_url) as admin:
        slow, fast = _Client(stuck=True), _Client()
        slow_task = asyncio.create_task(_listen_remote(hub, "call_1", slow))
        fast_task = asyncio.create_task(_listen_remote(hub, "call_1", fast))
        await _until(lambda: hub.remote_listeners == 2, "both joined")
        await _until_subscribers(admin, hub, "call_1", 1)
        sent = 0
        while not slow_task.done() and sent < 150:  # the blocked send gives up after 1 s
            await admin.publish(hub.channel("call_1"), _chunk(sent % 1000 + 1))
            sent += 1
            await asyncio.sleep(0.02)
        assert slow_task.done(), "the stuck listener was never dropped"
        assert slow.closed is not None and slow.closed[0] == CLOSE_TOO_SLOW
        assert hub.remote_listeners == 1 and await _subscribers(admin, hub, "call_1") == 1
        for _ in range(5):  # and the fast one goes on
            await admin.publish(hub.channel("call_1"), _chunk(sent % 1000 + 1))
            sent += 1
            await asyncio.sleep(0.02)
        await _until(lambda: len(fast.audio) == sent * 640, "every chunk at the fast one")
        got = np.frombuffer(bytes(fast.audio), "<i2")[::320]  # one sample of each chunk
        assert list(got) == [i % 1000 + 1 for i in range(sent)]  # all of it, in order
        fast.hang_up()
        await asyncio.wait_for(fast_task, 5)
        await _until_subscribers(admin, hub, "call_1", 0)


@pytest.mark.redis
async def test_listeners_arriving_and_leaving_together_leave_no_subscription(
    redis_url: str,
) -> None:
    async with relay_hub(redis_url) as hub, admin_redis(redis_url) as admin:

        async def come_and_go(ticks: int) -> None:
            async with hub.subscribed("call_1", mono=False):
                for _ in range(ticks):
                    await asyncio.sleep(0)

        # A listener of another call stays throughout: the shared connection is its too.
        steady = _Client()
        steady_task = asyncio.create_task(_listen_remote(hub, "call_2", steady))
        await _until_subscribers(admin, hub, "call_2", 1)

        await asyncio.gather(*(come_and_go(i % 4) for i in range(40)))
        # Listeners cancelled at every point of their subscribe and unsubscribe (a client that
        # hangs up at once): redis-py drops a connection whose command is cancelled, which
        # would close every remote listener on the node.
        for ticks in range(12):
            cancelled = asyncio.create_task(come_and_go(100))
            for _ in range(ticks):
                await asyncio.sleep(0)
            cancelled.cancel()
            await asyncio.gather(cancelled, return_exceptions=True)
        # …and one cancelled while its SUBSCRIBE is being written (a slow socket, as under load):
        # the write is made to wait inside redis-py's send, where a cancel drops the connection.
        subscriber = hub.subscriber
        assert subscriber is not None and subscriber._pubsub is not None
        writer = subscriber._pubsub.connection._writer  # type: ignore[attr-defined]
        drain = writer.drain
        writing = asyncio.Event()

        async def slow_drain() -> None:
            writing.set()
            await asyncio.sleep(0.05)
            await drain()

        writer.drain = slow_drain
        try:
            cancelled = asyncio.create_task(come_and_go(100))
            await asyncio.wait_for(writing.wait(), 5)
            cancelled.cancel()
            await asyncio.gather(cancelled, return_exceptions=True)
            await _until(lambda: hub.remote_listeners == 1, "the cancelled one left")
        finally:
            writer.drain = drain
        assert hub.remote_listeners == 1
        await _until_subscribers(admin, hub, "call_1", 0)
        assert subscriber.losses == 0
        await admin.publish(hub.channel("call_2"), _chunk(5))
        await _until(lambda: bool(steady.audio), "the steady listener still hears")
        assert steady.closed is None
        steady.hang_up()
        await asyncio.wait_for(steady_task, 5)

        # two arriving together: one subscription, both hear
        stereo = subscriber.join("call_1", mono=False, buffer_seconds=1.0)
        mono = subscriber.join("call_1", mono=True, buffer_seconds=1.0)
        await asyncio.gather(subscriber.subscribe(stereo), subscriber.subscribe(mono))
        await _until_subscribers(admin, hub, "call_1", 1)
        (connection,) = await _connections(admin, hub)
        assert connection["sub"] == "1"
        await admin.publish(hub.channel("call_1"), _chunk(300))
        await _until(lambda: stereo.sample_rate == mono.sample_rate == 8000, "both heard")
        assert set(np.frombuffer(stereo.listener.take() or b"", "<i2")) == {300}
        assert set(np.frombuffer(mono.listener.take() or b"", "<i2")) == {600}  # the mono mix
        await asyncio.gather(subscriber.leave(stereo), subscriber.leave(mono))
        await _until_subscribers(admin, hub, "call_1", 0)


@pytest.mark.redis
async def test_a_killed_subscriber_connection_closes_its_listeners_and_the_next_reconnects(
    redis_url: str,
) -> None:
    async with relay_hub(redis_url) as hub, admin_redis(redis_url) as admin:
        clients = [_Client(), _Client()]
        tasks = [asyncio.create_task(_listen_remote(hub, "call_1", c)) for c in clients]
        await _until(lambda: hub.remote_listeners == 2, "both joined")
        await _until_subscribers(admin, hub, "call_1", 1)
        await admin.publish(hub.channel("call_1"), _chunk(7))
        await _until(lambda: all(c.audio for c in clients), "audio before the kill")

        (connection,) = await _connections(admin, hub)
        assert await admin.client_kill_filter(_id=connection["id"]) == 1
        async with asyncio.timeout(5):
            await asyncio.gather(*tasks)
        for client in clients:
            assert client.closed is not None and client.closed[0] == CLOSE_UNAVAILABLE
            assert "unreachable: Redis connection lost" in client.closed[1]
        assert hub.subscriber is not None and hub.subscriber.losses == 1
        assert hub.remote_listeners == 0
        await _until_subscribers(admin, hub, "call_1", 0)

        # the next listener connects again
        again = _Client()
        task = asyncio.create_task(_listen_remote(hub, "call_1", again))
        await _until_subscribers(admin, hub, "call_1", 1)
        await admin.publish(hub.channel("call_1"), _chunk(9))
        await _until(lambda: len(again.audio) == 640, "audio after reconnecting")
        assert again.samples() == {9}
        (reconnected,) = await _connections(admin, hub)
        assert reconnected["id"] != connection["id"]
        again.hang_up()
        await asyncio.wait_for(task, 5)


@pytest.mark.redis
async def test_shutting_down_the_hub_closes_its_remote_listeners(redis_url: str) -> None:
    hub = ListenHub(
        f"b-{uuid.uuid4().hex[:8]}", redis_url=redis_url, prefix=f"ava-test:{uuid.uuid4().hex}:"
    )
    running = asyncio.create_task(hub.run())
    client = _Client()
    try:
        await _until(lambda: hub.subscriber is not None and hub.subscriber.running, "running")
        listening = asyncio.create_task(_listen_remote(hub, "call_1", client))
        await _until(lambda: hub.remote_listeners == 1, "joined")
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await asyncio.wait_for(listening, 5)
    finally:
        running.cancel()
        await hub.aclose()
    assert client.closed is not None and client.closed[0] == CLOSE_UNAVAILABLE
    assert "shutting down" in client.closed[1]


@pytest.mark.redis
async def test_a_full_node_refuses_another_remote_listener(redis_url: str) -> None:
    async with relay_hub(redis_url) as hub:
        assert hub.subscriber is not None
        hub.subscriber._max_listeners = 1  # the cap (200 per node) made small
        first, second = _Client(), _Client()
        listening = asyncio.create_task(_listen_remote(hub, "call_1", first))
        await _until(lambda: hub.remote_listeners == 1, "the first joined")
        await _listen_remote(hub, "call_2", second)
        assert second.closed == (CLOSE_UNAVAILABLE, "too many remote listeners on this node; retry")
        listening.cancel()  # the first one leaves (before any audio): room for another
        await asyncio.gather(listening, return_exceptions=True)
        assert hub.remote_listeners == 0
        third = hub.subscriber.join("call_2", mono=False, buffer_seconds=1.0)
        await hub.subscriber.leave(third)
