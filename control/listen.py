"""`monitor.listenUrl`: a websocket streaming a live call's audio, from any node.

`GET wss://…/call/{id}/listen` (a websocket), authenticated by the tenant's API key
(`Authorization: Bearer`) or by `?token=` from `POST /call/{id}/listen-token` (HMAC-signed,
bound to the call and tenant, expiring after `AVA_LISTEN_TOKEN_TTL_SECONDS`; browsers cannot
send headers on a websocket). The server first sends one JSON text message

    {"type": "start", "callId": …, "sampleRate": 8000, "channels": 2, "encoding": "pcm_s16le",
     "layout": ["customer", "assistant"]}

then binary frames of raw little-endian 16-bit PCM at that rate: interleaved stereo, the
customer left and the assistant right, exactly as the customer heard it (barge-ins cut), or
with `?channels=mixed` one channel, both sides summed (`"channels": 1, "layout": ["mixed"]`).
Vapi's listen socket carries the same raw PCM; the start message is AVA's, so a client never
has to guess the rate.

Bounded: each listener queues at most `AVA_LISTEN_BUFFER_SECONDS` of audio; one that falls
further behind is closed with 4429, and the call never waits on a listener
(`voice.listen_tap`). Close codes (the reason says more): 1000 the call ended; 4400 a bad
`channels`; 4401 no valid key or an expired token; 4403 a forged token or one for another call;
4404 no such call for this tenant (another tenant's call looks the same, as over HTTP);
4409 the call is not live (not connected yet, ended, or on another node without Redis);
4429 the listener was too slow; 4503 the node holding the call cannot be reached (Redis).

Any node: the call's audio is tapped where the session runs (control/recordings.py wraps its
transport, whether or not the assistant records). Listeners on another node are served by that
node's one shared subscription (control/listen_relay.py), subscribed to `ava:listen:<call_id>`
while the call has listeners there; the owner checks every `_POLL_SECONDS` which of its calls have
subscribers (PUBSUB NUMSUB) and publishes only those calls' audio, through one bounded outbox
(a Redis too slow for it loses audio, never holds the call). Without Redis only this process's
calls can be heard.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import struct
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request, WebSocket
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.websockets import WebSocketDisconnect

from control.deps import TenantDep
from control.errors import ApiError
from control.listen_relay import AUDIO, END, RelayRefused, RelaySubscriber, RemoteListener
from control.settings import Settings
from control.state import AppState
from control.stream_token import InvalidToken, issue_token, verify_token
from control.twilio_auth import external_url
from storage.recordings import Recordings
from voice.listen_tap import Listener, ListenTap

__all__ = [
    "LISTEN_PATH",
    "ListenHub",
    "bind_listen",
    "listen_hub",
    "listen_url",
    "router",
    "running_listen",
    "sign_listen",
]

log = logging.getLogger("ava.listen")
router = APIRouter(tags=["calls"])

LISTEN_PATH = "/call/{call_id}/listen"

CLOSE_ENDED = 1000
CLOSE_BAD_REQUEST = 4400
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_NOT_LIVE = 4409
CLOSE_TOO_SLOW = 4429
CLOSE_UNAVAILABLE = 4503

_POLL_SECONDS = 0.5  # how soon an owner starts publishing for a new remote listener
_REMOTE_IDLE_SECONDS = 3.0  # no audio from the owner this long: is the call still live?
_MAX_OUTBOX = 1000  # relayed chunks (~20 ms each) waiting for Redis, all calls together
# They share one Redis connection, so this no longer bounds connections: it keeps the listeners'
# streaming (~1.5 ms of this event loop's CPU per listener-second, measured) from crowding out
# the calls it runs. The shared reader's fan-out is far cheaper (~0.5 us per listener per chunk).
_MAX_REMOTE_LISTENERS = 200
_CLOSE_SECONDS = 1.0
_MONO = {"mixed", "mono", "1"}
_STEREO = {"stereo", "2", ""}


# --- signed listen URLs --------------------------------------------------------------------


def _key(settings: Settings) -> bytes:
    # Its own key: a listen token is never a stream, web-call or recording token.
    return hmac.new(settings.signing_key(), b"ava listen url", hashlib.sha256).digest()


def sign_listen(
    settings: Settings, call_id: str, tenant_id: str | None, now: float
) -> tuple[str, float]:
    """A token for the call's listen socket, and when it expires (epoch seconds)."""
    ttl = settings.listen_token_ttl_seconds
    token = issue_token(_key(settings), {"c": call_id, "t": tenant_id or ""}, now=now, ttl=ttl)
    return token, float(int(now + ttl))


