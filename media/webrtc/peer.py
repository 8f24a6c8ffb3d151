"""The one I/O shell of the WebRTC path: an aiortc peer connection as a `CallTransport`.

`WebRtcPeer` answers a browser's offer (non-trickle: aiortc gathers every candidate before the
answer is returned) and owns the connection. Its `WebRtcTransport` gives the session the same
contract as the Twilio websocket (frames in; audio, marks and `clear` out) in its own declared
format, 16 kHz PCM16 (`audio_format`): a browser call is not telephone audio.
The audio logic is sans-I/O (`media.webrtc.audio`); this module only moves frames.

- Inbound: `receive()` pulls the browser's decoded frames itself (no reader task outlives the
  call), racing the pull against marks and hang-ups so a mark echo is never held up by silence.
- Outbound: `OutboundTrack.recv()` is pulled by aiortc's sender; it waits for each frame's time
  on the injected clock, so the assistant's audio leaves in real time and a mark is echoed when
  the audio before it has played there. `clear` empties the queue, so barge-in is silent within
  one frame.
- Events: the data channel the browser opens carries JSON to the page (`send_event`), bounded
  while it is not yet open and while its send buffer is full. The browser may send
  `{"type": "hangup"}` to end the call.

`WebRtcTransport.close` ends the media at once; the peer connection itself is closed by its
owner (`WebRtcPeer.close`) after the call's last event has gone out over the data channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame
from av.frame import Frame

from media.audio_format import AudioFormat
from media.transport import (
    AudioReceived,
    InboundEvent,
    MarkReceived,
    StreamStopped,
    TransportClosed,
)
from media.webrtc.audio import AUDIO_FORMAT, FrameSchedule, InboundAudio, Playout
from media.webrtc.sdp import OfferError, check_offer

__all__ = ["Clock", "OutboundTrack", "WebRtcPeer", "WebRtcTransport"]

log = logging.getLogger("ava.webrtc")

_MAX_PENDING_MARKS = 256  # oldest dropped: a later echo confirms every mark before it
_MAX_OUTBOX = 128  # events queued before the data channel opens; oldest dropped
_MAX_CHANNEL_BUFFER = 256 * 1024  # bytes unsent on the data channel; newer events dropped
_HANGUP = "hangup"


class Clock(Protocol):
    """`voice.clock.Clock`, restated: media imports nothing above it."""

    def now(self) -> float: ...

    async def sleep_until(self, deadline: float) -> None: ...


def _frame_pcm16(frame: AudioFrame) -> bytes:
    """Interleaved int16 samples of a decoded frame (aiortc decodes Opus to packed s16)."""
    array = frame.to_ndarray()
    if frame.format.is_planar:
        array = array.T  # (channels, samples) → interleaved
    if array.dtype.kind == "f":
        array = np.clip(np.rint(array * 32768.0), -32768, 32767)
    data: bytes = np.ascontiguousarray(array, dtype="<i2").tobytes()
    return data


class OutboundTrack(MediaStreamTrack):
    """The assistant's voice: one 20 ms frame per `recv()`, each at its time on `clock`."""

    kind = "audio"

    def __init__(
        self, playout: Playout, clock: Clock, on_marks: Callable[[tuple[str, ...]], None]
    ) -> None:
        super().__init__()
        self.playout = playout
        self.schedule = FrameSchedule()
        self._clock = clock
        self._on_marks = on_marks
        self._pts = 0
        self.frames = 0
        self.audio_frames = 0  # frames that carried assistant audio

    async def recv(self) -> Frame:
        if self.readyState != "live":
            raise MediaStreamError
        await self._clock.sleep_until(self.schedule.next_due(self._clock.now()))
        if self.readyState != "live":
            raise MediaStreamError
        tick = self.playout.tick()
        if tick.marks:
            self._on_marks(tick.marks)
        self.frames += 1
        self.audio_frames += tick.audio_bytes > 0
        audio_format = self.playout.audio_format
        pcm = np.frombuffer(audio_format.to_pcm16(tick.frame), dtype="<i2").reshape(1, -1)
        # At the call's rate: aiortc's Opus encoder resamples to 48 kHz itself (libswresample),
        # so a 16 kHz call keeps its 4–8 kHz band all the way to the browser.
        frame = AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = audio_format.sample_rate
        frame.pts = self._pts
        self._pts += pcm.shape[1]
        return frame


