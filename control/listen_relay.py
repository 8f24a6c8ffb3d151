"""Listeners on this node for calls held by another: one shared Redis subscription per node.

The owner of a call publishes its audio to `<prefix>listen:<call_id>` (control.listen). Here one
`RelaySubscriber` per node holds one PubSub connection: a call's channel is subscribed when its
first local listener arrives and unsubscribed when its last one leaves, so PUBSUB NUMSUB still
tells the owner whether anyone listens (one subscription per call per node counts; the owner
only needs more than none). Its reader task hands each message to every listener of that call
through the listener's bounded queue (`voice.listen_tap.Listener`, mono mixed once per message):
a listener that falls behind overflows and is dropped by its own sender, and never slows the
reader or the others.

Subscription changes are sent under one lock and each decides from the state when it runs, so
whatever the interleaving of arrivals and departures, the last change sent leaves the call
subscribed exactly while it has listeners. Redis going away fails the reader: every remote
listener is ended with the reason (the listen route closes it with 4503), and the next listener
to arrive connects again. redis-py's own reconnect-and-resubscribe is turned off on this
connection for that reason: it would hide the loss behind a silent gap in the audio.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import struct
import time
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from voice.listen_tap import Listener, mix_to_mono

__all__ = [
    "AUDIO",
    "END",
    "RelayRefused",
    "RelaySubscriber",
    "RemoteListener",
    "subscriber_name",
]

log = logging.getLogger("ava.listen")

AUDIO, END = b"A", b"E"  # the owner's messages: b"A" + rate (u32 LE) + stereo PCM16; b"E"
_STEREO_FRAME = 4


def subscriber_name(node_id: str) -> str:
    """The shared subscriber's CLIENT SETNAME (no spaces allowed): to find it in CLIENT LIST."""
    return "ava-listen-" + re.sub(r"[^\w.:-]", "_", node_id)[:100]


class RelayRefused(Exception):
    """No remote listener can join now (the relay is not running, or the node is full)."""


class RemoteListener:
    """One listener here of a call held elsewhere: its bounded queue and what it has heard."""

    def __init__(self, call_id: str, *, mono: bool, buffer_seconds: float) -> None:
        self.call_id = call_id
        self.buffer_seconds = buffer_seconds
        # Replaced by the first audio, which carries the rate.
        self.listener = Listener(round(buffer_seconds * 8000) * _STEREO_FRAME, mono=mono)
        self.sample_rate: int | None = None
        self.failure: str | None = None  # why the relay let it down (Redis), if it did
        self.heard = time.monotonic()  # the owner's last message: is the call still live?
        self.started = asyncio.Event()  # the first audio came, or the listener is over

    @property
    def over(self) -> bool:
        return self.listener.ended or self.listener.overflowed

    def offer(self, rate: int, stereo: bytes, mono: bytes) -> None:
        if self.sample_rate is None:
            per_second = rate * (2 if self.listener.mono else _STEREO_FRAME)
            self.listener.max_bytes = round(self.buffer_seconds * per_second)
            self.sample_rate = rate
            self.started.set()
        self.listener.offer(mono if self.listener.mono else stereo)

    def end(self) -> None:
        """The call ended: what is queued is still sent, then the listener is closed (1000)."""
        self.listener.end()
        self.started.set()

    def fail(self, reason: str) -> None:
        if self.failure is None and not self.over:
            self.failure = reason
        self.end()