def listen_url(base_url: str, call_id: str) -> str:
    """The call's listen socket under the HTTP `base_url` (its ws/wss twin)."""
    scheme, sep, rest = base_url.partition("://")
    ws = {"https": "wss", "http": "ws"}.get(scheme, scheme)
    return f"{ws}{sep}{rest}" + LISTEN_PATH.format(call_id=call_id)


class _Refused(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _token_tenant(settings: Settings, token: str, call_id: str) -> str:
    try:
        claims = verify_token(_key(settings), token, now=time.time())
    except InvalidToken as exc:
        if "expired" in str(exc):
            raise _Refused(CLOSE_UNAUTHORIZED, "the listen token has expired") from exc
        raise _Refused(CLOSE_FORBIDDEN, "invalid listen token") from exc
    if claims.get("c") != call_id:
        raise _Refused(CLOSE_FORBIDDEN, "the listen token is for another call")
    tenant = claims.get("t")
    return tenant if isinstance(tenant, str) else ""


async def _tenant(websocket: WebSocket, state: AppState, call_id: str, token: str | None) -> str:
    """The listener's tenant ("" for the dev scope, by token only)."""
    if token:
        return _token_tenant(state.settings, token, call_id)
    scheme, _, key = websocket.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise _Refused(CLOSE_UNAUTHORIZED, "send `Authorization: Bearer <key>` or ?token=")
    identity = await state.stores.tenants.authenticate(key.strip())
    if identity is None:
        raise _Refused(CLOSE_UNAUTHORIZED, "invalid or revoked API key")
    return identity.tenant_id


# --- the hub: this node's taps, and the Redis relay ---------------------------------------------


class ListenHub:
    """The taps of the calls live on this node, and (with Redis) the relay between nodes."""

    def __init__(
        self,
        node_id: str,
        *,
        buffer_seconds: float = 2.0,
        redis_url: str = "",
        prefix: str = "ava:",
        timeout: float = 1.0,
    ) -> None:
        self.node_id = node_id
        self.buffer_seconds = buffer_seconds
        self.taps: dict[str, ListenTap] = {}
        self.relay_dropped = 0  # chunks Redis was too slow for
        self._prefix = prefix
        self._wanted: set[str] = set()  # calls here with listeners on other nodes
        self._outbox: deque[tuple[str, bytes]] = deque()
        self._wake = asyncio.Event()
        self._redis: Redis | None = None
        self.subscriber: RelaySubscriber | None = None  # this node's listeners of calls elsewhere
        if redis_url:
            self._redis = Redis.from_url(
                redis_url, socket_timeout=timeout, socket_connect_timeout=timeout
            )
            self.subscriber = RelaySubscriber(
                redis_url,
                node_id,
                channel_prefix=self.channel(""),
                max_listeners=_MAX_REMOTE_LISTENERS,
                timeout=timeout,
            )

    @property
    def shared(self) -> bool:
        return self._redis is not None

    @property
    def remote_listeners(self) -> int:
        return 0 if self.subscriber is None else self.subscriber.listeners

    def channel(self, call_id: str) -> str:
        return f"{self._prefix}listen:{call_id}"

    def tap(self, call_id: str, tenant_id: str | None, sample_rate: int) -> ListenTap:
        """A tap for a call about to run here (registered by `serving`)."""
        tap = ListenTap(call_id, tenant_id, sample_rate, max_seconds=self.buffer_seconds)
        if self.shared:
            tap.relay = self._relay(call_id, sample_rate)
            tap.remote = lambda: call_id in self._wanted
        return tap

    @contextmanager
    def serving(self, tap: ListenTap) -> Iterator[None]:
        """While the call runs: its tap can be listened to."""
        self.taps[tap.call_id] = tap
        try:
            yield
        finally:
            self.end(tap)

    def end(self, tap: ListenTap) -> None:
        """The call is over (idempotent): its listeners, here and elsewhere, are told."""
        if self.taps.get(tap.call_id) is tap:
            del self.taps[tap.call_id]
            if tap.call_id in self._wanted:
                self._wanted.discard(tap.call_id)
                self._post(tap.call_id, END)
        tap.close()

    def _relay(self, call_id: str, rate: int) -> Callable[[bytes], None]:
        header = AUDIO + struct.pack("<I", rate)

        def relay(pcm: bytes) -> None:
            if call_id in self._wanted:
                self._post(call_id, header + pcm)

        return relay

    def _post(self, call_id: str, message: bytes) -> None:
        if len(self._outbox) >= _MAX_OUTBOX:
            self.relay_dropped += 1
            return
        self._outbox.append((call_id, message))
        self._wake.set()

    async def run(self) -> None:
        """The relay's publisher, subscriber poll and shared subscriber, until cancelled (Redis
        only)."""
        if self._redis is None or self.subscriber is None:
            return
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._publishing(self._redis))
            tg.create_task(self._polling(self._redis))
            tg.create_task(self.subscriber.run())

    async def _publishing(self, redis: Redis) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch = list(self._outbox)
            self._outbox.clear()
            if not batch:
                continue
            try:
                async with redis.pipeline(transaction=False) as pipe:
                    for call_id, message in batch:
                        pipe.publish(self.channel(call_id), message)
                    await pipe.execute()
            except (RedisError, OSError) as exc:
                self.relay_dropped += len(batch)
                self._wanted = set()  # until the next poll finds Redis (and listeners) again
                log.warning("listen relay: %d chunks not published: %s", len(batch), exc)

    async def _polling(self, redis: Redis) -> None:
        while True:
            calls = {self.channel(c): c for c in self.taps}
            if calls:
                try:
                    counts = await redis.pubsub_numsub(*calls)
                    wanted = set()
                    for channel, count in counts:
                        name = channel.decode() if isinstance(channel, bytes) else str(channel)
                        if count and name in calls:
                            wanted.add(calls[name])
                    self._wanted = wanted
                except (RedisError, OSError) as exc:
                    log.warning("listen relay: subscribers not read: %s", exc)
            else:
                self._wanted = set()
            await asyncio.sleep(_POLL_SECONDS)

    @asynccontextmanager
    async def subscribed(self, call_id: str, *, mono: bool) -> AsyncIterator[RemoteListener]:
        """A listener here of a call held by another node, through the shared subscription."""
        if self.subscriber is None:
            raise RuntimeError("no Redis")
        try:
            remote = self.subscriber.join(call_id, mono=mono, buffer_seconds=self.buffer_seconds)
        except RelayRefused as exc:
            raise _Refused(CLOSE_UNAVAILABLE, str(exc)) from exc
        try:
            await self.subscriber.subscribe(remote)
            yield remote
        finally:
            await self.subscriber.leave(remote)

    async def aclose(self) -> None:
        for tap in list(self.taps.values()):
            self.end(tap)
        if self._redis is not None:
            await self._redis.aclose()
        if self.subscriber is not None:
            await self.subscriber.aclose()


