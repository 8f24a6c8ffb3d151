"""The one I/O shell of the Twilio path: a Starlette WebSocket driven through `TwilioStream`.

It only moves text between the socket and the sans-I/O protocol. Bad input closes the socket
with 1008 (policy) and surfaces as `TransportClosed(malformed=True)`; our own failure closes with
1011; a normal end closes with 1000, which ends Twilio's `<Connect>` and with it the call.
Audio arriving faster than real time beyond a burst (`media.rate_guard`) counts as bad input.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import NoReturn

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from media.audio_format import MULAW_8K
from media.rate_guard import MediaRateExceeded, MediaRateGuard
from media.transport import AudioReceived, InboundEvent, TransportClosed
from media.twilio.messages import ProtocolError, Start
from media.twilio.protocol import Started, TwilioStream

__all__ = ["TwilioWebSocket"]

log = logging.getLogger("ava.twilio")

CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008
CLOSE_INTERNAL = 1011

# endedReasons that mean the server, not the caller, failed
_OUR_FAULT = ("pipeline-error", "error-server")


class TwilioWebSocket:
    kind = "twilio"
    audio_format = MULAW_8K  # Media Streams: μ-law 8 kHz, both ways

    def __init__(
        self,
        websocket: WebSocket,
        *,
        burst_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.websocket = websocket
        self.stream = TwilioStream()
        self._clock = clock
        # Built as the websocket is accepted: the stream's time starts now, not at the first
        # frame this (possibly busy) server gets round to reading.
        self.rate = MediaRateGuard(burst_seconds, opened_at=clock())
        self._pending: deque[InboundEvent] = deque()
        self._closed = False
        # Set when we refused the stream: a later send says so too, so whichever of the call's
        # tasks meets the closed line first ends the call with the right reason.
        self._refused: str | None = None

    async def wait_started(self) -> Start:
        """Read until the `start` message (the call's identity); anything else first is bad."""
        while True:
            for event in await self._read():
                if isinstance(event, Started):
                    return event.start
                self._pending.append(event)

    async def receive(self) -> InboundEvent:
        while not self._pending:
            for event in await self._read():
                if not isinstance(event, Started):
                    self._pending.append(event)
        return self._pending.popleft()

    async def _read(self) -> list[InboundEvent | Started]:
        if self._closed:
            raise TransportClosed("socket closed")
        try:
            message = await self.websocket.receive()
        except (WebSocketDisconnect, RuntimeError) as exc:
            self._closed = True
            raise TransportClosed("socket closed") from exc
        if message["type"] == "websocket.disconnect":
            self._closed = True
            raise TransportClosed(f"socket closed by peer ({message.get('code', 1005)})")
        text = message.get("text")
        if text is None:
            await self._reject("binary frame: Twilio sends JSON text frames only")
        try:
            events = list(self.stream.receive_text(text))
            for event in events:
                if isinstance(event, AudioReceived):
                    self.rate.receive(len(event.audio), self._clock())
        except ProtocolError as exc:
            await self._reject(exc.reason)
        except MediaRateExceeded as exc:
            await self._reject(exc.reason)
        return events

    async def _reject(self, reason: str) -> NoReturn:
        log.error("malformed Twilio stream %s: %s", self.stream.stream_sid or "-", reason)
        self._refused = reason
        await self._close(CLOSE_POLICY, reason)
        raise TransportClosed(f"malformed stream: {reason}", malformed=True)

    async def send_audio(self, audio: bytes) -> None:
        await self._send(self.stream.send_media(audio))

    async def send_mark(self, name: str) -> None:
        await self._send(self.stream.send_mark(name))

    async def send_clear(self) -> None:
        await self._send(self.stream.send_clear())

    async def _send(self, text: str) -> None:
        if self._closed:
            if self._refused is not None:
                raise TransportClosed(f"malformed stream: {self._refused}", malformed=True)
            raise TransportClosed("socket closed")
        try:
            await self.websocket.send_text(text)
        except (WebSocketDisconnect, RuntimeError, OSError) as exc:
            self._closed = True
            raise TransportClosed("socket closed while sending") from exc

    async def close(self, reason: str) -> None:
        code = CLOSE_INTERNAL if any(tag in reason for tag in _OUR_FAULT) else CLOSE_NORMAL
        await self._close(code, reason)

    async def _close(self, code: int, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        if self.websocket.application_state is WebSocketState.DISCONNECTED:
            return
        try:
            # Close reasons are limited to 123 bytes by RFC 6455.
            await self.websocket.close(code, reason.encode()[:120].decode(errors="ignore"))
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass  # the peer went first (starlette says so with 1006); nothing left to tell it