class WebRtcTransport:
    """A `media.transport.CallTransport` over one peer connection's audio."""

    kind = "webrtc"

    def __init__(
        self,
        clock: Clock,
        *,
        max_playout_seconds: float = 2.0,
        audio_format: AudioFormat = AUDIO_FORMAT,
    ) -> None:
        self.audio_format = audio_format  # the call's audio, both ways (16 kHz PCM16)
        self.playout = Playout(max_playout_seconds, audio_format=audio_format)
        self.track = OutboundTrack(self.playout, clock, self._marks_played)
        self._inbound = InboundAudio(audio_format)
        self._remote: MediaStreamTrack | None = None
        self._audio: deque[bytes] = deque()  # the frames of one decoded packet (a few)
        self._marks: deque[str] = deque(maxlen=_MAX_PENDING_MARKS)
        self._stopped = False  # the browser hung up: StreamStopped once the marks are out
        self._closed: str | None = None
        self._wake: asyncio.Future[None] | None = None

    # --- fed by the peer connection ----------------------------------------------------------

    def attach_remote(self, track: MediaStreamTrack) -> None:
        self._remote = track
        self._wakeup()

    def hang_up(self) -> None:
        self._stopped = True
        self._wakeup()

    def lost(self, detail: str) -> None:
        if self._closed is None:
            self._closed = detail
        self._wakeup()

    def _marks_played(self, names: tuple[str, ...]) -> None:
        self._marks.extend(names)
        self._wakeup()

    def _wakeup(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    # --- CallTransport -----------------------------------------------------------------------

    async def receive(self) -> InboundEvent:
        while True:
            if self._marks:
                return MarkReceived(self._marks.popleft())
            if self._stopped:
                self._stopped = False
                return StreamStopped()
            if self._audio:
                return AudioReceived(self._audio.popleft())
            if self._closed is not None:
                raise TransportClosed(self._closed)
            await self._read_or_wake()

    async def _read_or_wake(self) -> None:
        wake = self._wake = asyncio.get_running_loop().create_future()
        remote = self._remote
        if remote is None:
            try:
                await wake
            finally:
                self._wake = None
            return
        read = asyncio.ensure_future(remote.recv())
        try:
            await asyncio.wait((read, wake), return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._wake = None
            if not read.done():
                # Safe: the pending frame stays in aiortc's queue for the next read.
                read.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await read
        if read.cancelled():
            return
        error = read.exception()
        if isinstance(error, MediaStreamError):
            self.lost("the browser's audio track ended")
        elif error is not None:
            raise error
        else:
            frame = read.result()
            if not isinstance(frame, AudioFrame):
                self.lost("the browser sent a non-audio frame")
                return
            pcm = _frame_pcm16(frame)
            self._audio.extend(
                self._inbound.push(pcm, frame.sample_rate, len(frame.layout.channels))
            )

    async def send_audio(self, audio: bytes) -> None:
        self._check_open()
        self.playout.push_audio(audio)

    async def send_mark(self, name: str) -> None:
        self._check_open()
        self.playout.push_mark(name)

    async def send_clear(self) -> None:
        self._check_open()
        self._marks_played(tuple(self.playout.clear()))

    async def close(self, reason: str) -> None:
        """Stop the assistant's audio now; `WebRtcPeer.close` ends the connection."""
        self.lost(f"call ended: {reason}")
        self.playout.clear()
        self.track.stop()

    def _check_open(self) -> None:
        if self._closed is not None:
            raise TransportClosed(self._closed)


class WebRtcPeer:
    """One browser's peer connection: answers its offer, carries its call, sends it events."""

    def __init__(self, pc_id: str, clock: Clock, ice_servers: Sequence[RTCIceServer] = ()) -> None:
        self.pc_id = pc_id
        self.transport = WebRtcTransport(clock)
        # An explicit list: aiortc's default (None) would query Google's public STUN server.
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=list(ice_servers)))
        self.events_dropped = 0
        self._channel: RTCDataChannel | None = None
        self._outbox: deque[str] = deque(maxlen=_MAX_OUTBOX)
        self._connected = asyncio.Event()
        self._gone = asyncio.Event()
        self._closed = False
        self.pc.on("track", self._on_track)
        self.pc.on("datachannel", self._on_datachannel)
        self.pc.on("connectionstatechange", self._on_state)

    @property
    def closed(self) -> bool:
        return self._closed

    async def answer(self, offer_sdp: str) -> str:
        """The answer SDP (with every candidate); raises `OfferError` for an unusable offer."""
        check_offer(offer_sdp)
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        except (ValueError, IndexError, KeyError) as exc:  # aiortc's own parser disagreeing
            raise OfferError(f"malformed SDP offer: {exc}") from exc
        self.pc.addTrack(self.transport.track)
        answer = await self.pc.createAnswer()
        await self.pc.setLocalDescription(answer)
        local = self.pc.localDescription
        assert local is not None
        return local.sdp

    async def wait_connected(self) -> bool:
        """Wait until ICE and DTLS are up (True) or the connection failed (False)."""
        await self._connected.wait()
        return not self._gone.is_set()

    def send_event(self, event: dict[str, Any]) -> None:
        """Queue one JSON event for the page; never blocks (bounded, see the module doc)."""
        if self._closed:
            return
        text = json.dumps(event, separators=(",", ":"))
        channel = self._channel
        if channel is None or channel.readyState != "open":
            if len(self._outbox) == self._outbox.maxlen:
                self.events_dropped += 1
            self._outbox.append(text)
            return
        if channel.bufferedAmount > _MAX_CHANNEL_BUFFER:
            self.events_dropped += 1
            return
        channel.send(text)

    async def close(self, grace: float = 1.0) -> None:
        """Give the page up to `grace` seconds to read the last events and hang up itself,
        then close the connection. Idempotent."""
        if self._closed:
            return
        channel = self._channel
        if channel is not None and channel.readyState == "open" and not self._gone.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self._gone.wait()
        self._closed = True
        self.transport.lost("connection closed")
        await self.pc.close()

    # --- peer connection events --------------------------------------------------------------

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self.transport.attach_remote(track)

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if self._channel is not None:
            return  # the first channel carries the events; others are ignored
        self._channel = channel
        channel.on("message", self._on_message)
        channel.on("open", self._flush)
        self._flush()

    def _flush(self) -> None:
        channel = self._channel
        if channel is None or channel.readyState != "open":
            return
        while self._outbox:
            channel.send(self._outbox.popleft())

    def _on_message(self, message: str | bytes) -> None:
        try:
            data = json.loads(message)
        except ValueError:
            log.info("peer %s: ignoring a data channel message that is not JSON", self.pc_id)
            return
        if isinstance(data, dict) and data.get("type") == _HANGUP:
            self.transport.hang_up()

    def _on_state(self) -> None:
        state = self.pc.connectionState
        if state == "connected":
            self._connected.set()
        elif state in ("failed", "closed"):
            self._gone.set()
            self._connected.set()
            self.transport.lost(f"connection {state}")