# Each app's recordings know its hub: `CallRecording.create` (called by the media routes with
# the app's recordings) taps the call without the routes having to pass anything more.
_HUBS: weakref.WeakKeyDictionary[Recordings, ListenHub] = weakref.WeakKeyDictionary()


def bind_listen(recordings: Recordings, hub: ListenHub) -> None:
    _HUBS[recordings] = hub


def listen_hub(recordings: Recordings | None) -> ListenHub | None:
    return None if recordings is None else _HUBS.get(recordings)


@asynccontextmanager
async def running_listen(settings: Settings, node_id: str) -> AsyncIterator[ListenHub]:
    hub = ListenHub(
        node_id, buffer_seconds=settings.listen_buffer_seconds, redis_url=settings.redis_url
    )
    task = asyncio.create_task(hub.run(), name="ava-listen-relay") if hub.shared else None
    try:
        yield hub
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await hub.aclose()


# --- routes --------------------------------------------------------------------------------------


@router.post("/call/{call_id}/listen-token")
async def listen_token(call_id: str, request: Request, tenant_id: TenantDep) -> dict[str, Any]:
    """A signed, short-lived listen URL for clients that cannot send the API key."""
    state: AppState = request.app.state.ava
    record = await state.stores.calls.get_call(tenant_id, call_id, details=False)
    if record is None:
        raise ApiError(404, "call not found")
    if record.status == "ended":
        raise ApiError(409, f"call {call_id} has ended")
    base = external_url(state, request.headers, request.url.scheme, "/", False).rstrip("/")
    token, expires = sign_listen(state.settings, call_id, tenant_id, time.time())
    return {
        "listenUrl": f"{listen_url(base, call_id)}?token={token}",
        "token": token,
        "expiresAt": datetime.fromtimestamp(expires, UTC).isoformat(),
    }


@router.websocket(LISTEN_PATH)
async def listen(
    websocket: WebSocket, call_id: str, token: str | None = None, channels: str = "stereo"
) -> None:
    # Accepted first: a websocket refused before accepting can only say "403", and the close
    # codes are how a listener learns why.
    await websocket.accept()
    try:
        mono = _mono(channels)
        state: AppState = websocket.app.state.ava
        hub: ListenHub = websocket.app.state.listen
        tenant_id = await _tenant(websocket, state, call_id, token[:1024] if token else None)
        tap = hub.taps.get(call_id)
        if tap is not None:
            if (tap.tenant_id or "") != tenant_id:
                raise _Refused(CLOSE_NOT_FOUND, "call not found")
            listener = tap.listen(mono=mono)
            try:
                await _stream(websocket, listener, call_id, tap.sample_rate)
            finally:
                tap.remove(listener)
            return
        await _listen_elsewhere(websocket, state, hub, call_id, tenant_id, mono)
    except _Refused as refused:
        await _close(websocket, refused.code, refused.reason)