class RelaySubscriber:
    """This node's one Redis subscription connection, shared by all its remote listeners."""

    def __init__(
        self,
        url: str,
        node_id: str,
        *,
        channel_prefix: str,
        max_listeners: int,
        timeout: float = 1.0,
    ) -> None:
        # No read timeout (a subscription waits for messages indefinitely) and no retries: a lost
        # connection must reach the listeners, not be papered over by a silent resubscribe.
        self._client = Redis.from_url(
            url,
            socket_connect_timeout=timeout,
            client_name=subscriber_name(node_id),
            retry=Retry(NoBackoff(), 0),
        )
        self._prefix = channel_prefix
        self._max_listeners = max_listeners
        self._calls: dict[str, set[RemoteListener]] = {}
        self._subscribed: set[str] = set()  # calls whose SUBSCRIBE was sent on `_pubsub`
        self._pubsub: PubSub | None = None  # while connected and read by `run`
        self._changing = asyncio.Lock()  # one subscription change on the wire at a time
        self._demand = asyncio.Event()  # a listener arrived while not connected
        self.running = False
        self.losses = 0  # connections lost under listeners (or idle)

    @property
    def listeners(self) -> int:
        return sum(len(members) for members in self._calls.values())

    def channel(self, call_id: str) -> str:
        return f"{self._prefix}{call_id}"

    # --- listeners arriving and leaving ------------------------------------------------------

    def join(self, call_id: str, *, mono: bool, buffer_seconds: float) -> RemoteListener:
        """A listener of `call_id`, counted at once; `subscribe` it, and `leave` it whatever
        happens after this (even if cancelled while subscribing)."""
        if not self.running:
            raise RelayRefused("this node's listen relay is not running; retry")
        if self.listeners >= self._max_listeners:
            raise RelayRefused("too many remote listeners on this node; retry")
        remote = RemoteListener(call_id, mono=mono, buffer_seconds=buffer_seconds)
        self._calls.setdefault(call_id, set()).add(remote)
        if self._pubsub is None:
            self._demand.set()  # the reader connects and subscribes to every wanted call
        return remote

    async def subscribe(self, remote: RemoteListener) -> None:
        """The call is subscribed, if no listener here had it already."""
        # Shielded: redis-py drops a connection whose command is cancelled mid-flight, and this
        # connection is every remote listener's on the node (a listener whose client hung up
        # during its SUBSCRIBE closed all of them, seen in CI).
        await asyncio.shield(self._subscribe(remote))

    async def _subscribe(self, remote: RemoteListener) -> None:
        try:
            await self._sync(remote.call_id)
        except (RedisError, OSError) as exc:
            # The reader sees the same dead connection and fails the call's other listeners.
            remote.fail(f"the node holding the call is unreachable: Redis ({exc})")

    async def leave(self, remote: RemoteListener) -> None:
        """The listener is gone; the call is unsubscribed if it was the last here."""
        members = self._calls.get(remote.call_id)
        if members is None or remote not in members:
            return  # already dropped with the connection it was on
        members.discard(remote)
        if members:
            return
        del self._calls[remote.call_id]
        await asyncio.shield(self._unsubscribe(remote.call_id))  # shielded as in `subscribe`

    async def _unsubscribe(self, call_id: str) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._sync(call_id)  # a dead connection is the reader's to report

    async def _sync(self, call_id: str) -> None:
        # Decided under the lock from the state at that moment: a leave racing its own join's
        # SUBSCRIBE (or two joins) ends with the call subscribed exactly while it has listeners.
        async with self._changing:
            pubsub = self._pubsub
            if pubsub is None:
                return
            wanted, sent = call_id in self._calls, call_id in self._subscribed
            if wanted and not sent:
                self._subscribed.add(call_id)
                await pubsub.subscribe(self.channel(call_id))
            elif sent and not wanted:
                self._subscribed.discard(call_id)
                await pubsub.unsubscribe(self.channel(call_id))

    # --- the reader ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect when listeners want it, read until Redis fails, repeat; until cancelled."""
        self.running = True
        try:
            while True:
                await self._demand.wait()
                self._demand.clear()
                if self._calls:
                    await self._reading()
        finally:
            self.running = False
            self._fail_all("this node is shutting down; reconnect")

    async def _reading(self) -> None:
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        try:
            async with self._changing:
                await pubsub.connect()  # type: ignore[no-untyped-call]
                self._pubsub = pubsub
                self._subscribed = set(self._calls)
                if self._subscribed:
                    await pubsub.subscribe(*(self.channel(c) for c in self._subscribed))
            while True:
                message = await pubsub.get_message(timeout=None)
                if message is not None:
                    self._dispatch(message)
        except (RedisError, OSError) as exc:
            self.losses += 1
            log.warning("listen relay: subscription connection lost: %s", exc)
            self._fail_all(
                f"the node holding the call is unreachable: Redis connection lost ({exc})"
            )
        finally:
            self._pubsub = None
            self._subscribed = set()
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _dispatch(self, message: dict[str, Any]) -> None:
        channel, data = message.get("channel"), message.get("data")
        if not isinstance(channel, bytes) or not isinstance(data, bytes):
            return
        members = self._calls.get(channel.decode(errors="replace").removeprefix(self._prefix))
        if not members:
            return  # a message already in flight when the call was unsubscribed
        now = time.monotonic()
        if data[:1] == END:
            for remote in members:
                remote.heard = now
                remote.end()
            return
        if data[:1] != AUDIO or len(data) < 5:
            return
        rate = struct.unpack("<I", data[1:5])[0]
        stereo = data[5:]
        mono = b""
        for remote in members:
            remote.heard = now
            if remote.listener.mono and not mono:
                mono = mix_to_mono(stereo)  # once for all of the call's mono listeners
            remote.offer(rate, stereo, mono)

    def _fail_all(self, reason: str) -> None:
        # They are done with: each leaves later, finding itself already dropped.
        calls, self._calls = self._calls, {}
        for members in calls.values():
            for remote in members:
                remote.fail(reason)

    async def aclose(self) -> None:
        await self._client.aclose()