def _mono(channels: str) -> bool:
    value = channels.strip().lower()
    if value in _MONO:
        return True
    if value in _STEREO:
        return False
    raise _Refused(CLOSE_BAD_REQUEST, "channels: 'stereo' (default) or 'mixed'")


async def _listen_elsewhere(
    websocket: WebSocket, state: AppState, hub: ListenHub, call_id: str, tenant_id: str, mono: bool
) -> None:
    record = await state.stores.calls.get_call(tenant_id or None, call_id, details=False)
    if record is None:
        raise _Refused(CLOSE_NOT_FOUND, "call not found")
    if record.status in ("queued", "ringing"):
        raise _Refused(CLOSE_NOT_LIVE, f"call {call_id} is not connected yet ({record.status})")
    if record.status != "in-progress" or not record.node_id or record.node_id == hub.node_id:
        raise _Refused(CLOSE_NOT_LIVE, f"call {call_id} is not live")
    if not hub.shared:
        raise _Refused(
            CLOSE_NOT_LIVE,
            f"call {call_id} is held by node {record.node_id}; without AVA_REDIS_URL no other "
            "process can be reached",
        )

    async def still_live() -> bool:
        current = await state.stores.calls.get_call(tenant_id or None, call_id, details=False)
        return current is not None and current.status == "in-progress"

    async with hub.subscribed(call_id, mono=mono) as remote:
        watching = asyncio.create_task(_watch_idle(remote, still_live))
        try:
            await remote.started.wait()
            if remote.failure is not None:
                raise _Refused(CLOSE_UNAVAILABLE, remote.failure)
            if remote.sample_rate is None:
                raise _Refused(CLOSE_ENDED, f"call {call_id} has ended")
            await _stream(
                websocket, remote.listener, call_id, remote.sample_rate, lambda: remote.failure
            )
        finally:
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching


async def _watch_idle(remote: RemoteListener, still_live: Callable[[], Awaitable[bool]]) -> None:
    """No message from the owner for a while: the call may have ended without word (the owner
    died, or its end was published while Redis was away); the database says."""
    try:
        while not remote.over:
            quiet = time.monotonic() - remote.heard
            if quiet < _REMOTE_IDLE_SECONDS:
                await asyncio.sleep(_REMOTE_IDLE_SECONDS - quiet)
                continue
            if not await still_live():
                return
            remote.heard = time.monotonic()
    finally:
        remote.end()  # the call is over, or the check failed: its error is raised where awaited


async def _stream(
    websocket: WebSocket,
    listener: Listener,
    call_id: str,
    rate: int,
    failure: Callable[[], str | None] = lambda: None,
) -> None:
    """The start message, then the audio until the call ends, the listener falls behind, or
    (`failure` says why) the relay from the node holding the call fails."""
    layout = ["mixed"] if listener.mono else ["customer", "assistant"]
    start = {
        "type": "start",
        "callId": call_id,
        "sampleRate": rate,
        "channels": 1 if listener.mono else 2,
        "encoding": "pcm_s16le",
        "layout": layout,
    }
    too_slow = f"listener too slow: more than {listener.max_bytes} bytes of audio queued"
    # The client's messages are read (and ignored) so its close is seen at once: it ends the
    # listener, whose sender then stops.
    gone = asyncio.create_task(_until_disconnect(websocket))
    gone.add_done_callback(lambda _: listener.end())
    try:
        await websocket.send_json(start)
        while (pcm := await listener.next()) is not None and not gone.done():
            try:
                # A send that waits longer than the whole buffer is a listener that is not
                # reading: dropped like one whose queue overflowed.
                async with asyncio.timeout(max(1.0, listener.max_bytes / (rate * 4))):
                    await websocket.send_bytes(pcm)
            except TimeoutError:
                listener.overflowed = True
                break
        if gone.done():
            return
        if listener.overflowed:
            log.info("call %s: a listener was dropped (too slow)", call_id)
            await _close(websocket, CLOSE_TOO_SLOW, too_slow)
        elif (why := failure()) is not None:
            await _close(websocket, CLOSE_UNAVAILABLE, why)
        else:
            await _close(websocket, CLOSE_ENDED, "call ended")
    except (WebSocketDisconnect, RuntimeError, OSError):
        return  # the listener went away
    finally:
        gone.cancel()
        with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
            await gone


async def _until_disconnect(websocket: WebSocket) -> None:
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect, TimeoutError):
        async with asyncio.timeout(_CLOSE_SECONDS):
            await websocket.close(code, reason[:120])
